"""End to end on the tiny bundle: diffusers parity, the Python API, latents, argument errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from bernini import BerniniError, BerniniPipeline
from bernini.sampling.schedulers import set_timesteps
from bernini.tasks import t5_prefix

SMALL = dict(num_frames=9, height=64, width=96, num_inference_steps=4)


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_t2v_mode_reproduces_diffusers_wan_pipeline(tiny_bundle, tiny_pipe):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    prompt = "a red fox runs across a snowy field"
    ours = tiny_pipe(prompt, task_type="t2v", guidance_mode="t2v", seed=3, flow_shift=5.0, **SMALL)
    reference = WanPipeline.from_pretrained(tiny_bundle, torch_dtype=torch.float32)
    scheduler = UniPCMultistepScheduler.from_config(reference.scheduler.config, flow_shift=5.0)
    # Both pipelines get the same schedule (the reference's flow sigmas, see bernini.sampling.schedulers.set_timesteps).
    original = scheduler.set_timesteps
    scheduler.set_timesteps = lambda n, device=None, **kw: set_timesteps(
        type("S", (), {"config": scheduler.config, "set_timesteps": original})(), n, device
    )
    reference.scheduler = scheduler
    expected = reference(
        prompt=t5_prefix("t2v") + prompt,
        negative_prompt=ours.parameters["resolved"]["negative_text"],
        height=64,
        width=96,
        num_frames=9,
        num_inference_steps=4,
        guidance_scale=4.0,
        guidance_scale_2=4.0 * 0.8,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    ).frames[0]
    assert ours.frames.shape == expected.shape == (9, 64, 96, 3)
    assert np.abs(ours.frames - expected).max() < 1e-4
    assert ours.parameters["resolved"]["forwards"] == 8
    assert ours.frames.std() > 0.01


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_seed_prompt_and_media_change_the_result(tiny_pipe):
    base = tiny_pipe("a boat", task_type="t2v", seed=1, **SMALL).frames
    assert not np.allclose(base, tiny_pipe("a boat", task_type="t2v", seed=2, **SMALL).frames, atol=1e-3)
    assert not np.allclose(base, tiny_pipe("a tree", task_type="t2v", seed=1, **SMALL).frames, atol=1e-3)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (9, 64, 96, 3), dtype=np.uint8)
    other = rng.integers(0, 255, (9, 64, 96, 3), dtype=np.uint8)
    a = tiny_pipe("a boat", task_type="v2v", video=video, seed=1, num_inference_steps=3).frames
    b = tiny_pipe("a boat", task_type="v2v", video=other, seed=1, num_inference_steps=3).frames
    assert not np.allclose(a, b, atol=1e-3)


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_api_tasks_and_media_types(tiny_pipe):
    rng = np.random.default_rng(1)
    video = rng.integers(0, 255, (17, 64, 96, 3), dtype=np.uint8)
    out = tiny_pipe("edit it", task_type="v2v", video=video, num_inference_steps=2)
    assert out.frames.shape == (17, 64, 96, 3)
    assert out.parameters["resolved"]["guidance_mode"] == "v2v_apg"
    image = Image.fromarray(rng.integers(0, 255, (70, 100, 3), dtype=np.uint8))
    out = tiny_pipe("make it blue", task_type="i2i", image=image, num_inference_steps=2, output_type="pil")
    assert len(out.frames) == 1 and out.frames[0].size == (96, 64)
    refs = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(3)]
    out = tiny_pipe(
        "image0 and image1 dance",
        task_type="r2v",
        images=refs,
        num_inference_steps=2,
        **{k: v for k, v in SMALL.items() if k != "num_inference_steps"},
    )
    assert out.parameters["resolved"]["source_ids"]["I"] == [1.0, 2.0, 3.0]
    assert out.parameters["resolved"]["forwards"] == 6
    pt = tiny_pipe("x", task_type="t2i", height=64, width=96, num_inference_steps=2, output_type="pt")
    assert tuple(pt.frames.shape) == (1, 3, 64, 96)


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_latent_output_decodes_to_the_same_frames(tiny_pipe):
    latent = tiny_pipe("a kite", task_type="t2v", seed=5, output_type="latent", **SMALL)
    frames = tiny_pipe("a kite", task_type="t2v", seed=5, **SMALL).frames
    assert tuple(latent.frames.shape) == (1, 16, 3, 8, 12)
    assert np.allclose(tiny_pipe.decode(latent.frames), frames, atol=1e-6)


def test_generator_is_honoured(tiny_pipe):
    a = tiny_pipe(
        "a kite",
        task_type="t2i",
        generator=torch.Generator().manual_seed(9),
        height=64,
        width=96,
        num_inference_steps=2,
    )
    b = tiny_pipe("a kite", task_type="t2i", seed=9, height=64, width=96, num_inference_steps=2)
    assert np.array_equal(a.frames, b.frames)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(task_type="nope"), "task_type"),
        (dict(guidance_mode="fast"), "guidance_mode"),
        (dict(num_frames=0), "num_frames"),
        (dict(height=8), "height"),
        (dict(output_type="gif"), "output_type"),
        (dict(omega_txt="lots"), "omega_txt"),
        (dict(bogus=1), "bogus"),
        (dict(task_type="t2v", guidance_mode="rv2v"), "rv2v"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(tiny_pipe, kwargs, needle, capsys):
    with pytest.raises(ValueError) as info:
        tiny_pipe("prompt", **kwargs)
    assert isinstance(info.value, BerniniError)
    assert needle in str(info.value)
    assert capsys.readouterr().out == ""


def test_components_are_exposed_and_swappable(tiny_bundle):

    pipe = BerniniPipeline.from_pretrained(tiny_bundle, dtype=torch.float32, device="cpu")
    for name in ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(pipe, name) is not None
    assert pipe.to("cpu") is pipe
    pipe.set_progress_bar_config(disable=True)
    unipc = pipe("a cat", task_type="t2i", height=64, width=96, num_inference_steps=3).frames
    euler = pipe("a cat", task_type="t2i", height=64, width=96, num_inference_steps=3, use_unipc=False).frames
    assert not np.allclose(unipc, euler, atol=1e-4)


def euler_timesteps(shift: float, steps: int) -> list[int]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def test_a_swapped_in_scheduler_runs_with_the_requested_shift(tiny_bundle):
    """diffusers users swap ``pipe.scheduler``; it must run as that class with ``flow_shift`` and say so."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = BerniniPipeline.from_pretrained(tiny_bundle, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    small = dict(task_type="t2i", height=32, width=48, num_inference_steps=4, output_type="latent")
    resolved = pipe("a cat", flow_shift=2.0, **small).parameters["resolved"]
    assert resolved["scheduler"] == "flow_match_euler"
    assert resolved["timesteps"] == euler_timesteps(2.0, 4) != euler_timesteps(5.0, 4)
    assert pipe("a cat", flow_shift=7.0, **small).parameters["resolved"]["timesteps"] == euler_timesteps(7.0, 4)
    explicit = pipe("a cat", flow_shift=2.0, use_unipc=True, **small).parameters["resolved"]
    assert explicit["scheduler"] == "unipc" and explicit["timesteps"] != euler_timesteps(2.0, 4)


def test_bundle_config_keys_are_the_defaults(tiny_bundle, bundle_with_config):
    """``use_unipc`` and the source-id keys of the bundle's config.json decide unless a flag says otherwise."""
    bundle = bundle_with_config(tiny_bundle, use_unipc=False, use_src_id_rotary_emb=False, max_trained_src_id=2)
    pipe = BerniniPipeline.from_pretrained(bundle, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    refs = [np.full((32, 48, 3), 60 * i, np.uint8) for i in range(3)]
    small = dict(task_type="r2v", images=refs, num_frames=5, height=32, width=48, num_inference_steps=3)
    record = pipe("a cat", output_type="latent", **small).parameters
    assert record["resolved"]["scheduler"] == "flow_match_euler"
    assert record["resolved"]["source_ids"]["I"] == [0.0, 0.0, 0.0]
    assert (record["request"]["use_unipc"], record["request"]["max_trained_src_id"]) == (False, 2)
    record = pipe("a cat", output_type="latent", use_unipc=True, use_src_tgt_id=True, **small).parameters
    assert record["resolved"]["scheduler"] == "unipc"
    assert record["resolved"]["source_ids"]["I"] == [1.0, 1.5, 2.0]  # interpolated up to the bundle's 2


def test_callback_may_replace_latents_and_interrupt(tiny_pipe):
    """diffusers semantics: ``callback_on_step_end`` returns replaced tensors; ``pipe._interrupt`` stops early."""
    small = dict(task_type="t2v", num_frames=5, height=32, width=48, num_inference_steps=4, output_type="latent")
    plain = tiny_pipe("a cat", **small).latents

    def zero_after_last(pipe, step, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 3 else tensors

    assert torch.count_nonzero(tiny_pipe("a cat", callback_on_step_end=zero_after_last, **small).latents) == 0
    seen = []

    def stop_after_two(pipe, step, timestep, tensors):
        seen.append(step)
        if step == 1:
            pipe._interrupt = True
        return tensors

    out = tiny_pipe("a cat", callback_on_step_end=stop_after_two, **small)
    assert seen == [0, 1] and out.parameters["resolved"]["interrupted"] is True
    assert len(out.parameters["resolved"]["timesteps"]) == 2
    assert not torch.equal(out.latents, plain)
    assert torch.equal(tiny_pipe("a cat", **small).latents, plain), "the next call starts uninterrupted"


def test_texts_and_conditions_are_placed_once_per_generation(tiny_bundle):
    """Every forward of a bf16 run receives the same (already cast) text and condition tensors."""
    pipe = BerniniPipeline.from_pretrained(tiny_bundle, device="cpu", dtype="bf16")
    pipe.set_progress_bar_config(disable=True)
    received: list[tuple[torch.Tensor, list[torch.Tensor]]] = []

    def hook(module, args, kwargs):
        received.append((args[2], [s.latent for s in kwargs["conditions"]]))

    handles = [expert.register_forward_pre_hook(hook, with_kwargs=True) for expert in pipe.experts]
    try:
        pipe("a cat", task_type="v2v", video=np.zeros((5, 32, 48, 3), np.uint8), num_frames=5, num_inference_steps=3,
             output_type="latent")  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    assert len(received) == 3 * 2
    texts = {id(text) for text, _ in received}
    conditions = {id(latent) for _, latents in received for latent in latents}
    assert len(texts) == 2 and len(conditions) == 1
    assert all(text.dtype == torch.bfloat16 for text, _ in received)


def test_device_map_takes_one_device_and_refuses_strategies(tiny_bundle):
    pipe = BerniniPipeline.from_pretrained(tiny_bundle, device_map="cpu")
    assert pipe.device == torch.device("cpu")
    for strategy in ("balanced", "auto", {"": "cpu"}):
        with pytest.raises(BerniniError, match="device_map") as info:
            BerniniPipeline.from_pretrained(tiny_bundle, device_map=strategy)
        assert "\n" not in str(info.value)
    with pytest.raises(BerniniError, match="either device or device_map"):
        BerniniPipeline.from_pretrained(tiny_bundle, device="cpu", device_map="cpu")


def test_progress_bar_is_the_diffusers_method(tiny_pipe, capsys):
    """``progress_bar`` stays a method and ``set_progress_bar_config`` configures it, as in diffusers."""
    small = dict(task_type="t2i", height=32, width=48, num_inference_steps=2, output_type="latent")
    tiny_pipe("a cat", **small)
    assert "denoising" not in capsys.readouterr().err  # the fixture disabled it
    try:
        tiny_pipe.set_progress_bar_config(desc="rendering", disable=False)
        tiny_pipe("a cat", **small)
        assert "rendering" in capsys.readouterr().err
    finally:
        tiny_pipe.set_progress_bar_config(disable=True)


def test_library_calls_draw_nothing_unless_asked(tiny_bundle, capfd):
    """The README's promise: from Python, loading and generating write nothing to stdout or stderr (the tqdm
    denoising bar included) until ``progress=True`` asks for the bars."""
    small = dict(task_type="v2v", video=np.zeros((7, 32, 40, 3), np.uint8), num_inference_steps=2)
    capfd.readouterr()
    quiet = BerniniPipeline.from_pretrained(tiny_bundle, device="cpu")
    assert quiet("a hat", **small).frames.shape[0] == 5  # 7 frames snapped to 4k+1: an adjustment, not a print
    assert capfd.readouterr() == ("", "")
    loud = BerniniPipeline.from_pretrained(tiny_bundle, device="cpu", progress=True)
    loud("a hat", **small)
    assert "denoising" in capfd.readouterr().err


def test_readme_python_example_runs(tiny_bundle, full_bundle, tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-bundle").symlink_to(tiny_bundle)
    (tmp_path / "tiny-full").symlink_to(full_bundle)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert (tmp_path / "fox.mp4").is_file()
    assert scope["out"].parameters["resolved"]["planner"]["planning_step"] == 4


@pytest.mark.parametrize("mode", ["model", "blocks"])
def test_offload_modes_give_the_same_frames(tiny_bundle, tiny_pipe, mode):
    """On the CPU the offload target is the CPU too, so this checks the plumbing (hooks, input devices)."""
    import diffusers
    from diffusers.hooks.group_offloading import _is_group_offload_enabled
    from packaging.version import Version

    no_accelerator = getattr(torch, "accelerator", None) is None or torch.accelerator.current_accelerator() is None
    if mode == "blocks" and no_accelerator and Version(diffusers.__version__) < Version("0.36"):
        pytest.skip("diffusers < 0.36 group offloading needs an accelerator to exist")
    pipe = BerniniPipeline.from_pretrained(tiny_bundle, device="cpu", offload=mode)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.offload == mode
    assert all(_is_group_offload_enabled(e) for e in pipe.experts) == (mode == "blocks")
    kwargs = dict(
        task_type="rv2v",
        video=np.zeros((9, 32, 48, 3), np.uint8),
        images=[np.ones((32, 32, 3), np.uint8)],
        num_inference_steps=2,
        seed=4,
    )
    assert np.allclose(pipe("a hat", **kwargs).frames, tiny_pipe("a hat", **kwargs).frames, atol=1e-6)


def test_unknown_offload_mode(tiny_bundle):
    with pytest.raises(BerniniError, match="offload"):
        BerniniPipeline.from_pretrained(tiny_bundle, device="cpu", offload="disk")
