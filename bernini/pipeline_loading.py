"""Loading a :class:`~bernini.pipeline.BerniniPipeline`: every published layout through ``from_pretrained`` (the
pipeline's classmethod is :func:`from_pretrained`), LoRAs merged per expert into its
:class:`~bernini.stages.components.Components`, and the placement decision under a device-memory budget, kept
in its :class:`~bernini.stages.components.Runtime`."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import torch

from .errors import BerniniError
from .loaders.bundle import BundleSpec
from .loaders.loading import load_components, resolve_model
from .loaders.lora import LoraSpec, merge_lora, read_lora
from .planner.loading import full_bundle, load_full_model, refuse_for_full_model
from .runtime.devices import device_from_map, parse_device, parse_dtype
from .runtime.placement import Placement, PlacementDecision, measured_sizes
from .stages.batch import OnProgress
from .stages.components import Components, Runtime

if TYPE_CHECKING:
    from .models.transformer import BerniniTransformer

Pipeline = TypeVar("Pipeline")  # the pipeline class (bernini.pipeline.BerniniPipeline or a subclass)


def from_pretrained(
    cls: type[Pipeline],
    pretrained_model_name_or_path: str | os.PathLike | BundleSpec | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    torch_dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | None = None,
    high_noise_ckpt: str | os.PathLike | None = None,
    low_noise_ckpt: str | os.PathLike | None = None,
    offload: bool | str = "auto",
    attention: str = "auto",
    compile: bool = False,
    allow_base_weights: bool = False,
    loras: Sequence[LoraSpec] = (),
    quantize: str = "none",
    gpu_memory: float | None = None,
    progress: bool = False,
    on_progress: OnProgress | None = None,
    bernini_version: str | None = None,
) -> Pipeline:
    """Load any published layout (bundle dir, repo id, config dir + separate checkpoints, 1.3B), or a
    :class:`~bernini.loaders.bundle.BundleSpec` a front end has already read.

    ``device_map`` takes one device as diffusers does (``"cuda"``); ``dtype`` / ``torch_dtype`` alike.
    A config or bundle without Bernini-R weights (a plain Wan2.2 bundle, a config directory without
    ``high_noise_ckpt`` / ``low_noise_ckpt``) is refused unless ``allow_base_weights=True``.
    ``loras`` are merged into the experts' weights before they move to the device.
    ``quantize`` (``fp8`` / ``int8``) keeps the experts' block linears weight-only quantised.
    ``gpu_memory`` (GiB; default: the device's free memory) is the budget ``offload="auto"`` places under.
    No progress bar is drawn unless ``progress=True``, which shows diffusers' and transformers' own loading
    bars and turns the denoising bar on (``set_progress_bar_config`` configures it later).

    A full Bernini bundle (``config.json`` with ``model_type: bernini``: planner, connector and renderer in
    one ``bernini/`` checkpoint) loads the planner too; ``bernini_version`` (``v1`` / ``v2``) overrides which
    release's shipped per-task settings apply (default: detected, see :mod:`bernini.sampling.full_presets`).
    """
    if gpu_memory is not None and not (math.isfinite(gpu_memory) and gpu_memory > 0):
        raise BerniniError(f"gpu_memory must be a positive number of GiB, got {gpu_memory}")
    with _library_bars(progress):
        pipe = _load(
            cls,
            pretrained_model_name_or_path,
            dtype=dtype,
            torch_dtype=torch_dtype,
            device=device,
            device_map=device_map,
            high_noise_ckpt=high_noise_ckpt,
            low_noise_ckpt=low_noise_ckpt,
            offload=offload,
            attention=attention,
            compile=compile,
            on_progress=on_progress,
            allow_base_weights=allow_base_weights,
            loras=loras,
            quantize=quantize,
            gpu_memory=gpu_memory,
            bernini_version=bernini_version,
        )
    if progress:
        pipe.set_progress_bar_config(disable=False)
    return pipe


def _load(
    cls: type[Pipeline],
    pretrained_model_name_or_path,
    *,
    dtype,
    torch_dtype,
    device,
    device_map,
    high_noise_ckpt,
    low_noise_ckpt,
    offload,
    attention,
    compile: bool,
    on_progress: OnProgress | None = None,
    allow_base_weights: bool = False,
    loras: Sequence[LoraSpec] = (),
    quantize: str = "none",
    gpu_memory: float | None = None,
    bernini_version: str | None = None,
) -> Pipeline:
    if device is not None and device_map is not None:
        raise BerniniError("pass either device or device_map, not both")
    target = parse_device(device if device_map is None else device_from_map(device_map))
    weight_dtype = parse_dtype(dtype if dtype is not None else torch_dtype, target)
    bundle = BundleSpec.find(pretrained_model_name_or_path)  # read once, here or by the front end
    name = bundle.spec if bundle is not None else pretrained_model_name_or_path
    full = full_bundle(bundle if bundle is not None else pretrained_model_name_or_path)
    if full is not None:
        refuse_for_full_model(high_noise_ckpt, low_noise_ckpt, quantize)
        modules, source = load_full_model(full, str(name), weight_dtype, bernini_version)
    else:
        if bernini_version is not None:
            raise BerniniError("--bernini_version names a full Bernini release; this model is Bernini-R")
        separate = {
            name for name, ckpt in (("transformer", high_noise_ckpt), ("transformer_2", low_noise_ckpt)) if ckpt
        }
        source = resolve_model(
            bundle if bundle is not None else name, separate=separate, allow_base_weights=allow_base_weights
        )
        modules = load_components(
            source, weight_dtype, high_noise_ckpt, low_noise_ckpt, quantize, on_progress=on_progress
        )
    pipe = cls(**modules, source=source, device=target, dtype=weight_dtype, attention=attention)
    for spec in loras:
        pipe.load_lora_weights(spec.path, expert=spec.expert, scale=spec.scale)
    pipe.apply_placement(pipe.decide_placement(offload, target, gpu_memory))
    pipe = pipe.to(target)
    if compile:
        pipe.compile()
    return pipe


def lora_targets(components: Components, expert: str) -> list[BerniniTransformer]:
    experts = components.make_experts()
    if expert == "low" and experts.low is None:
        raise BerniniError("this model has one expert: load its LoRA with expert='high' or 'both'")
    return {"high": [experts.high], "low": [experts.low], "both": [e for e in (experts.high, experts.low) if e]}[expert]


def load_lora_weights(components: Components, path: str | os.PathLike, expert: str, scale: float) -> None:
    spec = LoraSpec(str(path), expert, float(scale)).checked()
    state_dict = read_lora(spec.path)
    for target in lora_targets(components, spec.expert):
        merge_lora(target, state_dict, spec.scale)
    components.loras.append(spec.hashed())


def unload_lora_weights(components: Components) -> None:
    while components.loras:
        spec = components.loras.pop()
        state_dict = read_lora(spec.path)
        for target in lora_targets(components, spec.expert):
            merge_lora(target, state_dict, -spec.scale)


def decide_placement(
    components: Components,
    runtime: Runtime,
    offload: bool | str,
    device: torch.device,
    gpu_memory: float | None = None,
) -> PlacementDecision:
    """Keep resident what fits the budget, stream the rest (see :mod:`bernini.runtime.memory`)."""
    from .loaders.quant import QuantLinear
    from .runtime.memory import device_budget, runtime_decision

    experts = components.experts
    budget = device_budget(gpu_memory, device)
    sizes = measured_sizes(experts, components.text_encoder, components.vae, components.planner_modules)
    quantized = any(isinstance(m, QuantLinear) for e in experts for m in e.modules())
    expert_config = dict(experts[0].config)
    return runtime_decision(
        offload, device, budget, sizes, expert_config, dict(components.vae.config), runtime.dtype, quantized
    )


def apply_placement(components: Components, runtime: Runtime, decision: PlacementDecision) -> None:
    runtime.placement_decision = decision
    on_cpu = [components.text_encoder] if decision.text_encoder == "cpu" else []
    runtime.placement = Placement(decision.mode, runtime.device, components.experts, on_cpu)
    if decision.tiled_decode:
        components.vae.enable_tiling()


@contextmanager
def _library_bars(show: bool) -> Iterator[None]:
    """diffusers' and transformers' progress bars on or off for a block; their previous setting comes back."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    before = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    for module, on in ((diffusers_logging, show), (transformers_logging, show)):
        module.enable_progress_bar() if on else module.disable_progress_bar()
    try:
        yield
    finally:
        for module, on in zip((diffusers_logging, transformers_logging), before, strict=True):
            module.enable_progress_bar() if on else module.disable_progress_bar()
