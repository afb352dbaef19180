"""Input reading and preprocessing on real media files made with PyAV and Pillow."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from bernini.errors import MediaError
from bernini.io.images import read_image
from bernini.io.media import preprocess_image, preprocess_video, video_preview_frames
from bernini.io.sizes import frame_indices, resize_dims
from bernini.io.video_read import read_video_frames, read_video_frames_at

WIDTH, HEIGHT = 96, 64


def coded_frame(k: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A flat frame whose colour encodes ``k`` in steps of 20 levels, far above codec error."""
    colour = (20 + 20 * (k // 10), 20 + 20 * (k % 10), 128)
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy()


def decode_code(pixels: np.ndarray) -> int:
    """The ``k`` of :func:`coded_frame` from uint8 pixels [H, W, 3]."""
    red, green = pixels[..., 0].mean(), pixels[..., 1].mean()
    return round((red - 20) / 20) * 10 + round((green - 20) / 20)


def encode(path: Path, frames: np.ndarray, fps: int, codec: str = "libx264", rotation: int = 0) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s at 30 fps, 96x64; frame k shows code k."""
    frames = np.stack([coded_frame(k) for k in range(90)])
    return encode(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, 30)


def pixels_of(video: torch.Tensor, t: int) -> np.ndarray:
    """uint8 [H, W, 3] of frame ``t`` of a [3, T, H, W] model tensor."""
    return ((video[:, t] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def assert_single_line_error(excinfo: pytest.ExceptionInfo[MediaError], name: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert name in message


# ------------------------------------------------------------------------------------- resize_dims


@pytest.mark.parametrize(
    ("width", "height", "max_size", "expected"),
    [
        (1920, 1080, 848, (848, 480)),
        (1080, 1920, 848, (480, 848)),
        (1024, 1024, 848, (848, 848)),
        (640, 480, 848, (640, 480)),
        (1920, 1080, 1280, (1280, 720)),
        (100, 50, 848, (96, 48)),
        (8, 8, 848, (16, 16)),
        (3840, 2160, 848, (848, 480)),
    ],
)
def test_resize_dims(width: int, height: int, max_size: int, expected: tuple[int, int]) -> None:
    assert resize_dims(width, height, max_size) == expected


@pytest.mark.parametrize("size", [(1919, 1081), (850, 849), (5000, 17), (849, 849), (1000, 3)])
def test_resize_dims_fits_and_is_multiple_of_16(size: tuple[int, int]) -> None:
    width, height = resize_dims(*size, 848)
    assert width % 16 == 0 and height % 16 == 0
    assert max(width, height) <= 848


# ----------------------------------------------------------------------------------- frame_indices


def test_frame_indices_resamples_30_to_16_fps() -> None:
    indices = frame_indices(90, 30.0, 16.0, 81)
    assert len(indices) == 49
    assert indices[0] == 0 and indices[-1] == 89
    assert indices == [round(v) for v in np.linspace(0, 89, 49)]
    assert indices[:4] == [0, 2, 4, 6]


def test_frame_indices_native_rate_keeps_frames_without_repeats() -> None:
    assert frame_indices(81, 16.0, 16.0, 81) == list(range(81))
    assert frame_indices(84, 24.0, 24.0, 200) == [round(v) for v in np.linspace(0, 83, 81)]
    indices = frame_indices(92, 30.0, 30.0, 200)
    assert len(indices) == 89 and len(set(indices)) == 89 and indices[-1] == 91


def test_frame_indices_truncates_to_the_first_frames() -> None:
    full = frame_indices(90, 30.0, 16.0, 81)
    assert frame_indices(90, 30.0, 16.0, 17) == full[:17]
    assert frame_indices(90, 30.0, 16.0, 20) == full[:21]
    assert frame_indices(90, 30.0, 16.0, 19) == full[:17]
    long = frame_indices(3000, 30.0, 16.0, 81)
    assert len(long) == 81 and long[0] == 0 and long[-1] < 160


def test_frame_indices_short_clips() -> None:
    assert frame_indices(5, 30.0, 16.0, 81) == [0, 1, 2, 3, 4]
    assert len(frame_indices(12, 30.0, 16.0, 81)) == 5
    for frames in (0, 1, 4):
        with pytest.raises(MediaError, match="too short"):
            frame_indices(frames, 30.0, 16.0, 81)


def test_frame_indices_upsampling_repeats_frames() -> None:
    indices = frame_indices(10, 10.0, 16.0, 81)
    assert len(indices) == 17 and indices[-1] == 9
    assert indices == sorted(indices)


# ------------------------------------------------------------------------------------- video files


def test_read_video_frames_decodes_every_frame_in_order(clip: Path) -> None:
    frames, fps = read_video_frames(clip)
    assert frames.shape == (90, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    assert fps == pytest.approx(30.0)
    assert [decode_code(frame) for frame in frames] == list(range(90))


def test_read_video_frames_at_keeps_only_the_chosen_frames(clip: Path) -> None:
    """What the chooser is told (frame count, native rate) and what it picks, repeats included, in order."""
    told: list[tuple[int, float]] = []

    def choose(total: int, fps: float) -> list[int]:
        told.append((total, fps))
        return [40, 3, 3, 89]

    frames, fps, total = read_video_frames_at(clip, choose)
    assert told == [(90, pytest.approx(30.0))] and (total, fps) == (90, pytest.approx(30.0))
    assert frames.shape == (4, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    assert [decode_code(frame) for frame in frames] == [3, 3, 40, 89]
    assert np.array_equal(frames, read_video_frames(clip)[0][[3, 3, 40, 89]])


def test_preprocess_video_samples_the_right_frames(clip: Path) -> None:
    video = preprocess_video(clip, fps=16, max_frames=81, max_size=848)
    assert video.shape == (3, 49, HEIGHT, WIDTH) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    expected = [round(v) for v in np.linspace(0, 89, 49)]
    assert [decode_code(pixels_of(video, t)) for t in range(49)] == expected


def test_preprocess_video_truncation_and_native_rate(clip: Path) -> None:
    short = preprocess_video(clip, fps=16, max_frames=17, max_size=848)
    assert [decode_code(pixels_of(short, t)) for t in range(17)] == frame_indices(90, 30, 16, 81)[:17]
    native = preprocess_video(clip, fps=30, max_frames=81, max_size=848)
    assert native.shape[1] == 81
    assert [decode_code(pixels_of(native, t)) for t in range(81)] == [round(v) for v in np.linspace(0, 89, 89)][:81]


def test_preprocess_video_source_fps_overrides_file_rate(clip: Path) -> None:
    video = preprocess_video(clip, fps=16, max_frames=81, max_size=848, source_fps=16)
    assert [decode_code(pixels_of(video, t)) for t in range(81)] == [round(v) for v in np.linspace(0, 89, 89)][:81]


def test_in_memory_videos_match_the_file(clip: Path) -> None:
    decoded, fps = read_video_frames(clip)
    from_file = preprocess_video(clip, fps=16, max_frames=81, max_size=848)
    sources = [
        decoded,
        torch.from_numpy(decoded),
        torch.from_numpy(decoded).permute(0, 3, 1, 2),
        torch.from_numpy(decoded).float() / 255,
        decoded.astype(np.float32) / 255,
        [Image.fromarray(frame) for frame in decoded],
    ]
    for source in sources:
        video = preprocess_video(source, fps=16, max_frames=81, max_size=848, source_fps=fps)
        assert torch.equal(video, from_file)


def test_in_memory_video_defaults_to_no_resampling() -> None:
    frames = np.stack([coded_frame(k) for k in range(21)])
    video = preprocess_video(frames, fps=16, max_frames=81, max_size=848)
    assert [decode_code(pixels_of(video, t)) for t in range(21)] == list(range(21))


def test_preprocess_video_resizes_large_frames() -> None:
    frames = np.stack([coded_frame(k, 1920, 1080) for k in range(9)])
    video = preprocess_video(frames, fps=16, max_frames=81, max_size=848)
    assert video.shape == (3, 9, 480, 848)
    assert [decode_code(pixels_of(video, t)) for t in range(9)] == list(range(9))


def test_gif_webm_and_mov_are_read(tmp_path: Path) -> None:
    frames = np.stack([coded_frame(k) for k in range(12)])
    gif = tmp_path / "clip.gif"
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=100, loop=0)
    webm = encode(tmp_path / "clip.webm", frames, 24, codec="libvpx-vp9")
    mov = encode(tmp_path / "clip.mov", frames, 25)
    for path, rate in ((gif, 10.0), (webm, 24.0), (mov, 25.0)):
        decoded, fps = read_video_frames(path)
        assert decoded.shape == (12, HEIGHT, WIDTH, 3), path
        assert fps == pytest.approx(rate), path
        assert [decode_code(frame) for frame in decoded] == list(range(12)), path
        video = preprocess_video(path, fps=rate, max_frames=81, max_size=848)
        sampled = [decode_code(pixels_of(video, t)) for t in range(video.shape[1])]
        assert sampled == [round(v) for v in np.linspace(0, 11, 9)], path


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    frames = np.stack([coded_frame(k) for k in range(5)])
    frames[:, :16, :16] = 255
    path = encode(tmp_path / "rotated.mp4", frames, 30, rotation=90)
    decoded, _ = read_video_frames(path)
    assert decoded.shape == (5, WIDTH, HEIGHT, 3)
    assert decoded[0, -8:, :8].min() > 200
    assert preprocess_video(path, fps=30, max_frames=81, max_size=848).shape == (3, 5, WIDTH, HEIGHT)


def test_video_preview_frames() -> None:
    frames = np.stack([coded_frame(k) for k in range(10)])
    previews = video_preview_frames(frames)
    assert [decode_code(np.asarray(image)) for image in previews] == [0, 4, 9]
    assert all(image.mode == "RGB" and image.size == (WIDTH, HEIGHT) for image in previews)
    assert [decode_code(np.asarray(image)) for image in video_preview_frames(frames, 5)] == [0, 2, 4, 7, 9]


# ------------------------------------------------------------------------------------------ images


def gradient(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 / (width - 1), y * 255 / (height - 1), np.full_like(x, 100)], -1).round().astype(np.uint8)


def test_preprocess_image_full_hd(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(gradient(1920, 1080)).save(path)
    image = preprocess_image(path, 848)
    assert image.shape == (3, 480, 848) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    pixels = ((image + 1) * 127.5).permute(1, 2, 0).numpy()
    assert np.allclose(pixels, np.round(pixels), atol=1e-4)
    reference = np.asarray(Image.fromarray(gradient(1920, 1080)).resize((848, 480), Image.Resampling.BICUBIC))
    assert np.abs(pixels - reference).max() <= 3


def test_preprocess_image_keeps_small_images_exact(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    path = tmp_path / "small.png"
    Image.fromarray(pixels).save(path)
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(preprocess_image(path, 848), expected)


def test_preprocess_image_flat_colour_survives_resize() -> None:
    flat = np.broadcast_to(np.array([10, 200, 77], np.uint8), (1080, 1920, 3))
    image = preprocess_image(flat, 848)
    expected = torch.tensor([10, 200, 77]).float().view(3, 1, 1) / 127.5 - 1
    assert torch.equal(image, expected.expand(3, 480, 848))


@pytest.mark.parametrize(("suffix", "tolerance"), [(".png", 0), (".bmp", 0), (".webp", 12), (".jpg", 12)])
def test_read_image_formats(tmp_path: Path, suffix: str, tolerance: int) -> None:
    pixels = gradient(64, 48)
    path = tmp_path / f"image{suffix}"
    Image.fromarray(pixels).save(path, **({"quality": 95} if suffix in (".jpg", ".webp") else {}))
    image = read_image(path)
    assert image.mode == "RGB" and image.size == (64, 48)
    assert np.abs(np.asarray(image).astype(int) - pixels).max() <= tolerance


def test_read_image_gif_first_frame_and_modes(tmp_path: Path) -> None:
    gif = tmp_path / "anim.gif"
    frames = [Image.fromarray(coded_frame(k)) for k in (3, 7)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    assert decode_code(np.asarray(read_image(gif))) == 3
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (32, 16), (1, 2, 3, 4)).save(rgba)
    assert np.asarray(read_image(rgba))[0, 0].tolist() == [1, 2, 3]
    gray = tmp_path / "gray.png"
    Image.new("L", (32, 16), 99).save(gray)
    assert np.asarray(read_image(gray))[0, 0].tolist() == [99, 99, 99]


def test_read_image_applies_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(gradient(64, 48)).save(path, exif=exif)
    assert read_image(path).size == (48, 64)


def test_read_image_in_memory_sources() -> None:
    pixels = gradient(64, 48)
    expected = np.asarray(Image.fromarray(pixels))
    sources = [
        pixels,
        pixels.astype(np.float32) / 255,
        torch.from_numpy(pixels),
        torch.from_numpy(pixels).permute(2, 0, 1),
        torch.from_numpy(pixels).permute(2, 0, 1).double() / 255,
        Image.fromarray(pixels).convert("RGBA"),
    ]
    for source in sources:
        image = read_image(source)
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), expected)


def test_read_image_rejects_bad_arrays() -> None:
    with pytest.raises(MediaError, match=r"\[0, 1\]"):
        read_image(np.full((8, 8, 3), 2.0))
    with pytest.raises(MediaError, match="shape"):
        read_image(np.zeros((8, 8, 7), np.uint8))
    with pytest.raises(MediaError, match="unsupported"):
        read_image(42)


# ------------------------------------------------------------------------------------- bad inputs


def bad_file(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "missing_input.mp4"
    if kind == "directory":
        folder = tmp_path / "folder_input.mp4"
        folder.mkdir()
        return folder
    if kind == "empty":
        path = tmp_path / "empty_input.mp4"
        path.touch()
        return path
    if kind == "text":
        path = tmp_path / "text_input.mp4"
        path.write_text("this is not a video\n" * 20)
        return path
    if kind == "zero-frames":
        path = tmp_path / "zero_input.mp4"
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height = 64, 64
            container.start_encoding()
        return path
    if kind == "audio-only":
        path = tmp_path / "audio_input.wav"
        with wave.open(str(path), "wb") as sound:
            sound.setnchannels(1)
            sound.setsampwidth(2)
            sound.setframerate(8000)
            sound.writeframes(b"\0\0" * 8000)
        return path
    if kind == "too-short":
        return encode(tmp_path / "short_input.mp4", np.stack([coded_frame(k) for k in range(3)]), 30)
    raise AssertionError(kind)


VIDEO_PROBLEMS = ["missing", "directory", "empty", "text", "zero-frames", "audio-only"]


@pytest.mark.parametrize("kind", VIDEO_PROBLEMS)
def test_read_video_frames_bad_files(tmp_path: Path, kind: str) -> None:
    path = bad_file(tmp_path, kind)
    with pytest.raises(MediaError) as excinfo:
        read_video_frames(path)
    assert_single_line_error(excinfo, path.name)


@pytest.mark.parametrize("kind", [*VIDEO_PROBLEMS, "too-short"])
def test_preprocess_video_bad_files(tmp_path: Path, kind: str) -> None:
    path = bad_file(tmp_path, kind)
    with pytest.raises(MediaError) as excinfo:
        preprocess_video(str(path), fps=16, max_frames=81, max_size=848)
    assert_single_line_error(excinfo, path.name)


def bad_image(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}_image.png"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.touch()
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:400])
    return path


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "truncated"])
def test_image_bad_files(tmp_path: Path, kind: str) -> None:
    path = bad_image(tmp_path, kind)
    with pytest.raises(MediaError) as excinfo:
        preprocess_image(path, 848)
    assert_single_line_error(excinfo, path.name)


def test_in_memory_video_too_short() -> None:
    with pytest.raises(MediaError, match="too short"):
        preprocess_video(np.zeros((3, 16, 16, 3), np.uint8), fps=16, max_frames=81, max_size=848)
