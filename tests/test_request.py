"""Requests: case files and task lists turn bad input into one-line errors; the CLI keeps upstream's defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bernini.case_files import load_case, load_task_list, numbered_output
from bernini.errors import BerniniError
from bernini.frontends.cli import build_parser
from bernini.request import CASE_KEYS, GenerationRequest
from bernini.resolve import resolve_request

PROMPT = "Add a snowman. The meadow, the person and the camera stay unchanged."


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- case files


def test_case_keys_are_upstreams() -> None:
    assert CASE_KEYS == ("task_type", "guidance_mode", "prompt", "video", "image", "images", "output")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"prompt": PROMPT, "seed": 1}, "unknown key(s) seed"),
        ({"prompt": PROMPT, "num_frames": 9, "fps": 8}, "unknown key(s) fps, num_frames"),
        ({"task_type": "v2v"}, "non-empty 'prompt'"),
        ({"prompt": ""}, "non-empty 'prompt'"),
        ({"prompt": 3}, "non-empty 'prompt'"),
        ([{"prompt": PROMPT}], "one JSON object"),
        ("{not json", "not valid JSON"),
        ({"prompt": PROMPT, "guidance_mode": "cfg"}, "unknown guidance_mode 'cfg'"),
        ({"prompt": PROMPT, "task_type": 2}, "'task_type' must be a string"),
        ({"prompt": PROMPT, "video": 3}, "'video' must be a path"),
        ({"prompt": PROMPT, "images": [1, 2]}, "'images' must be a list of paths"),
        ({"prompt": PROMPT, "image": ["a.png"]}, "'image' must be a path"),
    ],
)
def test_bad_case_files(tmp_path: Path, data: Any, match: str, one_line_error) -> None:
    one_line_error(load_case, write_json(tmp_path / "case.json", data), match=match)


def test_missing_case_file(tmp_path: Path, one_line_error) -> None:
    one_line_error(load_case, tmp_path / "nope.json", match="does not exist")


def test_case_media_resolve_relative_to_the_case_file(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "cases"
    (folder / "media").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4", "src.png", "r0.png"):
        (folder / "media" / name).write_bytes(b"x")
    case = write_json(
        folder / "case.json",
        {
            "prompt": PROMPT,
            "video": ["media/a.mp4", "media/b.mp4"],
            "image": "media/src.png",
            "images": ["media/r0.png", "media/missing.png"],
            "output": "outputs/x.mp4",
        },
    )
    monkeypatch.chdir(tmp_path)
    loaded = load_case(case)
    assert loaded["video"] == [str(folder / "media" / "a.mp4"), str(folder / "media" / "b.mp4")]
    assert loaded["image"] == str(folder / "media" / "src.png")
    # A path found nowhere is kept as written, so the error names what the user wrote.
    assert loaded["images"] == [str(folder / "media" / "r0.png"), "media/missing.png"]
    assert loaded["output"] == "outputs/x.mp4"  # outputs stay relative to the CWD
    # A path that exists relative to the CWD wins.
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.mp4").write_bytes(b"x")
    assert load_case(case)["video"][0] == "media/a.mp4"


def test_case_video_string_becomes_a_list(tmp_path: Path) -> None:
    loaded = load_case(write_json(tmp_path / "c.json", {"prompt": PROMPT, "video": "v.mp4", "task_type": "v2v"}))
    assert loaded == {"prompt": PROMPT, "task_type": "v2v", "video": ["v.mp4"]}


def test_cli_defaults_are_upstreams() -> None:
    """Spec section 3.2: the command-line defaults (not the pipeline function's)."""
    args = build_parser().parse_args(["generate"])
    defaults = GenerationRequest.builtin()
    resolved = resolve_request(GenerationRequest(prompt=PROMPT)).request_record()
    expected = {
        "num_inference_steps": 40,
        "omega_vid": 1.25,
        "omega_img": 4.5,
        "omega_txt": 4.0,
        "omega_scale": 0.8,
        "flow_shift": 5.0,
        "eta": 0.5,
        "norm_threshold": [50.0, 50.0, 50.0],
        "momentum": 0.0,
        "seed": 42,
        "num_frames": 81,
        "fps": 16.0,
        "max_image_size": 848,
        "height": 480,
        "width": 848,
    }
    for name, value in expected.items():
        assert defaults[name] == value and resolved[name] == value, name
        assert getattr(args, name) is None, name  # a flag not given is None: the built-in default fills it
    aliases = build_parser().parse_args(["generate", "--omega_V", "1", "--omega_I", "2", "--omega_TI", "3"])
    assert (aliases.omega_vid, aliases.omega_img, aliases.omega_txt) == (1.0, 2.0, 3.0)


# ------------------------------------------------------------------------------------- task lists


def test_task_list_keeps_bad_entries_in_their_slots(tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "v.mp4").write_bytes(b"x")
    lines = [
        json.dumps({"prompt": PROMPT, "video": "media/v.mp4", "guidance_mode": "v2v", "seed": 3}),
        "{broken",
        json.dumps({"prompt": PROMPT, "colour": "red"}),
        "",
        json.dumps(["not", "an", "object"]),
        json.dumps({"prompt": PROMPT, "images": [3]}),
        json.dumps({"prompt": PROMPT, "num_frames": 9}),
    ]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tasks = load_task_list(path)
    assert len(tasks) == 6
    first = tasks[0]
    assert isinstance(first, dict)
    assert first["video"] == [str(tmp_path / "media" / "v.mp4")]
    assert (first["guidance_mode"], first["seed"]) == ("v2v", 3)
    errors = [str(t) for t in tasks[1:5]]
    assert all(isinstance(t, BerniniError) for t in tasks[1:5])
    assert "line 2" in errors[0] and "invalid JSON" in errors[0]
    assert "line 3" in errors[1] and "colour" in errors[1]
    assert "line 5" in errors[2] and "JSON object" in errors[2]
    assert "line 6" in errors[3] and "'images'" in errors[3]
    assert tasks[5] == {"prompt": PROMPT, "num_frames": 9}


def test_task_list_json_array_and_object(tmp_path: Path) -> None:
    array = write_json(tmp_path / "a.json", [{"prompt": PROMPT}, {"prompt": PROMPT, "output": "b.mp4"}])
    assert load_task_list(array) == [{"prompt": PROMPT}, {"prompt": PROMPT, "output": "b.mp4"}]
    single = write_json(tmp_path / "s.json", {"prompt": PROMPT})
    assert load_task_list(single) == [{"prompt": PROMPT}]


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("missing.jsonl", None, "does not exist"),
        ("missing.json", None, "does not exist"),
        ("empty.jsonl", "\n\n", "holds no tasks"),
        ("empty.json", "[]", "holds no tasks"),
        ("scalar.json", "3", "JSON array"),
        ("bad.json", "[{", "not valid JSON"),
    ],
)
def test_bad_task_lists(tmp_path: Path, name: str, text: str | None, match: str, one_line_error) -> None:
    if text is not None:
        (tmp_path / name).write_text(text, encoding="utf-8")
    one_line_error(load_task_list, tmp_path / name, match=match)


def test_numbered_outputs_are_distinct() -> None:
    names = [numbered_output("outputs/output.mp4", i, 12) for i in range(12)]
    assert len(set(names)) == 12
    assert names[0] == str(Path("outputs/output_000.mp4")) and names[11] == str(Path("outputs/output_011.mp4"))
    assert numbered_output("outputs/output.mp4", 0, 1) == "outputs/output.mp4"
