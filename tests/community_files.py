"""An independent writer of the community's single-file layouts, for the tests (not the library's converter).

It renames diffusers keys to the original Wan names with its own substitution list (written from the
published key lists of the Comfy-Org / Kijai / GGUF files, not from ``bernini.loaders.wan_keys``) and quantises
with its own per-tensor fp8 scaling, the way Comfy's ``fp8_scaled`` files are made.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

RENAMES = [
    (r"^condition_embedder\.time_embedder\.linear_(\d)", lambda m: f"time_embedding.{2 * int(m[1]) - 2}"),
    (r"^condition_embedder\.text_embedder\.linear_(\d)", lambda m: f"text_embedding.{2 * int(m[1]) - 2}"),
    (r"^condition_embedder\.time_proj", "time_projection.1"),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out", "head.head"),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_out\.0\.", ".o."),
    (r"\.to_([qkv])\.", r".\1."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
    (r"\.norm2\.", ".norm3."),  # diffusers' affine cross-attention norm is Wan's norm3
]
FP8_MAX = 448.0


def wan_name(key: str) -> str:
    for pattern, replacement in RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def diffusers_expert(folder: Path) -> dict[str, torch.Tensor]:
    """The float32 tensors of a bundle's ``transformer/`` folder (diffusers names)."""
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return {k: v.float() for k, v in tensors.items()}


def is_block_linear(key: str, value: torch.Tensor) -> bool:
    return key.startswith("blocks.") and key.endswith(".weight") and value.dim() == 2


def fp8_per_tensor(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = value.abs().max() / FP8_MAX
    return (value / scale).to(torch.float8_e4m3fn), scale.reshape(()).float()


def write_comfy(state: dict[str, torch.Tensor], path: Path, kind: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """``fp16``, ``fp8_scaled`` (Comfy-Org: ``scaled_fp8`` marker, fp16 rest, ``scale_input``) or ``kijai``
    (fp8 ``scale_weight`` scalars, float32 rest). Returns the dense tensors (diffusers names) the file means."""
    out, meant = {}, {}
    for key, value in state.items():
        name = prefix + wan_name(key)
        if kind != "fp16" and is_block_linear(key, value):
            stored, scale = fp8_per_tensor(value)
            out[name] = stored
            out[name[: -len("weight")] + "scale_weight"] = scale
            if kind == "fp8_scaled":
                out[name[: -len("weight")] + "scale_input"] = torch.ones(())
            meant[key] = stored.float() * scale
        else:
            rest = torch.float32 if kind == "kijai" else torch.float16
            out[name] = value.to(rest)
            meant[key] = out[name].float()
    if kind == "fp8_scaled":
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return meant


def q4_k_blocks(array: np.ndarray) -> np.ndarray:
    """A plain Q4_K encoder (144-byte blocks of 256: fp16 d and dmin, 6-bit packed scales/mins, 4-bit codes)."""
    x = array.astype(np.float32).reshape(-1, 8, 32)
    low, high = np.minimum(x.min(-1), 0), x.max(-1)
    scale, mins = (high - low) / 15, -low
    d = (scale.max(-1) / 63).astype(np.float16)
    dmin = (mins.max(-1) / 63).astype(np.float16)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.nan_to_num(np.clip(np.round(scale / d.astype(np.float32)[:, None]), 0, 63)).astype(np.uint8)
        m = np.nan_to_num(np.clip(np.round(mins / dmin.astype(np.float32)[:, None]), 0, 63)).astype(np.uint8)
        step = d.astype(np.float32)[:, None] * sc
        offset = dmin.astype(np.float32)[:, None] * m
        q = np.nan_to_num(np.clip(np.round((x + offset[..., None]) / step[..., None]), 0, 15)).astype(np.uint8)
    packed = np.zeros((x.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    q = q.reshape(-1, 4, 2, 32)
    codes = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(-1, 128)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, codes], axis=1)


def write_gguf(state: dict[str, torch.Tensor], path: Path, kind: str) -> dict[str, torch.Tensor]:
    """``Q8_0`` (gguf's own quantiser; rows of 32) or ``Q4_K`` (the encoder above; tensors flattened to rows of
    256 under ComfyUI-GGUF's ``comfy.gguf.orig_shape`` rule) for block linears, F32 for the rest (the 5-D patch
    embedding flattened the same way). Returns the dense tensors the file means, per gguf's own dequantiser."""
    import gguf

    qtype = gguf.GGMLQuantizationType[kind]
    writer = gguf.GGUFWriter(str(path), arch="wan")
    meant = {}
    for key, value in state.items():
        name = wan_name(key)
        array = value.float().numpy()
        if is_block_linear(key, value):
            if kind == "Q4_K":
                writer.add_array(f"comfy.gguf.orig_shape.{name}", list(array.shape))
                data = q4_k_blocks(array.reshape(-1, 256))
            else:
                data = gguf.quants.quantize(array, qtype)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
            meant[key] = torch.from_numpy(gguf.quants.dequantize(data, qtype).reshape(array.shape).copy())
        elif array.ndim > 4:
            writer.add_array(f"comfy.gguf.orig_shape.{name}", list(array.shape))
            writer.add_tensor(name, array.reshape(array.shape[0], -1))
            meant[key] = value.float()
        else:
            writer.add_tensor(name, array)
            meant[key] = value.float()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return meant
