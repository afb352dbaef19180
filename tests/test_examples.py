"""The example case files in ``examples/`` run through the real command line on the tiny bundle."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from bernini.case_files import load_case
from bernini.frontends.cli import main
from bernini.io.output import write_image, write_video
from bernini.request import CASE_KEYS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MEDIA = EXAMPLES / "media"
FAST = ["--num_inference_steps", "2", "--num_frames", "9", "--max_image_size", "64", "--height", "48", "--width", "80"]

# case -> (task_type, guidance mode used, frames, height, width) under FAST. Geometry comes from the first
# video, else the source image, else --height/--width; every example source is 160x96, which a 64-pixel
# long edge turns into 64x32.
EXPECTED: dict[str, tuple[str, str, int, int, int]] = {
    "t2i": ("t2i", "t2v_apg", 1, 48, 80),
    "i2i": ("i2i", "v2v", 1, 32, 64),
    "t2v": ("t2v", "t2v_apg", 9, 48, 80),
    "v2v_case1": ("v2v", "v2v_apg", 9, 32, 64),
    "v2v_case2": ("mv2v", "v2v_apg", 9, 32, 64),
    "rv2v_case1": ("rv2v", "rv2v", 9, 32, 64),
    "rv2v_case2": ("ads2v", "v2v_apg", 9, 32, 64),
    "r2v": ("r2v", "r2v_apg", 9, 48, 80),
    "r2v_case2": ("r2v", "r2v_apg", 9, 48, 80),
}


def read_video(path: Path) -> tuple[int, int, int, float]:
    """Decoded frame count, height, width and frame rate of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        rate = float(stream.average_rate)
    return len(frames), frames[0].shape[0], frames[0].shape[1], rate


def _load_make_media():
    spec = importlib.util.spec_from_file_location("bernini_examples_make_media", EXAMPLES / "make_media.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str) -> int:
    return main(["generate", *args])


def sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------- the files


def test_every_case_uses_upstream_keys_and_its_media_exist() -> None:
    names = sorted(p.stem for p in EXAMPLES.glob("*.json"))
    assert names == sorted(EXPECTED)
    for name, (task, mode, *_rest) in EXPECTED.items():
        path = EXAMPLES / f"{name}.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        assert set(data) <= set(CASE_KEYS), name
        assert data["task_type"] == task
        assert data.get("guidance_mode", mode) == mode
        assert len(data["prompt"].split(". ")) >= 2, f"{name}: expected a two-part prompt"
        media = [data["image"]] if "image" in data else []
        media += data["video"] if isinstance(data.get("video"), list) else [data["video"]] if "video" in data else []
        media += data.get("images", [])
        for item in media:
            assert not Path(item).is_absolute() and (path.parent / item).is_file(), f"{name}: {item}"
        case = load_case(path)  # resolves the media relative to the case file
        assert all(Path(p).is_file() for p in case.get("images", []) + case.get("video", []))


def test_case_specifics() -> None:
    r2v = json.loads((EXAMPLES / "r2v.json").read_text())
    assert len(r2v["images"]) == 5
    assert all(f"image{i}" in r2v["prompt"] for i in range(5))
    r2v_case2 = json.loads((EXAMPLES / "r2v_case2.json").read_text())
    assert len(r2v_case2["images"]) == 8 and "guidance_mode" not in r2v_case2
    assert all(f"image{i}" in r2v_case2["prompt"] for i in range(8))
    ads = json.loads((EXAMPLES / "rv2v_case2.json").read_text())
    assert isinstance(ads["video"], list) and len(ads["video"]) == 2


def test_media_are_small_and_regenerate_identically(tmp_path: Path) -> None:
    make_media_module = _load_make_media()
    images, videos = make_media_module.IMAGES, make_media_module.VIDEOS
    committed = sorted(p.name for p in MEDIA.iterdir())
    assert committed == sorted([*images, *videos])
    assert sum(p.stat().st_size for p in MEDIA.iterdir()) < 300_000
    make_media_module.make_media(tmp_path)
    for name in images:
        ours, theirs = np.asarray(Image.open(MEDIA / name)), np.asarray(Image.open(tmp_path / name))
        tolerance = 0 if name.endswith(".png") else 2  # JPEG decoders may round differently
        assert ours.shape == theirs.shape and np.abs(ours.astype(int) - theirs).max() <= tolerance, name
    for name, (_, fps) in videos.items():
        frames, height, width, rate = read_video(MEDIA / name)
        assert (frames, height, width, rate) == read_video(tmp_path / name), name
        assert width <= 160 and height <= 96 and 2 <= frames / rate <= 3 and rate == fps, name


# ----------------------------------------------------------------------------- runs on the tiny bundle


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_case_runs(name: str, tiny_bundle: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Run from another folder: the media paths resolve relative to the case file."""
    task, mode, frames, height, width = EXPECTED[name]
    monkeypatch.chdir(tmp_path)
    rc = run_cli("--case", str(EXAMPLES / f"{name}.json"), "--config", str(tiny_bundle), *FAST, "--output", "out.mp4")
    err = capsys.readouterr().err
    assert rc == 0, err
    if frames == 1:
        output = tmp_path / "out.png"
        assert Image.open(output).size == (width, height)
        assert not (tmp_path / "out.mp4").exists()
    else:
        output = tmp_path / "out.mp4"
        assert read_video(output)[:3] == (frames, height, width)
    record = sidecar(output)
    resolved = record["resolved"]
    assert (resolved["task_type"], resolved["guidance_mode"]) == (task, mode)
    assert (resolved["frames"], resolved["height"], resolved["width"]) == (frames, height, width)
    assert record["output"] == str(output) or Path(record["output"]).resolve() == output.resolve()
    if name == "r2v":
        assert resolved["source_ids"]["I"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    if name == "r2v_case2":  # more references than trained ids: fractional ids from linspace(1, 5, 8)
        assert resolved["source_ids"]["I"] == pytest.approx(np.linspace(1, 5, 8).tolist())
        assert resolved["source_ids"]["I"][1] == pytest.approx(1 + 4 / 7)
    if name == "rv2v_case2":
        assert len(record["request"]["video"]) == 2


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_case_runs_with_lightning4(name: str, tiny_bundle: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Issue 19 item 4: every example runs with ``--preset lightning4``; a case's guidance mode yields to the preset
    with a note, except on r2v / rv2v, which keep their reference guidance (also with a note)."""
    from bernini.sampling.guidance import GUIDANCE_MODES
    from bernini.sampling.presets import PRESETS

    preset = PRESETS["lightning4"]
    task, case_mode, *_ = EXPECTED[name]
    monkeypatch.chdir(tmp_path)
    fast = FAST[2:]  # no --num_inference_steps: the preset's 4 steps
    case = ["--case", str(EXAMPLES / f"{name}.json"), "--config", str(tiny_bundle)]
    rc = run_cli(*case, *fast, "--preset", "lightning4", "--output", "o.mp4")
    err = capsys.readouterr().err
    assert rc == 0, err
    record = sidecar(tmp_path / ("o.png" if EXPECTED[name][2] == 1 else "o.mp4"))
    resolved, request = record["resolved"], record["request"]
    mode = case_mode if task in preset.guided_tasks else "none"
    assert resolved["guidance_mode"] == request["guidance_mode"] == mode
    assert resolved["forwards"] == 4 * GUIDANCE_MODES[mode].forwards_per_step
    assert len(resolved["timesteps"]) == request["num_inference_steps"] == 4
    assert resolved["scheduler"] == "flow_match_euler" and request["flow_shift"] == 5.0
    if mode != "none":
        why = f"preset lightning4 keeps {task}'s reference guidance"
        assert f"note: guidance_mode none -> {mode}: {why}" in err
    elif json.loads((EXAMPLES / f"{name}.json").read_text()).get("guidance_mode"):
        assert f"note: guidance_mode {case_mode} -> none: preset lightning4 samples without guidance" in err
        assert {"name": "guidance_mode", "asked": case_mode, "used": "none"}.items() <= record["adjustments"][0].items()


@pytest.mark.parametrize("name", ["t2i", "i2i"])
def test_image_tasks_write_one_frame_pngs_without_num_frames(
    name: str, tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    output = tmp_path / "result.mp4"
    rc = run_cli(
        "--case",
        str(EXAMPLES / f"{name}.json"),
        "--config",
        str(tiny_bundle),
        "--num_inference_steps",
        "1",
        "--max_image_size",
        "64",
        "--height",
        "32",
        "--width",
        "48",
        "--output",
        str(output),
    )
    assert rc == 0, capsys.readouterr().err
    png = tmp_path / "result.png"
    assert not output.exists()
    image = Image.open(png)
    assert image.format == "PNG" and getattr(image, "n_frames", 1) == 1
    assert sidecar(png)["resolved"]["frames"] == 1
    assert sidecar(png)["request"]["num_frames"] == 1


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_three_second_30fps_clip_gives_49_frames(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    """3 s at 30 fps resampled to 16 fps is 48 frames, snapped to 4k+1 = 49 (below the 81 cap); size kept."""
    t = np.arange(90)[:, None, None]
    ys, xs = np.mgrid[0:64, 0:96]
    square = (np.abs(xs[None] - 10 - t) < 8) & (np.abs(ys[None] - 32) < 8)
    frames = np.zeros((90, 64, 96, 3), np.uint8)
    frames[..., 2] = (ys * 3)[None]
    frames[square] = (240, 200, 40)
    source = write_video(tmp_path / "clip.mp4", frames, 30)
    output = tmp_path / "edited.mp4"
    rc = run_cli(
        "--video",
        str(source),
        "--prompt",
        "Turn the yellow square red. The square keeps moving left to right over the blue gradient.",
        "--config",
        str(tiny_bundle),
        "--num_frames",
        "81",
        "--num_inference_steps",
        "1",
        "--output",
        str(output),
    )
    assert rc == 0, capsys.readouterr().err
    count, height, width, rate = read_video(output)
    assert (count, height, width) == (49, 64, 96)
    assert rate == 16
    assert sidecar(output)["resolved"]["frames"] == 49


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_full_hd_source_image_gives_848x480_png(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    ys, xs = np.mgrid[0:1080, 0:1920]
    pixels = np.stack([xs * 255 // 1919, ys * 255 // 1079, np.full_like(xs, 128)], axis=-1).astype(np.uint8)
    source = write_image(tmp_path / "full_hd.png", pixels)
    output = tmp_path / "edited.png"
    rc = run_cli(
        "--image",
        str(source),
        "--task_type",
        "i2i",
        "--prompt",
        "Make the gradient warmer. The layout of the gradient stays the same.",
        "--config",
        str(tiny_bundle),
        "--num_inference_steps",
        "1",
        "--output",
        str(output),
    )
    assert rc == 0, capsys.readouterr().err
    assert Image.open(output).size == (848, 480)
    assert sidecar(output)["resolved"]["height"] == 480
