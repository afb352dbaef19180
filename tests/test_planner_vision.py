"""The planner's source ViT inputs and features (spec §2.4) on the tiny full bundle.

The video path is checked against Qwen's patch flattening written out here from the spec (grid_t, temporal
slot, channel, merge windows), against the image processor (a frame pair and single images), and, when a
transformers 4.57 interpreter is available, against 4.57's own video preprocessing and image features.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from PIL import Image

from bernini.io.video_read import read_video_frames
from bernini.planner.geometry import VitGrid, target_grid, vit_frame_indices
from bernini.planner.loading import FullBundle, load_planner
from bernini.planner.packing import VisualItem
from bernini.planner.vision import (
    image_input,
    load_image_processor,
    planner_visuals,
    video_input,
    vision_features,
)

PATCH = 14


def noise(seed: int, height: int = 60, width: int = 90) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode(path: Path, frames: np.ndarray, fps: int) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def qwen_patches(frames: np.ndarray) -> torch.Tensor:
    """Qwen's flattening from normalised frames ``[T, C, H, W]`` (T even): rows (t, h/2, w/2, 2, 2), columns
    (C, temporal slot, 14, 14)."""
    t, c, h, w = frames.shape
    x = frames.reshape(t // 2, 2, c, h // 28, 2, PATCH, w // 28, 2, PATCH).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return torch.from_numpy(np.ascontiguousarray(x).reshape(t // 2 * (h // PATCH) * (w // PATCH), -1))


def normalised(processor, picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow bicubic to ``size`` (w, h), /255, CLIP mean/std: ``[C, H, W]``, independent of the processor's code."""
    resized = np.asarray(Image.fromarray(picture).resize(size, Image.BICUBIC), dtype=np.float32) / 255.0
    mean, std = np.array(processor.image_mean, np.float32), np.array(processor.image_std, np.float32)
    return ((resized - mean) / std).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def processor(full_bundle):
    return load_image_processor(full_bundle / "mllm")


@pytest.fixture(scope="module")
def planner(full_bundle):
    return load_planner(FullBundle.open(full_bundle), torch.float32)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """50 distinct noise frames at 25 fps (2 s, 64×96)."""
    frames = np.stack([noise(k, 64, 96) for k in range(50)])
    return encode(tmp_path_factory.mktemp("vision") / "clip.mp4", frames, 25)


# ------------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("height", "width", "resized", "tokens"),
    [(512, 512, (224, 224), 64), (480, 848, (168, 280), 60), (1920, 1080, (280, 168), 60), (1024, 768, (252, 168), 54)],
)
def test_image_grid_follows_the_256p_budget(processor, height, width, resized, tokens):
    item = image_input(processor, np.zeros((height, width, 3), np.uint8))
    assert item.grid_thw == (1, resized[0] // PATCH, resized[1] // PATCH) and item.grid.tokens == tokens
    assert item.pixel_values.shape == (resized[0] * resized[1] // PATCH**2, 3 * 2 * PATCH * PATCH)
    assert item.item == VisualItem(False, VitGrid.of_image(height, width)) and item.native is None


def test_image_equals_the_processor_and_the_independent_flattening(processor):
    picture = noise(0)
    item = image_input(processor, Image.fromarray(picture))
    out = processor(images=[Image.fromarray(picture)], return_tensors="pt")
    assert torch.equal(item.pixel_values, out["pixel_values"].float())
    assert out["image_grid_thw"].tolist() == [list(item.grid_thw)] == [[1, 4, 6]]
    frame = normalised(processor, picture, (84, 56))
    torch.testing.assert_close(item.pixel_values, qwen_patches(np.stack([frame, frame])), atol=2e-6, rtol=0)


def test_two_frame_video_of_one_image_is_that_image(processor):
    picture = noise(1)
    image = image_input(processor, picture)
    video = video_input(processor, np.stack([picture, picture]), fps=16, num_frames=9)
    assert video.video and video.grid == image.grid and video.grid_thw == (1, 4, 6)
    assert torch.equal(video.pixel_values, image.pixel_values)
    assert video.native == (2, 16.0, 60, 90)
    channels_first = torch.from_numpy(np.stack([picture, picture])).permute(0, 3, 1, 2)
    as_list = [Image.fromarray(picture)] * 2
    for other in (channels_first, as_list):
        assert torch.equal(video_input(processor, other, fps=16, num_frames=9).pixel_values, video.pixel_values)


def test_four_frame_video_pairs_consecutive_frames_in_qwen_order(processor):
    frames = np.stack([noise(10 + k) for k in range(4)])
    assert vit_frame_indices(4, 2.0, 16, 49) == [0, 1, 2, 3]  # the ViT samples 2 frames a second: every frame
    video = video_input(processor, frames, fps=16, num_frames=49, video_fps=2.0)
    assert video.grid_thw == (2, 4, 6)
    tokens = 24
    second = video.pixel_values[tokens:].reshape(tokens, 3, 2, -1)
    singles = [image_input(processor, frames[k]).pixel_values.reshape(tokens, 3, 2, -1) for k in (2, 3)]
    assert torch.equal(second[:, :, 0], singles[0][:, :, 0]) and torch.equal(second[:, :, 1], singles[1][:, :, 0])

    independent = qwen_patches(np.stack([normalised(processor, f, (84, 56)) for f in frames]))
    torch.testing.assert_close(video.pixel_values, independent, atol=2e-6, rtol=0)
    # The check can fail: slots before channels, or groups interleaved by spatial patch, give other rows.
    slots_first = independent.reshape(2 * tokens, 3, 2, -1).transpose(1, 2).reshape(2 * tokens, -1)
    interleaved = independent.reshape(2, tokens, -1).transpose(0, 1).reshape(2 * tokens, -1)
    assert not torch.allclose(video.pixel_values, slots_first) and not torch.allclose(video.pixel_values, interleaved)


def test_video_file_is_decoded_exactly_and_sampled_by_the_request(processor, clip):
    decoded, rate = read_video_frames(clip)
    from_file = video_input(processor, clip, fps=16, num_frames=33)
    in_memory = video_input(processor, decoded, fps=16, num_frames=33, video_fps=rate)
    assert from_file.native == (50, 25.0, 64, 96) and from_file.grid_thw == (2, 4, 6)
    assert torch.equal(from_file.pixel_values, in_memory.pixel_values)
    picked = vit_frame_indices(50, 25.0, 16, 33)
    assert picked == [0, 16, 33, 49]
    first_pair = video_input(processor, decoded[[picked[0], picked[1]]], fps=16, num_frames=9)
    assert torch.equal(from_file.pixel_values[:24], first_pair.pixel_values)
    faster = video_input(processor, clip, fps=16, num_frames=33, video_fps=50.0)  # the override wins
    assert faster.grid.temporal == len(vit_frame_indices(50, 50.0, 16, 33)) // 2 == 1
    shorter = video_input(processor, clip, fps=16, num_frames=2)
    assert shorter.grid.temporal == 1


# ----------------------------------------------------------------------------------------- features


def test_features_are_the_merged_tokens_of_each_item(planner, processor):
    frames = np.stack([noise(20 + k) for k in range(4)])
    image = image_input(processor, noise(30, 100, 150))
    video = video_input(processor, frames, fps=16, num_frames=49, video_fps=2.0)
    feats = vision_features(planner.qwen, [image, video])
    hidden = planner.qwen.config.vision_config.out_hidden_size
    assert [tuple(f.shape) for f in feats] == [(image.grid.tokens, hidden), (video.grid.tokens, hidden)]
    assert image.grid.tokens == (112 // 28) * (140 // 28) and video.grid.tokens == 2 * 6
    assert all(f.dtype == torch.float32 for f in feats)

    changed = frames.copy()
    changed[3] = noise(99)
    moved = vision_features(planner.qwen, [video_input(processor, changed, fps=16, num_frames=49, video_fps=2.0)])[0]
    assert torch.equal(moved[:6], feats[1][:6])  # Qwen attends within a temporal group: group 0 is untouched
    assert not torch.allclose(moved[6:], feats[1][6:], atol=1e-4)
    other = vision_features(planner.qwen, [image_input(processor, noise(31, 100, 150))])[0]
    assert not torch.allclose(other, feats[0], atol=1e-4)


def test_features_equal_transformers_image_features(planner, processor):
    picture = Image.fromarray(noise(40, 90, 120))
    out = processor(images=[picture], return_tensors="pt")
    stock = planner.qwen.get_image_features(out["pixel_values"], out["image_grid_thw"])
    stock = stock if isinstance(stock, tuple | list) else stock.pooler_output
    (ours,) = vision_features(planner.qwen, [image_input(processor, picture)])
    torch.testing.assert_close(ours, stock[0], atol=0, rtol=0)


def test_features_run_in_the_towers_dtype(planner, processor):
    item = image_input(processor, noise(50))
    bf16 = SimpleNamespace(visual=copy.deepcopy(planner.qwen.visual).to(torch.bfloat16))
    (low,) = vision_features(bf16, [item])
    (full,) = vision_features(planner.qwen, [item])
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), full, atol=0.1, rtol=0.1)


# ------------------------------------------------------------------------------------------ requests


def test_text_to_x_targets_are_black_placeholders(processor):
    t2v = planner_visuals(processor, fps=16, num_frames=81, height=480, width=848)
    assert t2v.sources == [] and t2v.target == VisualItem(True, VitGrid(5, 12, 20)) and t2v.target.grid.tokens == 300
    t2i = planner_visuals(processor, num_frames=1, height=512, width=512)
    assert t2i.target == VisualItem(False, VitGrid(1, 16, 16)) and t2i.target.grid.tokens == 64


def test_editing_target_is_the_first_source_video(processor, clip):
    references = [noise(60, 120, 80), noise(61)]
    visuals = planner_visuals(
        processor, videos=[clip, np.stack([noise(62)] * 4)], images=references, num_frames=33, height=480, width=832
    )
    assert [s.video for s in visuals.sources] == [True, True, False, False]
    assert visuals.source_items[0].grid == visuals.target.grid == target_grid(33, 480, 832, 16, (50, 25.0, 64, 96))
    assert visuals.target == VisualItem(True, VitGrid(2, 4, 6))  # the source's size, not the request's
    assert visuals.source_items[2] == VisualItem(False, VitGrid.of_image(120, 80))

    i2i = planner_visuals(processor, image=noise(63), num_frames=1, height=512, width=512)
    assert [s.item for s in i2i.sources] == [VisualItem(False, VitGrid(1, 4, 6))]
    assert i2i.target == VisualItem(False, VitGrid(1, 16, 16))


def test_bad_inputs_are_one_line_errors(processor, tmp_path, one_line_error):
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    one_line_error(planner_visuals, processor, videos=[fake], match="cannot read video")
    one_line_error(planner_visuals, processor, videos=[tmp_path / "missing.mp4"], match="not found")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    one_line_error(planner_visuals, processor, images=[broken], match="cannot read image")
    one_line_error(planner_visuals, processor, image=noise(0), images=[noise(1)], match="not both")
    one_line_error(video_input, processor, noise(0), fps=16, num_frames=9, match="expected T x H x W")
    one_line_error(load_image_processor, tmp_path, match="image processor")


# ------------------------------------------------------------------------------------ transformers 4.57

_TF457_SCRIPT = r"""
import json, sys
import numpy as np, torch
from pathlib import Path
from safetensors.torch import load_file
from transformers import AutoConfig, Qwen2VLImageProcessor
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
from bernini.planner.vision import image_input, load_image_processor, video_input, vision_features

root = Path(sys.argv[1])
processor = load_image_processor(root / "mllm")
rng = np.random.default_rng(0)
frames = rng.integers(0, 256, (4, 60, 90, 3), dtype=np.uint8)
ours = video_input(processor, frames, fps=16, num_frames=49, video_fps=2.0)
stock = processor(images=None, videos=[list(frames)], return_tensors="pt")
qwen = Qwen2_5_VLModel(AutoConfig.from_pretrained(root / "mllm")).eval()
weights = {}
for shard in sorted((root / "bernini").glob("*.safetensors")):
    weights.update({k[len("mllm.visual."):]: v for k, v in load_file(shard).items() if k.startswith("mllm.visual.")})
qwen.visual.load_state_dict(weights, strict=True)
image = image_input(processor, frames[0])
(feats,) = vision_features(qwen, [image])
(stock_feats,) = qwen.get_image_features(image.pixel_values, torch.tensor([image.grid_thw]))
print(json.dumps({
    "slow": type(processor) is Qwen2VLImageProcessor,
    "grid": stock["video_grid_thw"].tolist(), "ours_grid": [list(ours.grid_thw)],
    "video_diff": float((stock["pixel_values_videos"].float() - ours.pixel_values).abs().max()),
    "feature_shape": list(feats.shape), "feature_diff": float((feats - stock_feats).abs().max()),
}))
"""


def _tf457_python() -> str | None:
    python = os.environ.get("BERNINI_TF457_PYTHON")
    if python:
        return python
    return "/tmp/venv-pins/bin/python" if Path("/tmp/venv-pins/bin/python").is_file() else None


def test_transformers_457_video_preprocessing_and_features_agree(full_bundle):
    """4.57's slow image processor still takes ``videos``: its own video flattening must equal ours."""
    python = _tf457_python()
    if python is None:
        pytest.skip("no transformers 4.57 interpreter (set BERNINI_TF457_PYTHON)")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [python, "-c", _TF457_SCRIPT, str(full_bundle)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["slow"], "transformers 4.57 must give the PIL image processor"
    assert result["grid"] == result["ours_grid"] == [[2, 4, 6]]
    assert result["video_diff"] < 1e-6 and result["feature_diff"] == 0.0
    assert result["feature_shape"] == [6, 64]
