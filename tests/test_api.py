"""The Python API and the command line are one code path: same settings, same frames."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bernini import GUIDANCE_MODES, TASKS, BerniniPipeline, load_case, tasks_table
from bernini.errors import BerniniError
from bernini.frontends.cli import main as cli_main
from bernini.io.output import write_image, write_video
from bernini.io.video_read import read_video_frames

COMMON = {"num_inference_steps": 2, "seed": 11}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-media")
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:64, 0:96]
    frames = np.stack(
        [np.stack([(xx * 2 + 9 * t) % 256, (yy * 3) % 256, (xx + yy + 20 * t) % 256], -1) for t in range(9)]
    ).astype(np.uint8)
    video = write_video(root / "src.mp4", frames, fps=16)
    image = write_image(root / "src.png", rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    refs = [write_image(root / f"ref{i}.png", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for i in range(2)]
    return {"video": video, "image": image, "refs": refs}


def cli_frames(tmp_path: Path, bundle: Path, args: list[str]) -> np.ndarray:
    frames_dir = tmp_path / "frames"
    code = cli_main(
        [
            "generate",
            "--config",
            str(bundle),
            "--device",
            "cpu",
            "--output",
            str(tmp_path / "out.mp4"),
            "--save_frames",
            str(frames_dir),
            "--num_inference_steps",
            "2",
            "--seed",
            "11",
            *args,
        ]
    )
    assert code == 0
    return np.stack([np.asarray(Image.open(p)) for p in sorted(frames_dir.glob("*.png"))])


def api_frames(pipe, **kwargs) -> np.ndarray:
    out = pipe(output_type="pil", **COMMON, **kwargs)
    return np.stack([np.asarray(frame) for frame in out.frames])


def test_t2v_same_as_cli(tiny_pipe, tiny_bundle, tmp_path):
    expected = cli_frames(
        tmp_path,
        tiny_bundle,
        ["--prompt", "a kite", "--task_type", "t2v", "--num_frames", "5", "--height", "32", "--width", "48"],
    )
    got = api_frames(tiny_pipe, prompt="a kite", task_type="t2v", num_frames=5, height=32, width=48)
    assert got.shape == (5, 32, 48, 3) and np.array_equal(got, expected)


def test_v2v_from_numpy_same_as_cli(tiny_pipe, tiny_bundle, tmp_path, media):
    expected = cli_frames(
        tmp_path, tiny_bundle, ["--prompt", "add rain", "--task_type", "v2v", "--video", str(media["video"])]
    )
    decoded, fps = read_video_frames(media["video"])
    got = api_frames(tiny_pipe, prompt="add rain", task_type="v2v", video=decoded, video_fps=fps)
    assert got.shape == (9, 64, 96, 3) and np.array_equal(got, expected)


def test_i2i_from_pil_same_as_cli(tiny_pipe, tiny_bundle, tmp_path, media):
    expected = cli_frames(
        tmp_path, tiny_bundle, ["--prompt", "make it red", "--task_type", "i2i", "--image", str(media["image"])]
    )
    got = api_frames(tiny_pipe, prompt="make it red", task_type="i2i", image=Image.open(media["image"]))
    assert got.shape == (1, 64, 96, 3) and np.array_equal(got, expected)


def test_r2v_same_as_cli(tiny_pipe, tiny_bundle, tmp_path, media):
    refs = [str(p) for p in media["refs"]]
    expected = cli_frames(
        tmp_path,
        tiny_bundle,
        [
            "--prompt",
            "image0 meets image1",
            "--task_type",
            "r2v",
            "--images",
            *refs,
            "--num_frames",
            "5",
            "--height",
            "32",
            "--width",
            "48",
        ],
    )
    got = api_frames(
        tiny_pipe, prompt="image0 meets image1", task_type="r2v", images=refs, num_frames=5, height=32, width=48
    )
    assert np.array_equal(got, expected)


def test_helpers(tmp_path):
    table = tasks_table()
    assert set(table) == set(TASKS) and table["rv2v"]["guidance_mode"] == "rv2v"
    assert "t2v_apg" in GUIDANCE_MODES
    case = tmp_path / "case.json"
    case.write_text('{"task_type": "i2i", "prompt": "p", "image": "pic.png"}')
    (tmp_path / "pic.png").write_bytes(b"")
    kwargs = load_case(case)
    assert kwargs["task_type"] == "i2i" and Path(kwargs["image"]).name == "pic.png"


def test_callback_sees_every_step(tiny_pipe):
    seen = []
    tiny_pipe(
        "a kite",
        task_type="t2i",
        height=32,
        width=48,
        num_inference_steps=3,
        callback_on_step_end=lambda pipe, i, t, state: seen.append((i, t, tuple(state["latents"].shape))),
    )
    assert [i for i, _, _ in seen] == [0, 1, 2] and seen[0][2] == (1, 16, 1, 4, 6)


SMALL_KITE = dict(task_type="t2i", height=32, width=48, num_inference_steps=2, output_type="latent")


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (lambda latents: latents, r"returned a Tensor; return a dict such as \{'latents': tensor\}"),
        (lambda latents: {"latents": latents.numpy()}, r"latents of type ndarray; return a torch.Tensor"),
        (lambda latents: {"latents": latents[..., :-1]}, r"latents of shape \(1, 16, 1, 4, 5\); .* \(1, 16, 1, 4, 6\)"),
        (lambda latents: {"latents": latents.round().long()}, r"latents of dtype int64; return floating-point"),
    ],
    ids=["bare-tensor", "numpy", "shape", "integer"],
)
def test_wrong_replacement_latents_from_a_callback_stop_with_one_clear_error(tiny_pipe, replace, message):
    """Before, a bare tensor was ignored without a word and the others failed later, deep inside a step."""
    calls = []

    def callback(pipe, step, timestep, tensors):
        calls.append(step)
        return replace(tensors["latents"])

    with pytest.raises(BerniniError, match=message):
        tiny_pipe("a kite", callback_on_step_end=callback, **SMALL_KITE)
    assert calls == [0], "refused at the step that returned it"


def test_replacement_latents_of_another_float_dtype_take_the_latents_dtype(tiny_pipe):
    plain = tiny_pipe("a kite", **SMALL_KITE).latents

    def to_ones(pipe, step, timestep, tensors):
        return {"latents": torch.ones(tensors["latents"].shape, dtype=torch.float64)} if step == 1 else None

    replaced = tiny_pipe("a kite", callback_on_step_end=to_ones, **SMALL_KITE).latents
    assert (
        replaced.dtype == plain.dtype
        and replaced.device == plain.device
        and torch.equal(replaced, torch.ones_like(plain))
    )


def test_a_device_budget_of_zero_is_refused_before_loading(tiny_bundle):
    for budget in (0, -1.0, float("nan")):
        with pytest.raises(BerniniError, match=r"gpu_memory must be a positive number of GiB"):
            BerniniPipeline.from_pretrained(tiny_bundle, device="cpu", gpu_memory=budget)


def test_a_list_of_pil_frames_is_one_video_as_in_diffusers(tiny_pipe, media):
    frames, _ = read_video_frames(media["video"])
    pil = [Image.fromarray(frame) for frame in frames]
    kwargs = {"task_type": "v2v", "num_frames": 9, "height": 64, "width": 96, **COMMON}
    from_pil = tiny_pipe("make it red", video=pil, **kwargs)
    assert from_pil.parameters["request"]["video"] == ["<9 frames>"]
    assert from_pil.parameters["resolved"]["source_ids"]["V"] == [1.0]  # one video, not nine
    from_array = tiny_pipe("make it red", video=np.stack(frames), **kwargs)
    np.testing.assert_array_equal(from_pil.frames, from_array.frames)
    two = tiny_pipe("make it red", video=[pil, pil], **{**kwargs, "task_type": "ads2v"})
    assert two.parameters["request"]["video"] == ["<9 frames>", "<9 frames>"]


def test_the_pipeline_repr_says_what_is_loaded(tiny_pipe, tiny_bundle):
    text = repr(tiny_pipe)
    assert text.startswith(f"BerniniPipeline(model='{tiny_bundle}', experts=[transformer ")
    for part in ("transformer_2 ", "device=cpu", "dtype=float32", "attention=sdpa", "scheduler=unipc", "boundary=875"):
        assert part in text, text


def test_loading_shows_no_third_party_bars_by_default_and_restores_their_setting(tiny_bundle, capfd):
    import diffusers
    import transformers

    from bernini import BerniniPipeline

    diffusers.utils.logging.enable_progress_bar()  # as in a fresh interpreter (other tests may have turned them off)
    transformers.utils.logging.enable_progress_bar()
    capfd.readouterr()
    BerniniPipeline.from_pretrained(tiny_bundle, device="cpu")
    assert capfd.readouterr().err == ""
    assert diffusers.utils.logging.is_progress_bar_enabled()  # the caller's setting is left as it was
    assert transformers.utils.logging.is_progress_bar_enabled()
    BerniniPipeline.from_pretrained(tiny_bundle, device="cpu", progress=True)
    assert "Loading" in capfd.readouterr().err
