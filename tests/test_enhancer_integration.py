"""``--use_pe`` end to end: the real CLI, the real openai client, a chat-completions server on loopback."""

import json
import os
import subprocess
import sys

import numpy as np
from test_enhancer import error, server, text  # noqa: F401 - the fixture is used by name

from bernini.io.output import write_video
from bernini.tasks import t5_prefix

KEY = "sk-test-DO-NOT-LEAK-5f1e2d3c4b"
SMALL = ["--num_frames", "5", "--height", "32", "--width", "48", "--num_inference_steps", "2"]


def run_cli(args, base_url, tmp_path):
    env = {**os.environ, "BERNINI_PE_BASE_URL": base_url, "BERNINI_PE_API_KEY": KEY, "BERNINI_PE_MODEL": "pe-test"}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "bernini", "generate", *args],
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


def test_echoed_key_is_masked_and_a_failed_endpoint_is_skipped_for_the_rest_of_the_batch(
    server,  # noqa: F811
    tiny_bundle,
    tmp_path,
):
    """Task 1: the endpoint echoes the Authorization header in its rewrite. Task 2: it is down (503) and the
    time budget (from the environment) ends the retries. Task 3: skipped with a note, no request sent.

    The server's Retry-After (4 s) sets the wait between attempts, and the budget (8 s) is twice it: a second attempt
    always fits unless the first takes 3.95 s, and a third never can (it would start 4 s after the second ended).
    So exactly two attempts, under any load short of that, where a 2.5 s budget against the 1 s default backoff
    failed whenever the first request took 1.45 s."""
    server.push(text("A lighthouse at night. Sent with Authorization: {authorization}"))
    server.default = error(503, "overloaded", retry_after="4")
    tasks = [{"task_type": "t2i", "prompt": f"lighthouse {i}", "output": f"o{i}.png"} for i in range(3)]
    task_list = tmp_path / "tasks.jsonl"
    task_list.write_text("".join(json.dumps(t) + "\n" for t in tasks), encoding="utf-8")
    env = {**os.environ, "BERNINI_PE_BASE_URL": server.base_url, "BERNINI_PE_API_KEY": KEY, "BERNINI_PE_BUDGET": "8"}
    env.pop("OPENAI_API_KEY", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bernini",
            "generate",
            "--config",
            str(tiny_bundle),
            "--inputs",
            str(task_list),
        ]
        + ["--use_pe", "--pe_timeout", "5", *SMALL],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    sidecars = [json.loads((tmp_path / f"o{i}.png.json").read_text()) for i in range(3)]
    everything = proc.stdout + proc.stderr + "".join(json.dumps(s) for s in sidecars)
    assert KEY not in everything and KEY[3:12] not in everything
    assert sidecars[0]["request"]["prompt"] == "A lighthouse at night. Sent with Authorization: Bearer ***"
    assert "contained the API key" in sidecars[0]["prompt_enhancer"]["warning"]
    second = sidecars[1]["prompt_enhancer"]
    assert second["enhanced"] is False and "HTTP 503 after 2 attempts" in second["warning"]
    assert "8 s time budget" in second["warning"]
    assert second["attempts"] == 2  # the budget, not max_attempts (4), ended it
    assert sidecars[2]["prompt_enhancer"]["skipped"] and sidecars[2]["request"]["prompt"] == "lighthouse 2"
    assert len(server.requests) == 1 + second["attempts"]  # nothing sent for task 3
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("note: prompt enhancer skipped")]
    assert len(skipped) == 1 and "HTTP 503" in skipped[0]


def test_use_pe_without_an_endpoint_fails_in_one_line_before_loading(tmp_path, monkeypatch, capsys):
    from bernini.frontends.cli import main

    for name in ("BERNINI_PE_BASE_URL", "BERNINI_PE_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    missing_model = tmp_path / "no-such-bundle"  # loading it would fail differently
    args = ["generate", "--config", str(missing_model), "--prompt", "a fox", "--use_pe"]
    assert main([*args, "--output", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --use_pe needs an endpoint: set BERNINI_PE_BASE_URL")
    assert list(tmp_path.iterdir()) == []
