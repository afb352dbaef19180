"""Every value bernini changes from what was asked prints one ``note:`` line and is kept, asked and used, in the
sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bernini.adjustments import Adjustment, changed
from bernini.frontends.cli import main
from bernini.io.output import output_path, write_video

PROMPT = "a red ball rolls across a grey floor"


def notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("note: ")]


def adjustments(sidecar: Path) -> list[tuple]:
    record = json.loads(sidecar.read_text(encoding="utf-8"))
    return [(a["name"], a["asked"], a["used"]) for a in record["adjustments"]]


def test_adjustment_note_and_record():
    adjustment = Adjustment("num_frames", 10, 9, "the VAE takes 4k+1 frames")
    assert adjustment.note() == "note: num_frames 10 -> 9: the VAE takes 4k+1 frames"
    assert adjustment.record() == {"name": "num_frames", "asked": 10, "used": 9, "why": "the VAE takes 4k+1 frames"}
    assert changed("height", 32, 32, "x") == [] and len(changed("height", 33, 32, "x")) == 1


def test_output_path_names_suffix_and_directory_changes(tmp_path: Path):
    assert output_path(tmp_path / "a.mp4", 5) == (tmp_path / "a.mp4", [])
    target, (note,) = output_path(tmp_path / "a.mp4", 1)
    assert target == tmp_path / "a.png" and (note.asked, note.used) == (str(tmp_path / "a.mp4"), str(target))
    target, (note,) = output_path(f"{tmp_path}/", 5)
    assert target == tmp_path / "output.mp4" and "directory" in note.why
    (tmp_path / "d").mkdir()
    target, (note,) = output_path(tmp_path / "d", 1)
    assert target == tmp_path / "d" / "output.png"


def test_source_video_frames_size_directory_and_long_prompt_each_print_a_note(tiny_bundle, tmp_path, capsys):
    pixels = np.zeros((12, 32, 48, 3), np.uint8)
    pixels[:, 8:24, 4:20] = (220, 40, 40)
    clip = write_video(tmp_path / "clip.mp4", pixels, 16)
    folder = tmp_path / "out"
    folder.mkdir()
    long_prompt = " ".join(["an elaborate scene with many small details"] * 120)
    args = ["generate", "--config", str(tiny_bundle), "--video", str(clip), "--task_type", "v2v"]
    args += ["--prompt", long_prompt, "--num_frames", "22", "--height", "16", "--width", "16"]
    args += ["--num_inference_steps", "1", "--output", str(folder)]
    assert main(args) == 0
    err = capsys.readouterr().err
    written = folder / "output.mp4"
    recorded = adjustments(written.with_name("output.mp4.json"))
    names = [(name, asked, used) for name, asked, used in recorded if name != "prompt tokens"]
    assert names == [
        ("num_frames", 22, 21),  # 4k+1
        ("num_frames", 21, 9),  # the source has 12 frames at 16 fps: 9 as 4k+1
        ("height", 16, 32),  # taken from the source
        ("width", 16, 48),
        ("output", str(folder), str(written)),
    ]
    (prompt_cut,) = [a for a in recorded if a[0] == "prompt tokens"]
    assert prompt_cut[1] > 512 and prompt_cut[2] == 512
    assert len(notes(err)) == len(recorded) == 6
    assert f"note: output {folder} -> {written}: a directory was given; the file is named output.mp4" in err
    assert "note: num_frames 21 -> 9: the source video is shorter: it gives 9 frames (4k+1) at 16 fps" in err


def test_sizes_rounded_to_the_grid_and_image_suffix_print_notes(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "still.mp4"
    args = ["generate", "--config", str(tiny_bundle), "--task_type", "t2i", "--prompt", PROMPT]
    args += ["--height", "40", "--width", "20", "--num_inference_steps", "1", "--output", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    png = tmp_path / "still.png"
    assert adjustments(png.with_name("still.png.json")) == [
        ("height", 40, 32),
        ("width", 20, 16),
        ("output", str(out), str(png)),
    ]
    assert notes(err) == [
        "note: height 40 -> 32: sides are multiples of 16 pixels",
        "note: width 20 -> 16: sides are multiples of 16 pixels",
        f"note: output {out} -> {png}: one frame is written as an image",
    ]


def test_nothing_adjusted_means_no_note(tiny_bundle, tmp_path, capsys):
    args = ["generate", "--config", str(tiny_bundle), "--task_type", "t2v", "--prompt", PROMPT]
    args += ["--num_frames", "5", "--height", "16", "--width", "16", "--num_inference_steps", "1"]
    assert main([*args, "--output", str(tmp_path / "a.mp4")]) == 0
    assert notes(capsys.readouterr().err) == []
    assert adjustments(tmp_path / "a.mp4.json") == []
