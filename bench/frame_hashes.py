"""Hashes of the frames that every example case, every guidance mode and every full-model task render on the
tiny bundles: the check that a refactor changed nothing, frame for frame.

    python bench/frame_hashes.py --write before.json        # on the old tree
    python bench/frame_hashes.py --compare before.json      # on the new tree: lists every run whose frames moved

Each run is small (9 frames at most, 2 steps, 64-pixel sources) and uses the Python API, so only the
pipeline's own arithmetic is hashed (not the MP4 encoder's). Hashes are only comparable on one machine with
one set of library versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from bernini import BerniniPipeline
from bernini.case_files import load_case
from bernini.errors import BerniniError
from bernini.sampling.guidance import FULL_MODEL_MODES, GUIDANCE_MODES
from bernini.tiny.bundle import write_tiny_bundle
from bernini.tiny.full import write_tiny_full_bundle

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAST = dict(num_inference_steps=2, num_frames=9, max_image_size=64, height=48, width=80, seed=7)
FULL_FAST = dict(num_inference_steps=2, num_frames=9, max_image_size=64, planning_step=2, vit_denoising_step=2, seed=7)
TASK_CASES = {  # a case file whose media each task can take
    "t2i": "t2i",
    "i2i": "i2i",
    "t2v": "t2v",
    "v2v": "v2v_case1",
    "mv2v": "v2v_case2",
    "rv2v": "rv2v_case1",
    "ads2v": "rv2v_case2",
    "r2v": "r2v",
}


def frames_hash(frames: np.ndarray) -> str:
    array = np.ascontiguousarray(np.asarray(frames, dtype=np.float32))
    return hashlib.sha256(array.tobytes() + str(array.shape).encode()).hexdigest()[:16]


def case(name: str) -> dict:
    kwargs = load_case(EXAMPLES / f"{name}.json")
    kwargs.pop("output", None)
    return kwargs


def run(pipe: BerniniPipeline, kwargs: dict, settings: dict) -> str:
    kwargs = {**kwargs, **settings}
    if kwargs.get("task_type") in ("t2i", "i2i"):
        kwargs["num_frames"] = 1
    try:
        return frames_hash(pipe(kwargs.pop("prompt"), **kwargs).frames)
    except BerniniError as error:
        return f"refused: {error}"


def hashes(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    renderer = BerniniPipeline.from_pretrained(str(write_tiny_bundle(root / "tiny")), device="cpu")
    for path in sorted(EXAMPLES.glob("*.json")):
        out[f"example {path.stem}"] = run(renderer, case(path.stem), FAST)
    for mode in GUIDANCE_MODES:
        for task in ("v2v", "rv2v", "t2v", "r2v"):
            result = run(renderer, {**case(TASK_CASES[task]), "guidance_mode": mode}, FAST)
            if not result.startswith("refused"):
                out[f"renderer {mode} on {task}"] = result
                break
    del renderer
    full = BerniniPipeline.from_pretrained(str(write_tiny_full_bundle(root / "full")), device="cpu")
    for task, name in TASK_CASES.items():
        kwargs = {k: v for k, v in case(name).items() if k != "guidance_mode"}
        out[f"full {task} (shipped mode)"] = run(full, kwargs, FULL_FAST)
    for mode in FULL_MODEL_MODES:
        for task in ("v2v", "rv2v", "t2v"):
            result = run(full, {**case(TASK_CASES[task]), "guidance_mode": mode}, FULL_FAST)
            if not result.startswith("refused"):
                out[f"full {mode} on {task}"] = result
                break
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", default=None, help="write the hashes here (JSON)")
    parser.add_argument("--compare", default=None, help="compare with hashes written before; exit 1 on a change")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        found = hashes(Path(root))
    for name, value in found.items():
        print(f"{value}  {name}")
    if args.write:
        Path(args.write).write_text(json.dumps(found, indent=1) + "\n", encoding="utf-8")
    if args.compare:
        before = json.loads(Path(args.compare).read_text(encoding="utf-8"))
        moved = sorted(k for k in before.keys() | found.keys() if before.get(k) != found.get(k))
        print(f"{len(found) - len(moved)} of {len(found)} runs give the same frames; changed: {moved or 'none'}")
        return 1 if moved else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
