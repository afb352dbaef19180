import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bernini.errors import WeightsError
from bernini.loaders.layouts import map_checkpoint_keys
from bernini.loaders.loading import checkpoint_files, load_expert, resolve_model
from bernini.loaders.safetensors_stream import read_header


def written_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def assert_loaded_equals(model, expected: dict[str, torch.Tensor]):
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key


@pytest.mark.parametrize("layout", ["diffusers", "wan22", "single"])
def test_bundle_layouts_load_exact_tensors(bundles, layout):
    from bernini import BerniniPipeline

    path = bundles[layout]
    base = layout == "wan22"  # a plain Wan2.2 bundle runs only when asked for on purpose
    pipe = BerniniPipeline.from_pretrained(path, device="cpu", allow_base_weights=base)
    source = resolve_model(path, allow_base_weights=base)
    assert source.base_weights == (["transformer", "transformer_2"] if base else [])
    assert_loaded_equals(pipe.transformer, written_tensors(source.components / "transformer"))
    if layout == "single":
        assert pipe.transformer_2 is None
        assert not pipe.renderer_config.two_experts
        assert pipe.make_experts().low is None
    else:
        assert pipe.renderer_config.two_experts and pipe.renderer_config.boundary_timestep == 875
        assert_loaded_equals(pipe.transformer_2, written_tensors(source.components / "transformer_2"))


def test_bundle_without_model_index_loads(bundles, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundles["diffusers"], copy)
    (copy / "model_index.json").unlink()
    source = resolve_model(copy)
    assert source.renderer.two_experts and source.components == copy


def test_separate_checkpoints_prefer_ema(bundles):
    from bernini import BerniniPipeline

    config = bundles["separate"]
    root = config.parent.parent
    high, low = root / "Bernini-R" / "bernini_renderer_high", root / "Bernini-R" / "bernini_renderer_low"
    pipe = BerniniPipeline.from_pretrained(config, device="cpu", high_noise_ckpt=high, low_noise_ckpt=low)
    for model, folder, prefix in (
        (pipe.transformer, high, "ema.diff_dec.transformer."),
        (pipe.transformer_2, low, "ema.diff_dec.transformer_2."),
    ):
        tensors = written_tensors(folder)
        ema = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        assert_loaded_equals(model, ema)
        base = written_tensors(root / "base" / ("transformer" if "_2" not in prefix else "transformer_2"))
        assert not torch.equal(model.proj_out.weight, base["proj_out.weight"])


def test_checkpoint_spec_forms(bundles, tmp_path):
    root = bundles["separate"].parent.parent
    high = root / "Bernini-R" / "bernini_renderer_high"
    index = high / "model.safetensors.index.json"
    assert checkpoint_files(high) == checkpoint_files(index)
    assert len(checkpoint_files(high)) == 2
    # one file with bare keys, and one with non-EMA prefixed keys only
    source = resolve_model(bundles["separate"], separate={"transformer", "transformer_2"})
    tensors = written_tensors(high)
    bare = {k[len("ema.diff_dec.transformer.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
    save_file(bare, str(tmp_path / "bare.safetensors"))
    model = load_expert(
        source.components / "transformer",
        checkpoint_files(tmp_path / "bare.safetensors"),
        expert="transformer",
        dtype=torch.float32,
        separate=True,
    )
    assert_loaded_equals(model, bare)
    plain = {k: v for k, v in tensors.items() if not k.startswith("ema.")}
    save_file(plain, str(tmp_path / "plain.safetensors"))
    model = load_expert(
        source.components / "transformer",
        [tmp_path / "plain.safetensors"],
        expert="transformer",
        dtype=torch.float32,
        separate=True,
    )
    assert_loaded_equals(model, {k[len("diff_dec.transformer.") :]: v for k, v in plain.items()})


def test_key_mapping_priorities():
    entries = {
        k: k
        for k in (
            "transformer.a",
            "ema.transformer.a",
            "diff_dec.transformer.b",
            "b",
            "diff_dec.transformer_2.a",
            "junk.c",
        )
    }
    mapping, unexpected = map_checkpoint_keys(entries, {"a", "b"}, "transformer")
    assert mapping == {"a": "ema.transformer.a", "b": "diff_dec.transformer.b"}
    assert unexpected == ["junk.c"]


def test_bf16_load_casts_and_keeps_fp32_modules(bundles):
    source = resolve_model(bundles["diffusers"])
    model = load_expert(
        source.components / "transformer",
        source.transformer_files["transformer"],
        expert="transformer",
        dtype=torch.bfloat16,
    )
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.blocks[0].norm2.weight.dtype == torch.float32
    assert model.scale_shift_table.dtype == torch.float32
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    written = written_tensors(source.components / "transformer")
    assert torch.equal(model.proj_out.weight, written["proj_out.weight"].bfloat16())


def _corrupt_copy(bundle: Path, tmp_path: Path, mutate) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    shard = sorted((copy / "transformer").glob("*.safetensors"))[0]
    mutate(shard)
    return copy


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a safetensors file at all")


def _drop_tensor(path: Path) -> None:
    tensors = load_file(str(path))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(path))


def _extra_tensor(path: Path) -> None:
    tensors = load_file(str(path))
    tensors["blocks.99.attn1.to_q.weight"] = torch.zeros(2)
    save_file(tensors, str(path))


def _wrong_shape(path: Path) -> None:
    tensors = load_file(str(path))
    key = sorted(k for k in tensors if k.endswith("weight"))[0]
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, str(path))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_truncate, "truncated"),
        (_garbage, "safetensors"),
        (_drop_tensor, "missing"),
        (_extra_tensor, "unexpected tensors: blocks.99"),
        (_wrong_shape, "has shape"),
    ],
)
def test_bad_weights_give_one_line_errors(bundles, tmp_path, mutate, expected):
    copy = _corrupt_copy(bundles["diffusers"], tmp_path, mutate)
    from bernini import BerniniPipeline

    with pytest.raises(WeightsError) as info:
        BerniniPipeline.from_pretrained(copy, device="cpu")
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_cli_reports_corrupt_weights_without_traceback(bundles, tmp_path):
    copy = _corrupt_copy(bundles["diffusers"], tmp_path, _truncate)
    output = tmp_path / "out.mp4"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bernini",
            "generate",
            "--config",
            str(copy),
            "--prompt",
            "x",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "truncated" in lines[0]
    assert "Traceback" not in proc.stderr and not output.exists()


def test_not_a_bundle_and_missing_paths(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "something_else"}))
    with pytest.raises(WeightsError, match="not a Bernini-R or Wan2.2 diffusers bundle"):
        resolve_model(tmp_path)
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_model(tmp_path / "nope" / "deeper")
    with pytest.raises(WeightsError, match="does not exist"):
        checkpoint_files(tmp_path / "missing.safetensors")


def test_config_dir_takes_components_from_wan22_base(bundles, tmp_path):
    base = bundles["separate"].parent.parent / "base"
    config_dir = tmp_path / "configs" / "bernini_renderer_wan22"
    config_dir.mkdir(parents=True)
    (config_dir / "config.json").write_text(json.dumps({"model_type": "bernini_renderer", "wan22_base": str(base)}))
    source = resolve_model(config_dir, allow_base_weights=True)
    assert source.components == base and set(source.transformer_files) == {"transformer", "transformer_2"}


def test_offline_repo_id_gives_actionable_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = "from bernini.loaders.loading import resolve_model; resolve_model('ByteDance/Bernini-R-Diffusers')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ByteDance/Bernini-R-Diffusers" in last and "--config" in last


def test_header_reader_matches_safetensors(bundles):
    source = resolve_model(bundles["diffusers"])
    shard = source.transformer_files["transformer"][0]
    entries = read_header(shard)
    tensors = load_file(str(shard))
    assert set(entries) == set(tensors)
    for key, entry in entries.items():
        assert entry.shape == tuple(tensors[key].shape) and entry.dtype == tensors[key].dtype


def _fake_hub_cache(hf_home: Path, repo_id: str, content: Path) -> None:
    """The on-disk layout huggingface_hub uses for a downloaded snapshot (no network involved)."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(content, repo / "snapshots" / commit)


def test_repo_id_resolves_through_the_hugging_face_cache(bundles, tmp_path):
    hf_home = tmp_path / "hf"
    _fake_hub_cache(hf_home, "ByteDance/Bernini-R-Diffusers", bundles["diffusers"])
    root = bundles["separate"].parent.parent
    _fake_hub_cache(hf_home, "someone/bernini-high", root / "Bernini-R" / "bernini_renderer_high")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    code = (
        "from bernini.loaders.loading import checkpoint_files, resolve_model\n"
        "s = resolve_model('ByteDance/Bernini-R-Diffusers')\n"
        "print(s.components.name, s.renderer.two_experts, len(checkpoint_files('someone/bernini-high')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0123456789abcdef0123456789abcdef01234567", "True", "2"]


# ------------------------------------------------------------- never the wrong model (issue 14, item 1)


def test_plain_wan22_bundle_is_refused_without_opt_in(bundles, one_line_error):
    from bernini import BerniniPipeline

    message = one_line_error(BerniniPipeline.from_pretrained, bundles["wan22"], device="cpu", match="no Bernini-R")
    for needed in ("transformer, transformer_2", "--high_noise_ckpt", "--low_noise_ckpt", "--allow_base_weights"):
        assert needed in message


def test_config_dir_without_checkpoints_is_refused(bundles, one_line_error):
    message = one_line_error(resolve_model, bundles["separate"], match="no Bernini-R weights")
    assert "base" in message and "--high_noise_ckpt DIR --low_noise_ckpt DIR" in message
    # with one checkpoint, only the other expert is named
    message = one_line_error(resolve_model, bundles["separate"], separate={"transformer"}, match="transformer_2")
    assert "--low_noise_ckpt" in message and "--high_noise_ckpt" not in message
    assert resolve_model(bundles["separate"], separate={"transformer", "transformer_2"}).base_weights == []


def test_default_config_is_refused_before_fetching_the_base(tmp_path):
    """From the repository root, ``bernini generate`` would take configs/bernini_renderer_wan22 + the Hub base."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "o.mp4"
    command = [sys.executable, "-m", "bernini", "generate", "--prompt", "a cat", "--output", str(out)]
    proc = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "configs/bernini_renderer_wan22 has no Bernini-R weights" in lines[0]
    assert "Wan-AI/Wan2.2-T2V-A14B-Diffusers" in lines[0] and "--high_noise_ckpt" in lines[0]
    assert "cannot fetch" not in lines[0] and not out.exists()


def test_opted_in_base_weights_run_and_are_recorded(bundles, tmp_path):
    from bernini.frontends.cli import main

    out = tmp_path / "o.mp4"
    small = ["--num_inference_steps", "1", "--num_frames", "5", "--height", "16", "--width", "16"]
    args = ["generate", "--config", str(bundles["wan22"]), "--prompt", "a cat", *small, "--output", str(out)]
    assert main(args) == 2 and not out.exists()
    assert main([*args, "--allow_base_weights"]) == 0
    record = json.loads(out.with_name("o.mp4.json").read_text())
    assert record["model"]["base_weights"] == ["transformer", "transformer_2"]


def test_missing_component_is_fetched_only_after_a_note(bundles, tmp_path):
    """A Bernini bundle without tokenizer/text_encoder/vae takes them from its wan22_base repo (a faked cache)."""
    hf_home = tmp_path / "hf"
    _fake_hub_cache(hf_home, "someone/wan-base", bundles["diffusers"])
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("transformer", "transformer_2", "scheduler"):
        (bundle / name).symlink_to(bundles["diffusers"] / name)
    config = json.loads((bundles["diffusers"] / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, "wan22_base": "someone/wan-base"}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    code = (
        "from bernini.loaders.loading import resolve_model\n"
        f"s = resolve_model({str(bundle)!r}, note=lambda line: print('NOTE', line))\n"
        "print('RESOLVED', s.components.name == '0123456789abcdef0123456789abcdef01234567', s.base_weights)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("NOTE note:") and "someone/wan-base" in lines[0] and "tokenizer" in lines[0]
    assert lines[1] == "RESOLVED True []"
    # a local wan22_base needs no note
    notes: list[str] = []
    local = json.loads((bundle / "config.json").read_text()) | {"wan22_base": str(bundles["diffusers"])}
    (bundle / "config.json").write_text(json.dumps(local))
    assert resolve_model(bundle, note=notes.append).components == bundles["diffusers"] and notes == []


# ------------------------------------------------ config values and layer counts (issue 14, item 11)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("switch_dit_boundary", "0.875", "number from 0 to 1"),
        ("switch_dit_boundary", 7, "number from 0 to 1"),
        ("skip_transformer_2", "false", "true or false"),
        ("max_sequence_length", 10**9, "integer from 1 to 4096"),
        ("max_trained_src_id", 2.5, "integer from 1 to 1024"),
        ("wan22_base", 3, "path or a Hugging Face repo id"),
        ("use_unipc", None, "true or false"),
    ],
)
def test_bundle_config_values_are_checked(tmp_path, key, value, match, one_line_error):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bernini_renderer", key: value}))
    message = one_line_error(resolve_model, tmp_path, match=match)
    assert key in message and "config.json" in message


def test_deeply_nested_config_is_one_line(tmp_path, one_line_error):
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(resolve_model, tmp_path, match="levels deep")


def _bundle_with_expert_config(bundle: Path, tmp_path: Path, **changes) -> Path:
    copy = tmp_path / "bundle"
    copy.mkdir()
    for item in bundle.iterdir():
        if item.name != "transformer":
            (copy / item.name).symlink_to(item)
    (copy / "transformer").mkdir()
    for item in (bundle / "transformer").iterdir():
        (copy / "transformer" / item.name).symlink_to(item)
    config = json.loads((bundle / "transformer" / "config.json").read_text()) | changes
    (copy / "transformer" / "config.json").unlink()
    (copy / "transformer" / "config.json").write_text(json.dumps(config))
    return copy


def test_huge_layer_count_fails_before_building(bundles, tmp_path, one_line_error):
    import tracemalloc

    from bernini import BerniniPipeline

    copy = _bundle_with_expert_config(bundles["diffusers"], tmp_path, num_layers=10**8)
    tracemalloc.start()
    try:
        message = one_line_error(BerniniPipeline.from_pretrained, copy, device="cpu", match="num_layers 100000000")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "hold 2 blocks" in message and peak < 64 * 2**20, peak  # nothing of that size was built


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"attention_head_dim": 32}, "patch_embedding.weight"),
        ({"ffn_dim": 96}, "blocks.0.ffn.net.0.proj.weight"),
        ({"text_dim": 48}, "text_embedder"),
        ({"num_attention_heads": "4"}, "positive integer"),
        ({"num_layers": 0}, "positive integer"),
    ],
)
def test_expert_config_must_fit_the_weights(bundles, tmp_path, changes, match, one_line_error):
    from bernini import BerniniPipeline

    copy = _bundle_with_expert_config(bundles["diffusers"], tmp_path, **changes)
    one_line_error(BerniniPipeline.from_pretrained, copy, device="cpu", match=match)
