"""The full Bernini model (planner + renderer) under torchrun, on the tiny full bundle.

Every launch is a real ``torchrun --standalone`` of two gloo processes with a subprocess timeout (see
tests/test_parallel.py). The planner runs on each task group's leader only: ``--verbose`` makes the rank
that runs it log ``planning on rank N``, which these tests count in torchrun's merged stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 150
GENERATION = ["--num_frames", "9", "--height", "48", "--width", "80", "--num_inference_steps", "2", "--device", "cpu"]
# upstream's reference flags, with values unlike every shipped preset (v1: 25 / 5, 1.2, 1.0, ω_tgt 0.5 or 1.5)
PLANNER = ["--planning_step", "2", "--vit_denoising_step", "1", "--vit_txt_cfg", "1.3", "--vit_img_cfg", "0.9"]
PLANNER += ["--omega_tgt", "0.7", "--guidance_mode", "vae_txt_vit_wapg"]
TASKS = {
    "t2v": {"prompt": "a red fox runs through snow", "task_type": "t2v"},
    "v2v": {"prompt": "make it snow", "task_type": "v2v", "video": "src.mp4"},
}
EVERY_TASK = {
    **TASKS,
    "t2i": {"prompt": "a red fox", "task_type": "t2i", "num_frames": 1},
    "i2i": {"prompt": "make it blue", "task_type": "i2i", "image": "image.png", "num_frames": 1},
    "mv2v": {"prompt": "make it dance", "task_type": "mv2v", "video": "src.mp4"},
    "ads2v": {"prompt": "add the logo", "task_type": "ads2v", "video": ["src.mp4", "ads.mp4"]},
    "r2v": {"prompt": "image0 dances", "task_type": "r2v", "images": ["image.png", "ref.png"]},
    "rv2v": {"prompt": "swap in the dog", "task_type": "rv2v", "video": "src.mp4", "images": ["ref.png"]},
}


def torchrun(target: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *target]
    environ = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def read_frames(folder: Path) -> np.ndarray:
    """The ``--save_frames`` PNGs (lossless: an MP4's encoder may round neighbouring pixels differently)."""
    import imageio.v3 as iio

    return np.stack([iio.imread(path) for path in sorted(folder.glob("*.png"))])


def planning_ranks(stderr: str) -> list[int]:
    return [int(rank) for rank in re.findall(r"^planning on rank (\d+) ", stderr, flags=re.MULTILINE)]


@pytest.fixture(scope="module")
def media(full_media: Path, tmp_path_factory) -> Path:
    """The full model's test media (``full_media``) in a folder of this module's own: the runs write there."""
    import shutil

    root = tmp_path_factory.mktemp("parallel_full_media")
    for item in full_media.iterdir():
        shutil.copy(item, root / item.name)
    return root


def test_ulysses_and_cfg_parallel_match_one_process_on_the_full_model(full_bundle: Path, media: Path):
    """The self-check on every task with the planner flags: under Ulysses 2 and CFG-parallel 2 the final latents
    equal the single-process path's (fp32, the tolerance of the Bernini-R checks)."""
    tasks = media / "check.jsonl"
    tasks.write_text("".join(json.dumps(task) + "\n" for task in EVERY_TASK.values()))
    report = media / "report.json"
    target = [
        "-m",
        "bernini.frontends.parallel_check",
        "--layouts",
        "2:1,1:2",
        "--report",
        str(report),
        "--tolerance",
        "1e-4",
    ]
    target += ["--config", str(full_bundle), "--inputs", str(tasks), *GENERATION, *PLANNER, "--dist_timeout", "60"]
    result = torchrun(target, media)
    assert result.returncode == 0, result.stdout + result.stderr
    records = json.loads(report.read_text())["records"]
    assert {(r["layout"], r["task_type"], r["guidance_mode"]) for r in records} == {
        (layout, task, "vae_txt_vit_wapg") for layout in ("2:1", "1:2") for task in EVERY_TASK
    }
    assert max(r["max_abs_diff"] for r in records) <= 1e-4
    assert min(r["reference_max_abs"] for r in records) > 0
    lengths = {n for r in records if r["layout"] == "2:1" for n in r["sequence_lengths"]}
    assert any(n % 2 for n in lengths), lengths


@pytest.mark.parametrize(
    ("task", "flags"), [("t2v", ["--ulysses", "2"]), ("v2v", ["--cfg_parallel", "2"])], ids=["ulysses", "cfg"]
)
def test_torchrun_plans_once_per_task_group_and_honours_the_planner_flags(
    full_bundle: Path, media: Path, tmp_path: Path, monkeypatch, task: str, flags: list[str]
):
    """``infer_multi_gpu.py`` with upstream's planner flags: one task group of two ranks plans once (on its
    leader), the sidecar records the flags' values (not the shipped preset's) and the frames equal a
    one-process run's."""
    from bernini.frontends.cli import upstream_script_main

    inputs = ["--prompt", TASKS[task]["prompt"], "--task_type", task]
    if "video" in TASKS[task]:
        inputs += ["--video", str(media / "src.mp4")]
    common = ["--config", str(full_bundle), *inputs, *GENERATION, *PLANNER, "--output", "out.mp4"]
    common += ["--save_frames", "frames"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir()
    multi.mkdir()
    monkeypatch.chdir(single)
    assert upstream_script_main(common, prog="infer_single_gpu.py") == 0
    result = torchrun([str(REPO / "infer_multi_gpu.py"), *common, *flags, "--dist_timeout", "60", "--verbose"], multi)
    assert result.returncode == 0, result.stderr
    assert planning_ranks(result.stderr) == [0], result.stderr
    record, reference = (json.loads((d / "out.mp4.json").read_text()) for d in (multi, single))
    planner = record["resolved"]["planner"]
    assert (planner["planning_step"], planner["vit_denoising_step"]) == (2, 1)
    assert (planner["vit_txt_cfg"], planner["vit_img_cfg"], len(planner["reveal_counts"])) == (1.3, 0.9, 2)
    assert (record["request"]["omega_tgt"], record["resolved"]["timesteps"][-1] > 0) == (0.7, True)
    assert len(record["resolved"]["timesteps"]) == 2
    assert planner == reference["resolved"]["planner"]
    assert record["parallel"]["layout"] != reference["parallel"], record["parallel"]
    frames, expected = read_frames(multi / "frames"), read_frames(single / "frames")
    assert frames.shape == expected.shape == (9, 48, 80, 3)
    assert np.abs(frames.astype(int) - expected.astype(int)).max() <= 1  # latents agree to 1e-4 (test above)


def test_each_data_parallel_group_plans_its_own_task(full_bundle: Path, media: Path, tmp_path: Path):
    """Two task groups of one rank: the task list is split, so each rank plans (once) the task it runs."""
    tasks = tmp_path / "tasks.jsonl"
    video = str(media / "src.mp4")
    lines = [{**TASKS["t2v"], "output": "t2v.mp4"}, {**TASKS["v2v"], "video": video, "output": "v2v.mp4"}]
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    target = [str(REPO / "infer_multi_gpu.py"), "--config", str(full_bundle), "--inputs", str(tasks), *GENERATION]
    result = torchrun([*target, *PLANNER, "--dist_timeout", "60", "--verbose"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(planning_ranks(result.stderr)) == [0, 1], result.stderr
    for name in ("t2v", "v2v"):
        record = json.loads((tmp_path / f"{name}.mp4.json").read_text())
        assert record["resolved"]["planner"]["planning_step"] == 2 and record["request"]["task_type"] == name
