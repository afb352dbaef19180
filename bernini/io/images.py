"""Reading images (files, PIL images, arrays, tensors) as upright RGB, and pixels of any layout as uint8 RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from bernini.errors import MediaError

from .files import check_file, failure_reason

ImageSource = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def _float_to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    if values.size and not np.isfinite(values).all():
        raise MediaError(f"{what} contains NaN or infinite values")
    if values.size and (values.min() < -1e-3 or values.max() > 1 + 1e-3):
        raise MediaError(
            f"{what} has float values in [{values.min():.3g}, {values.max():.3g}]; float pixels must be in [0, 1]"
        )
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


def _to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if np.issubdtype(values.dtype, np.floating):
        return _float_to_uint8(values.astype(np.float32, copy=False), what)
    if np.issubdtype(values.dtype, np.integer):
        if values.size and (values.min() < 0 or values.max() > 255):
            raise MediaError(f"{what} has integer values outside 0..255; convert it to uint8 first")
        return values.astype(np.uint8)
    raise MediaError(f"{what} has unsupported dtype {values.dtype}; use uint8 or float in [0, 1]")


def _rgb_channels(pixels: np.ndarray, what: str) -> np.ndarray:
    """Channel-last pixels with 1, 3 or 4 channels to RGB (alpha is dropped, grey is repeated)."""
    if pixels.shape[-1] == 3:
        return pixels
    if pixels.shape[-1] == 4:
        return pixels[..., :3]
    if pixels.shape[-1] == 1:
        return np.repeat(pixels, 3, axis=-1)
    raise MediaError(f"{what} has shape {tuple(pixels.shape)}; expected 3 colour channels")


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        tensor = tensor.float()
    return tensor.numpy()


def channels_first(first: int, last: int, prefer_first: bool) -> bool:
    """Whether a C x H x W layout is meant; ambiguous shapes follow the torch (first) or numpy (last) habit."""
    first_fits, last_fits = first in (1, 3, 4), last in (1, 3, 4)
    if first_fits and last_fits:
        return prefer_first if first == last else first == 3
    return first_fits


def image_array(source: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 [H, W, 3] from H x W, H x W x C or C x H x W pixels; a leading batch of 1 is dropped."""
    is_tensor = isinstance(source, torch.Tensor)
    what = "image tensor" if is_tensor else "image array"
    pixels = tensor_to_numpy(source) if is_tensor else np.asarray(source)
    if pixels.ndim == 4 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3:
        raise MediaError(f"{what} has shape {tuple(pixels.shape)}; expected H x W x 3 or 3 x H x W")
    if channels_first(pixels.shape[0], pixels.shape[-1], prefer_first=is_tensor):
        pixels = np.moveaxis(pixels, 0, -1)
    return np.ascontiguousarray(_to_uint8(_rgb_channels(pixels, what), what))


def _open_image(path: Path) -> Image.Image:
    check_file(path, "image")
    try:
        with Image.open(path) as image:
            image.seek(0)
            upright = ImageOps.exif_transpose(image)
            return _pil_to_rgb(upright)
    except Exception as exc:  # any failure to decode a user file is a bad file
        raise MediaError(f"cannot read image {path}: not an image Pillow can decode ({failure_reason(exc)})") from exc


def read_image(source: ImageSource) -> Image.Image:
    """An RGB PIL image from a path, a PIL image, a numpy array or a torch tensor (uint8 or float in [0, 1])."""
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source)
    if isinstance(source, np.ndarray | torch.Tensor):
        return Image.fromarray(image_array(source))
    if isinstance(source, str | os.PathLike):
        return _open_image(Path(source))
    raise MediaError(
        f"unsupported image input of type {type(source).__name__}; give a file path, PIL image, array or tensor"
    )


# ---------------------------------------------------------------------------------------- tensors
