"""Building an expert on the meta device and placing stored tensors into it, whatever the file format."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import WeightsError
from ..models.transformer import BerniniTransformer
from . import quant
from .config import read_json


def _keep_fp32(name: str, patterns: Iterable[str]) -> bool:
    parts = name.split(".")
    return any(p in parts for p in patterns)


def few(names: list[str], count: int = 3) -> str:
    shown = ", ".join(sorted(names)[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")


def empty_expert(config_dir: Path, config: dict | None = None) -> BerniniTransformer:
    """An expert built from ``config_dir/config.json`` (or its ``config``, already read) on the meta device (no
    memory for weights)."""
    from accelerate import init_empty_weights

    config = read_json(config_dir / "config.json") if config is None else config
    with init_empty_weights():
        return BerniniTransformer.from_config(config)


def place_weight(
    model: torch.nn.Module,
    name: str,
    tensor: torch.Tensor,
    *,
    dtype: torch.dtype,
    quantize: str = "none",
    scale: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """Put one stored tensor into ``model``.

    fp8 / int8 linear weights stay as stored (:class:`~bernini.loaders.quant.QuantLinear`, upcast per layer);
    ``quantize`` quantises the block linears of dense checkpoints; the rest is cast (fp32-kept modules
    stay fp32)."""
    from accelerate.utils import set_module_tensor_to_device

    module_name, _, attr = name.rpartition(".")
    linear_weight = attr == "weight" and isinstance(model.get_submodule(module_name), torch.nn.Linear)
    stored_quantized = tensor.dtype in quant.QUANT_DTYPES
    if stored_quantized and linear_weight:
        stored = "int8" if tensor.dtype == torch.int8 else "fp8"
        if quantize not in ("none", stored):
            raise WeightsError(
                f"--quantize {quantize}: the checkpoint stores {name} as {stored}, and stored weights load as "
                f"stored; drop --quantize (or pass --quantize {stored})"
            )
        quant.install(model, name, tensor, scale, device)
        return
    if quantize != "none" and linear_weight and quant.quantizable(name, tuple(tensor.shape)):
        quant.install(model, name, *quant.quantize_rows(tensor, quantize), device)
        return
    if stored_quantized:
        rows = tensor.shape[0] if tensor.dim() else 1
        tensor = tensor.float() * quant.row_scale(scale, rows).reshape(-1, *([1] * (tensor.dim() - 1)))
    target = torch.float32 if _keep_fp32(name, tuple(getattr(model, "_keep_in_fp32_modules", None) or ())) else dtype
    if tensor.is_floating_point():
        tensor = tensor.to(target)
    set_module_tensor_to_device(model, name, device, value=tensor, dtype=tensor.dtype)
