"""Writing images, videos and sidecars, checked by reading the files back."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from bernini.errors import MediaError
from bernini.io.output import (
    atomic_write,
    export_to_video,
    sidecar_path,
    to_uint8_frames,
    write_frames,
    write_image,
    write_output,
    write_sidecar,
    write_video,
)


def smooth_video(frames: int = 24, height: int = 64, width: int = 96) -> np.ndarray:
    """Float [T, H, W, 3] in [0, 1]: gentle gradients that drift over time."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red, green = 0.2 + 0.6 * x / (width - 1), 0.2 + 0.6 * y / (height - 1)
    return np.stack([np.stack([red, green, np.full_like(x, 0.2 + 0.6 * t / frames)], -1) for t in range(frames)])


def decode(path: Path) -> tuple[np.ndarray, dict[str, object]]:
    """Every frame as uint8 RGB, plus the stream's codec, pixel format and average rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "rate": stream.average_rate,
        }
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]), info


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def test_write_video_round_trip(tmp_path: Path) -> None:
    frames = smooth_video()
    path = write_video(tmp_path / "out.mp4", frames, fps=16)
    assert path == tmp_path / "out.mp4"
    decoded, info = decode(path)
    assert decoded.shape == (24, 64, 96, 3)
    assert info == {"codec": "h264", "pix_fmt": "yuv420p", "rate": 16}
    assert psnr(decoded, np.round(frames * 255)) > 30
    assert b"crf=8.0" in path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_write_video_fractional_fps_and_crf(tmp_path: Path) -> None:
    frames = (smooth_video(8) * 255).round().astype(np.uint8)
    path = write_video(tmp_path / "ntsc.mp4", frames, fps=29.97, crf=18)
    decoded, info = decode(path)
    assert len(decoded) == 8
    assert float(info["rate"]) == pytest.approx(29.97, abs=1e-3)
    assert b"crf=18.0" in path.read_bytes()


def test_write_video_pads_odd_sizes(tmp_path: Path) -> None:
    frames = (smooth_video(6, 63, 95) * 255).round().astype(np.uint8)
    decoded, _ = decode(write_video(tmp_path / "odd.mp4", frames, fps=8))
    assert decoded.shape == (6, 64, 96, 3)
    assert psnr(decoded[:, :63, :95], frames) > 30


def test_write_video_rejects_bad_fps(tmp_path: Path) -> None:
    for fps in (0, -1, float("nan")):
        with pytest.raises(MediaError, match="frame rate"):
            write_video(tmp_path / "bad.mp4", smooth_video(2), fps=fps)
    assert list(tmp_path.iterdir()) == []


def test_write_output_switches_suffix(tmp_path: Path) -> None:
    video, image = smooth_video(5), smooth_video(1)
    single = write_output(tmp_path / "single.mp4", image, fps=16)
    assert single == tmp_path / "single.png" and not (tmp_path / "single.mp4").exists()
    assert Image.open(single).size == (96, 64)
    several = write_output(tmp_path / "several.png", video, fps=16)
    assert several == tmp_path / "several.mp4" and not (tmp_path / "several.png").exists()
    assert len(decode(several)[0]) == 5
    assert write_output(tmp_path / "kept.mp4", video, fps=16) == tmp_path / "kept.mp4"
    assert write_output(tmp_path / "kept.jpg", image[0], fps=16) == tmp_path / "kept.jpg"
    assert write_output(tmp_path / "run.v2", video, fps=16) == tmp_path / "run.v2.mp4"
    assert write_output(tmp_path / "nested" / "noext", image, fps=16) == tmp_path / "nested" / "noext.png"
    assert export_to_video(video, tmp_path / "api.mp4") == tmp_path / "api.mp4"
    assert decode(tmp_path / "api.mp4")[1]["rate"] == 16


def test_write_image_png_is_exact(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    path = write_image(tmp_path / "deep" / "dir" / "image.png", pixels)
    assert np.array_equal(np.asarray(Image.open(path)), pixels)
    with pytest.raises(MediaError, match="frames"):
        write_image(tmp_path / "two.png", np.stack([pixels, pixels]))
    with pytest.raises(MediaError, match="image type"):
        write_image(tmp_path / "image.unknown", pixels)


def test_write_frames_are_bit_exact(tmp_path: Path) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (3, 16, 32, 3), dtype=np.uint8)
    paths = write_frames(tmp_path / "frames", frames)
    assert [p.name for p in paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    for path, frame in zip(paths, frames, strict=True):
        assert np.array_equal(np.asarray(Image.open(path)), frame)


def test_atomic_write_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "result.mp4"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as temporary:
            assert temporary.parent == tmp_path and temporary.suffix == ".mp4" and temporary != target
            temporary.write_bytes(b"partial")
            raise RuntimeError("encoder crashed")
    assert list(tmp_path.iterdir()) == []

    target.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as temporary:
            temporary.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.txt"
    with atomic_write(target) as temporary:
        temporary.write_text("done")
    assert target.read_text() == "done"
    assert list(target.parent.iterdir()) == [target]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(MediaError, match="directory"):
        with atomic_write(tmp_path / "sub"):
            pass


def test_sidecar_round_trip(tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    assert sidecar_path(output) == tmp_path / "out.mp4.json"
    data = {"prompt": "un café à Zürich ☕", "seed": 42, "size": [848, 480], "source": tmp_path / "in.png", "z": 1.5}
    path = write_sidecar(output, data)
    assert path == tmp_path / "out.mp4.json"
    text = path.read_text(encoding="utf-8")
    assert "☕" in text and '\n  "seed": 42' in text
    loaded = json.loads(text)
    assert list(loaded) == ["prompt", "seed", "size", "source", "z"]
    assert loaded == {**data, "source": str(tmp_path / "in.png")}


def test_to_uint8_frames_sources() -> None:
    video = smooth_video(3)
    expected = np.round(video * 255).astype(np.uint8)
    sources = [
        video,
        expected,
        torch.from_numpy(video),
        torch.from_numpy(video).permute(0, 3, 1, 2),
        [Image.fromarray(frame) for frame in expected],
        video[None],
    ]
    for source in sources:
        frames = to_uint8_frames(source)
        assert frames.dtype == np.uint8 and np.array_equal(frames, expected)
    assert to_uint8_frames(video[0]).shape == (1, 64, 96, 3)
    assert to_uint8_frames(torch.from_numpy(video[0]).permute(2, 0, 1)).shape == (1, 64, 96, 3)


def test_to_uint8_frames_rejects_bad_input() -> None:
    with pytest.raises(MediaError, match=r"\[0, 1\]"):
        to_uint8_frames(np.full((2, 8, 8, 3), 255.0))
    with pytest.raises(MediaError, match="NaN"):
        to_uint8_frames(np.full((2, 8, 8, 3), np.nan))
    with pytest.raises(MediaError, match="no frames"):
        to_uint8_frames([])
    with pytest.raises(MediaError, match="shape"):
        to_uint8_frames(np.zeros((8, 8)))


_WRITE_ON_CPUS = """
import os, sys
import numpy as np
os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")})
from bernini.io.output import write_video
frames = np.random.default_rng(0).integers(0, 256, (9, 320, 480, 3), dtype=np.uint8)
write_video(sys.argv[2], frames, 16)
"""


def test_same_frames_give_the_same_mp4_bytes_on_any_number_of_cpus(tmp_path: Path) -> None:
    """x264 sizes its thread pool from the CPUs it may use and the bitstream follows; one CPU vs all of them."""
    import subprocess
    import sys

    cpus = sorted(os.sched_getaffinity(0))
    outputs = []
    for index, allowed in enumerate(([cpus[0]], cpus, cpus)):
        target = tmp_path / f"run{index}.mp4"
        subprocess.run(
            [sys.executable, "-c", _WRITE_ON_CPUS, ",".join(map(str, allowed)), str(target)], check=True, timeout=120
        )
        outputs.append(target.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    with av.open(str(tmp_path / "run0.mp4")) as container:
        assert "creation_time" not in container.metadata
        assert container.streams.video[0].frames == 9
