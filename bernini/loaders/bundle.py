"""A model bundle on disk, read once and without torch: which layout it is, its configs and its weight files.

:meth:`BundleSpec.read` reads the root's ``config.json`` and ``model_index.json`` once; every other JSON file
of the bundle (an expert's, the text encoder's, the VAE's, a shard index) is read the first time it is asked
for and kept. Everything that used to open these files itself (the CLI's defaults, ``bernini estimate`` /
``--dry_run``, the loaders, the torchrun launcher) takes a spec instead, so one run reads each file once.

Problems are kept, not raised, until a caller asks for the part they concern, so a broken ``config.json``
fails where it failed before (the loader's one-line error) and a probe (:attr:`BundleSpec.is_full`) stays
a probe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import WeightsError
from ..jsontext import loads_json
from .config import MODEL_TYPE as RENDERER_MODEL_TYPE
from .config import RendererConfig

FULL_MODEL_TYPE = "bernini"  # bernini.loaders.full_config.MODEL_TYPE (kept here: full_config imports this module)
COMPONENT_DIRS = ("tokenizer", "text_encoder", "vae")


def _read(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON object at ``path`` (None when absent), or the one-line problem :func:`bernini.loaders.config.read_json`
    would raise."""
    try:
        data = loads_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{path} is not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"{path} must hold a JSON object"
    return data, None


@dataclass(frozen=True)
class BundleSpec:
    """One bundle directory as read from disk: ``config.json`` and ``model_index.json`` parsed (or the problem
    with them), ``spec`` as the user named it (a path or its ``config.json``; version detection reads it)."""

    root: Path
    spec: str
    config: dict[str, Any] | None = None
    config_problem: str | None = None
    model_index: dict[str, Any] | None = None
    model_index_problem: str | None = None
    _files: dict[str, tuple[dict[str, Any] | None, str | None]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def read(cls, path: str | os.PathLike, spec: str | None = None) -> BundleSpec:
        """The bundle at ``path`` (a directory, or a file in it such as its ``config.json``)."""
        root = Path(path).expanduser()
        root = root.parent if root.is_file() else root
        config, config_problem = _read(root / "config.json") if root.is_dir() else (None, None)
        index, index_problem = _read(root / "model_index.json") if root.is_dir() else (None, None)
        return cls(root, str(path) if spec is None else spec, config, config_problem, index, index_problem)

    @classmethod
    def find(cls, spec: str | os.PathLike | BundleSpec | None) -> BundleSpec | None:
        """A spec passes through; a local path is read; None or a repo id (nothing local) gives None."""
        if spec is None or isinstance(spec, BundleSpec):
            return spec
        return cls.read(spec) if Path(spec).expanduser().exists() else None

    # the layout

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type") if self.config is not None else None

    @property
    def is_full(self) -> bool:
        """A full Bernini bundle (``model_type: bernini``); an unreadable config is not one."""
        return self.model_type == FULL_MODEL_TYPE

    @property
    def is_bernini(self) -> bool:
        """A Bernini-R renderer config (its experts are Bernini-R weights); an unreadable config is an error."""
        self._check_config()
        return self.model_type == RENDERER_MODEL_TYPE

    @property
    def layout(self) -> str | None:
        """``full``, ``renderer`` (a Bernini-R bundle or config directory), ``wan22`` (a plain Wan2.2 diffusers
        bundle) or None."""
        if self.is_full:
            return "full"
        if self.config is not None and self.model_type == RENDERER_MODEL_TYPE:
            return "renderer"
        return "wan22" if self.model_index is not None else None

    @property
    def has_components(self) -> bool:
        return all((self.root / name).is_dir() for name in COMPONENT_DIRS)

    def _check_config(self) -> None:
        if self.config_problem:
            raise WeightsError(self.config_problem)

    # the parsed configs

    def renderer_config(self) -> RendererConfig | None:
        """The renderer config of a Bernini-R bundle, derived from ``model_index.json`` for plain Wan bundles (a
        full bundle's is :meth:`full_renderer_config`); None for anything else."""
        config_file = self.root / "config.json"
        self._check_config()
        if self.config is not None and self.model_type == RENDERER_MODEL_TYPE:
            return RendererConfig.from_dict(self.config, str(config_file))
        if self.model_index_problem:
            raise WeightsError(self.model_index_problem)
        if self.model_index is not None:
            index = self.model_index
            ratio = index.get("boundary_ratio")
            has_second = isinstance(index.get("transformer_2"), list) and index["transformer_2"][0] is not None
            return RendererConfig(
                wan22_base=str(self.root),
                skip_transformer_2=not has_second,
                switch_dit_boundary=float(ratio) if (ratio is not None and has_second) else 0.0,
            )
        return None

    def full_renderer_config(self) -> RendererConfig:
        from .full_config import renderer_config_from

        return renderer_config_from(self._full_config(), self.root / "config.json", self.root)

    def version(self, location: str | None = None, override: str | None = None) -> str:
        """Which full release (v1 / v2): ``override``, else ``bernini_version``, else the location's name."""
        from ..sampling.full_presets import detect_version
        from .full_config import check_version

        if override is not None:
            return check_version(override)
        return detect_version(self._full_config(), self.spec if location is None else location)

    def planner_widths(self, hidden: int) -> tuple[dict[str, int], dict[str, int]]:
        from .full_config import planner_widths

        return planner_widths(self._full_config(), hidden, self.root / "config.json")

    def _full_config(self) -> dict[str, Any]:
        self._check_config()
        if self.config is None:
            raise WeightsError(f"{self.root / 'config.json'} does not exist")
        return self.config

    def json(self, relative: str) -> dict[str, Any]:
        """Another JSON object of the bundle (``transformer/config.json``, ``mllm/config.json``, an index), read
        the first time it is asked for; a missing or broken file raises as :func:`bernini.loaders.config.read_json`."""
        if relative not in self._files:
            self._files[relative] = _read(self.root / relative)
        data, problem = self._files[relative]
        if problem:
            raise WeightsError(problem)
        if data is None:
            raise WeightsError(f"{self.root / relative} does not exist")
        return data

    def module_config(self, folder: str) -> dict[str, Any] | None:
        """``folder/config.json`` without the keys libraries add (``_class_name``, ``architectures`` …), or None
        when there is none."""
        if not (self.root / folder / "config.json").is_file():
            return None
        data = self.json(f"{folder}/config.json")
        added = ("architectures", "transformers_version")
        return {k: v for k, v in data.items() if not k.startswith("_") and k not in added}

    # the weight files

    def expert_files(self, folder: str) -> list[Path]:
        """The safetensors files of a diffusers model folder (all shards named by its index, if any)."""
        directory = self.root / folder
        if not directory.is_dir():
            raise WeightsError(f"{directory} is missing")
        indexes = sorted(directory.glob("*.safetensors.index.json"))
        if indexes:
            return self.index_files(indexes[0].relative_to(self.root).as_posix())
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            if list(directory.glob("*.bin")):
                raise WeightsError(f"{directory} holds only .bin weights; convert them to .safetensors")
            raise WeightsError(f"{directory} holds no .safetensors weights")
        return files

    def index_files(self, relative: str) -> list[Path]:
        index = self.root / relative
        weight_map = self.json(relative).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index} has no weight_map")
        files = sorted({index.parent / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"{index} names shards that are missing: {', '.join(missing[:3])}")
        return files

    def full_shards(self) -> list[Path]:
        """The full bundle's ``bernini/`` checkpoint shards (by its index when it has one)."""
        index = self.root / "bernini" / "model.safetensors.index.json"
        if index.is_file():
            weight_map = self.json("bernini/model.safetensors.index.json").get("weight_map", {})
            return sorted({self.root / "bernini" / name for name in weight_map.values()})
        return sorted((self.root / "bernini").glob("*.safetensors"))
