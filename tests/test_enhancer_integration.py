"""``--use_pe`` end to end: the real CLI, the real openai client, a chat-completions server on loopback."""

import json
import os
import subprocess
import sys

import numpy as np
from test_enhancer import error, server, text  # noqa: F401 - the fixture is used by name

from bernini.output import write_video
from bernini.tasks import t5_prefix

KEY = "sk-test-DO-NOT-LEAK-5f1e2d3c4b"
SMALL = ["--num_frames", "5", "--height", "32", "--width", "48", "--num_inference_steps", "2"]


def run_cli(args, base_url, tmp_path):
    env = {**os.environ, "BERNINI_PE_BASE_URL": base_url, "BERNINI_PE_API_KEY": KEY, "BERNINI_PE_MODEL": "pe-test"}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "bernini.cli", "generate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )


def test_enhanced_prompt_reaches_t5_text_and_sidecar(server, tiny_bundle, tmp_path):  # noqa: F811
    server.push(text("A red fox leaps through fresh snow at dawn."))
    frames = (np.arange(9)[:, None, None, None] * 25 + np.zeros((9, 32, 48, 3))).astype(np.uint8)
    video = write_video(tmp_path / "src.mp4", frames, fps=16)
    out = tmp_path / "out.mp4"
    proc = run_cli(
        [
            "--config",
            str(tiny_bundle),
            "--task_type",
            "v2v",
            "--video",
            str(video),
            "--prompt",
            "make it snow",
            "--use_pe",
            "--output",
            str(out),
            *SMALL,
        ],
        server.base_url,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "out.mp4.json").read_text())
    assert record["resolved"]["t5_text"] == t5_prefix("v2v") + "A red fox leaps through fresh snow at dawn."
    assert record["prompt_enhancer"]["original_prompt"] == "make it snow"
    assert record["prompt_enhancer"]["enhanced"] is True
    body = server.requests[0].body
    assert body["model"] == "pe-test"
    assert len(server.image_urls()) == 3
    assert "A red fox leaps" in proc.stderr  # the prompt used is printed
    everything = proc.stdout + proc.stderr + (tmp_path / "out.mp4.json").read_text()
    assert KEY not in everything


def test_enhancer_failure_falls_back_to_raw_prompt(server, tiny_bundle, tmp_path):  # noqa: F811
    server.default = error(401, f"bad key {KEY}")
    out = tmp_path / "out.png"
    proc = run_cli(
        [
            "--config",
            str(tiny_bundle),
            "--task_type",
            "t2i",
            "--prompt",
            "a lighthouse",
            "--use_pe",
            "--output",
            str(out),
            *SMALL,
        ],
        server.base_url,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "out.png.json").read_text())
    assert record["resolved"]["t5_text"] == t5_prefix("t2i") + "a lighthouse"
    assert record["prompt_enhancer"]["enhanced"] is False
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: prompt enhancer failed")]
    assert len(warnings) == 1
    assert KEY not in proc.stderr + proc.stdout + (tmp_path / "out.png.json").read_text()


def test_pe_only_prints_an_editable_case(server, tmp_path):  # noqa: F811
    server.push(text("A lighthouse on a cliff under a deep blue sky."))
    case = tmp_path / "case.json"
    case.write_text(json.dumps({"task_type": "t2i", "prompt": "a lighthouse", "output": "x.png"}))
    proc = run_cli(["--case", str(case), "--use_pe", "--pe_only"], server.base_url, tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed == {
        "task_type": "t2i",
        "prompt": "A lighthouse on a cliff under a deep blue sky.",
        "output": "x.png",
    }
    assert not (tmp_path / "x.png").exists()
