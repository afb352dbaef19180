"""Loading the published full-Bernini layout (spec §1): ``config.json`` with ``model_type: bernini`` and
one sharded ``bernini/`` checkpoint holding every trained module under its prefix.

Every module is built on the meta device and filled tensor by tensor from the shards, cast on the fly
(fp32-kept modules stay fp32), so host memory holds the kept bytes, never the fp32 checkpoint. The
planner's Qwen2.5-VL is stock transformers (keys remapped, spec §1.4) and stops at the layer that is read:
its last decoder layer, final norm and ``lm_head`` are neither built nor read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from ..loaders.bundle import BundleSpec
from ..loaders.expert_weights import place_weight
from ..loaders.full_config import MODEL_TYPE
from ..loaders.loading import ModelSource, fetch_repo, looks_like_repo_id
from ..loaders.safetensors_stream import TensorEntry, iter_tensors, read_header

REQUIRED = ("bernini", "mllm", "t5_text_encoder", "t5_tokenizer", "vae", "scheduler")
PREFIXES = {
    "transformer": "diff_dec.transformer.",
    "transformer_2": "diff_dec_low.transformer_2.",
    "text_encoder": "t5_text_encoder.",
    "connector": "connector.",
    "vit_decoder": "vit_decoder.",
}


@dataclass
class FullBundle:
    """A full bundle's parts, resolved to local paths, and its checkpoint's tensor index."""

    root: Path
    config: dict[str, Any]
    entries: dict[str, TensorEntry] = field(default_factory=dict)
    spec: BundleSpec | None = None

    @property
    def bundle(self) -> BundleSpec:
        return self.spec or BundleSpec(self.root, str(self.root), self.config)

    @classmethod
    def open(cls, root: str | Path | BundleSpec) -> FullBundle:
        spec = root if isinstance(root, BundleSpec) else BundleSpec.read(Path(root).expanduser())
        root = spec.root
        config = spec.json("config.json") if spec.config is None else spec.config  # raises as read_json did
        if config.get("model_type") != MODEL_TYPE:
            raise WeightsError(f"{root} is not a full Bernini bundle (config.json model_type is not 'bernini')")
        missing = [name for name in REQUIRED if not (root / name).is_dir()]
        configs = ("transformer_config.json", "transformer_2_config.json")
        missing += [name for name in configs if not (root / name).is_file()]
        if missing:
            raise WeightsError(f"full Bernini bundle {root} lacks {', '.join(missing)}")
        index = root / "bernini" / "model.safetensors.index.json"
        files = spec.full_shards()
        if not files:
            raise WeightsError(f"{root / 'bernini'} holds no .safetensors shards")
        bundle = cls(root, config, spec=spec)
        for path in files:
            if not path.is_file():
                raise WeightsError(f"{index} names a shard that is missing: {path.name}")
            bundle.entries.update(read_header(path))
        return bundle

    def keys_under(self, prefix: str) -> dict[str, TensorEntry]:
        return {key[len(prefix) :]: entry for key, entry in self.entries.items() if key.startswith(prefix)}

    def decoder_depth(self) -> int:
        """``depth`` is not in config.json (the code default is 16); count the checkpoint's blocks instead."""
        blocks = {key.split(".")[3] for key in self.entries if key.startswith("vit_decoder.net.res_blocks.")}
        return len(blocks)


def qwen_key(checkpoint_key: str) -> str:
    """``mllm.visual.X`` → ``visual.X``; ``mllm.model.X`` → ``language_model.X`` (a ``Qwen2_5_VLModel``'s names)."""
    rest = checkpoint_key[len("mllm.") :]
    if rest.startswith("visual."):
        return rest
    if rest.startswith("model."):
        return "language_model." + rest[len("model.") :]
    return rest


def stream_into(
    module: torch.nn.Module,
    entries: dict[str, TensorEntry],
    dtype: torch.dtype,
    what: str,
    ignore: Iterable[str] = (),
) -> torch.nn.Module:
    """Fill a meta-built ``module`` from checkpoint ``entries`` keyed by its own parameter names, each tensor
    placed by :func:`bernini.loaders.expert_weights.place_weight` (cast to ``dtype``; the module's fp32-kept parts
    stay fp32, as ``from_pretrained`` keeps them)."""
    expected = set(module.state_dict())
    ignored = tuple(ignore)
    wanted = {name: entry for name, entry in entries.items() if not name.startswith(ignored)}
    missing = sorted(expected - wanted.keys())
    unexpected = sorted(wanted.keys() - expected)
    if missing or unexpected:
        problem = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise WeightsError(f"the {what} weights do not match the bundle's config: {problem}")
    shapes = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    names_of: dict[TensorEntry, list[str]] = {}
    for name, entry in wanted.items():
        names_of.setdefault(entry, []).append(name)  # tied weights name one stored tensor twice
    for entry, tensor in iter_tensors(list(names_of)):
        for name in names_of[entry]:
            if tuple(tensor.shape) != shapes[name]:
                raise WeightsError(f"{what} tensor {name} has shape {tuple(tensor.shape)}, expected {shapes[name]}")
            place_weight(module, name, tensor, dtype=dtype)
    return module.eval().requires_grad_(False)


def _meta(build):
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


@dataclass
class PlannerModules:
    """The planner's trained parts: Qwen2.5-VL (stopping at the layer read), connector, ViT decoder, mask token."""

    qwen: Any
    connector: torch.nn.Module
    vit_decoder: torch.nn.Module
    mask_token: torch.Tensor
    tokenizer: Any
    layers_read: int
    image_processor: Any = None  # Qwen's slow (PIL) image processor at the planner's pixel budget


def planner_qwen(config: Any) -> tuple[torch.nn.Module, int]:
    """The planner's Qwen2.5-VL on the meta device, stopping at the layer read, and the checkpoint's layer count.

    ``config`` (a ``Qwen2_5_VLConfig``) is truncated in place: one layer fewer, no final norm, no ``lm_head``."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    text = getattr(config, "text_config", config)
    layers = int(text.num_hidden_layers)
    text.num_hidden_layers = layers - 1  # hidden_states[-2] of the full stack is this stack's last layer output
    if hasattr(text, "layer_types") and text.layer_types:
        text.layer_types = list(text.layer_types)[: layers - 1]
    qwen = _meta(lambda: Qwen2_5_VLModel(config))
    qwen.language_model.norm = torch.nn.Identity()
    return qwen, layers


def load_planner(bundle: FullBundle, dtype: torch.dtype) -> PlannerModules:
    from transformers import AutoConfig, AutoTokenizer

    from .connector import MLPConnector
    from .flow import VitDecoder
    from .vision import load_image_processor

    config = AutoConfig.from_pretrained(bundle.root / "mllm")
    qwen, layers = planner_qwen(config)
    text = getattr(config, "text_config", config)
    entries = {qwen_key(k): e for k, e in bundle.entries.items() if k.startswith("mllm.")}
    skipped = (f"language_model.layers.{layers - 1}.", "language_model.norm.", "lm_head.")
    stream_into(qwen, entries, dtype, "planner (mllm)", ignore=skipped)

    connector_widths, decoder_widths = bundle.bundle.planner_widths(int(text.hidden_size))
    connector = _meta(lambda: MLPConnector(**connector_widths))
    # the reference casts connector and decoder to the compute dtype for planning; load them in it directly
    stream_into(connector, bundle.keys_under("connector."), dtype, "connector")
    decoder = _meta(lambda: VitDecoder(**decoder_widths, depth=bundle.decoder_depth()))
    stream_into(decoder, bundle.keys_under("vit_decoder."), dtype, "ViT decoder")
    mask = bundle.entries.get("mask_tokens")
    if mask is None:
        raise WeightsError(f"{bundle.root / 'bernini'} has no mask_tokens")
    ((_, mask_tokens),) = iter_tensors([mask])
    tokenizer = AutoTokenizer.from_pretrained(bundle.root / "mllm")
    processor = load_image_processor(bundle.root / "mllm")
    mask_token = mask_tokens[0, 0].float().clone()
    return PlannerModules(qwen, connector, decoder, mask_token, tokenizer, layers - 1, processor)


def load_renderer_parts(bundle: FullBundle, dtype: torch.dtype) -> dict[str, Any]:
    """The two experts and UMT5 from ``bernini/`` (over ``t5_text_encoder/``'s copy), plus tokenizer, VAE, scheduler."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import AutoConfig, AutoTokenizer, UMT5EncoderModel

    from ..models.transformer import BerniniTransformer

    parts: dict[str, Any] = {}
    for name in ("transformer", "transformer_2"):
        config = bundle.bundle.json(f"{name}_config.json")
        expert = _meta(lambda config=config: BerniniTransformer.from_config(config))
        parts[name] = stream_into(expert, bundle.keys_under(PREFIXES[name]), dtype, name)
    t5_config = AutoConfig.from_pretrained(bundle.root / "t5_text_encoder")
    encoder = _meta(lambda: UMT5EncoderModel(t5_config))
    t5_entries = bundle.keys_under(PREFIXES["text_encoder"])
    if "shared.weight" in t5_entries and "encoder.embed_tokens.weight" not in t5_entries:
        t5_entries["encoder.embed_tokens.weight"] = t5_entries["shared.weight"]
    parts["text_encoder"] = stream_into(encoder, t5_entries, dtype, "UMT5")
    try:
        parts["tokenizer"] = AutoTokenizer.from_pretrained(bundle.root / "t5_tokenizer")
        parts["vae"] = AutoencoderKLWan.from_pretrained(bundle.root / "vae", torch_dtype=torch.float32).eval()
        parts["scheduler"] = UniPCMultistepScheduler.from_pretrained(bundle.root / "scheduler")
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"cannot load the full bundle's components from {bundle.root}: {exc}") from None
    return parts


def full_bundle(spec: str | os.PathLike | BundleSpec | None) -> BundleSpec | None:
    """The full Bernini bundle named by ``spec`` (a directory, its config.json, a spec already read, or a repo id
    whose config.json says ``model_type: bernini``: then the whole repo is fetched), else None."""
    if spec is None:
        return None
    local = BundleSpec.find(spec)
    if local is not None:
        return local if local.is_full else None
    if looks_like_repo_id(str(spec)):
        probe = fetch_repo(str(spec), allow_patterns=["config.json"])
        return BundleSpec.read(fetch_repo(str(spec)), str(spec)) if BundleSpec.read(probe).is_full else None
    return None


def full_bundle_root(spec: str | os.PathLike | None) -> Path | None:
    """The local root of a full Bernini bundle named by ``spec`` (see :func:`full_bundle`), else None."""
    found = full_bundle(spec)
    return found.root if found is not None else None


def refuse_for_full_model(high_noise_ckpt: Any, low_noise_ckpt: Any, quantize: str) -> None:
    if high_noise_ckpt or low_noise_ckpt:
        raise WeightsError(
            "--high_noise_ckpt/--low_noise_ckpt do not apply to a full Bernini bundle: its experts are inside its "
            "bernini/ checkpoint; drop them (or pass a Bernini-R config with --config)"
        )
    if quantize not in (None, "none"):
        raise WeightsError("--quantize is for Bernini-R bundles; the full Bernini bundle loads in --dtype only")


def load_full_model(
    root: Path | BundleSpec, spec: str, dtype: torch.dtype, version: str | None = None
) -> tuple[dict[str, Any], ModelSource]:
    """Every module of a full bundle (renderer parts and planner) and where it came from."""
    bundle = FullBundle.open(root)
    source = ModelSource(
        spec=spec,
        renderer=bundle.bundle.full_renderer_config(),
        components=bundle.root,
        planner_version=bundle.bundle.version(spec, version),
    )
    shards = sorted({entry.path for entry in bundle.entries.values()})
    source.transformer_files = {name: shards for name in ("transformer", "transformer_2")}
    modules = load_renderer_parts(bundle, dtype)
    modules["planner"] = load_planner(bundle, dtype)
    return modules, source
