"""The bundle on disk is read once per run (:class:`bernini.loaders.bundle.BundleSpec`), and what it says is what the
separate readers said before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bernini.errors import WeightsError
from bernini.frontends.cli import main
from bernini.loaders.bundle import BundleSpec
from bernini.loaders.config import RendererConfig

TINY = ["--num_inference_steps", "1", "--num_frames", "5", "--height", "16", "--width", "16"]


def count_reads(monkeypatch, files: list[Path]) -> dict[Path, int]:
    """Counts of ``Path.read_text`` on ``files`` (every JSON reader of the project goes through it)."""
    counts = {f.resolve(): 0 for f in files}
    original = Path.read_text

    def counted(self: Path, *args, **kwargs):
        resolved = self.resolve()
        if resolved in counts:
            counts[resolved] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    return counts


def test_a_generate_run_reads_the_bundle_config_once(tiny_bundle, tmp_path, monkeypatch):
    counts = count_reads(monkeypatch, [tiny_bundle / "config.json", tiny_bundle / "transformer" / "config.json"])
    args = ["generate", "--config", str(tiny_bundle), "--prompt", "a fox", "--task_type", "t2v", *TINY]
    assert main([*args, "--output", str(tmp_path / "fox.mp4")]) == 0
    assert (tmp_path / "fox.mp4").stat().st_size > 0
    assert counts[(tiny_bundle / "config.json").resolve()] == 1
    assert counts[(tiny_bundle / "transformer" / "config.json").resolve()] == 1


def test_a_full_model_run_and_its_dry_run_read_the_config_once(full_bundle, tmp_path, monkeypatch):
    counts = count_reads(monkeypatch, [full_bundle / "config.json"])
    args = ["generate", "--config", str(full_bundle), "--prompt", "a fox", "--task_type", "t2v"]
    assert main([*args, "--dry_run"]) == 0
    assert counts[(full_bundle / "config.json").resolve()] == 1
    small = [
        "--num_frames",
        "9",
        "--height",
        "64",
        "--width",
        "96",
        *["--num_inference_steps", "2", "--planning_step", "2"],
    ]
    assert main([*args, *small, "--output", str(tmp_path / "fox.mp4")]) == 0
    assert counts[(full_bundle / "config.json").resolve()] == 2


def test_the_spec_says_what_the_readers_said(bundles, full_bundle):
    spec = BundleSpec.read(bundles["diffusers"])
    assert spec.layout == "renderer" and spec.is_bernini and not spec.is_full
    root_config = json.loads((bundles["diffusers"] / "config.json").read_text())
    assert spec.renderer_config() == RendererConfig.from_dict(root_config)
    assert spec.expert_files("transformer") == sorted((bundles["diffusers"] / "transformer").glob("*.safetensors"))
    assert BundleSpec.read(bundles["wan22"]).layout == "wan22"
    assert BundleSpec.read(bundles["wan22"]).renderer_config().wan22_base == str(bundles["wan22"])
    full = BundleSpec.read(full_bundle / "config.json")  # a bundle's config.json names its bundle
    assert full.root == full_bundle and full.layout == "full" and full.version() == "v1"
    assert full.version("somewhere/Bernini-Diffusers-v2") == "v2" and full.version(override="v2") == "v2"
    assert full.full_renderer_config().wan22_base == str(full_bundle)
    connector, decoder = full.planner_widths(32)
    assert connector["in_dim"] == 32 and set(decoder) == {"target_channels", "z_channels", "width"}
    assert BundleSpec.find("ByteDance/not-local") is None


def test_a_broken_config_fails_where_it_is_used_not_where_it_is_read(tmp_path):
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    spec = BundleSpec.read(tmp_path)  # reading keeps the problem
    assert not spec.is_full and spec.layout is None
    with pytest.raises(WeightsError, match="is not valid JSON"):
        spec.renderer_config()
    (tmp_path / "config.json").write_text(json.dumps([1]), encoding="utf-8")
    with pytest.raises(WeightsError, match="must hold a JSON object"):
        BundleSpec.read(tmp_path).renderer_config()
