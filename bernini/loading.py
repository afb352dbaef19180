"""Find and load Bernini-R weights in every published layout.

* a diffusers-format bundle directory (``config.json`` of ``model_type: bernini_renderer``, with or
  without ``model_index.json``) or a plain Wan2.2-T2V-A14B diffusers bundle;
* a Hugging Face repo id of such a bundle, fetched into the normal cache;
* a config-only directory (``configs/bernini_renderer_wan22``) whose ``wan22_base`` supplies the parts;
* separate high/low-noise checkpoints (a shard directory, an ``*.index.json``, one ``.safetensors``
  file or a repo id) with ``[ema.]diff_dec.transformer[_2].`` prefixes or bare keys, EMA preferred;
* the single-expert 1.3B variant (``skip_transformer_2``).

Expert weights stream from disk one tensor at a time and are cast on the fly (fp32-kept modules stay
fp32), so a bf16 load never holds the fp32 model in RAM.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import DEFAULT_REPO_ID, RendererConfig, read_json, renderer_config_for
from .errors import WeightsError
from .safetensors_stream import TensorEntry, iter_tensors, read_header
from .transformer import BerniniTransformer

logger = logging.getLogger(__name__)

COMPONENT_DIRS = ("tokenizer", "text_encoder", "vae")
EXPERT_PREFIXES = {
    "transformer": ("diff_dec.transformer.", "transformer.", ""),
    "transformer_2": ("diff_dec.transformer_2.", "transformer_2.", ""),
}
IGNORED_KEYS = ("norm_added_q",)


@dataclass
class ModelSource:
    """Where every part of a model comes from, resolved to local paths."""

    spec: str
    renderer: RendererConfig
    components: Path  # holds tokenizer/, text_encoder/, vae/, scheduler/ and the transformer configs
    transformer_files: dict[str, list[Path]] = field(default_factory=dict)
    separate_checkpoints: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {
            "spec": self.spec,
            "components": str(self.components),
            "renderer_config": self.renderer.to_dict(),
            "transformer_files": {k: [str(p) for p in v] for k, v in self.transformer_files.items()},
            "separate_checkpoints": dict(self.separate_checkpoints),
        }


def _looks_like_repo_id(spec: str) -> bool:
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
    if _looks_like_repo_id(spec):
        return fetch_repo(spec)
    raise WeightsError(f"{spec} does not exist (expected a bundle directory or a Hugging Face repo id)")


def _has_components(path: Path) -> bool:
    return all((path / name).is_dir() for name in COMPONENT_DIRS)


def resolve_model(spec: str | os.PathLike | None = None) -> ModelSource:
    """Resolve ``--config`` / ``--model`` to local directories without loading anything."""
    spec = str(spec) if spec is not None else DEFAULT_REPO_ID
    root = _local_or_fetch(spec)
    if root.is_file():
        if root.suffix != ".json":
            raise WeightsError(f"{root} is a file; pass the bundle directory (or its config.json)")
        root = root.parent
    renderer = renderer_config_for(root)
    if renderer is None:
        raise WeightsError(
            f"{root} is not a Bernini-R or Wan2.2 diffusers bundle: it has neither a config.json with "
            "model_type 'bernini_renderer' nor a model_index.json"
        )
    components = root
    if not _has_components(root):
        base = renderer.wan22_base
        if not base or Path(base).expanduser().resolve() == root.resolve():
            missing = [n for n in COMPONENT_DIRS if not (root / n).is_dir()]
            raise WeightsError(f"{root} lacks {', '.join(missing)} and names no other wan22_base to take them from")
        components = _local_or_fetch(base)
        if not _has_components(components):
            missing = [n for n in COMPONENT_DIRS if not (components / n).is_dir()]
            raise WeightsError(f"wan22_base {base} lacks {', '.join(missing)}")
    source = ModelSource(spec=spec, renderer=renderer, components=components)
    for name in expert_names(renderer):
        own = root / name if (root / name / "config.json").is_file() else components / name
        source.transformer_files[name] = bundle_weight_files(own)
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
    if not folder.is_dir():
        raise WeightsError(f"{folder} is missing")
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        return index_files(indexes[0])
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if list(folder.glob("*.bin")):
            raise WeightsError(f"{folder} holds only .bin weights; convert them to .safetensors")
        raise WeightsError(f"{folder} holds no .safetensors weights")
    return files


def index_files(index: Path) -> list[Path]:
    data = read_json(index)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsError(f"{index} has no weight_map")
    files = sorted({index.parent / name for name in weight_map.values()})
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise WeightsError(f"{index} names shards that are missing: {', '.join(missing[:3])}")
    return files


def checkpoint_files(spec: str | os.PathLike) -> list[Path]:
    """Files of a separate expert checkpoint: a shard directory, an index json, one file, or a repo id."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        if _looks_like_repo_id(spec):
            path = fetch_repo(spec, allow_patterns=["*.safetensors", "*.json"])
        else:
            raise WeightsError(
                f"checkpoint {spec} does not exist (expected a directory, .safetensors, index or repo id)"
            )
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if indexes:
            return index_files(indexes[0])
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise WeightsError(f"checkpoint directory {path} holds no .safetensors files")
        return files
    if path.name.endswith(".index.json"):
        return index_files(path)
    if path.suffix == ".safetensors":
        return [path]
    raise WeightsError(f"checkpoint {path} is not a .safetensors file, an index json or a directory")


def _keep_fp32(name: str, patterns: Iterable[str]) -> bool:
    parts = name.split(".")
    return any(p in parts for p in patterns)


def map_checkpoint_keys(
    entries: dict[str, TensorEntry], model_keys: set[str], expert: str
) -> tuple[dict[str, TensorEntry], list[str]]:
    """Map checkpoint keys to model keys for one expert, preferring EMA copies and the earliest prefix.

    Returns the mapping and the checkpoint keys that map to nothing (keys of the other expert excluded).
    """
    prefixes = EXPERT_PREFIXES[expert]
    other = "transformer_2" if expert == "transformer" else "transformer"
    other_prefixes = tuple(p for p in EXPERT_PREFIXES[other] if p)
    best: dict[str, tuple[tuple[int, int], TensorEntry]] = {}
    unexpected = []
    for key, entry in entries.items():
        ema = key.startswith("ema.")
        rest = key[4:] if ema else key
        matched = False
        for rank, prefix in enumerate(prefixes):
            if rest.startswith(prefix) and rest[len(prefix) :] in model_keys:
                bare = rest[len(prefix) :]
                priority = (0 if ema else 1, rank)
                if bare not in best or priority < best[bare][0]:
                    best[bare] = (priority, entry)
                matched = True
                break
        if not matched and not rest.startswith(other_prefixes) and not any(i in key for i in IGNORED_KEYS):
            unexpected.append(key)
    return {k: v[1] for k, v in best.items()}, unexpected


def _few(names: list[str], count: int = 3) -> str:
    shown = ", ".join(sorted(names)[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")


def load_expert(
    config_dir: Path,
    files: list[Path],
    *,
    expert: str,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    separate: bool = False,
) -> BerniniTransformer:
    """Build an expert from ``config_dir/config.json`` on the meta device and stream its weights in."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    config = read_json(config_dir / "config.json")
    with init_empty_weights():
        model = BerniniTransformer.from_config(config)
    model_keys = set(model.state_dict().keys())
    entries: dict[str, TensorEntry] = {}
    for path in files:
        for key, entry in read_header(path).items():
            entries.setdefault(key, entry)
    if separate:
        mapping, unexpected = map_checkpoint_keys(entries, model_keys, expert)
    else:
        mapping = {k: e for k, e in entries.items() if k in model_keys}
        unexpected = [k for k in entries if k not in model_keys and not any(i in k for i in IGNORED_KEYS)]
    where = files[0].parent if len(files) > 1 else files[0]
    missing = sorted(model_keys - mapping.keys())
    if missing:
        raise WeightsError(f"{expert} weights in {where} are missing {len(missing)} tensors: {_few(missing)}")
    if unexpected:
        raise WeightsError(f"{expert} weights in {where} have {len(unexpected)} unexpected tensors: {_few(unexpected)}")
    keep = tuple(model._keep_in_fp32_modules or ())
    params = dict(model.named_parameters())
    by_entry = {entry: name for name, entry in mapping.items()}
    for entry, tensor in iter_tensors(list(mapping.values())):
        name = by_entry[entry]
        expected = tuple(params[name].shape) if name in params else None
        if expected is not None and tuple(tensor.shape) != expected:
            raise WeightsError(
                f"{expert} tensor {name} in {entry.path.name} has shape {tuple(tensor.shape)}, expected {expected}"
            )
        target = torch.float32 if _keep_fp32(name, keep) else dtype
        if tensor.is_floating_point():
            tensor = tensor.to(target)
        set_module_tensor_to_device(model, name, device, value=tensor, dtype=tensor.dtype)
        del tensor
    model.to(device)
    return model.eval().requires_grad_(False)


def load_components(
    source: ModelSource,
    dtype: torch.dtype,
    high_noise_ckpt: str | os.PathLike | None = None,
    low_noise_ckpt: str | os.PathLike | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, object]:
    """Every module of the pipeline on the CPU: experts (streamed, or from separate checkpoints), UMT5, VAE.

    ``on_progress("load", done, total)`` hears each module as it is loaded.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import AutoTokenizer, UMT5EncoderModel

    if (high_noise_ckpt is None) != (low_noise_ckpt is None):
        raise WeightsError("pass --high_noise_ckpt and --low_noise_ckpt together (or neither)")
    components = source.components
    loaded: dict[str, object] = {"transformer": None, "transformer_2": None}
    separate = {"transformer": high_noise_ckpt, "transformer_2": low_noise_ckpt}
    experts = expert_names(source.renderer)
    total = len(experts) + 2

    def report(done: int) -> None:
        if on_progress is not None:
            on_progress("load", done, total)

    report(0)
    for index, name in enumerate(experts):
        config_dir = components / name
        if separate[name] is not None:
            files = checkpoint_files(separate[name])
            source.transformer_files[name] = files
            source.separate_checkpoints[name] = str(separate[name])
            loaded[name] = load_expert(config_dir, files, expert=name, dtype=dtype, separate=True)
        else:
            loaded[name] = load_expert(config_dir, source.transformer_files[name], expert=name, dtype=dtype)
        report(index + 1)
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
