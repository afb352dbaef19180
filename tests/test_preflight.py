"""Outputs are checked before the model loads, and existing ones are never replaced silently (issue 14, items 2-3).

``load_pipeline`` is replaced by a spy that fails the test when called: these runs must end before any
model loads. Runs that do generate use the tiny bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bernini.frontends.cli as cli
from bernini.errors import BerniniError
from bernini.frontends.cli import main, upstream_script_main
from bernini.preflight import check_outputs, final_output, writable_problem
from bernini.request import GenerationRequest
from bernini.resolve import resolve_request

TINY = ["--num_inference_steps", "1", "--num_frames", "5", "--height", "16", "--width", "16"]
PROMPT = "Add a red ball. The scene shows a red ball on a grey floor; everything else stays unchanged."


def stderr_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines without progress-bar redraws."""
    segments = (segment for line in stderr.splitlines() for segment in line.split("\r"))
    return [s for s in segments if s.strip() and not s.strip().startswith("denoising")]


def write_clip(path: Path, frames: int) -> Path:
    from bernini.io.output import write_video

    pixels = np.zeros((frames, 32, 48, 3), np.uint8)
    for i in range(frames):
        pixels[i, 8:24, 2 * i : 2 * i + 12] = (220, 40, 40)
    return write_video(path, pixels, 16)


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the run should have ended before")

    monkeypatch.setattr(cli, "load_pipeline", refuse)


def task_list(path: Path, tasks: list[dict]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks), encoding="utf-8")
    return path


def error_lines(capsys) -> list[str]:
    return stderr_lines(capsys.readouterr().err)


def test_final_output_follows_the_suffix_fix_up():
    def resolved(**fields) -> object:
        return resolve_request(GenerationRequest(prompt=PROMPT, **fields))

    assert final_output(resolved(task_type="t2i", output="a.mp4")) == Path("a.png")
    assert final_output(resolved(task_type="t2v", output="a.png")) == Path("a.mp4")
    assert final_output(resolved(task_type="t2v", output="a", num_frames=1)) == Path("a.png")
    assert final_output(resolved(task_type="t2v", output="a.mov")) == Path("a.mov")


def test_a_directory_output_is_checked_where_the_job_writes(tmp_path):
    """An existing ``DIR/output.mp4`` is what a directory output replaces, so it is what is refused."""
    folder = tmp_path / "out"
    folder.mkdir()
    task = resolve_request(GenerationRequest(prompt=PROMPT, task_type="t2v", output=str(folder)))
    assert final_output(task) == folder / "output.mp4"
    (folder / "output.mp4").write_bytes(b"x")
    checked = check_outputs([task])
    assert isinstance(checked.tasks[0], BerniniError) and "output.mp4" in str(checked.tasks[0])


def test_writability_is_tried_not_guessed(tmp_path):
    assert writable_problem(tmp_path / "new" / "deeper" / "x.mp4") is None
    assert not (tmp_path / "new").exists(), "the check creates no folders"
    assert "is not a folder" in writable_problem(Path("/etc/hostname/x.mp4"))
    (tmp_path / "dir.mp4").mkdir()
    assert "is a directory" in writable_problem(tmp_path / "dir.mp4")
    proc_problem = writable_problem(Path("/proc/x.mp4"))  # os.access says yes as root; creating a file says no
    assert proc_problem is not None and "/proc" in proc_problem
    assert list(tmp_path.iterdir()) == [tmp_path / "dir.mp4"], "the probe file is removed"


def test_unwritable_output_fails_before_loading(tmp_path, no_model, capsys):
    rc = main(["generate", "--prompt", PROMPT, *TINY, "--output", "/etc/hostname/x.mp4"])
    lines = error_lines(capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:") and "/etc/hostname" in lines[0]
    assert "not a folder" in lines[0]


def test_an_image_given_as_video_fails_before_loading(tmp_path, no_model, capsys):
    from bernini.io.output import write_image

    image = write_image(tmp_path / "still.png", np.zeros((32, 48, 3), np.uint8))
    rc = main(["generate", "--prompt", PROMPT, "--video", str(image), *TINY, "--output", str(tmp_path / "o.mp4")])
    lines = error_lines(capsys)
    assert rc == 2 and len(lines) == 1 and "1 frame(s), at least 5" in lines[0] and "--image" in lines[0]


def test_existing_output_is_refused_without_overwrite(tiny_bundle, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"precious")
    args = ["generate", "--config", str(tiny_bundle), "--prompt", PROMPT, "--task_type", "t2v", *TINY]
    with monkeypatch.context() as patch:
        patch.setattr(cli, "load_pipeline", lambda *a, **k: pytest.fail("loaded"))
        rc = main([*args, "--output", str(out)])
    lines = error_lines(capsys)
    assert rc == 2 and len(lines) == 1 and "exists" in lines[0] and "--overwrite" in lines[0]
    assert out.read_bytes() == b"precious"
    # a sidecar alone counts too: it would be replaced
    image_out = tmp_path / "p.png"
    (tmp_path / "p.png.json").write_text("{}")
    rc = main([*args, "--task_type", "t2i", "--output", str(image_out)])
    assert rc == 2 and "p.png.json exists" in error_lines(capsys)[0]
    assert main([*args, "--output", str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:8] != b"precious" and (tmp_path / "o.mp4.json").is_file()


def test_upstream_scripts_overwrite_with_one_note(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"old")
    args = ["--config", str(tiny_bundle), "--prompt", PROMPT, "--task_type", "t2v", *TINY, "--output", str(out)]
    assert upstream_script_main(args, prog="infer_single_gpu.py") == 0
    notes = [line for line in error_lines(capsys) if line.startswith("note:")]
    assert len(notes) == 1 and "infer_single_gpu.py replaces existing outputs" in notes[0] and str(out) in notes[0]
    assert out.read_bytes() != b"old"


def test_skip_existing_decides_before_loading(tmp_path, no_model, capsys):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"done")
    (tmp_path / "o.mp4.json").write_text("{}")
    rc = main(["generate", "--prompt", PROMPT, "--task_type", "t2v", *TINY, "--output", str(out), "--skip_existing"])
    assert rc == 0 and "skipped" in capsys.readouterr().err and out.read_bytes() == b"done"


def test_duplicate_outputs_after_suffix_fix_up_refuse_the_list(tmp_path, no_model, capsys):
    tasks = task_list(
        tmp_path / "tasks.jsonl",
        [
            {"prompt": PROMPT, "task_type": "t2i", "output": str(tmp_path / "a.mp4")},  # becomes a.png
            {"prompt": PROMPT, "task_type": "t2v", "output": str(tmp_path / "b.mp4")},
            {"prompt": PROMPT, "task_type": "t2i", "output": str(tmp_path / "a.png")},
        ],
    )
    rc = main(["generate", "--inputs", str(tasks), *TINY])
    lines = error_lines(capsys)
    assert rc == 2 and len(lines) == 1 and "tasks 1 and 3" in lines[0] and "a.png" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks.jsonl"]


def test_auto_numbering_collision_is_refused(tmp_path, no_model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tasks = task_list(
        tmp_path / "tasks.jsonl",
        [
            {"prompt": PROMPT, "task_type": "t2v"},  # numbered outputs/output_000.mp4
            {"prompt": PROMPT, "task_type": "t2v", "output": "outputs/output_000.mp4"},
        ],
    )
    rc = main(["generate", "--inputs", str(tasks), *TINY])
    lines = error_lines(capsys)
    assert rc == 2 and len(lines) == 1 and "tasks 1 and 2" in lines[0] and "output_000.mp4" in lines[0]


def test_explicit_output_with_a_task_list_is_honoured_or_refused(tiny_bundle, tmp_path, capsys):
    plain = task_list(tmp_path / "plain.jsonl", [{"prompt": PROMPT, "task_type": "t2v"}] * 2)
    base = tmp_path / "runs" / "clip.mp4"
    rc = main(["generate", "--config", str(tiny_bundle), "--inputs", str(plain), *TINY, "--output", str(base)])
    assert rc == 0 and sorted(p.name for p in base.parent.glob("*.mp4")) == ["clip_000.mp4", "clip_001.mp4"]
    own = task_list(tmp_path / "own.jsonl", [{"prompt": PROMPT, "output": str(tmp_path / "mine.mp4")}])
    capsys.readouterr()
    rc = main(["generate", "--inputs", str(own), *TINY, "--output", str(base)])
    lines = error_lines(capsys)
    assert rc == 2 and len(lines) == 1 and "--output" in lines[0] and "task(s) 1" in lines[0]


def test_a_bad_task_keeps_its_slot_and_all_bad_exits_2(tmp_path, no_model, capsys):
    tasks = task_list(
        tmp_path / "tasks.jsonl",
        [
            {"prompt": PROMPT, "task_type": "t2v", "output": "/etc/hostname/a.mp4"},
            {"prompt": PROMPT, "task_type": "v2v", "video": str(tmp_path / "missing.mp4"), "output": "b.mp4"},
        ],
    )
    rc = main(["generate", "--inputs", str(tasks), *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "task 1/2" in err and "/etc/hostname" in err and "task 2/2" in err and "not found" in err


def test_existing_output_in_a_list_fails_its_slot_only(tiny_bundle, tmp_path, capsys):
    (tmp_path / "keep.mp4").write_bytes(b"keep")
    tasks = task_list(
        tmp_path / "tasks.jsonl",
        [
            {"prompt": PROMPT, "task_type": "t2v", "output": str(tmp_path / "keep.mp4")},
            {"prompt": PROMPT, "task_type": "t2v", "output": str(tmp_path / "new.mp4")},
        ],
    )
    rc = main(["generate", "--config", str(tiny_bundle), "--inputs", str(tasks), *TINY])
    err = capsys.readouterr().err
    assert rc == 1 and "task 1/2: " in err and "keep.mp4 exists" in err and "1 of 2 task(s) succeeded" in err
    assert (tmp_path / "keep.mp4").read_bytes() == b"keep" and (tmp_path / "new.mp4").is_file()


def test_check_outputs_lists_what_overwrite_replaces(tmp_path):
    plans = [resolve_request(GenerationRequest(prompt=PROMPT, task_type="t2v", output=str(tmp_path / "x.mp4")))]
    (tmp_path / "x.mp4").write_bytes(b"x")
    refused = check_outputs(plans)
    assert isinstance(refused.tasks[0], BerniniError) and refused.runnable == []
    allowed = check_outputs(plans, overwrite=True)
    assert allowed.replaced == [tmp_path / "x.mp4"] and allowed.runnable == [0]
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "frame_00000.png").write_bytes(b"f")
    (tmp_path / "x.mp4").unlink()
    refused = check_outputs(plans, save_frames=frames)
    assert isinstance(refused.tasks[0], BerniniError) and "frame_00000.png exists" in str(refused.tasks[0])


def test_too_short_video_fails_the_probe(tmp_path):
    """The media check counts real decoded frames: a 12-frame clip passes, a 3-frame one does not."""
    from bernini.io.media import probe_media

    probe_media(write_clip(tmp_path / "ok.mp4", frames=12), "video")
    with pytest.raises(BerniniError, match="3 frame"):
        probe_media(write_clip(tmp_path / "short.mp4", frames=3), "video")
