"""The full Bernini model from the command line: ``bernini generate`` and the upstream-compatible script with the
reference's flags, real MP4s and sidecars, task lists, and one-line refusals. The upstream script and one refusal run
as real subprocesses (exit codes, no traceback); the rest call ``main`` in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bernini.io.output import sidecar_path
from bernini.sampling.full_presets import FULL_PRESETS

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--num_inference_steps", "2", "--planning_step", "2", "--vit_denoising_step", "1"]


def run(*args: str, cwd: Path, script: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / script)] if script else [sys.executable, "-m", "bernini", "generate"]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def generate(capsys, monkeypatch, tmp_path) -> Callable[..., tuple[int, str]]:
    """``bernini generate ARGS`` in this process, from ``tmp_path``: (exit status, stderr)."""
    from bernini.frontends.cli import main

    def call(*args: str) -> tuple[int, str]:
        monkeypatch.chdir(tmp_path)
        capsys.readouterr()
        try:
            code = main(["generate", *args])
        except SystemExit as exc:
            code = exc.code
        return code, capsys.readouterr().err

    return call


@pytest.fixture(scope="module")
def source(full_media) -> Path:
    return full_media / "src.mp4"


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_generate_writes_the_video_and_records_the_plan(full_bundle, tmp_path, generate):
    out = tmp_path / "t2v.mp4"
    code, err = generate(
        "--config", str(full_bundle), "--task_type", "t2v", "--prompt", "a red fox runs across a snowy field",
        "--num_frames", "9", "--height", "64", "--width", "96", *SMALL, "--output", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert out.is_file() and out.stat().st_size > 0
    record = json.loads(sidecar_path(out).read_text())
    planner = record["resolved"]["planner"]
    assert planner["version"] == "v1" and planner["planning_step"] == 2 and planner["vit_denoising_step"] == 1
    assert sum(planner["reveal_counts"]) == planner["target_slots"] == 6 and len(planner["reveal_counts"]) == 2
    request = record["request"]
    v1 = FULL_PRESETS["v1"]["t2v"]
    assert request["num_inference_steps"] == 2  # given: wins over the shipped 50
    assert (request["omega_tgt"], request["omega_scale"]) == (v1.omega_tgt, v1.omega_scale)  # not given: shipped
    assert record["resolved"]["guidance_mode"] == "vae_txt_vit_wapg"


def test_upstream_script_takes_the_reference_flags(full_bundle, source, tmp_path):
    out = tmp_path / "v2v.mp4"
    proc = run(
        "--config", str(full_bundle), "--task_type", "v2v", "--video", str(source), "--prompt", "make the dog red",
        "--guidance_mode", "vae_txt_vit", "--omega_tgt", "1.5", "--vit_txt_cfg", "1.4", "--vit_img_cfg", "1.1",
        "--num_frames", "9", *SMALL, "--output", str(out), cwd=tmp_path, script="infer_single_gpu.py",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(sidecar_path(out).read_text())
    assert record["resolved"]["guidance_mode"] == "vae_txt_vit"
    planner = record["resolved"]["planner"]
    assert (planner["vit_txt_cfg"], planner["vit_img_cfg"], record["request"]["omega_tgt"]) == (1.4, 1.1, 1.5)
    assert len(planner["source_tokens"]) == 1


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_every_task_runs_from_a_task_list(full_bundle, source, tmp_path, generate):
    image = source.parent / "image.png"
    video, ads = str(source), str(source.parent / "ads.mp4")
    entries = {
        "t2i": {"num_frames": 1},
        "i2i": {"image": str(image), "num_frames": 1},
        "t2v": {},
        "v2v": {"video": video},
        "mv2v": {"video": video},
        "ads2v": {"video": [video, ads]},
        "r2v": {"images": [str(image)]},
        "rv2v": {"video": video, "images": [str(image)]},
    }
    tasks = tmp_path / "every.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": "a fox", "task_type": t, **e}) + "\n" for t, e in entries.items()))
    code, err = generate(
        "--config", str(full_bundle), "--inputs", str(tasks), "--num_frames", "9", "--height", "48", "--width", "80",
        *SMALL, "--output", str(tmp_path / "every.mp4"),
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("every_*.json"))]
    assert sorted(r["resolved"]["task_type"] for r in records) == sorted(entries)
    for record in records:
        planner = record["resolved"]["planner"]
        assert len(planner["reveal_counts"]) == 2 and sum(planner["reveal_counts"]) == planner["target_slots"]
        assert (tmp_path / record["output"]).is_file()


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_task_list_entries_keep_their_own_settings(full_bundle, tmp_path, generate):
    tasks = tmp_path / "tasks.jsonl"
    entries = [
        {"prompt": "a red fox", "task_type": "t2v", "planning_step": 3},
        {"prompt": "a blue cat", "task_type": "t2i", "num_frames": 1},
    ]
    tasks.write_text("".join(json.dumps(e) + "\n" for e in entries))
    code, err = generate(
        "--config", str(full_bundle), "--inputs", str(tasks), "--num_inference_steps", "2", "--vit_denoising_step",
        "1", "--height", "64", "--width", "64", "--num_frames", "9", "--output", str(tmp_path / "o.mp4"),
    )  # fmt: skip
    assert code == 0, err
    records = sorted(tmp_path.glob("o_*.json"))
    planners = [json.loads(p.read_text())["resolved"]["planner"] for p in records]
    assert sorted(len(p["reveal_counts"]) for p in planners) == [3, 25]  # the t2i entry: v1's shipped 25 rounds


def test_a_bad_combination_exits_with_one_line_from_a_real_process(full_bundle, tmp_path):
    out = tmp_path / "o.mp4"
    extra = ["--task_type", "rv2v", "--guidance_mode", "rv2v"]
    proc = run("--config", str(full_bundle), "--prompt", "a fox", *extra, "--output", str(out), cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert any("does not run on the full bernini model" in line.lower() for line in lines), proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--task_type", "t2v", "--high_noise_ckpt", "x.safetensors"], "--high_noise_ckpt"),
        (["--task_type", "t2i", "--num_frames", "9"], "makes one image"),
    ],
)
def test_bad_combinations_exit_with_one_line(full_bundle, tmp_path, generate, extra, match):
    out = tmp_path / "o.mp4"
    code, err = generate("--config", str(full_bundle), "--prompt", "a fox", *extra, "--output", str(out))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith("error: ") and match in lines[-1].lower(), err
    assert not out.exists()


def test_planner_flags_on_bernini_r_are_refused(tiny_bundle, generate):
    code, err = generate("--config", str(tiny_bundle), "--prompt", "a fox", "--planning_step", "3")
    assert code == 2 and "only affect the full Bernini model" in err.splitlines()[-1]


def test_plan_and_dry_run_print_the_planner_phase(full_bundle, capsys):
    """``bernini estimate`` and ``--dry_run`` on a full bundle: its own module shapes, both phases, nothing loaded."""
    from bernini.frontends.cli import main
    from bernini.frontends.estimate import full_shapes_for
    from bernini.planner.memory import planner_sizes

    assert main(["plan", "--config", str(full_bundle), "--num_frames", "9", "--height", "64", "--width", "96"]) == 0
    out = capsys.readouterr().out
    assert "planner phase" in out and "render phase" in out
    shapes = full_shapes_for(str(full_bundle))
    assert shapes.decoder["depth"] == 2 and f"{planner_sizes(shapes).qwen_params / 1e9:.2f} B" in out
    args = ["generate", "--config", str(full_bundle), "--prompt", "a fox", "--task_type", "t2v", "--dry_run"]
    assert main(args) == 0
    assert "planner phase" in capsys.readouterr().out
    assert full_shapes_for(str(REPO / "examples")) is None


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_a_shipped_size_other_than_the_sources_prints_a_note_and_is_recorded(
    full_bundle, full_media, tmp_path, generate
):
    """Issue 19 item 6: i2i's shipped 512×512 from a 48×48 source is a change made on the user's behalf; at the
    source's own size (0 × 0) or at a size the user gave, nothing is noted."""
    image = str(full_media / "image.png")
    entries = [{}, {"height": 0, "width": 0}, {"height": 64, "width": 64}]
    tasks = tmp_path / "i2i.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": "a fox", "task_type": "i2i", "image": image, **e}) + "\n"
                             for e in entries))  # fmt: skip
    code, err = generate(
        "--config", str(full_bundle), "--inputs", str(tasks), *SMALL, "--output", str(tmp_path / "o.png")
    )
    assert code == 0, err
    why = "the full model's shipped i2i settings (v1) render 512x512, not the source image's size; --height 0 --width 0"
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: height 48 -> 512: {why} keep it", f"note: width 48 -> 512: {why} keep it"]
    records = {}
    for path in tmp_path.glob("o_*.json"):
        record = json.loads(path.read_text())
        records[record["request"]["height"], record["request"]["width"]] = record["adjustments"]
    assert [(a["name"], a["asked"], a["used"]) for a in records[512, 512]] == [("height", 48, 512), ("width", 48, 512)]
    assert records[0, 0] == [] and records[64, 64] == []


def test_a_bundle_with_the_old_connector_keys_is_refused_in_one_line(
    full_bundle, tmp_path, bundle_with_config, generate
):
    """Bundles bernini wrote before it read the released ``out_dim_for_gen`` / ``out_dim_for_vit``: one error line."""
    old = bundle_with_config(full_bundle, connector_cfg={"out_gen": 40, "out_vit": 48})
    out = tmp_path / "o.mp4"
    code, err = generate("--config", str(old), "--prompt", "a fox", "--task_type", "t2v", *SMALL, "--output", str(out))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and not out.exists()
    assert lines[-1].startswith("error: ") and "out_dim_for_gen / out_dim_for_vit" in lines[-1]
    assert "bernini tiny-bundle --layout full" in lines[-1]
