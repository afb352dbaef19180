"""``bernini convert``: write a model in another layout, once, one expert in memory at a time.

* ``diffusers``: a self-contained Bernini-R-Diffusers bundle (components copied, experts sharded with
  an index); with ``quantize`` (or from an fp8 / int8 source) the block linears are stored quantised as
  ``weight`` (fp8 e4m3 / int8) plus ``weight_scale`` (float32 per output channel): a pre-quantised bundle;
* ``comfy``: the Comfy-Org single files ``wan2.2_bernini_r_{high,low}_noise_{fp16,fp8_scaled}.safetensors``
  (original Wan names; ``fp8_scaled`` adds the ``scaled_fp8`` marker and one ``scale_weight`` per tensor,
  the form Comfy reads), or ``wan2.1_bernini_1.3B_fp16.safetensors`` for a single-expert model;
* ``gguf``: one ``.gguf`` file per expert (:mod:`bernini.loaders.gguf_file`).

Any source the loader reads works: a bundle, a config plus ``--high_noise_ckpt`` / ``--low_noise_ckpt``
files in any layout, GGUF.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import BerniniError
from . import quant
from .loading import checkpoint_files, checkpoint_flags, expert_names, load_expert, resolve_model
from .wan_keys import diffusers_to_native

LAYOUTS = ("diffusers", "comfy", "gguf")
COMPONENTS = ("tokenizer", "text_encoder", "vae", "scheduler")
FP8_MAX = 448.0
SHARD_SIZE = "5GB"


def expert_state(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Diffusers-named tensors to save: dense in ``dtype`` (fp32-kept modules stay fp32), quantised linears as
    held (``weight`` + ``weight_scale``), GGUF weights dequantised."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, quant.QuantLinear):
            state[prefix + "weight"] = module.weight.detach().cpu()
            state[prefix + "weight_scale"] = module.weight_scale.detach().cpu().float()
            if module.bias is not None:
                state[prefix + "bias"] = module.bias.detach().cpu().to(dtype)
            continue
        for attr, param in module.named_parameters(recurse=False):
            key = prefix + attr
            value = quant.dequantize_weight(module) if attr == "weight" else param.detach().float()
            fp32 = any(p in key.split(".") for p in keep)
            state[key] = value.to(torch.float32 if fp32 else dtype).cpu()
    return {k: v.contiguous() for k, v in state.items()}


def comfy_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Original Wan names; quantised weights as fp8 with one ``scale_weight`` per tensor (Comfy's form)."""
    out: dict[str, torch.Tensor] = {}
    scaled = False
    for key, value in state.items():
        if key.endswith(".weight_scale"):
            continue
        native = diffusers_to_native(key)
        if native is None:
            raise BerniniError(f"no original Wan name for {key}")
        scale = state.get(key[: -len("weight")] + "weight_scale") if key.endswith(".weight") else None
        if scale is None:
            out[native] = value.to(dtype) if value.is_floating_point() else value
            continue
        scaled = True
        dense = value.float() * scale[:, None]
        per_tensor = dense.abs().max().clamp(min=1e-12) / FP8_MAX
        if value.dtype == torch.float8_e4m3fn and torch.all(scale == scale[0]):
            stored, per_tensor = value, scale[0]  # already one scale per tensor: keep the bytes
        else:
            stored = (dense / per_tensor).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        out[native] = stored
        out[native[: -len("weight")] + "scale_weight"] = per_tensor.reshape(()).float()
    if scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def save_sharded(state: dict[str, torch.Tensor], folder: Path, max_shard_size: str | int = SHARD_SIZE) -> None:
    """diffusers' shard names and index, through huggingface_hub's splitter."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="diffusion_pytorch_model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, str(folder / filename))
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def comfy_name(expert: str, two_experts: bool, scaled: bool) -> str:
    if not two_experts:
        return "wan2.1_bernini_1.3B_fp8_scaled.safetensors" if scaled else "wan2.1_bernini_1.3B_fp16.safetensors"
    noise = "high" if expert == "transformer" else "low"
    return f"wan2.2_bernini_r_{noise}_noise_{'fp8_scaled' if scaled else 'fp16'}.safetensors"


def convert(
    config: str | Path | None,
    output: str | Path,
    layout: str,
    *,
    high_noise_ckpt: str | Path | None = None,
    low_noise_ckpt: str | Path | None = None,
    dtype: torch.dtype = torch.bfloat16,
    quantize: str = "none",
    gguf_type: str = "Q8_0",
    log: Callable[[str], None] = lambda _: None,
) -> list[Path]:
    """Convert, returning the files written (experts) in ``output``."""
    if layout not in LAYOUTS:
        raise BerniniError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    quantize = quant.check_mode(quantize)
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BerniniError(f"{out} exists and is not an empty directory; choose a new output directory")
    source = resolve_model(config)
    separate = checkpoint_flags(source.renderer, high_noise_ckpt, low_noise_ckpt)
    names = expert_names(source.renderer)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in names:
        files = checkpoint_files(separate[name], name) if name in separate else source.transformer_files[name]
        model = load_expert(
            source.components / name, files, expert=name, dtype=dtype, separate=name in separate, quantize=quantize
        )
        state = expert_state(model, dtype)
        del model
        if layout == "diffusers":
            folder = out / name
            save_sharded(state, folder)
            shutil.copy2(source.components / name / "config.json", folder / "config.json")
            written.append(folder)
        elif layout == "comfy":
            from safetensors.torch import save_file

            path = out / comfy_name(name, len(names) == 2, any(k.endswith(".weight_scale") for k in state))
            save_file(comfy_state(state, torch.float16 if dtype != torch.float32 else dtype), str(path))
            written.append(path)
        else:
            from .gguf_file import write_gguf

            noise = "high" if name == "transformer" else "low"
            path = out / f"bernini_r_{noise}_noise_{gguf_type}.gguf"
            write_gguf(state, path, gguf_type)
            written.append(path)
        log(f"wrote {written[-1]}")
    if layout == "diffusers":
        _copy_components(source, out)
    return written


def _copy_components(source, out: Path) -> None:
    for name in COMPONENTS:
        shutil.copytree(source.components / name, out / name)
    index = source.components / "model_index.json"
    if index.is_file():
        shutil.copy2(index, out / "model_index.json")
    config = {**source.renderer.to_dict(), "wan22_base": str(out.resolve())}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
