"""Multi-process runs on CPU (gloo) against the single-process path, on the tiny bundle.

Every launch is a real ``torchrun --standalone`` with a subprocess timeout, so a hang fails the test
instead of stalling the suite. Sizes are chosen so packed lengths are not multiples of the Ulysses
degree: target 9 frames at 48×80 → 3×3×5 = 45 tokens, a 48×48 reference adds 9, a 32×48 one 6.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from bernini.errors import BerniniError
from bernini.runtime.parallel.cfg import assign_branches
from bernini.runtime.parallel.layout import Layout, check_degrees

REPO = Path(__file__).resolve().parents[1]
GENERATION = ["--num_frames", "9", "--height", "48", "--width", "80", "--num_inference_steps", "2", "--device", "cpu"]
LAUNCH_TIMEOUT_S = 150


def torchrun(nproc: int, target: list[str], cwd: Path, env: dict[str, str] | None = None):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *target]
    environ = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def generate_args(bundle: Path, *extra: str) -> list[str]:
    return [str(REPO / "infer_multi_gpu.py"), "--config", str(bundle), *GENERATION, "--dist_timeout", "60", *extra]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A 9-frame 48×80 source video, two reference images of other sizes and a corrupt video."""
    from bernini.io.output import write_image, write_video

    root = tmp_path_factory.mktemp("parallel_media")
    t = np.linspace(0, 1, 9)[:, None, None, None]
    y = np.linspace(0, 1, 48)[None, :, None, None]
    x = np.linspace(0, 1, 80)[None, None, :, None]
    channel = np.array([0.0, 1.0, 2.0])
    write_video(root / "src.mp4", (0.5 + 0.4 * np.sin(6 * x + 4 * y + 3 * t + channel)).clip(0, 1), 16)
    ya, xa = np.linspace(0, 1, 48)[:, None, None], np.linspace(0, 1, 48)[None, :, None]
    write_image(root / "ref_a.png", (0.5 + 0.4 * np.cos(8 * ya + 5 * xa + channel)).clip(0, 1))
    yb, xb = np.linspace(0, 1, 32)[:, None, None], np.linspace(0, 1, 48)[None, :, None]
    write_image(root / "ref_b.png", (0.5 + 0.4 * np.sin(3 * yb + 9 * xb + channel[::-1])).clip(0, 1))
    (root / "corrupt.mp4").write_bytes(b"this is not a video" * 64)
    return root


def write_tasks(path: Path, tasks: list[dict]) -> Path:
    path.write_text("".join(json.dumps(task) + "\n" for task in tasks))
    return path


TASKS = {
    "t2v_apg": {"prompt": "a red fox runs through snow", "task_type": "t2v"},
    "t2v": {"prompt": "a red fox runs through snow", "task_type": "t2v", "guidance_mode": "t2v"},
    "v2v_apg": {"prompt": "make it snow", "task_type": "v2v", "video": "src.mp4"},
    "v2v": {"prompt": "make it snow", "task_type": "v2v", "guidance_mode": "v2v", "video": "src.mp4"},
    "v2v_chain": {"prompt": "make it snow", "task_type": "v2v", "guidance_mode": "v2v_chain", "video": "src.mp4"},
    "rv2v": {"prompt": "swap the shirt for image0", "task_type": "rv2v", "video": "src.mp4", "images": ["ref_a.png"]},
    "r2v_apg": {"prompt": "image0 and image1 dance", "task_type": "r2v", "images": ["ref_a.png", "ref_b.png"]},
}


def read_frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


# ------------------------------------------------------------------------------------------ layout


def test_layout_puts_ulysses_innermost_then_cfg_then_dp() -> None:
    layout = Layout(world=8, rank=5, ulysses=2, cfg=2)
    assert (layout.dp, layout.dp_rank, layout.cfg_rank, layout.ulysses_rank, layout.leader) == (2, 1, 0, 1, 4)
    assert layout.ulysses_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout.cfg_groups() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.task_groups() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert list(layout.task_indices(7)) == [1, 3, 5]
    assert list(Layout(world=3, rank=0).task_indices(7)) == [0, 3, 6]


def test_bad_degrees_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(
        BerniniError, match=r"--ulysses 3 does not divide the model's 4 attention heads; valid degrees: 1, 2, 4"
    ):
        check_degrees(world=3, ulysses=3, cfg=1, heads=4)
    with pytest.raises(BerniniError, match=r"world size 6 is not divisible by ulysses 2 × cfg 2 = 4"):
        check_degrees(world=6, ulysses=2, cfg=2, heads=4)
    check_degrees(world=8, ulysses=4, cfg=2, heads=4)


def test_branches_are_balanced_longest_first_and_uneven_counts_work() -> None:
    assert assign_branches([1.0, 1.0], 2) == [0, 1]
    assert assign_branches([45.0, 90.0, 99.0, 99.0], 2) == [1, 0, 0, 1]
    assert assign_branches([1.0, 2.0, 3.0], 2) == [1, 1, 0]
    assert assign_branches([5.0, 5.0], 4) == [0, 1]


# ------------------------------------------------------------------------ equality with one process


@pytest.mark.parametrize(("nproc", "layouts"), [(2, "2:1,1:2"), (4, "4:1,2:2,1:4")])
def test_ulysses_and_cfg_parallel_match_single_process(tiny_bundle: Path, media: Path, nproc: int, layouts: str):
    """Every task type and guidance mode: parallel latents equal the single-process path's (fp32)."""
    tasks = write_tasks(media / f"check_{nproc}.jsonl", list(TASKS.values()))
    report = media / f"report_{nproc}.json"
    target = [
        "-m",
        "bernini.frontends.parallel_check",
        "--layouts",
        layouts,
        "--report",
        str(report),
        "--tolerance",
        "1e-4",
    ]
    target += ["--config", str(tiny_bundle), "--inputs", str(tasks), *GENERATION, "--dist_timeout", "60"]
    result = torchrun(nproc, target, media)
    assert result.returncode == 0, result.stdout + result.stderr
    records = json.loads(report.read_text())["records"]
    assert {(r["layout"], r["guidance_mode"]) for r in records} == {
        (layout, mode) for layout in layouts.split(",") for mode in TASKS
    }
    assert {r["task_type"] for r in records} == {"t2v", "v2v", "rv2v", "r2v"}
    assert max(r["max_abs_diff"] for r in records) <= 1e-4
    for layout in layouts.split(","):
        degree = int(layout.split(":")[0])
        lengths = {n for r in records if r["layout"] == layout for n in r["sequence_lengths"]}
        assert degree == 1 or any(n % degree for n in lengths), lengths


# ---------------------------------------------------------------------------- the command line


DP_TASKS = ["t2v_apg", "v2v_apg", "rv2v", "r2v_apg"]


def test_data_parallel_groups_write_every_task_like_single_runs(
    tiny_bundle: Path, media: Path, tmp_path: Path, monkeypatch
):
    """Two groups of one rank take tasks 1, 3 and 2, 4; each output equals the one-process run's."""
    from bernini.frontends.cli import main

    task_list = write_tasks(media / "dp.jsonl", [{**TASKS[name], "output": f"{name}.mp4"} for name in DP_TASKS])
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir()
    multi.mkdir()
    monkeypatch.chdir(single)
    assert main(["generate", "--config", str(tiny_bundle), "--inputs", str(task_list), *GENERATION]) == 0
    result = torchrun(2, generate_args(tiny_bundle, "--inputs", str(task_list)), multi)
    assert result.returncode == 0, result.stderr
    assert "summary: 4 of 4 task(s) succeeded" in result.stderr
    assert "denoising: 2/2 step(s)" in result.stderr, "rank 0 shows its phases"
    assert re.search(r"done in \d+\.\d s: load \d+\.\d, .*denoise \d+\.\d, decode \d+\.\d, write", result.stderr)
    for name in DP_TASKS:
        assert (multi / f"{name}.mp4.json").is_file()
        reference, frames = read_frames(single / f"{name}.mp4"), read_frames(multi / f"{name}.mp4")
        assert frames.shape == (9, 48, 80, 3)
        np.testing.assert_array_equal(frames, reference)


class ChatServer:
    """Counts ``POST /v1/chat/completions`` calls and answers each with a fixed rewritten prompt."""

    def __init__(self) -> None:
        self.calls = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                server.calls += 1
                message = {"role": "assistant", "content": "A red fox, rewritten.", "refusal": None}
                body = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": "test-vlm",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_failing_tasks_are_reported_and_the_group_goes_on(tiny_bundle: Path, media: Path, tmp_path: Path):
    """A missing video (caught before any collective), a corrupt one (caught by every rank inside the
    job) and a good task enhanced once per group, under Ulysses 2."""
    server = ChatServer()
    tasks = [
        {**TASKS["v2v_apg"], "video": str(media / "missing.mp4"), "output": "missing.mp4"},
        {**TASKS["v2v_apg"], "video": str(media / "corrupt.mp4"), "output": "corrupt.mp4"},
        {**TASKS["t2v_apg"], "output": "good.mp4"},
    ]
    task_list = write_tasks(tmp_path / "tasks.jsonl", tasks)
    env = {"BERNINI_PE_BASE_URL": server.url, "BERNINI_PE_API_KEY": "test", "BERNINI_PE_MODEL": "test-vlm"}
    try:
        args = generate_args(tiny_bundle, "--inputs", str(task_list), "--ulysses", "2", "--use_pe")
        result = torchrun(2, args, tmp_path, env)
    finally:
        server.httpd.shutdown()
    assert result.returncode == 1, result.stderr
    assert "summary: 1 of 3 task(s) succeeded, 2 failed:" in result.stderr
    assert re.search(r"error: task 1/3: .*missing\.mp4.*not found", result.stderr), result.stderr
    assert "task 2/3:" in result.stderr.split("summary:")[1]
    assert (tmp_path / "good.mp4").is_file()
    assert not (tmp_path / "missing.mp4").exists() and not (tmp_path / "corrupt.mp4").exists()
    record = json.loads((tmp_path / "good.mp4.json").read_text())
    assert record["prompt_enhancer"]["enhanced"] and record["request"]["prompt"] == "A red fox, rewritten."
    assert server.calls == 1  # the leader asked once and broadcast the answer


LATE_RANK_ZERO_SCRIPT = """
import os, sys, time
from pathlib import Path
import bernini.frontends.launch as launch
from bernini.frontends.cli import main

refused = Path("rank1_refused")
if os.environ["RANK"] == "1":  # rank 1 says when it has refused the degree
    real_check = launch.check_degrees

    def check_degrees(*args, **kwargs):
        try:
            return real_check(*args, **kwargs)
        except Exception:
            refused.touch()
            raise

    launch.check_degrees = check_degrees
else:  # rank 0 gets there last, as it often does under load: after rank 1 refused and had time to exit
    deadline = time.monotonic() + 120
    while not refused.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2)
sys.exit(main(["generate", *sys.argv[1:]]))
"""


def test_bad_ulysses_degree_stops_every_rank_with_the_valid_degrees(tiny_bundle: Path, tmp_path: Path):
    """Every rank refuses the degree; rank 0 prints it even when it gets there last (torchrun stops the job as
    soon as a rank exits with an error, so a peer that left first used to cut rank 0's line off)."""
    script = tmp_path / "late_rank_zero.py"
    script.write_text(LATE_RANK_ZERO_SCRIPT)
    args = [str(script), "--config", str(tiny_bundle), *GENERATION, "--prompt", "a fox", "--ulysses", "3"]
    result = torchrun(2, args, tmp_path)
    assert result.returncode != 0
    assert "--ulysses 3 does not divide the model's 4 attention heads; valid degrees: 1, 2, 4" in result.stderr
    assert result.stderr.count("valid degrees") == 1  # printed by rank 0 only; the peer waiting on it was stopped


@pytest.mark.parametrize(
    ("world", "flags", "message"),
    [
        ("2", ["--ulysses", "4"], "world size 2 is not divisible by --ulysses 4"),
        ("2", ["--ulysses", "2", "--cfg_parallel"], "world size 2 is not divisible by ulysses 2 × cfg 2 = 4"),
        ("1", ["--ulysses", "2"], "world size 1 is not divisible by --ulysses 2"),
    ],
)
def test_world_not_divisible_is_refused_before_any_collective(
    tiny_bundle: Path, monkeypatch, capsys, world: str, flags: list[str], message: str
):
    from bernini.frontends.cli import main

    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["generate", "--config", str(tiny_bundle), "--prompt", "a fox", *GENERATION, *flags]) == 2
    assert message in capsys.readouterr().err


HANG_SCRIPT = """
import os, sys, time
import bernini.runner as runner
from bernini.frontends.cli import main

real_run_job = runner.run_job


def run_job(pipe, plan, **kwargs):  # rank 1 hangs inside its first task
    if os.environ["RANK"] == "1":
        time.sleep(3600)
    return real_run_job(pipe, plan, **kwargs)


runner.run_job = run_job  # the job engine calls the runner's run_job
sys.exit(main(["generate", *sys.argv[1:]]))
"""


@pytest.mark.parametrize(
    ("flags", "line", "written"),
    [
        ([], "error: rank 1 made no progress for 5 s (--dist_timeout): it is hung or stopped; giving up on it", True),
        (
            ["--ulysses", "2"],
            "error: rank 0: a peer of its group did not answer within --dist_timeout (5 s): it is hung or stopped; "
            "giving up",
            False,
        ),
    ],
    ids=["data-parallel", "ulysses"],
)
def test_a_hung_rank_stops_the_run_within_dist_timeout(
    tiny_bundle: Path, tmp_path: Path, flags: list[str], line: str, written: bool
):
    """Rank 1 sleeps inside its task. Two groups of one rank: rank 0 finishes its own task and gives up after
    --dist_timeout without news, not after the control group's 24 h. One Ulysses group: rank 0's all-to-all
    times out. Either way one line, not a traceback (the subprocess timeout would fail the test first)."""
    script = tmp_path / "hang.py"
    script.write_text(HANG_SCRIPT)
    tasks = [{**TASKS["t2v_apg"], "output": f"out{i}.mp4"} for i in range(2)]
    task_list = write_tasks(tmp_path / "tasks.jsonl", tasks)
    args = [str(script), "--config", str(tiny_bundle), *GENERATION, "--inputs", str(task_list), "--dist_timeout", "5"]
    result = torchrun(2, [*args, *flags], tmp_path)
    assert result.returncode != 0
    lines = [text for text in result.stderr.splitlines() if text.startswith("error: ")]
    assert lines == [line]
    assert f'File "{REPO / "bernini"}' not in result.stderr, "no traceback from bernini (torchrun prints its own)"
    assert (tmp_path / "out0.mp4").is_file() == written and not (tmp_path / "out1.mp4").exists()
