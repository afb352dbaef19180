"""Find and load Bernini-R weights in every published layout.

* a diffusers-format bundle directory (``config.json`` of ``model_type: bernini_renderer``, with or
  without ``model_index.json``) or a plain Wan2.2-T2V-A14B diffusers bundle;
* a Hugging Face repo id of such a bundle, fetched into the normal cache;
* a config-only directory (``configs/bernini_renderer_wan22``) whose ``wan22_base`` supplies the parts;
* separate high/low-noise checkpoints (a shard directory, an ``*.index.json``, one ``.safetensors``
  file or a repo id) with ``[ema.]diff_dec.transformer[_2].`` prefixes or bare keys, EMA preferred;
* the single-expert 1.3B variant (``skip_transformer_2``);
* the community's single files as ``--high_noise_ckpt`` / ``--low_noise_ckpt`` (a file, or a folder holding
  one file per expert): Comfy-Org / Kijai safetensors in original Wan names, fp16 or fp8 with scales
  (:mod:`bernini.loaders.layouts`), and GGUF (:mod:`bernini.loaders.gguf_file`).

Expert weights stream from disk one tensor at a time and are cast on the fly (fp32-kept modules stay
fp32), so a bf16 load never holds the fp32 model in RAM; fp8 / int8 / GGUF weights stay as stored.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import WeightsError
from ..models.transformer import BerniniTransformer
from . import quant
from .bundle import BundleSpec
from .config import (
    BERNINI_REPO_IDS,
    DEFAULT_REPO_ID,
    WAN22_BASE_REPO_ID,
    RendererConfig,
    read_json,
)
from .expert_weights import empty_expert, few, place_weight
from .layouts import EXPERT_PREFIXES, match_layout
from .safetensors_stream import TensorEntry, iter_tensors, read_header, read_tensor

logger = logging.getLogger(__name__)

COMPONENT_DIRS = ("tokenizer", "text_encoder", "vae")
CHECKPOINT_FLAGS = {"transformer": "--high_noise_ckpt", "transformer_2": "--low_noise_ckpt"}
ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # single files in the original Wan naming


@dataclass
class ModelSource:
    """Where every part of a model comes from, resolved to local paths."""

    spec: str
    renderer: RendererConfig
    components: Path  # holds tokenizer/, text_encoder/, vae/, scheduler/ and the transformer configs
    transformer_files: dict[str, list[Path]] = field(default_factory=dict)
    separate_checkpoints: dict[str, str] = field(default_factory=dict)
    base_weights: list[str] = field(default_factory=list)  # experts running base Wan2.2 weights (opted in)
    quantize: str = "none"  # what the experts' block linears hold: --quantize, or a pre-quantised checkpoint's
    quantize_requested: str = "none"  # the --quantize that ran (a replay passes it again)
    expert_weights: dict[str, dict[str, int]] = field(default_factory=dict)  # per expert: linears per format
    planner_version: str | None = None  # v1 / v2 for a full Bernini bundle (planner included)

    def describe(self) -> dict[str, object]:
        return {
            "spec": self.spec,
            "components": str(self.components),
            "renderer_config": self.renderer.to_dict(),
            "transformer_files": {k: [str(p) for p in v] for k, v in self.transformer_files.items()},
            "separate_checkpoints": dict(self.separate_checkpoints),
            "base_weights": list(self.base_weights),
            "quantize": self.quantize,
            "quantize_requested": self.quantize_requested,
            "expert_weights": {name: dict(kinds) for name, kinds in self.expert_weights.items()},
            "full_bernini": self.planner_version,
        }


def looks_like_repo_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~")) and "\\" not in spec


def fetch_repo(repo_id: str, allow_patterns: list[str] | None = None) -> Path:
    """Download (or find in the cache) a Hugging Face repo; one clear error when that is impossible."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except RepositoryNotFoundError:
        reason = "repository not found or not accessible"
    except LocalEntryNotFoundError:
        reason = "offline and not in the local Hugging Face cache"
    except (HfHubHTTPError, OSError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'network error'}"
    raise WeightsError(
        f"cannot fetch {repo_id!r} from the Hugging Face Hub ({reason}); download it where you have access "
        f"(`hf download {repo_id} --local-dir DIR`) and pass that directory with --config DIR"
    )


def _local_or_fetch(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if looks_like_repo_id(spec):
        return fetch_repo(spec)
    raise WeightsError(f"{spec} does not exist (expected a bundle directory or a Hugging Face repo id)")


def _has_components(path: Path) -> bool:
    return all((path / name).is_dir() for name in COMPONENT_DIRS)


def _base_is_bernini(base: str) -> bool | None:
    """Whether a ``wan22_base`` holds Bernini-R experts: known repo ids and local folders are decided
    without fetching; None for another repo id (decided once it is fetched)."""
    path = Path(base).expanduser()
    if path.exists():
        return BundleSpec.read(path).is_bernini
    if base in BERNINI_REPO_IDS:
        return True
    return None if looks_like_repo_id(base) and base != WAN22_BASE_REPO_ID else False


def _refuse_base_weights(spec: str, experts: list[str], origin: str) -> None:
    flags = " ".join(f"{CHECKPOINT_FLAGS[name]} DIR" for name in experts)
    raise WeightsError(
        f"{spec} has no Bernini-R weights for {', '.join(experts)} (they would be base Wan2.2 weights from "
        f"{origin}); pass {flags} (Bernini-R's bernini_renderer_high / _low checkpoints) or --config "
        f"{DEFAULT_REPO_ID}, or --allow_base_weights (allow_base_weights=True in Python) to run base Wan2.2 "
        "on purpose"
    )


def resolve_model(
    spec: str | os.PathLike | BundleSpec | None = None,
    *,
    separate: Collection[str] = (),
    allow_base_weights: bool = False,
    note: Callable[[str], None] | None = None,
) -> ModelSource:
    """Resolve ``--config`` / ``--model`` to local directories without loading anything.

    ``separate`` names the experts that come from separate checkpoints. Any other expert that would
    run base Wan2.2 weights (a plain Wan2.2 bundle, or a config directory whose ``wan22_base`` is one)
    is refused unless ``allow_base_weights``, before anything is fetched where that can be decided.
    Fetching a missing component from the Hub is announced through ``note`` first.
    """
    note = note or logger.warning
    bundle = spec if isinstance(spec, BundleSpec) else None
    spec = bundle.spec if bundle is not None else (str(spec) if spec is not None else DEFAULT_REPO_ID)
    root = bundle.root if bundle is not None else _local_or_fetch(spec)
    named = Path(spec).expanduser() if bundle is not None else root
    if named.is_file():
        if named.suffix != ".json":
            raise WeightsError(f"{named} is a file; pass the bundle directory (or its config.json)")
        root = named.parent
    bundle = bundle or BundleSpec.read(root, spec)
    renderer = bundle.renderer_config()
    if renderer is None:
        raise WeightsError(
            f"{root} is not a Bernini-R or Wan2.2 diffusers bundle: it has neither a config.json with "
            "model_type 'bernini_renderer' nor a model_index.json"
        )
    experts = [name for name in expert_names(renderer) if name not in separate]
    own = {name for name in experts if (root / name / "config.json").is_file()}
    from_base = [name for name in experts if name not in own]
    bundle_is_bernini = bundle.is_bernini
    base_weights = [name for name in experts if name in own and not bundle_is_bernini]
    base = renderer.wan22_base
    base_is_bernini = _base_is_bernini(base) if from_base and base else None
    if base_is_bernini is False:
        base_weights += from_base
    if base_weights and not allow_base_weights:
        _refuse_base_weights(spec, base_weights, spec if not from_base else base)
    components = root
    if not bundle.has_components:
        if not base or Path(base).expanduser().resolve() == root.resolve():
            missing = [n for n in COMPONENT_DIRS if not (root / n).is_dir()]
            raise WeightsError(f"{root} lacks {', '.join(missing)} and names no other wan22_base to take them from")
        if not Path(base).expanduser().exists() and looks_like_repo_id(base):
            missing = [n for n in (*COMPONENT_DIRS, *from_base) if not (root / n).is_dir()]
            note(
                f"note: {root} has no {', '.join(missing)}; fetching them from wan22_base {base} on the Hugging "
                "Face Hub (or its local cache); pass a complete bundle with --config to avoid this"
            )
        components = _local_or_fetch(base)
        if not _has_components(components):
            missing = [n for n in COMPONENT_DIRS if not (components / n).is_dir()]
            raise WeightsError(f"wan22_base {base} lacks {', '.join(missing)}")
    if from_base and base_is_bernini is None and not BundleSpec.read(components).is_bernini:
        base_weights += from_base
        if not allow_base_weights:
            _refuse_base_weights(spec, base_weights, base)
    source = ModelSource(spec=spec, renderer=renderer, components=components, base_weights=base_weights)
    for name in experts:
        if name in own:
            source.transformer_files[name] = bundle.expert_files(name)
        else:
            source.transformer_files[name] = bundle_weight_files(components / name)
    return source


def expert_names(renderer: RendererConfig) -> list[str]:
    names = []
    if not renderer.skip_transformer_1:
        names.append("transformer")
    if not renderer.skip_transformer_2:
        names.append("transformer_2")
    if not names:
        raise WeightsError("the renderer config skips both experts (skip_transformer_1 and skip_transformer_2)")
    return names


def bundle_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a diffusers model folder (all shards named by its index, if any)."""
    return BundleSpec(folder.parent, str(folder.parent)).expert_files(folder.name)


def index_files(index: Path) -> list[Path]:
    return BundleSpec(index.parent, str(index.parent)).index_files(index.name)


CKPT_SUFFIXES = (".safetensors", ".gguf")
EXPERT_WORDS = {"transformer": "high", "transformer_2": "low"}


def _pick_expert_file(folder: Path, files: list[Path], expert: str | None) -> list[Path]:
    """A folder of shards is one checkpoint; a folder of whole files (``…high_noise….safetensors`` and
    ``…low_noise…``, or GGUF files) holds one file per expert, chosen by name."""
    gguf = [f for f in files if f.suffix == ".gguf"]
    if len(files) == 1 or (not gguf and expert is None):
        return files
    word = EXPERT_WORDS.get(expert or "", "")
    chosen = [f for f in files if word and word in f.name.lower()]
    if len(chosen) == 1:
        return chosen
    if not gguf and not chosen and all(_is_shard(f) for f in files):
        return files
    names = ", ".join(f.name for f in files[:4])
    raise WeightsError(
        f"checkpoint directory {folder} holds several weight files ({names}); pass the {word or 'expert'} file itself"
    )


def _is_shard(path: Path) -> bool:
    return "-of-" in path.stem


def checkpoint_files(spec: str | os.PathLike, expert: str | None = None) -> list[Path]:
    """Files of one expert's checkpoint: a shard directory, an index json, one ``.safetensors`` / ``.gguf``
    file, a folder holding one file per expert, or a repo id."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        if looks_like_repo_id(spec):
            path = fetch_repo(spec, allow_patterns=["*.safetensors", "*.json", "*.gguf"])
        else:
            raise WeightsError(
                f"checkpoint {spec} does not exist (expected a directory, .safetensors, .gguf, index or repo id)"
            )
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if indexes:
            return index_files(indexes[0])
        files = sorted(f for f in path.iterdir() if f.suffix in CKPT_SUFFIXES and f.is_file())
        if not files:
            raise WeightsError(f"checkpoint directory {path} holds no .safetensors or .gguf files")
        return _pick_expert_file(path, files, expert)
    if path.name.endswith(".index.json"):
        return index_files(path)
    if path.suffix in CKPT_SUFFIXES:
        return [path]
    raise WeightsError(f"checkpoint {path} is not a .safetensors or .gguf file, an index json or a directory")


EXPERT_INT_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "ffn_dim", "text_dim")
_BLOCK = re.compile(r"blocks\.(\d+)\.")


def _expert_keys(entries: dict[str, TensorEntry], expert: str, separate: bool) -> dict[str, TensorEntry]:
    """The checkpoint's keys for ``expert`` with EMA and expert prefixes stripped (shape checks only)."""
    if not separate:
        return entries
    other = "transformer_2" if expert == "transformer" else "transformer"
    other_prefixes = tuple(p for p in EXPERT_PREFIXES[other] if p)
    bare: dict[str, TensorEntry] = {}
    for key, entry in entries.items():
        rest = key[4:] if key.startswith("ema.") else key
        if rest.startswith(other_prefixes):
            continue
        prefix = next((p for p in EXPERT_PREFIXES[expert] if p and rest.startswith(p)), "")
        rest = rest[len(prefix) :]
        rest = next((rest[len(p) :] for p in ORIGINAL_PREFIXES if rest.startswith(p)), rest)
        bare.setdefault(rest, entry)
    return bare


def check_expert_config(
    config: dict, entries: dict[str, TensorEntry], *, expert: str, where: Path, separate: bool = False
) -> None:
    """Check the expert's config against the weights' headers before any module is built.

    A config whose layer count or widths disagree with the tensors on disk (or are not positive
    integers) fails in one line here, instead of building a model of that size first.
    """
    for key in EXPERT_INT_KEYS:
        value = config.get(key)
        if key in config and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise WeightsError(f"{expert} config in {where}: {key} must be a positive integer, got {value!r}")
    keys = _expert_keys(entries, expert, separate)
    blocks = {int(m.group(1)) for key in keys if (m := _BLOCK.match(key))}
    layers = config.get("num_layers")
    held = max(blocks, default=-1) + 1
    if layers is not None and layers > held:
        raise WeightsError(
            f"{expert} config in {where} says num_layers {layers} but the weights hold {held} blocks; "
            "the config does not belong to these weights"
        )
    heads, head_dim = config.get("num_attention_heads"), config.get("attention_head_dim")
    expected = {
        "patch_embedding.weight": {0: heads * head_dim if heads and head_dim else None, 1: config.get("in_channels")},
        "blocks.0.ffn.net.0.proj.weight": {0: config.get("ffn_dim")},
        "condition_embedder.text_embedder.linear_1.weight": {1: config.get("text_dim")},
    }
    for name, dims in expected.items():
        entry = keys.get(name)
        for axis, size in dims.items():
            if entry is None or size is None or len(entry.shape) <= axis:
                continue
            if entry.shape[axis] != size:
                raise WeightsError(
                    f"{expert} config in {where} does not fit the weights: {name} has shape {tuple(entry.shape)}, "
                    f"the config implies size {size} on axis {axis}"
                )


def refuse_quantize_gguf(quantize: str, files: list[Path]) -> None:
    gguf = [f.name for f in files if f.suffix == ".gguf"]
    if quantize != "none" and gguf:
        raise WeightsError(
            f"--quantize {quantize} does not apply to the GGUF checkpoint {gguf[0]} (GGUF weights keep their own "
            "quantisation); drop --quantize, or pass a safetensors checkpoint to quantise"
        )


def load_expert(
    config_dir: Path,
    files: list[Path],
    *,
    expert: str,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    separate: bool = False,
    quantize: str = "none",
) -> BerniniTransformer:
    """Build an expert from ``config_dir/config.json`` on the meta device and stream its weights in.

    ``files`` are safetensors shards in any layout of :mod:`bernini.loaders.layouts`, or one GGUF file; the config is
    checked against the shards' headers before the model is built."""
    quantize = quant.check_mode(quantize)
    if len(files) == 1 and files[0].suffix == ".gguf":
        from .gguf_file import load_gguf_expert

        refuse_quantize_gguf(quantize, files)

        model = empty_expert(config_dir)
        load_gguf_expert(model, files[0], expert=expert, dtype=dtype)
        return model.to(device).eval().requires_grad_(False)
    config = read_json(config_dir / "config.json")
    entries: dict[str, TensorEntry] = {}
    for path in files:
        for key, entry in read_header(path).items():
            entries.setdefault(key, entry)
    check_expert_config(config, entries, expert=expert, where=config_dir / "config.json", separate=separate)
    model = empty_expert(config_dir, config)
    model_keys = set(model.state_dict().keys())
    match = match_layout(entries, model_keys, expert, separate)
    where = files[0].parent if len(files) > 1 else files[0]
    missing = sorted(model_keys - match.mapping.keys())
    if missing:
        raise WeightsError(f"{expert} weights in {where} are missing {len(missing)} tensors: {few(missing)}")
    if match.unexpected:
        count = len(match.unexpected)
        raise WeightsError(f"{expert} weights in {where} have {count} unexpected tensors: {few(match.unexpected)}")
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    scales = {name: read_tensor(s.scale) for name, s in match.mapping.items() if s.scale is not None}
    by_entry = {stored.entry: name for name, stored in match.mapping.items()}
    for entry, tensor in iter_tensors(list(by_entry)):
        name = by_entry[entry]
        expected = shapes.get(name)
        if expected is not None and tuple(tensor.shape) != expected:
            raise WeightsError(
                f"{expert} tensor {name} in {entry.path.name} has shape {tuple(tensor.shape)}, expected {expected}"
            )
        place_weight(model, name, tensor, dtype=dtype, quantize=quantize, scale=scales.pop(name, None))
        del tensor
    model.to(device)
    return model.eval().requires_grad_(False)


def checkpoint_flags(
    renderer: RendererConfig, high_noise_ckpt: str | os.PathLike | None, low_noise_ckpt: str | os.PathLike | None
) -> dict[str, str | os.PathLike]:
    """The separate checkpoint of each expert; they win over the experts of ``--config``."""
    given = {k: v for k, v in (("transformer", high_noise_ckpt), ("transformer_2", low_noise_ckpt)) if v is not None}
    if not given:
        return {}
    names = expert_names(renderer)
    if len(names) == 2 and len(given) == 1:
        raise WeightsError("pass --high_noise_ckpt and --low_noise_ckpt together (or neither)")
    if len(names) == 1:
        if len(given) == 2:
            raise WeightsError("this model has a single expert: pass one checkpoint (--high_noise_ckpt)")
        return {names[0]: next(iter(given.values()))}
    return given


def load_components(
    source: ModelSource,
    dtype: torch.dtype,
    high_noise_ckpt: str | os.PathLike | None = None,
    low_noise_ckpt: str | os.PathLike | None = None,
    quantize: str = "none",
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, object]:
    """Every module of the pipeline on the CPU: experts (streamed, or from separate checkpoints), UMT5, VAE.

    ``quantize`` (``none``, ``fp8``, ``int8``) quantises dense expert weights as they load;
    ``on_progress("load", done, total)`` hears each module as it is loaded.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import AutoTokenizer, UMT5EncoderModel

    quantize = quant.check_mode(quantize)
    source.quantize_requested = quantize
    components = source.components
    loaded: dict[str, object] = {"transformer": None, "transformer_2": None}
    separate = checkpoint_flags(source.renderer, high_noise_ckpt, low_noise_ckpt)
    experts = expert_names(source.renderer)
    total = len(experts) + 2

    def report(done: int) -> None:
        if on_progress is not None:
            on_progress("load", done, total)

    report(0)
    for name in experts:
        if name in separate:
            source.transformer_files[name] = checkpoint_files(separate[name], name)
            source.separate_checkpoints[name] = str(separate[name])
    refuse_quantize_gguf(quantize, [f for name in experts for f in source.transformer_files[name]])  # before loading
    for index, name in enumerate(experts):
        loaded[name] = load_expert(
            components / name,
            source.transformer_files[name],
            expert=name,
            dtype=dtype,
            separate=name in separate,
            quantize=quantize,
        )
        source.expert_weights[name] = quant.storage(loaded[name])
        report(index + 1)
    source.quantize = quant.effective_mode(quantize, list(source.expert_weights.values()))
    try:
        loaded["tokenizer"] = AutoTokenizer.from_pretrained(components / "tokenizer")
        loaded["text_encoder"] = UMT5EncoderModel.from_pretrained(components / "text_encoder", dtype=dtype).eval()
        report(total - 1)
        loaded["vae"] = AutoencoderKLWan.from_pretrained(components / "vae", torch_dtype=torch.float32).eval()
        loaded["scheduler"] = UniPCMultistepScheduler.from_pretrained(components / "scheduler")
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"cannot load the bundle's components from {components}: {exc}") from None
    report(total)
    return loaded
