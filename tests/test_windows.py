"""Context windows for long video (``--window_frames`` / ``--window_overlap``): the window layout and its blend
weights against independent formulas, FreeNoise shared noise, the windowed step (each window's own source slice,
RoPE from 0, the weighted mix at the seams), bit-identity when the clip fits in one window, and end-to-end runs of
every task through ``bernini generate`` with the sidecar and ``--replay``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from fakes import CacheContextExpert

from bernini.conditions import Conditions
from bernini.errors import BerniniError
from bernini.frontends.cli import main
from bernini.io.output import write_video
from bernini.io.video_read import read_video_frames
from bernini.models import transformer as transformer_module
from bernini.request import GenerationRequest
from bernini.resolve import resolve_request
from bernini.resolved import SourceIdPolicy
from bernini.sampling.guidance import GUIDANCE_MODES, Combo, GuidanceState, Weights
from bernini.sampling.sampler import BranchRunner, Experts, SamplingInputs, WindowedInputs, sample
from bernini.sampling.windows import (
    blend_weights,
    context_windows,
    pixel_span,
    shared_noise,
    source_span,
    window_spans,
)

TINY = dict(height=16, width=16, num_inference_steps=2)
# 33 frames are 9 latent frames; windows of 17 frames (5 latent) sharing 8 (2 latent): [0, 5), [2, 7), [4, 9)
LONG = dict(num_frames=33, window_frames=17, window_overlap=8)
THREE = [[0, 5], [2, 7], [4, 9]]


# ----------------------------------------------------------------------------------------- layout and weights
@pytest.mark.parametrize("total", [1, 5, 6, 9, 21, 22, 41, 60, 61, 100, 257])
@pytest.mark.parametrize(("size", "overlap"), [(5, 2), (21, 4), (21, 0), (21, 10), (3, 2)])
def test_windows_cover_every_frame_with_the_fewest_windows_sharing_at_least_the_overlap(total, size, overlap):
    spans = window_spans(total, size, overlap)
    if total <= size:
        assert spans == [(0, total)]
        return
    assert spans[0][0] == 0 and spans[-1][1] == total
    assert all(stop - start == size for start, stop in spans)
    assert all(b[0] > a[0] and a[1] - b[0] >= overlap for a, b in zip(spans, spans[1:], strict=False))
    assert len(spans) == math.ceil((total - size) / (size - overlap)) + 1  # fewer cannot cover with that overlap
    covered = set().union(*(range(start, stop) for start, stop in spans))
    assert covered == set(range(total))


@pytest.mark.parametrize(("total", "size", "overlap"), [(9, 5, 2), (41, 21, 4), (100, 21, 4), (61, 21, 8), (6, 5, 1)])
def test_blend_weights_sum_to_one_are_one_alone_and_change_by_at_most_one_over_the_overlap(total, size, overlap):
    spans = window_spans(total, size, overlap)
    weights = blend_weights(spans, total)
    assert weights.shape == (len(spans), total)
    assert torch.allclose(weights.sum(0), torch.ones(total, dtype=torch.float64), atol=1e-12)
    for index, (start, stop) in enumerate(spans):
        assert (weights[index, :start] == 0).all() and (weights[index, stop:] == 0).all()
        assert (weights[index, start:stop] > 0).all()
    alone = [f for f in range(total) if sum(start <= f < stop for start, stop in spans) == 1]
    assert alone and all(weights[:, f].max() == 1.0 for f in alone)
    assert (weights[:, 1:] - weights[:, :-1]).abs().max() <= 1 / overlap + 1e-9


def test_blend_weights_are_linear_ramps_across_a_shared_stretch():
    # two windows of 5 sharing 2 frames: (0, 5) and (3, 8); the ramp steps are centred: 1/4 and 3/4
    weights = blend_weights([(0, 5), (3, 8)], 8)
    expected = torch.tensor(
        [[1, 1, 1, 0.75, 0.25, 0, 0, 0], [0, 0, 0, 0.25, 0.75, 1, 1, 1]],
        dtype=torch.float64,
    )
    assert torch.equal(weights, expected)


def test_windows_in_pixel_frames_and_source_spans():
    assert context_windows(9, None, 16) == [(0, 9)]
    assert context_windows(9, 17, 8) == [(0, 5), (2, 7), (4, 9)]
    assert context_windows(21, 81, 16) == [(0, 21)]  # the clip fits: the plain run
    assert pixel_span((0, 5)) == (0, 17) and pixel_span((2, 7)) == (8, 17)
    assert source_span((2, 7), 9, 9) == (2, 7)
    assert source_span((2, 7), 9, 5) == (1, 4)  # floor(2·5/9), ceil(7·5/9)
    assert source_span((8, 9), 9, 3) == (2, 3)


def test_shared_noise_shuffles_each_new_stretch_from_one_window_earlier_and_keeps_one_window_as_is():
    noise = torch.randn(1, 4, 9, 2, 3, generator=torch.Generator().manual_seed(0))
    assert shared_noise(noise, [(0, 9)], 7) is noise
    spans = [(0, 5), (2, 7), (4, 9)]
    out = shared_noise(noise, spans, 7)
    assert torch.equal(out[:, :, :5], noise[:, :, :5])  # the first window's noise is the plain run's
    # frames 5 and 6 (new in window 2) are frames 0 and 1 shuffled; 7 and 8 (new in window 3) frames 2 and 3
    for new, earlier in (((5, 6), (0, 1)), ((7, 8), (2, 3))):
        got = sorted(out[0, 0, f, 0, 0].item() for f in new)
        assert got == sorted(out[0, 0, f, 0, 0].item() for f in earlier)
    assert torch.equal(out, shared_noise(noise, spans, 7))
    assert not torch.equal(out, shared_noise(noise, spans, 8)) or not torch.equal(out, shared_noise(noise, spans, 9))


# --------------------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"window_frames": 80}, "window_frames must be 4k\\+1"),
        ({"window_frames": 1}, "window_frames must be 4k\\+1 and at least 5"),
        ({"window_frames": 17, "window_overlap": 6}, "window_overlap must be a multiple of 4"),
        ({"window_frames": 9, "window_overlap": 8}, "smaller than window_frames - 1 = 8"),
        ({"window_frames": 17, "window_overlap": 16}, "smaller than window_frames - 1 = 16"),
        ({"window_frames": 17, "window_overlap": -4}, "window_overlap must be a multiple of 4"),
        ({"window_overlap": 8}, "--window_overlap needs --window_frames"),
        ({"window_frames": "many"}, "window_frames must be a number"),
    ],
)
def test_bad_window_settings_are_one_line_errors(values, match):
    with pytest.raises(BerniniError, match=match) as error:
        resolve_request(GenerationRequest(prompt="a boat", **values))
    assert "\n" not in str(error.value)


def test_window_settings_resolve_and_are_recorded_in_the_request():
    resolved = resolve_request(GenerationRequest(prompt="a boat", window_frames=81, window_overlap=12))
    assert (resolved.windows.frames, resolved.windows.overlap) == (81, 12)
    assert resolved.request_record()["window_frames"] == 81 and resolved.request_record()["window_overlap"] == 12
    short = resolve_request(GenerationRequest(prompt="a boat", window_frames=17))  # the default 16 leaves no advance
    assert short.windows.overlap == 8
    assert [(a.name, a.asked, a.used) for a in short.adjustments] == [("window_overlap", 16, 8)]
    plain = resolve_request(GenerationRequest(prompt="a boat"))
    assert plain.windows is None and plain.request_record()["window_frames"] is None


# ------------------------------------------------------------------------------------------ the windowed step
class SpyEuler(FlowMatchEulerDiscreteScheduler):
    """Flow-match Euler that keeps the velocity it is given."""

    velocities: list

    def step(self, model_output, timestep, sample, **kwargs):
        self.velocities.append(model_output.clone())
        return super().step(model_output, timestep, sample, **kwargs)


class ScopeRunner(BranchRunner):
    """A fake expert: each branch predicts a constant that names its window (``inputs.scope``) and branch."""

    def __call__(self, expert, inputs, branches, latents, t):
        window = int(inputs.scope[1:-1]) if inputs.scope else 9
        return [torch.full_like(latents, 10.0 * window + i + 1) for i in range(len(branches))]


def test_blended_velocity_at_the_seams_is_the_weighted_mix_of_the_windows():
    latents = torch.randn(1, 2, 9, 2, 2, generator=torch.Generator().manual_seed(1))
    inputs = SamplingInputs(
        latents=latents,
        combos=Conditions().combos(SourceIdPolicy()),
        text={},
        mode=GUIDANCE_MODES["t2v"],
        weights=Weights(1.25, 4.5, 4.0),
        omega_scale=0.8,
        state=GuidanceState(),
    )
    scheduler = SpyEuler(num_train_timesteps=1000, shift=5.0)
    scheduler.velocities = []
    windows = WindowedInputs(inputs, [(0, 5), (2, 7), (4, 9)])
    sample(Experts(high="one"), scheduler, inputs, 1, runner=ScopeRunner(), windows=windows)
    velocity = scheduler.velocities[0][0, 0, :, 0, 0].double()
    # text CFG: u + 4·(c − u) with u = 10w + 1, c = 10w + 2 → 10w + 5 in window w
    guided = [5.0, 15.0, 25.0]
    # by hand: the windows start at 0, 2, 4, so neighbours share 3 frames, ramped 1/6, 1/2, 5/6 (centred steps);
    # frame 4 is in all three: raw 1/6 (window 0's last), 5/6 (window 1, both its ramps), 1/6 → / 7/6
    w0 = [1, 1, 5 / 6, 1 / 2, 1 / 7, 0, 0, 0, 0]
    w1 = [0, 0, 1 / 6, 1 / 2, 5 / 7, 1 / 2, 1 / 6, 0, 0]
    w2 = [0, 0, 0, 0, 1 / 7, 1 / 2, 5 / 6, 1, 1]
    expected = torch.tensor(
        [a * guided[0] + b * guided[1] + c * guided[2] for a, b, c in zip(w0, w1, w2, strict=True)],
        dtype=torch.float64,
    )
    assert torch.allclose(velocity, expected, atol=1e-5), (velocity, expected)
    # continuity: the guided values differ by 10 between windows; no frame-to-frame jump exceeds half of that
    assert (velocity[1:] - velocity[:-1]).abs().max() <= 10 / 2 + 1e-5


class RecordingRunner(BranchRunner):
    """The real forwards, recording each window's segments and target."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list, torch.Tensor]] = []

    def __call__(self, expert, inputs, branches, latents, t):
        for branch in branches:
            self.calls.append((inputs.scope, list(inputs.combos[branch.combo]), latents.clone()))
        return super().__call__(expert, inputs, branches, latents, t)


def test_each_window_forward_gets_its_own_source_slice_the_plain_source_ids_and_rope_from_zero(tiny_pipe, monkeypatch):
    video = np.random.default_rng(3).integers(0, 255, (33, 16, 16, 3), dtype=np.uint8)
    request = GenerationRequest(prompt="edit", task_type="v2v", video=[video], **TINY, **LONG)
    resolved = tiny_pipe.resolve(request)
    source = tiny_pipe.encode_conditions(resolved).conditions.videos[0]
    grids: list[tuple] = []
    real = transformer_module.packed_rope

    def spy(g, ids, head_dim):
        grids.append((list(g), list(ids)))
        return real(g, ids, head_dim)

    monkeypatch.setattr(transformer_module, "packed_rope", spy)
    for expert in tiny_pipe.experts:
        expert.runtime.rope_cache.clear()
    runner = RecordingRunner()
    monkeypatch.setattr(tiny_pipe.runtime, "branch_runner", runner)
    out = tiny_pipe.generate(resolved)
    assert out.parameters["resolved"]["windows"]["latent_windows"] == THREE
    plain_ids = out.parameters["resolved"]["source_ids"]
    seen = set()
    for scope, segments, target in runner.calls:
        start, stop = THREE[int(scope[1:-1])]
        seen.add(scope)
        assert target.shape[2] == stop - start
        videos = [s for s in segments if s.latent.shape[2] > 1]
        assert len(videos) == 1 and torch.equal(videos[0].latent, source[:, :, start:stop])
        assert [s.source_id for s in segments] == plain_ids["VI"]
    assert seen == {"w0:", "w1:", "w2:"}
    # every packed layout the experts built: the video and the target each 5 latent frames (positions 0…4 —
    # rope_angles counts from 0 per segment), never the whole clip's 9
    assert grids and all(grid[0] == 5 for layout, _ in grids for grid in layout)


# ------------------------------------------------------------------------------------------------ end to end
def test_a_clip_that_fits_in_one_window_is_bit_identical_with_windows_on(tiny_pipe):
    plain = tiny_pipe("a boat", task_type="t2v", seed=5, num_frames=17, **TINY)
    for frames in (17, 81):
        windowed = tiny_pipe("a boat", task_type="t2v", seed=5, num_frames=17, window_frames=frames, **TINY)
        assert np.array_equal(plain.frames, windowed.frames)
        assert windowed.parameters["resolved"]["windows"]["count"] == 1
    assert "windows" not in plain.parameters["resolved"]


def read_sidecar(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


CLI_TINY = ["--height", "16", "--width", "16", "--num_inference_steps", "2", "--window_frames", "17"]
CLI_TINY += ["--window_overlap", "8"]


def test_three_window_t2v_and_v2v_through_bernini_generate_and_replay(tiny_bundle, tmp_path, capsys):
    clip = (np.random.default_rng(4).random((33, 16, 16, 3))).astype(np.float32)
    write_video(tmp_path / "long.mp4", clip, 16)
    runs = {
        "t2v": ["--task_type", "t2v", "--num_frames", "33"],
        "v2v": ["--task_type", "v2v", "--video", str(tmp_path / "long.mp4"), "--num_frames", "33"],
    }
    for name, args in runs.items():
        output = tmp_path / f"{name}.mp4"
        argv = ["generate", "--config", str(tiny_bundle), "--prompt", "a red boat", "--output", str(output)]
        assert main([*argv, *args, *CLI_TINY]) == 0, capsys.readouterr().err
        record = read_sidecar(tmp_path / f"{name}.mp4.json")
        windows = record["resolved"]["windows"]
        assert windows == {
            "frames": 17,
            "overlap": 8,
            "count": 3,
            "latent_windows": THREE,
            "shared_noise": True,
        }
        assert record["request"]["window_frames"] == 17 and record["request"]["window_overlap"] == 8
        assert read_video_frames(output)[0].shape[0] == 33
        assert record["resolved"]["forwards"] == 2 * 3 * 2  # two branches, three windows, two steps
    # the v2v run replays frame for frame
    sidecar = tmp_path / "v2v.mp4.json"
    assert main(["generate", "--replay", str(sidecar)]) == 0, capsys.readouterr().err
    replayed = tmp_path / "v2v_replay.mp4"
    assert replayed.read_bytes() == (tmp_path / "v2v.mp4").read_bytes()
    assert read_sidecar(replayed.with_name("v2v_replay.mp4.json"))["resolved"] == read_sidecar(sidecar)["resolved"]


@pytest.mark.parametrize("task", ["mv2v", "ads2v", "rv2v", "r2v"])
def test_every_video_task_runs_windowed(tiny_pipe, task):
    rng = np.random.default_rng(6)
    video = rng.integers(0, 255, (33, 16, 16, 3), dtype=np.uint8)
    image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    media = {
        "mv2v": {"video": [video]},
        "ads2v": {"video": [video, rng.integers(0, 255, (17, 16, 16, 3), dtype=np.uint8)]},
        "rv2v": {"video": [video], "images": [image]},
        "r2v": {"images": [image]},
    }[task]
    one_step = {**TINY, "num_inference_steps": 1}
    plain = tiny_pipe("a boat", task_type=task, num_frames=33, **media, **one_step)
    out = tiny_pipe("a boat", task_type=task, **media, **one_step, **LONG)
    resolved = out.parameters["resolved"]
    assert out.frames.shape[0] == 33 and np.isfinite(out.frames).all()
    assert resolved["windows"]["latent_windows"] == THREE
    assert resolved["forwards"] == 3 * plain.parameters["resolved"]["forwards"]
    assert resolved["source_ids"] == plain.parameters["resolved"]["source_ids"]
    assert Combo.VIDEO.value in resolved["source_ids"]


# --------------------------------------------------------------------------- with the step cache and batching
def test_each_window_keeps_its_own_step_cache_history():
    mode = GUIDANCE_MODES["t2v"]
    text = {b.text: torch.zeros(1, 3, 4) for b in mode.branches}
    combos = Conditions().combos(SourceIdPolicy())
    inputs = SamplingInputs(torch.zeros(1, 16, 9, 2, 2), combos, text, mode, Weights(1, 1, 1), 1.0)
    windows = WindowedInputs(inputs, [(0, 5), (2, 7), (4, 9)])
    expert = CacheContextExpert()
    for window in windows.windows:
        BranchRunner()(expert, window.inputs, mode.branches, window.inputs.latents, torch.tensor(900))
    BranchRunner()(expert, inputs, mode.branches, inputs.latents, torch.tensor(900))
    assert expert.contexts == ["w0:0/u", "w0:0/c", "w1:0/u", "w1:0/c", "w2:0/u", "w2:0/c", "0/u", "0/c"]


def test_windows_run_with_the_step_cache_and_batched_branches(tiny_pipe):
    settings = dict(task_type="t2v", seed=2, output_type="latent", **{**TINY, "num_inference_steps": 3}, **LONG)
    plain = tiny_pipe("a boat", **settings)
    batched = tiny_pipe("a boat", batch_branches=True, **settings)
    assert (batched.latents - plain.latents).abs().max() <= 1e-5
    assert batched.parameters["resolved"]["batched_forwards"] == 3 * 3  # one batched forward per window and step
    cached = tiny_pipe("a boat", cache="teacache", cache_threshold=10.0, **settings)
    resolved = cached.parameters["resolved"]
    assert resolved["forwards"] == 2 * 3 * 3 and 0 < resolved["skipped_forwards"] < resolved["forwards"]
    assert torch.isfinite(cached.latents).all()


# ------------------------------------------------------------------------------------------------- the demo
def test_the_demo_page_runs_windows_through_its_controls(tiny_pipe, tmp_path):
    """The page's two window controls reach the run, in the positions Gradio fills (its special arguments are
    inserted where the handler declares them, so the window values after them still line up)."""
    import asyncio

    from gradio.helpers import special_args

    from bernini.frontends.demo import DemoBackend, DemoSettings
    from bernini.frontends.demo.handlers import NUMERIC_PARAMETERS, make_generate_handler

    handler = make_generate_handler(DemoBackend(tiny_pipe, DemoSettings(save_dir=tmp_path)))
    blank = GenerationRequest()
    ui = {name: getattr(blank, name) for name in NUMERIC_PARAMETERS}
    ui.update(num_frames=33, num_inference_steps=1, height=16, width=16, seed=3, window_frames=17, window_overlap=8)
    page = ["a boat", "t2v", "t2v", None, None, None, False, *ui.values()]  # the inputs list's order
    filled, _, _, _ = special_args(handler, list(page), None)
    _video, _image, _files, record, _prompt, _status = asyncio.run(handler(*filled))
    assert record["resolved"]["windows"]["latent_windows"] == THREE
    assert record["request"]["window_overlap"] == 8
    ui["window_frames"] = 1  # the control's "one window"
    filled, _, _, _ = special_args(handler, ["a boat", "t2v", "t2v", None, None, None, False, *ui.values()], None)
    _video, _image, _files, record, _prompt, _status = asyncio.run(handler(*filled))
    assert "windows" not in record["resolved"] and record["request"]["window_frames"] is None
    clip = long_clip(tmp_path / "source.mp4")  # a 33-frame source video: a 3-window v2v edit through the page
    ui.update(window_frames=17, max_image_size=48)
    page = ["make it snow", "v2v", "v2v", [str(clip)], None, None, False, *ui.values()]
    filled, _, _, _ = special_args(handler, page, None)
    _video, _image, _files, record, _prompt, _status = asyncio.run(handler(*filled))
    assert record["request"]["task_type"] == "v2v" and record["resolved"]["windows"]["latent_windows"] == THREE


# ------------------------------------------------------------------------------------- the full model's planner
def long_clip(path, frames: int = 33):
    """A clip whose content changes along time, so each window's slice differs."""
    t = np.linspace(0, 1, frames)[:, None, None, None]
    y, x = np.linspace(0, 1, 48)[None, :, None, None], np.linspace(0, 1, 80)[None, None, :, None]
    return write_video(path, (0.5 + 0.4 * np.sin(6 * x + 4 * y + 9 * t + np.array([0.0, 1.0, 2.0]))).clip(0, 1), 16)


def test_the_planner_sees_a_windows_slice_as_a_clip_of_its_own(full_bundle, tmp_path):
    from bernini.io.video_read import read_video_frames
    from bernini.planner.vision import load_image_processor, video_input

    processor = load_image_processor(full_bundle / "mllm")
    path = long_clip(tmp_path / "long.mp4")
    frames, _ = read_video_frames(path)
    for start in (8, 16):
        sliced = video_input(processor, frames[start:], 16.0, 17)
        from_file = video_input(processor, path, 16.0, 17, start_s=start / 16)
        in_memory = video_input(processor, frames, 16.0, 17, start_s=start / 16)
        assert torch.equal(from_file.pixel_values, sliced.pixel_values) and from_file.native == sliced.native
        assert torch.equal(in_memory.pixel_values, sliced.pixel_values) and in_memory.native == sliced.native
    assert not torch.equal(video_input(processor, path, 16.0, 17).pixel_values, sliced.pixel_values)


@pytest.mark.slow  # the full model's three planner passes per run
def test_the_full_model_plans_each_window_over_its_slice_of_the_source(full_bundle, tmp_path, monkeypatch):
    from bernini import BerniniPipeline
    from bernini.planner import vision
    from bernini.sampling.guidance import Text

    pipe = BerniniPipeline.from_pretrained(full_bundle, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    slices: list[tuple[float, int]] = []
    real = vision.planner_visuals

    def spy(processor, **kwargs):
        slices.append((kwargs["start_s"], kwargs["num_frames"]))
        return real(processor, **kwargs)

    monkeypatch.setattr(vision, "planner_visuals", spy)
    runner = RecordingTexts()
    pipe.branch_runner = runner
    fast = dict(num_inference_steps=1, planning_step=1, vit_denoising_step=1)
    video = [str(long_clip(tmp_path / "long.mp4"))]
    out = pipe("make it red", task_type="v2v", video=video, **fast, **LONG)
    resolved = out.parameters["resolved"]
    assert resolved["windows"]["planner"] == "per_window" and resolved["windows"]["latent_windows"] == THREE
    assert len(resolved["planner"]["windows"]) == 3
    assert slices == [(0.0, 17), (0.5, 17), (1.0, 17)]  # pixel frames 0, 8, 16 at 16 fps, 17 frames each
    full = {scope: text[Text.PLAN_FULL] for scope, text in runner.texts.items()}
    assert set(full) == {"w0:", "w1:", "w2:"}
    assert not torch.equal(full["w0:"], full["w2:"])  # each window reads its own plan
    slices.clear()
    t2v = pipe("a red ball", task_type="t2v", height=32, width=48, **fast, **LONG).parameters["resolved"]
    assert t2v["windows"]["planner"] == "shared" and slices == [(0.0, 17)]


class RecordingTexts(BranchRunner):
    def __init__(self) -> None:
        self.texts: dict[str, dict] = {}

    def __call__(self, expert, inputs, branches, latents, t):
        self.texts[inputs.scope] = dict(inputs.text)
        return super().__call__(expert, inputs, branches, latents, t)


def test_the_time_estimate_counts_every_window_at_a_windows_length(tiny_pipe):
    from bernini.runtime.estimate import transformer_flops

    def flops(**values) -> float:
        request = GenerationRequest(prompt="x", task_type="t2v", height=64, width=64, **values)
        return transformer_flops(tiny_pipe, tiny_pipe.resolve(request))

    assert flops(**LONG) == 3 * flops(num_frames=17)  # three windows of 17 frames
    assert flops(num_frames=17, window_frames=81) == flops(num_frames=17)


# ------------------------------------------------------------------------------------------------ torchrun
@pytest.mark.integration  # torchrun
def test_windows_under_ulysses_and_cfg_parallel_match_one_process(tiny_bundle, tmp_path):
    """Every rank walks the windows in the same order: each window's forward is sequence-parallel under Ulysses,
    and CFG-parallel splits each window's branches; the latents equal the single-process run's."""
    from test_parallel import torchrun, write_tasks

    clip = (np.random.default_rng(8).random((33, 16, 16, 3))).astype(np.float32)
    write_video(tmp_path / "long.mp4", clip, 16)
    window = {"num_frames": 33, "window_frames": 17, "window_overlap": 8}
    tasks = [
        {"prompt": "a fox", "task_type": "t2v", "guidance_mode": "t2v", **window},
        {"prompt": "make it snow", "task_type": "v2v", "video": "long.mp4", **window},
    ]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    report = tmp_path / "report.json"
    target = ["-m", "bernini.frontends.parallel_check", "--layouts", "2:1,1:2", "--report", str(report)]
    target += ["--tolerance", "1e-4", "--config", str(tiny_bundle), "--inputs", "tasks.jsonl", "--device", "cpu"]
    target += ["--height", "16", "--width", "16", "--num_inference_steps", "2", "--dist_timeout", "60"]
    result = torchrun(2, target, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    records = json.loads(report.read_text())["records"]
    assert {(r["layout"], r["task_type"]) for r in records} == {(a, b) for a in ("2:1", "1:2") for b in ("t2v", "v2v")}
    assert max(r["max_abs_diff"] for r in records) <= 1e-4


def test_the_service_job_body_takes_the_window_settings():
    from pydantic import ValidationError

    from bernini.frontends.serve.schemas import JobCreate, job_params

    params = job_params(JobCreate(prompt="a boat", num_frames=161, window_frames=81, window_overlap=12))
    assert (params["window_frames"], params["window_overlap"]) == (81, 12)  # a job's params: what the client set
    assert "window_frames" not in job_params(JobCreate(prompt="a boat"))
    with pytest.raises(ValidationError, match="window_frames"):
        JobCreate(prompt="a boat", window_frames=3)


def test_the_progress_bar_shows_each_window_of_a_step(tiny_pipe):
    """Progress per window: the step bar names the window running (``window N/M``) without counting it a step."""
    import io

    shown = io.StringIO()
    tiny_pipe.set_progress_bar_config(file=shown, disable=False, mininterval=0)
    try:
        tiny_pipe("a boat", task_type="t2v", seed=1, output_type="latent", **TINY, **LONG)
    finally:
        tiny_pipe.set_progress_bar_config(disable=True)
    text = shown.getvalue()
    assert all(f"window {n}/3" in text for n in (1, 2, 3)), text
    assert f"{TINY['num_inference_steps']}/{TINY['num_inference_steps']}" in text  # steps, not windows, are counted
