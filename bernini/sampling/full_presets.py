"""The full model's shipped per-task settings, v1 and v2 (spec bernini-full.md §5.4): plain tables, no torch.

They are the defaults when a full bundle is loaded: a setting the user gives explicitly always wins.
v1 comes from the reference's per-task scripts; v2 from its demo's v2 table (for rv2v the demo's values:
the v2 rv2v script uses ω_txt 4.0, ω_tgt 0.5, ω_img 4.5 instead). Where upstream's v1 demo maps r2v and
rv2v to a mode the full pipeline rejects (bug B3), the scripts' modes are used. Tasks without a v1 script
(mv2v, ads2v) take v2v's row, as the reference's v2v script is what runs them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

VERSIONS = ("v1", "v2")

ENGLISH_NEGATIVE_PROMPT = (
    "garish colors, overexposed, static, blurry details, subtitles, style, artwork, painting, still image, "
    "overall gray, worst quality, low quality, JPEG compression artifacts, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn face, deformed, disfigured, malformed limbs, fused fingers, motionless "
    "frame, cluttered background, three legs, many people in the background, walking backwards"
)
"""Our English rendering of Wan's Chinese negative prompt (upstream's scripts pass an English one whose exact
text our spec does not hold), used where the shipped settings use an English negative prompt."""


@dataclass(frozen=True)
class FullPreset:
    """Request fields a task's shipped settings set (None: left as the request has it)."""

    guidance_mode: str
    num_inference_steps: int
    omega_txt: float
    omega_tgt: float
    omega_img: float
    omega_vid: float
    omega_scale: float
    planning_step: int
    vit_denoising_step: int
    height: int | None = None  # 0: the source sets the size (the reference's 0 / 0)
    width: int | None = None
    num_frames: int | None = None
    english_negative: bool = False

    def values(self) -> dict[str, object]:
        """The request fields this preset sets."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "english_negative"}
        if self.english_negative:
            out["neg_prompt"] = ENGLISH_NEGATIVE_PROMPT
        return out


def _row(mode, steps, txt, tgt, img, vid, scale, planning, vit, size=None, frames=None, english=False) -> FullPreset:
    height, width = size if size else (None, None)
    return FullPreset(mode, steps, txt, tgt, img, vid, scale, planning, vit, height, width, frames, english)


WAPG, RV2V = "vae_txt_vit_wapg", "rv2v_wapg"
IMAGE, VIDEO, SOURCE = (512, 512), (480, 848), (0, 0)

FULL_PRESETS: dict[str, dict[str, FullPreset]] = {
    "v1": {
        "t2i": _row(WAPG, 50, 4.0, 0.5, 1.0, 1.0, 1.0, 25, 5, IMAGE, 1),
        "i2i": _row(WAPG, 40, 4.0, 0.5, 1.25, 1.25, 0.75, 25, 5, IMAGE, 1),
        "t2v": _row(WAPG, 50, 4.0, 0.5, 1.0, 1.0, 1.0, 25, 5, VIDEO, 81),
        "v2v": _row(WAPG, 40, 4.0, 0.5, 1.25, 1.25, 0.75, 25, 5, SOURCE, 81, english=True),
        "mv2v": _row(WAPG, 40, 4.0, 0.5, 1.25, 1.25, 0.75, 25, 5, SOURCE, 81, english=True),
        "ads2v": _row(WAPG, 40, 4.0, 0.5, 1.25, 1.25, 0.75, 25, 5, SOURCE, 81, english=True),
        "r2v": _row(WAPG, 40, 4.0, 1.5, 4.5, 1.25, 0.8, 25, 5, VIDEO, 81),
        "rv2v": _row(RV2V, 40, 4.0, 1.5, 3.0, 0.75, 0.75, 25, 5, SOURCE, 81),
    },
    "v2": {
        "t2i": _row(WAPG, 50, 4.0, 0.5, 1.0, 1.0, 1.0, 25, 5, IMAGE, 1),
        "i2i": _row(WAPG, 40, 4.0, 0.5, 1.25, 1.25, 0.75, 25, 5, IMAGE, 1),
        "t2v": _row(WAPG, 50, 5.0, 1.2, 1.0, 1.0, 1.0, 50, 1, VIDEO, 81),
        "v2v": _row(WAPG, 40, 4.0, 1.2, 1.25, 1.25, 0.75, 50, 1, SOURCE, 81, english=True),
        "mv2v": _row(WAPG, 40, 4.0, 1.2, 1.25, 1.25, 0.75, 50, 1, SOURCE, 81, english=True),
        "ads2v": _row(WAPG, 40, 4.0, 1.2, 1.25, 1.25, 0.75, 50, 1, SOURCE, 81),
        "r2v": _row(WAPG, 40, 4.5, 1.5, 3.0, 1.0, 0.75, 50, 1, VIDEO, 81, english=True),
        "rv2v": _row(RV2V, 40, 5.5, 1.5, 4.0, 1.75, 0.75, 50, 1, SOURCE, 81),
    },
}


def full_preset(version: str, task: str) -> FullPreset:
    return FULL_PRESETS[version][task]


def detect_version(config: dict, location: str) -> str:
    """``bernini_version`` in ``config.json`` when present, else ``v2`` for a path or repo id ending in ``-v2``
    (how the reference's demo tells them apart), else ``v1``."""
    stated = config.get("bernini_version")
    if stated in VERSIONS:
        return stated
    return "v2" if location.rstrip("/").lower().endswith("-v2") else "v1"
