"""Draw the synthetic example media under ``examples/media/`` (run from anywhere).

Everything is drawn with numpy from fixed formulas: gradients, flat shapes and simple silhouettes of
a person, a dog, a shirt, a bottle and so on. No footage or pictures from anywhere else are used, and
rerunning the script gives the same pixels. The files are written with :mod:`bernini.io.output`.

    python examples/make_media.py            # rewrite examples/media/
    python examples/make_media.py --out DIR  # write elsewhere (the tests do this)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bernini.io.output import write_image, write_video

MEDIA_DIR = Path(__file__).resolve().parent / "media"
VIDEO_CRF = 18
"""Compression for the example clips: small files; the inputs are flat shapes, so little is lost."""

Color = tuple[int, int, int]
Canvas = np.ndarray  # float32 [H, W, 3] in 0..255


# ------------------------------------------------------------------------------------------ drawing


def gradient(height: int, width: int, top: Color, bottom: Color) -> Canvas:
    """A vertical gradient from ``top`` to ``bottom``."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    column = (1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32)
    return np.ascontiguousarray(np.broadcast_to(column, (height, width, 3)), dtype=np.float32).copy()


def _grid(canvas: Canvas) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0 : canvas.shape[0], 0 : canvas.shape[1]]
    return ys.astype(np.float32) + 0.5, xs.astype(np.float32) + 0.5


def paint(canvas: Canvas, mask: np.ndarray, color: Color) -> None:
    canvas[mask] = np.array(color, np.float32)


def rect(canvas: Canvas, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
    ys, xs = _grid(canvas)
    paint(canvas, (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1), color)


def ellipse(canvas: Canvas, cx: float, cy: float, rx: float, ry: float, color: Color) -> None:
    ys, xs = _grid(canvas)
    paint(canvas, ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0, color)


def limb(canvas: Canvas, x0: float, y0: float, x1: float, y1: float, width: float, color: Color) -> None:
    """A thick line segment with round ends (arms, legs, table legs)."""
    ys, xs = _grid(canvas)
    dx, dy = x1 - x0, y1 - y0
    length2 = max(dx * dx + dy * dy, 1e-6)
    t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / length2, 0.0, 1.0)
    px, py = x0 + t * dx, y0 + t * dy
    paint(canvas, (xs - px) ** 2 + (ys - py) ** 2 <= (width / 2) ** 2, color)


def triangle(canvas: Canvas, points: list[tuple[float, float]], color: Color) -> None:
    ys, xs = _grid(canvas)
    (ax, ay), (bx, by), (cx, cy) = points

    def side(px: float, py: float, qx: float, qy: float) -> np.ndarray:
        return (xs - qx) * (py - qy) - (px - qx) * (ys - qy)

    d1, d2, d3 = side(ax, ay, bx, by), side(bx, by, cx, cy), side(cx, cy, ax, ay)
    negative = (d1 < 0) | (d2 < 0) | (d3 < 0)
    positive = (d1 > 0) | (d2 > 0) | (d3 > 0)
    paint(canvas, ~(negative & positive), color)


def person(
    canvas: Canvas,
    x: float,
    ground: float,
    height: float,
    shirt: Color,
    *,
    stride: float = 0.0,
    wave: float = 0.0,
    crouch: float = 0.0,
    trousers: Color = (45, 55, 90),
    skin: Color = (224, 180, 150),
    hair: Color = (60, 40, 30),
) -> None:
    """A simple standing/walking person: ``stride`` swings the legs, ``wave`` lifts the right arm, ``crouch`` bends."""
    h = height
    hip_y = ground - 0.45 * h * (1 - 0.35 * crouch)
    shoulder_y = hip_y - 0.33 * h
    head_r = 0.09 * h
    head_y = shoulder_y - head_r * 1.2
    leg_w, arm_w = 0.09 * h, 0.07 * h
    knee_dx = 0.12 * h * crouch
    for sign in (-1.0, 1.0):
        foot_x = x + sign * (0.05 + stride * 0.18) * h
        knee_x = (x + foot_x) / 2 + knee_dx
        knee_y = (hip_y + ground) / 2
        limb(canvas, x, hip_y, knee_x, knee_y, leg_w, trousers)
        limb(canvas, knee_x, knee_y, foot_x, ground - leg_w / 2, leg_w, trousers)
    rect(canvas, x - 0.11 * h, shoulder_y, x + 0.11 * h, hip_y + 0.02 * h, shirt)
    left_hand = (x - 0.16 * h - stride * 0.05 * h, hip_y)
    limb(canvas, x - 0.1 * h, shoulder_y + arm_w / 2, *left_hand, arm_w, shirt)
    angle = math.radians(12 + 140 * wave)  # from hanging down (wave 0) to raised above the head (wave 1)
    hand = (x + 0.1 * h + 0.3 * h * math.sin(angle), shoulder_y + 0.3 * h * math.cos(angle))
    limb(canvas, x + 0.1 * h, shoulder_y + arm_w / 2, *hand, arm_w, shirt)
    ellipse(canvas, x, head_y, head_r, head_r * 1.1, skin)
    ellipse(canvas, x, head_y - head_r * 0.45, head_r * 1.02, head_r * 0.6, hair)


def dog(canvas: Canvas, x: float, ground: float, size: float, color: Color, phase: float = 0.0) -> None:
    body_y = ground - 0.55 * size
    for dx, swing in ((-0.35, 1.0), (0.35, -1.0)):
        offset = swing * 0.08 * size * math.sin(phase)
        limb(canvas, x + dx * size, body_y, x + dx * size + offset, ground - 0.05 * size, 0.14 * size, color)
    ellipse(canvas, x, body_y, 0.5 * size, 0.22 * size, color)
    ellipse(canvas, x + 0.55 * size, body_y - 0.25 * size, 0.2 * size, 0.17 * size, color)
    ellipse(canvas, x + 0.5 * size, body_y - 0.38 * size, 0.07 * size, 0.12 * size, (70, 45, 25))
    limb(canvas, x - 0.5 * size, body_y - 0.05 * size, x - 0.7 * size, body_y - 0.3 * size, 0.08 * size, color)


def bottle(
    canvas: Canvas, x: float, bottom: float, height: float, body: Color, label: Color, turn: float = 0.0
) -> None:
    w = 0.32 * height
    rect(canvas, x - w / 2, bottom - 0.7 * height, x + w / 2, bottom, body)
    ellipse(canvas, x, bottom - 0.7 * height, w / 2, 0.12 * height, body)
    rect(canvas, x - w / 5, bottom - height, x + w / 5, bottom - 0.75 * height, body)
    rect(canvas, x - w / 4, bottom - height - 0.05 * height, x + w / 4, bottom - 0.93 * height, (200, 30, 30))
    # The label slides across as the bottle turns, so the rotation reads in a flat drawing.
    shift = (turn % 1.0) * w
    for k in (-1, 0):
        lx0 = x - w / 2 + shift + k * w
        left, right = max(lx0, x - w / 2), min(lx0 + 0.6 * w, x + w / 2)
        rect(canvas, left, bottom - 0.5 * height, right, bottom - 0.2 * height, label)


def table(canvas: Canvas, x0: float, x1: float, top: float, ground: float, color: Color) -> None:
    rect(canvas, x0, top, x1, top + 4, color)
    for lx in (x0 + 3, x1 - 3):
        limb(canvas, lx, top + 2, lx, ground, 3, color)


def shirt(canvas: Canvas, cx: float, cy: float, size: float, color: Color, stripe: Color) -> None:
    """A flat-lay T-shirt with horizontal stripes."""
    w, h = 0.55 * size, 0.75 * size
    top = cy - h / 2
    for sign in (-1.0, 1.0):  # sleeves
        edge = cx + sign * w / 2
        triangle(canvas, [(edge, top), (edge + sign * 0.28 * size, top + 0.25 * size), (edge, top + 0.3 * size)], color)
    rect(canvas, cx - w / 2, top, cx + w / 2, top + h, color)
    for k in range(1, 6):
        y = top + k * h / 6
        rect(canvas, cx - w / 2, y - 1.5, cx + w / 2, y + 1.5, stripe)
    ellipse(canvas, cx, top, 0.1 * size, 0.06 * size, (250, 250, 250))


def to_uint8(canvas: Canvas) -> np.ndarray:
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ scenes

W, H = 160, 96


def walking_clip(frames: int = 48) -> np.ndarray:
    """source_case1.mp4: a person in a teal shirt walks left to right across a meadow (2 s at 24 fps)."""
    out = []
    for i in range(frames):
        t = i / (frames - 1)
        c = gradient(H, W, (120, 170, 230), (200, 225, 245))
        rect(c, 0, 66, W, H, (96, 150, 70))
        ellipse(c, 132, 18, 9, 9, (255, 236, 150))
        ellipse(c, 30 + 10 * t, 22, 16, 6, (245, 245, 250))
        limb(c, 18, 66, 18, 44, 5, (110, 80, 50))
        ellipse(c, 18, 40, 10, 12, (50, 120, 60))
        person(c, 40 + 80 * t, 88, 60, (30, 150, 150), stride=math.sin(t * 6 * math.pi))
        out.append(to_uint8(c))
    return np.stack(out)


def kitchen_clip(frames: int = 72) -> np.ndarray:
    """source_case2.mp4: a person in a yellow shirt stands by a table and waves (2.4 s at 30 fps)."""
    out = []
    for i in range(frames):
        t = i / (frames - 1)
        c = gradient(H, W, (235, 225, 205), (215, 200, 175))
        rect(c, 0, 70, W, H, (150, 110, 80))
        rect(c, 100, 14, 140, 40, (170, 210, 235))
        rect(c, 118, 14, 121, 40, (240, 240, 240))
        table(c, 78, 150, 62, 90, (120, 75, 45))
        person(c, 50, 90, 66, (230, 190, 40), wave=0.5 - 0.5 * math.cos(t * 4 * math.pi))
        out.append(to_uint8(c))
    return np.stack(out)


def bottle_clip(frames: int = 48) -> np.ndarray:
    """source_ref_case2.mp4: a green soda bottle turning on a white turntable (2 s at 24 fps, 96x96)."""
    out = []
    for i in range(frames):
        t = i / frames
        c = gradient(96, 96, (250, 250, 252), (225, 228, 235))
        ellipse(c, 48, 82, 30, 7, (200, 200, 205))
        bottle(c, 48, 82, 62, (40, 150, 80), (245, 240, 230), turn=t)
        out.append(to_uint8(c))
    return np.stack(out)


def still_life() -> np.ndarray:
    """source.png: a red mug and a book on a wooden table in front of a window (i2i source)."""
    c = gradient(H, W, (225, 230, 240), (200, 205, 215))
    rect(c, 20, 8, 80, 52, (150, 190, 230))
    rect(c, 48, 8, 52, 52, (245, 245, 245))
    rect(c, 20, 28, 80, 31, (245, 245, 245))
    rect(c, 0, 60, W, H, (150, 100, 60))
    rect(c, 0, 60, W, 63, (120, 80, 50))
    rect(c, 100, 42, 118, 62, (200, 40, 40))
    ellipse(c, 121, 51, 5, 6, (200, 40, 40))
    ellipse(c, 121, 51, 2.5, 3.5, (150, 100, 60))
    rect(c, 60, 54, 92, 61, (40, 70, 140))
    rect(c, 60, 52, 90, 54, (235, 230, 215))
    return to_uint8(c)


def shirt_reference() -> np.ndarray:
    """ref_case1.jpg: a navy T-shirt with white stripes on a light backdrop (rv2v reference)."""
    c = gradient(112, 112, (248, 248, 248), (236, 236, 238))
    shirt(c, 56, 58, 100, (30, 45, 110), (240, 240, 245))
    return to_uint8(c)


def portrait() -> np.ndarray:
    """A full-body person in a red jacket on a studio backdrop (portrait 96x144)."""
    c = gradient(144, 96, (235, 235, 240), (205, 205, 215))
    person(c, 48, 136, 120, (200, 40, 50), trousers=(40, 40, 45), hair=(150, 90, 40))
    return to_uint8(c)


def dog_picture() -> np.ndarray:
    c = gradient(96, 128, (200, 225, 240), (170, 200, 150))
    dog(c, 60, 84, 70, (190, 130, 60))
    return to_uint8(c)


def ball_picture() -> np.ndarray:
    c = gradient(96, 96, (245, 245, 245), (225, 225, 225))
    ellipse(c, 48, 50, 30, 30, (220, 40, 40))
    limb(c, 20, 50, 76, 50, 3, (250, 250, 250))
    ellipse(c, 40, 40, 6, 5, (245, 120, 120))
    return to_uint8(c)


def bench_picture() -> np.ndarray:
    c = gradient(96, 160, (230, 235, 240), (215, 215, 220))
    for y in (40, 50, 62):
        rect(c, 25, y, 135, y + 6, (120, 80, 45))
    for x in (35, 125):
        limb(c, x, 62, x, 86, 5, (50, 50, 55))
    return to_uint8(c)


def park_picture() -> np.ndarray:
    c = gradient(96, 160, (110, 165, 230), (190, 220, 245))
    rect(c, 0, 60, 160, 96, (90, 160, 70))
    triangle(c, [(0, 60), (60, 20), (120, 60)], (120, 140, 160))
    for x, r in ((25, 14), (130, 18)):
        limb(c, x, 75, x, 50, 6, (100, 70, 40))
        ellipse(c, x, 45, r, r * 1.1, (40, 110, 50))
    rect(c, 0, 78, 160, 84, (200, 185, 150))
    return to_uint8(c)


def hat_picture() -> np.ndarray:
    c = gradient(96, 96, (240, 240, 240), (220, 220, 225))
    ellipse(c, 48, 62, 40, 10, (60, 60, 70))
    rect(c, 26, 28, 70, 62, (60, 60, 70))
    ellipse(c, 48, 28, 22, 6, (70, 70, 80))
    rect(c, 26, 52, 70, 58, (180, 40, 40))
    return to_uint8(c)


def umbrella_picture() -> np.ndarray:
    c = gradient(112, 96, (235, 240, 245), (220, 225, 230))
    ellipse(c, 48, 48, 40, 30, (240, 200, 40))
    rect(c, 0, 48, 96, 112, (0, 0, 0))
    c[48:] = gradient(64, 96, (229, 234, 239), (220, 225, 230))
    limb(c, 48, 48, 48, 96, 3, (60, 60, 60))
    limb(c, 48, 96, 40, 100, 3, (60, 60, 60))
    return to_uint8(c)


def bicycle_picture() -> np.ndarray:
    c = gradient(96, 144, (245, 245, 245), (228, 228, 232))
    for x in (40, 104):
        ellipse(c, x, 64, 22, 22, (30, 30, 30))
        ellipse(c, x, 64, 18, 18, (240, 240, 242))
    frame = (30, 110, 200)
    limb(c, 40, 64, 70, 64, 4, frame)
    limb(c, 70, 64, 60, 38, 4, frame)
    limb(c, 60, 38, 96, 38, 4, frame)
    limb(c, 96, 38, 104, 64, 4, frame)
    limb(c, 70, 64, 96, 38, 4, frame)
    limb(c, 40, 64, 60, 38, 4, frame)
    rect(c, 52, 32, 68, 36, (40, 40, 40))
    limb(c, 96, 38, 92, 26, 4, (40, 40, 40))
    return to_uint8(c)


VIDEOS: dict[str, tuple[Callable[[], np.ndarray], float]] = {
    "source_case1.mp4": (walking_clip, 24.0),
    "source_case2.mp4": (kitchen_clip, 30.0),
    "source_ref_case2.mp4": (bottle_clip, 24.0),
}
IMAGES: dict[str, Callable[[], np.ndarray]] = {
    "source.png": still_life,
    "ref_case1.jpg": shirt_reference,
    "r2v_image0.png": portrait,
    "r2v_image1.png": dog_picture,
    "r2v_image2.png": ball_picture,
    "r2v_image3.png": bench_picture,
    "r2v_image4.png": park_picture,
    "r2v_image5.png": hat_picture,
    "r2v_image6.png": umbrella_picture,
    "r2v_image7.png": bicycle_picture,
}


def make_media(out: str | Path = MEDIA_DIR) -> list[Path]:
    """Write every example image and clip into ``out``; return the paths written."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = [write_image(folder / name, draw()) for name, draw in IMAGES.items()]
    written += [write_video(folder / name, draw(), fps, crf=VIDEO_CRF) for name, (draw, fps) in VIDEOS.items()]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(MEDIA_DIR), help="output folder (default: examples/media)")
    args = parser.parse_args(argv)
    for path in make_media(args.out):
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
