"""``--extend CLIP.mp4``: the clip's last frames are pinned as the start of the run (re-noised to every step's
sigma with the run's own noise), the output is the whole clip followed by the new frames, the sidecar records the
clip; bad clips fail in one line. Real MP4 files, the tiny bundle, in-process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bernini.frontends.cli import main
from bernini.io.media import clip_pixels, read_video_frames
from bernini.io.output import write_video
from bernini.request import GenerationRequest
from bernini.resolve import EXTEND_OVERLAP
from bernini.sampling.schedulers import set_timesteps
from bernini.stages.denoise import make_scheduler

KEEP = EXTEND_OVERLAP + 1
STEPS = ["--num_inference_steps", "2"]


def moving_pattern(frames: int, height: int = 16, width: int = 32, phase: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 1, frames)[:, None, None, None]
    y, x = np.linspace(0, 1, height)[None, :, None, None], np.linspace(0, 1, width)[None, None, :, None]
    channel = np.array([0.0, 1.0, 2.0])
    return (0.5 + 0.4 * np.sin(6 * x + 4 * y + 3 * t + channel + phase)).clip(0, 1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    write_video(root / "clip.mp4", moving_pattern(21), 16)
    write_video(root / "other.mp4", moving_pattern(21, phase=2.0), 16)
    write_video(root / "short.mp4", moving_pattern(9), 16)
    write_video(root / "clip24.mp4", moving_pattern(21), 24)
    (root / "text.mp4").write_text("not a video at all\n")
    return root


def test_the_output_is_the_whole_clip_then_the_new_frames_and_the_sidecar_records_the_clip(
    clips, tiny_bundle, tmp_path, capsys
):
    clip = clips / "clip.mp4"
    out, frames_dir = tmp_path / "more.mp4", tmp_path / "frames"
    args = ["--extend", str(clip), "--num_frames", "8", "--save_frames", str(frames_dir), *STEPS]
    rc = main(["generate", "--prompt", "it goes on", "--config", str(tiny_bundle), "--output", str(out), *args])
    assert rc == 0, capsys.readouterr().err
    original, _ = read_video_frames(clip)
    saved = np.stack([np.asarray(Image.open(p)) for p in sorted(frames_dir.glob("*.png"))])
    assert len(saved) == len(original) + 8  # the whole clip, then 8 new frames
    assert np.array_equal(saved[: len(original)], original)  # the clip's own pixels, not their decode
    written, _ = read_video_frames(out)
    assert written.shape == saved.shape
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    extend = sidecar["resolved"]["extend"]
    assert extend["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert extend["clip"] == str(clip)
    assert (extend["clip_frames"], extend["frames_kept"], extend["new_frames"]) == (21, KEEP, 8)
    assert sidecar["resolved"]["frames"] == KEEP + 8  # what was rendered
    assert sidecar["request"]["extend"] == str(clip) and sidecar["request"]["num_frames"] == 8


def test_the_kept_frames_are_the_clip_re_noised_with_the_runs_noise_at_every_step(clips, tiny_pipe):
    from diffusers.utils.torch_utils import randn_tensor

    from bernini.conditions import LatentCodec

    clip = clips / "clip.mp4"
    seen: list[tuple[int, torch.Tensor]] = []

    def record(pipe, index, t, values):
        seen.append((index, values["latents"].clone()))

    out = tiny_pipe("it goes on", extend=str(clip), num_frames=8, num_inference_steps=3, seed=5,
                    callback_on_step_end=record, output_type="latent")  # fmt: skip
    frames, _ = read_video_frames(clip)
    clean = LatentCodec(tiny_pipe.vae).encode(clip_pixels(frames[-KEEP:]))
    k = clean.shape[2]
    assert k == (KEEP - 1) // 4 + 1
    noise = randn_tensor(tuple(out.latents.shape), generator=torch.Generator("cpu").manual_seed(5))
    request = GenerationRequest("it goes on", extend=str(clip), num_frames=8, num_inference_steps=3, seed=5)
    scheduler = make_scheduler(tiny_pipe.components, tiny_pipe.resolve(request))
    set_timesteps(scheduler, 3, torch.device("cpu"))
    assert len(seen) == 3
    for index, latents in seen:
        sigma = float(scheduler.sigmas[index + 1])
        expected = (1 - sigma) * clean + sigma * noise[:, :, :k]
        torch.testing.assert_close(latents[:, :, :k], expected, rtol=0, atol=1e-6)
        assert not torch.allclose(latents[:, :, k:], noise[:, :, k:])
    torch.testing.assert_close(out.latents[:, :, :k], clean, rtol=0, atol=1e-6)  # the last sigma is 0


def test_the_new_frames_continue_the_clip_they_were_given(clips, tiny_pipe):
    def new_frames(name: str) -> np.ndarray:
        out = tiny_pipe("it goes on", extend=str(clips / name), num_frames=8, num_inference_steps=2, seed=1)
        return out.frames[21:]

    first, again, other = new_frames("clip.mp4"), new_frames("clip.mp4"), new_frames("other.mp4")
    assert first.shape == (8, 16, 32, 3)
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1e-3  # another clip, another continuation (same seed and prompt)


def test_new_frames_snap_to_a_multiple_of_4_and_the_clip_sets_size_and_rate(clips, tiny_pipe):
    out = tiny_pipe("on", extend=str(clips / "clip24.mp4"), num_frames=10, num_inference_steps=1, height=32, width=16)
    notes = {(a["name"], a["asked"], a["used"]) for a in out.parameters["adjustments"]}
    assert ("num_frames", 10, 8) in notes
    assert ("height", 32, 16) in notes and ("width", 16, 32) in notes
    assert ("fps", 16.0, 24.0) in notes  # the continuation runs at the clip's rate
    assert out.frames.shape[0] == 21 + 8
    kept = tiny_pipe("on", extend=str(clips / "clip24.mp4"), num_frames=8, num_inference_steps=1, fps=24)
    assert not [a for a in kept.parameters["adjustments"] if a["name"] == "fps"]


@pytest.mark.parametrize(
    ("clip", "extra", "match"),
    [
        ("missing.mp4", [], "not found"),
        ("text.mp4", [], "not a video"),
        ("short.mp4", [], f"keeps its last {KEEP}"),
        ("clip.mp4", ["--task_type", "v2v", "--video", "clip.mp4"], "t2v"),
        ("clip.mp4", ["--num_frames", "3"], "at least 4"),
    ],
)
def test_a_bad_clip_is_one_line_and_writes_nothing(clips, tiny_bundle, tmp_path, capsys, clip, extra, match):
    extra = [str(clips / e) if e.endswith(".mp4") else e for e in extra]
    out = tmp_path / "out.mp4"
    args = ["--extend", str(clips / clip), *STEPS, *extra]
    rc = main(["generate", "--prompt", "on", "--config", str(tiny_bundle), "--output", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_extend_with_windows_keeps_the_overlap_and_pins_the_first_window(clips, tiny_pipe):
    from bernini.conditions import LatentCodec

    clip = clips / "clip.mp4"
    out = tiny_pipe("on", extend=str(clip), num_frames=24, window_frames=17, window_overlap=8, num_inference_steps=2)
    windows, extend = out.parameters["resolved"]["windows"], out.parameters["resolved"]["extend"]
    assert extend["frames_kept"] == 9 and extend["new_frames"] == 24
    assert len(windows["latent_windows"]) >= 3  # 9 + 24 = 33 frames in 17-frame windows
    frames, _ = read_video_frames(clip)
    clean = LatentCodec(tiny_pipe.vae).encode(clip_pixels(frames[-9:]))
    torch.testing.assert_close(out.latents[:, :, : clean.shape[2]], clean, rtol=0, atol=1e-6)
    assert out.frames.shape[0] == 21 + 24


def test_replay_of_an_extension_finds_its_clip_from_another_folder(clips, tiny_bundle, tmp_path, monkeypatch, capsys):
    """The clip is a path of the run like the source media: recorded as given and absolute, so ``--replay`` from
    another working directory continues the same clip, byte for byte."""
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(clips / "clip.mp4", work / "clip.mp4")
    monkeypatch.chdir(work)
    args = ["generate", "--prompt", "it goes on", "--config", str(tiny_bundle), "--extend", "clip.mp4"]
    assert main([*args, "--num_frames", "8", "--output", "more.mp4", *STEPS]) == 0, capsys.readouterr().err
    sidecar = work / "more.mp4.json"
    assert json.loads(sidecar.read_text())["paths"]["extend"] == {
        "given": "clip.mp4",
        "absolute": str(work / "clip.mp4"),
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # "clip.mp4" no longer resolves from here: the absolute path is used
    assert main(["generate", "--replay", str(sidecar)]) == 0, capsys.readouterr().err
    assert (work / "more_replay.mp4").read_bytes() == (work / "more.mp4").read_bytes()
