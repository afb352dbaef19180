"""``bernini generate --replay OUTPUT.json`` reproduces a run from its sidecar, frame for frame."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_enhancer import server, text  # noqa: F401 - the fixture is used by name

from bernini.frontends.cli import main
from bernini.io.output import write_video
from bernini.record import RunPaths, RunRecord

SMALL = ["--num_frames", "5", "--height", "32", "--width", "48", "--num_inference_steps", "2"]


RUN_KEYS = ["bernini_version", "model", "device", "dtype", "attention_backend", "request", "resolved"]
RUN_KEYS += ["prompt_enhancer", "adjustments", "timings"]


def clip(path: Path) -> Path:
    frames = (np.arange(9)[:, None, None, None] * 25 + np.zeros((9, 32, 48, 3))).astype(np.uint8)
    frames[:, 8:20, 10:30] = (200, 30, 30)
    return write_video(path, frames, fps=16)


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_sidecar_records_provenance_and_replay_is_byte_identical_from_another_folder(
    tiny_bundle, tmp_path, monkeypatch, capsys
):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    clip(work / "src.mp4")
    monkeypatch.chdir(work)
    args = ["generate", "--config", str(tiny_bundle), "--video", "src.mp4", "--task_type", "v2v"]
    args += ["--prompt", "make it red", "--seed", "123", "--output", "out/run.mp4", *SMALL]
    assert main(args) == 0, capsys.readouterr().err
    sidecar = work / "out" / "run.mp4.json"
    record = read(sidecar)
    assert record["command_line"].startswith("bernini generate --config") and "--seed 123" in record["command_line"]
    assert record["created"].endswith("+00:00") and record["versions"]["torch"] and record["versions"]["diffusers"]
    assert record["parallel"] == {"world": 1}
    assert record["paths"]["video"] == [{"given": "src.mp4", "absolute": str(work / "src.mp4")}]
    assert record["paths"]["output"] == {"given": "out/run.mp4", "absolute": str(work / "out" / "run.mp4")}
    assert record["paths"]["model"] == {"given": str(tiny_bundle), "absolute": str(tiny_bundle)}
    # the writer and --replay share one typed record: it reads the file back whole, every key in its place
    typed = RunRecord.from_json(record)
    assert typed.paths.video == record["paths"]["video"] and typed.context["parallel"] == {"world": 1}
    assert list(typed.to_json().items()) == list(record.items())
    assert list(record)[:15] == [*RUN_KEYS, "output", "fps", "created", "versions", "paths"]

    monkeypatch.chdir(elsewhere)  # the relative paths no longer resolve from here: the absolute ones are used
    assert main(["generate", "--replay", str(sidecar)]) == 0, capsys.readouterr().err
    replayed = work / "out" / "run_replay.mp4"
    assert replayed.read_bytes() == (work / "out" / "run.mp4").read_bytes()
    again = read(replayed.with_name("run_replay.mp4.json"))
    assert again["resolved"] == record["resolved"]
    assert again["replay_of"]["sidecar"] == str(sidecar)

    # The replay reads the sidecar, not the defaults: another seed there is another video.
    record["request"]["seed"] = 124
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(record), encoding="utf-8")
    assert main(["generate", "--replay", str(edited), "--output", str(tmp_path / "other.mp4")]) == 0
    assert (tmp_path / "other.mp4").read_bytes() != replayed.read_bytes()
    assert read(tmp_path / "other.mp4.json")["request"]["seed"] == 124


def test_replay_refuses_flags_that_would_change_the_run_and_bad_sidecars(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}", encoding="utf-8")
    assert main(["generate", "--replay", str(tmp_path / "x.json")]) == 2
    assert "not a bernini sidecar" in capsys.readouterr().err
    assert main(["generate", "--replay", str(tmp_path / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["generate", "--replay", str(tmp_path / "x.json"), "--prompt", "p"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --replay takes the run from its sidecar; drop --prompt"]


def run_cli(args: list[str], cwd: Path, base_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BERNINI_PE_", "OPENAI_"))}
    if base_url:
        env.update(BERNINI_PE_BASE_URL=base_url, BERNINI_PE_API_KEY="sk-replay-test", BERNINI_PE_MODEL="pe-test")
    command = [sys.executable, "-m", "bernini", "generate", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def test_replay_of_an_enhanced_run_uses_the_enhanced_prompt_without_calling_the_enhancer(
    server,  # noqa: F811
    tiny_bundle,
    tmp_path,
):
    server.push(text("A red fox leaps through fresh snow at dawn."))
    video = clip(tmp_path / "src.mp4")
    args = ["--config", str(tiny_bundle), "--task_type", "v2v", "--video", str(video), "--prompt", "make it snow"]
    proc = run_cli([*args, "--use_pe", "--output", "enhanced.mp4", *SMALL], tmp_path, server.base_url)
    assert proc.returncode == 0, proc.stderr
    record = read(tmp_path / "enhanced.mp4.json")
    assert record["prompt_enhancer"]["original_prompt"] == "make it snow"
    assert record["request"]["prompt"] == "A red fox leaps through fresh snow at dawn."
    calls = len(server.requests)

    proc = run_cli(["--replay", "enhanced.mp4.json"], tmp_path, None)  # no endpoint configured at all
    assert proc.returncode == 0, proc.stderr
    assert len(server.requests) == calls
    assert (tmp_path / "enhanced_replay.mp4").read_bytes() == (tmp_path / "enhanced.mp4").read_bytes()
    again = read(tmp_path / "enhanced_replay.mp4.json")
    assert again["resolved"]["t5_text"] == record["resolved"]["t5_text"]
    assert again["replay_of"]["prompt_enhancer"]["original_prompt"] == "make it snow"
    assert again["request"]["use_pe"] is False

    # The plain prompt gives another video: the enhanced prompt is what made the replay identical.
    proc = run_cli([*args, "--output", "plain.mp4", *SMALL], tmp_path, None)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "plain.mp4").read_bytes() != (tmp_path / "enhanced.mp4").read_bytes()


def write_lora(bundle: Path, path: Path, seed: int = 0) -> Path:
    """A ComfyUI-named LoRA (rank 4, alpha 2) over every block linear of the bundle's high-noise expert."""
    import torch
    from community_files import diffusers_expert, is_block_linear, wan_name
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, value in diffusers_expert(bundle / "transformer").items():
        if is_block_linear(key, value):
            stem = "diffusion_model." + wan_name(key)[: -len(".weight")]
            tensors[f"{stem}.lora_down.weight"] = torch.randn(4, value.shape[1], generator=generator) * 0.3
            tensors[f"{stem}.lora_up.weight"] = torch.randn(value.shape[0], 4, generator=generator) * 0.3
            tensors[f"{stem}.alpha"] = torch.tensor(2.0)
    save_file(tensors, str(path))
    return path


def one_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_replay_merges_the_recorded_loras_and_quantize_and_refuses_a_changed_or_missing_lora(
    tiny_bundle, tmp_path, capsys
):
    lora = write_lora(tiny_bundle, tmp_path / "style.safetensors")
    out = tmp_path / "run.mp4"
    args = ["generate", "--config", str(tiny_bundle), "--prompt", "a fox", "--seed", "3", *SMALL]
    assert (
        main([*args, "--output", str(out), "--lora_high", f"{lora}:0.7", "--lora", str(lora), "--quantize", "int8"])
        == 0
    )
    model = read(tmp_path / "run.mp4.json")["model"]
    assert (model["quantize"], model["quantize_requested"]) == ("int8", "int8")
    assert [(entry["expert"], entry["scale"]) for entry in model["loras"]] == [("both", 1.0), ("high", 0.7)]
    assert main([*args, "--output", str(tmp_path / "plain.mp4")]) == 0  # what a replay dropping them would give
    assert (tmp_path / "plain.mp4").read_bytes() != out.read_bytes()

    assert main(["generate", "--replay", str(tmp_path / "run.mp4.json")]) == 0, capsys.readouterr().err
    assert (tmp_path / "run_replay.mp4").read_bytes() == out.read_bytes()
    assert read(tmp_path / "run_replay.mp4.json")["model"]["loras"] == model["loras"]

    write_lora(tiny_bundle, lora, seed=1)  # another file under the same name
    capsys.readouterr()
    replay = ["generate", "--replay", str(tmp_path / "run.mp4.json"), "--output", str(tmp_path / "again.mp4")]
    assert main(replay) == 2
    assert "has changed since the run" in one_error(capsys)
    lora.unlink()
    assert main(replay) == 2
    assert f"the run's LoRA file {lora} is gone" in one_error(capsys)
    assert not (tmp_path / "again.mp4").exists()


def test_replay_of_a_gguf_run_with_a_lora_and_quantize_refused_for_gguf(tiny_bundle, tmp_path, capsys):
    from community_files import diffusers_expert, write_gguf

    high, low = tmp_path / "high_noise_Q8_0.gguf", tmp_path / "low_noise_Q8_0.gguf"
    write_gguf(diffusers_expert(tiny_bundle / "transformer"), high, "Q8_0")
    write_gguf(diffusers_expert(tiny_bundle / "transformer_2"), low, "Q8_0")
    lora = write_lora(tiny_bundle, tmp_path / "style.safetensors")
    args = ["generate", "--config", str(tiny_bundle), "--high_noise_ckpt", str(high), "--low_noise_ckpt", str(low)]
    args += ["--prompt", "a fox", "--lora", f"{lora}:0.6", *SMALL]
    assert main([*args, "--output", str(tmp_path / "run.mp4"), "--quantize", "fp8"]) == 2
    assert "--quantize fp8 does not apply to the GGUF checkpoint high_noise_Q8_0.gguf" in one_error(capsys)
    assert main([*args, "--output", str(tmp_path / "run.mp4")]) == 0, capsys.readouterr().err
    model = read(tmp_path / "run.mp4.json")["model"]
    assert model["quantize"] == "none" and model["expert_weights"]["transformer"]["gguf Q8_0"] == 20
    assert main(["generate", "--replay", str(tmp_path / "run.mp4.json")]) == 0, capsys.readouterr().err
    assert (tmp_path / "run_replay.mp4").read_bytes() == (tmp_path / "run.mp4").read_bytes()


def test_a_pre_quantised_bundle_records_its_quantisation_and_replays(tiny_bundle, tmp_path, capsys):
    import torch

    from bernini.loaders.convert import convert

    bundle = tmp_path / "fp8-bundle"
    convert(tiny_bundle, bundle, "diffusers", dtype=torch.float32, quantize="fp8")
    args = ["generate", "--config", str(bundle), "--prompt", "a fox", *SMALL]
    assert main([*args, "--output", str(tmp_path / "run.mp4")]) == 0, capsys.readouterr().err
    model = read(tmp_path / "run.mp4.json")["model"]
    assert (model["quantize"], model["quantize_requested"]) == ("fp8", "none")
    assert model["expert_weights"]["transformer"]["fp8"] == 20
    assert main(["generate", "--replay", str(tmp_path / "run.mp4.json")]) == 0, capsys.readouterr().err
    assert (tmp_path / "run_replay.mp4").read_bytes() == (tmp_path / "run.mp4").read_bytes()
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "int8.mp4"), "--quantize", "int8"]) == 2
    assert "--quantize int8: the checkpoint stores" in one_error(capsys)


def test_the_typed_sidecar_keeps_the_file_layout_and_reads_older_sidecars():
    """The job's keys follow the run's, the front end's context follows the paths, ``frames_dir`` comes last; a
    sidecar written before paths were recorded reads back without them (replay then takes the request's media)."""
    run = {key: {} for key in RUN_KEYS} | {"request": {"prompt": "a"}, "device": "cpu"}
    written = RunRecord.from_json(run)
    assert written.to_json() == run and written.paths is None and written.output is None
    written.output, written.fps, written.created, written.versions = "o.mp4", 16.0, "now", {"torch": "2"}
    written.paths = RunPaths(output={"given": "o.mp4", "absolute": "/o.mp4"}, video=[], images=[], checkpoints={})
    written.context = {"command_line": "bernini generate", "demo": {"ui": {}}}
    written.frames_dir = "frames"
    data = json.loads(json.dumps(written.to_json()))
    keys = [*RUN_KEYS, "output", "fps", "created", "versions", "paths", "command_line", "demo", "frames_dir"]
    assert list(data) == keys
    assert list(data["paths"]) == ["output", "video", "image", "images", "model", "checkpoints", "extend"]
    assert data["paths"]["output"] == {"given": "o.mp4", "absolute": "/o.mp4"} and data["paths"]["image"] is None
    assert RunRecord.from_json(data) == written
    older = {"request": {"prompt": "a", "video": ["/v.mp4"]}, "output": "/o.mp4"}
    read = RunRecord.from_json(older)
    assert read.paths is None and read.output == "/o.mp4" and read.context == {}
