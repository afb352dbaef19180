"""The plan: validation turns bad requests into one-line errors and resolves every default once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bernini.request import GenerationRequest
from bernini.resolve import infer_task_type, resolve_request, with_model_defaults
from bernini.resolved import ModelDefaults, SourceIdPolicy
from bernini.sampling.guidance import GUIDANCE_MODES
from bernini.tasks import TASKS

PROMPT = "Add a snowman. The meadow, the person and the camera stay unchanged."


@pytest.fixture(autouse=True)
def media_files(tmp_path, monkeypatch):
    """Requests name media by path; validation checks they exist, so give the names real (tiny) files."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in ("a.mp4", "b.mp4", "a.png", "r.png", "r1.png", "r2.png", "img.png", "ref.png", "v.mp4", "s.png"):
        (cwd / name).write_bytes(b"x")


# ----------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"prompt": ""}, "prompt is required"),
        ({"prompt": "  \n "}, "prompt is required"),
        ({"task_type": "x2v"}, "unknown task_type 'x2v'"),
        ({"guidance_mode": "cfg"}, "unknown guidance_mode 'cfg'"),
        ({"task_type": "t2v", "guidance_mode": "rv2v"}, "guidance_mode rv2v needs a video and a reference image"),
        ({"task_type": "t2v", "guidance_mode": "v2v_apg"}, "guidance_mode v2v_apg needs"),
        ({"task_type": "t2v", "guidance_mode": "r2v_apg"}, "needs reference images"),
        ({"task_type": "v2v", "video": ["a.mp4"], "guidance_mode": "r2v_apg"}, "needs reference images"),
        ({"task_type": "t2v", "video": ["a.mp4"]}, "takes no video"),
        ({"task_type": "v2v"}, "needs a source video"),
        ({"task_type": "i2i"}, "needs a source image"),
        ({"task_type": "rv2v", "video": ["a.mp4"]}, "needs at least one reference image"),
        ({"task_type": "r2v"}, "needs at least one reference image"),
        ({"task_type": "t2i", "image": "a.png"}, "takes no --image"),
        ({"task_type": "t2v", "images": ["a.png"]}, "takes no --images"),
        ({"height": 0}, "height must be between 16"),
        ({"width": 10**6}, "width must be between 16"),
        ({"num_frames": 0}, "num_frames must be at least 1"),
        ({"num_frames": -5}, "num_frames must be at least 1"),
        ({"num_frames": 10**6}, "num_frames must be at most"),
        ({"max_image_size": 8}, "max_image_size must be at least 16"),
        ({"num_inference_steps": 0}, "num_inference_steps must be at least 1"),
        ({"fps": 0}, "fps must be positive"),
        ({"flow_shift": -1}, "flow_shift must be positive"),
        ({"seed": -2}, "seed must be between"),  # -1 draws a random seed
        ({"seed": "x"}, "seed must be a number"),
        ({"num_frames": 8.5}, "num_frames must be an integer"),
        ({"num_frames": True}, "num_frames must be an integer"),
        ({"omega_txt": float("nan")}, "omega_txt must be finite"),
        ({"norm_threshold": []}, "norm_threshold needs at least one value"),
        ({"neg_prompt": 3}, "neg_prompt must be a string"),  # None is "not given": the default fills it
    ],
)
def test_bad_requests(fields: dict[str, Any], match: str, one_line_error) -> None:
    one_line_error(resolve_request, GenerationRequest(**{"prompt": PROMPT, **fields}), match=match)


@pytest.mark.parametrize(("task", "mode"), [(name, spec.guidance_mode) for name, spec in TASKS.items()])
def test_default_guidance_mode_per_task(task: str, mode: str) -> None:
    media = {
        "t2i": {},
        "t2v": {},
        "i2i": {"image": "a.png"},
        "v2v": {"video": "a.mp4"},
        "mv2v": {"video": "a.mp4"},
        "rv2v": {"video": "a.mp4", "images": ["r.png"]},
        "ads2v": {"video": ["a.mp4", "b.mp4"]},
        "r2v": {"images": ["r.png"]},
    }[task]
    resolved = resolve_request(GenerationRequest(prompt=PROMPT, task_type=task, **media))
    assert resolved.guidance.mode.name == mode and mode in GUIDANCE_MODES
    assert resolved.geometry.frames == (1 if task in ("t2i", "i2i") else 81)


def test_spec_defaults_for_the_task_table() -> None:
    expected = {"t2i": "t2v_apg", "i2i": "v2v", "t2v": "t2v_apg", "v2v": "v2v_apg", "mv2v": "v2v_apg"}
    expected |= {"rv2v": "rv2v", "r2v": "r2v_apg", "ads2v": "v2v_apg"}
    assert {name: spec.guidance_mode for name, spec in TASKS.items()} == expected


@pytest.mark.parametrize(
    ("given", "used"), [(1, 1), (2, 1), (5, 5), (8, 9), (10, 9), (81, 81), (82, 81), (84, 85), (121, 121)]
)
def test_num_frames_snap_to_4k_plus_1(given: int, used: int) -> None:
    assert resolve_request(GenerationRequest(prompt=PROMPT, task_type="t2v", num_frames=given)).geometry.frames == used


def test_image_tasks_force_one_frame() -> None:
    assert resolve_request(GenerationRequest(prompt=PROMPT, task_type="t2i", num_frames=81)).geometry.frames == 1


@pytest.mark.parametrize(
    ("media", "task"),
    [
        ({}, "t2v"),
        ({"video": ["a.mp4"]}, "v2v"),
        ({"video": ["a.mp4"], "images": ["r.png"]}, "rv2v"),
        ({"video": ["a.mp4", "b.mp4"]}, "ads2v"),
        ({"images": ["r.png"]}, "r2v"),
        ({"image": "s.png"}, "i2i"),
    ],
)
def test_task_inferred_from_media(media: dict[str, Any], task: str) -> None:
    assert infer_task_type(GenerationRequest(prompt=PROMPT, **media)) == task
    assert resolve_request(GenerationRequest(prompt=PROMPT, **media)).task.name == task


def test_validation_normalises_types() -> None:
    resolved = resolve_request(
        GenerationRequest(
            prompt=PROMPT, video="a.mp4", images="r.png", seed="7", num_frames=9.0, norm_threshold=30, omega_txt="5"
        )
    )
    assert resolved.media.video == ("a.mp4",) and resolved.media.images == ("r.png",)
    assert (resolved.seed, resolved.geometry.frames, resolved.guidance.weights.txt) == (7, 9, 5.0)
    assert resolved.guidance.apg.norm_threshold == (30.0, 30.0)
    with pytest.raises(AttributeError):
        resolved.seed = 3  # frozen: later stages cannot change what was validated


def test_request_record_is_json_ready() -> None:
    resolved = resolve_request(
        GenerationRequest(prompt=PROMPT, video=[np.zeros((5, 16, 16, 3), np.uint8)], images=[Path("r.png")]),
        ModelDefaults(),
    )
    data = resolved.request_record()
    json.dumps(data)
    assert data["video"] == ["<ndarray (5, 16, 16, 3)>"] and data["images"] == ["r.png"]


def test_request_record_has_every_request_field_resolved() -> None:
    resolved = resolve_request(GenerationRequest(prompt=PROMPT, task_type="t2i", num_frames=9), ModelDefaults())
    data = resolved.request_record()
    assert list(data) == list(GenerationRequest.field_names())
    assert (data["task_type"], data["guidance_mode"], data["num_frames"]) == ("t2i", "t2v_apg", 1)
    assert (data["use_unipc"], data["use_src_tgt_id"], data["interpolate_src_id"], data["max_trained_src_id"]) == (
        True,
        True,
        True,
        5,
    )


def test_model_defaults_fill_only_what_the_request_leaves_open(one_line_error) -> None:
    bundle = ModelDefaults("flow_match_euler", SourceIdPolicy(enabled=False, interpolate=False, max_trained=3))
    open_plan = resolve_request(GenerationRequest(prompt=PROMPT))
    assert not open_plan.filled and open_plan.source_ids is None
    filled = with_model_defaults(open_plan, bundle)
    assert filled.scheduler.name == "flow_match_euler"
    assert filled.source_ids == SourceIdPolicy(False, False, 3)
    explicit = resolve_request(
        GenerationRequest(prompt=PROMPT, use_unipc=True, use_src_tgt_id=True, max_trained_src_id=7), bundle
    )
    assert explicit.scheduler.name == "unipc"
    assert explicit.source_ids == SourceIdPolicy(True, False, 7)
    one_line_error(resolve_request, GenerationRequest(prompt=PROMPT, max_trained_src_id=0), match="max_trained_src_id")


def test_t5_text_follows_the_prompt() -> None:
    resolved = resolve_request(GenerationRequest(prompt="a  red\nfox", task_type="t2v"))
    assert resolved.t5_text == TASKS["t2v"].t5_prefix + "a red fox"
    assert resolved.with_prompt("a blue fox").t5_text == TASKS["t2v"].t5_prefix + "a blue fox"
    assert resolve_request(GenerationRequest(prompt="x", system_prompt="Custom.")).t5_text == "Custom.x"


# ------------------------------------------------------------------ seeds (issue 14, item 9)


@pytest.mark.parametrize("seed", [2**53 + 1, 2**63 - 1, 0, str(2**53 + 1), np.int64(2**62 + 3)])
def test_seeds_stay_exact_integers(seed) -> None:
    assert resolve_request(GenerationRequest(prompt=PROMPT, seed=seed)).seed == int(seed)


def test_random_seed_is_drawn_in_range_and_kept() -> None:
    seeds = {resolve_request(GenerationRequest(prompt=PROMPT, seed=-1)).seed for _ in range(8)}
    assert len(seeds) > 1 and all(0 <= s < 2**63 for s in seeds)
    resolved = resolve_request(GenerationRequest(prompt=PROMPT, seed=-1))
    assert resolved.request_record()["seed"] == resolved.seed != -1


@pytest.mark.parametrize(("seed", "match"), [(2**63, "between 0 and 2**63-1"), (1.5, "integer"), ("1e400", "finite")])
def test_seeds_out_of_range(seed, match, one_line_error) -> None:
    one_line_error(resolve_request, GenerationRequest(prompt=PROMPT, seed=seed), match=match)
