"""The full Bernini model through ``BerniniPipeline`` on the tiny full bundle: every task end to end, each input
of the planner moving the frames, the shipped per-task settings under explicit ones, and bad combinations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bernini import BerniniPipeline
from bernini.loaders.bundle import BundleSpec
from bernini.planner.geometry import target_grid
from bernini.request import WAN_NEGATIVE_PROMPT, GenerationRequest
from bernini.resolve import resolve_request, with_model_defaults
from bernini.resolved import ModelDefaults
from bernini.sampling.full_presets import ENGLISH_NEGATIVE_PROMPT, FULL_PRESETS

FAST = {"num_inference_steps": 3, "planning_step": 3, "vit_denoising_step": 2}
PROMPT = "make the dog red"


@pytest.fixture(scope="module")
def full_pipe(full_bundle):
    pipe = BerniniPipeline.from_pretrained(full_bundle, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def media(full_media):
    return full_media


def task_inputs(task: str, media) -> dict:
    video = {"video": [str(media / "src.mp4")], "num_frames": 9}
    return {
        "t2i": {"num_frames": 1, "height": 64, "width": 64},
        "i2i": {"image": str(media / "image.png"), "num_frames": 1, "height": 56, "width": 56},
        "t2v": {"num_frames": 9, "height": 64, "width": 96},
        "v2v": video,
        "mv2v": video,
        "ads2v": {"video": [str(media / "src.mp4"), str(media / "ads.mp4")], "num_frames": 9},
        "r2v": {
            "images": [str(media / "ref.png"), str(media / "image.png")],
            "num_frames": 9,
            "height": 64,
            "width": 96,
        },
        "rv2v": {**video, "images": [str(media / "ref.png")]},
    }[task]


@pytest.mark.parametrize("task", ["t2i", "i2i", "t2v", "v2v", "mv2v", "ads2v", "r2v", "rv2v"])
def test_every_task_runs_end_to_end_with_its_shipped_mode(full_pipe, media, task):
    inputs = task_inputs(task, media)
    out = full_pipe(PROMPT, task_type=task, **inputs, **FAST)
    resolved = out.parameters["resolved"]
    planner = resolved["planner"]
    assert resolved["guidance_mode"] == FULL_PRESETS["v1"][task].guidance_mode
    frames = inputs["num_frames"]
    assert out.frames.shape[0] == frames and np.isfinite(out.frames).all()
    if "video" in inputs:
        expected = target_grid(frames, 0, 0, 16.0, source=(9, 16.0, 48, 80)).tokens  # the first source's grid
    else:
        expected = target_grid(frames, inputs["height"], inputs["width"]).tokens
    assert planner["target_slots"] == expected == sum(planner["reveal_counts"])
    assert len(planner["reveal_counts"]) == FAST["planning_step"]
    sources = len(inputs.get("video", [])) + ("image" in inputs) + len(inputs.get("images", []))
    assert len(planner["source_tokens"]) == sources and all(n > 0 for n in planner["source_tokens"])
    tokens = planner["branch_tokens"]
    assert tokens["cond"] == tokens["text"] + sum(n + 2 for n in planner["source_tokens"])
    rows = planner["context_rows"]
    assert all(n >= 512 for n in rows.values())
    request = out.parameters["request"]
    assert request["planning_step"] == 3 and request["omega_tgt"] == FULL_PRESETS["v1"][task].omega_tgt


def frames_of(pipe, media, **changes) -> np.ndarray:
    settings = {"task_type": "v2v", **task_inputs("v2v", media), **FAST, "omega_tgt": 6.0, **changes}
    return pipe(settings.pop("prompt", PROMPT), **settings).frames


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_each_planner_input_moves_the_frames(full_pipe, media):
    """The prompt, --planning_step, --vit_txt_cfg, --omega_tgt and the planner's own weights each reach the
    pixels (the renderer's inputs alone would not move them through the planner's contexts)."""
    base = frames_of(full_pipe, media)
    assert np.array_equal(base, frames_of(full_pipe, media))  # deterministic: a change below is the input's
    for changes in (
        {"prompt": "make the cat blue"},
        {"planning_step": 4},
        {"vit_txt_cfg": 3.0},
        {"omega_tgt": 8.0},
        {"seed": 7},
    ):
        assert np.abs(base - frames_of(full_pipe, media, **changes)).max() > 1e-3, changes
    bias = full_pipe.planner.connector.proj_gen[3].bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.add_(0.3)
    try:
        moved = frames_of(full_pipe, media)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert np.abs(base - moved).max() > 1e-3


def test_text_to_video_has_no_planner_visual_guidance(full_pipe):
    """Without sources the cond and text-only planner branches are one sequence: vit_txt_cfg changes nothing."""
    settings = {"task_type": "t2v", "num_frames": 9, "height": 64, "width": 96, **FAST}
    plain = full_pipe(PROMPT, vit_txt_cfg=1.2, **settings).frames
    assert np.abs(plain - full_pipe(PROMPT, vit_txt_cfg=3.0, **settings).frames).max() < 1e-4


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("task", ["t2i", "t2v", "v2v", "r2v", "rv2v"])
def test_shipped_settings_fill_what_is_not_given(version, task):
    preset = FULL_PRESETS[version][task]
    request = GenerationRequest(prompt=PROMPT, task_type=task, **_media_for(task))
    resolved = resolve_request(request, ModelDefaults(planner_version=version))
    assert resolved.guidance.mode.name == preset.guidance_mode
    assert resolved.num_inference_steps == preset.num_inference_steps
    weights = resolved.guidance.weights
    assert (weights.txt, weights.tgt, weights.img, weights.vid) == (
        preset.omega_txt,
        preset.omega_tgt,
        preset.omega_img,
        preset.omega_vid,
    )
    assert resolved.guidance.omega_scale == preset.omega_scale
    assert (resolved.planner.planning_steps, resolved.planner.vit_steps) == (
        preset.planning_step,
        preset.vit_denoising_step,
    )
    assert resolved.planner.version == version
    assert (resolved.negative_prompt == ENGLISH_NEGATIVE_PROMPT) == preset.english_negative
    if preset.height is not None:
        assert (resolved.geometry.height, resolved.geometry.width) == (preset.height, preset.width)


def _media_for(task: str) -> dict:
    video, image = np.zeros((9, 48, 80, 3), np.uint8), np.zeros((48, 48, 3), np.uint8)
    media = {"v2v": {"video": [video]}, "rv2v": {"video": [video], "images": [image]}, "r2v": {"images": [image]}}
    return media.get(task, {})


def test_explicit_settings_win_even_at_the_command_line_default(full_pipe):
    """omega_txt 4.0 is also the request's default: given explicitly, it must still beat v2's 5.0."""
    v2 = ModelDefaults(planner_version="v2")
    request = GenerationRequest(prompt=PROMPT, task_type="t2v", omega_txt=4.0, explicit=frozenset({"omega_txt"}))
    assert resolve_request(request, v2).guidance.weights.txt == 4.0
    assert resolve_request(GenerationRequest(prompt=PROMPT, task_type="t2v"), v2).guidance.weights.txt == 5.0
    api = full_pipe.resolve  # the keyword API marks what it was given
    resolved = resolve_request(
        GenerationRequest(prompt=PROMPT, task_type="t2v", num_inference_steps=7), full_pipe.model_defaults
    )
    assert resolved.num_inference_steps == 7 and api is not None


def test_a_plan_made_before_the_model_was_known_is_planned_again_for_it(full_pipe):
    blind = resolve_request(GenerationRequest(prompt=PROMPT, task_type="t2v"))
    assert blind.guidance.mode.name == "t2v_apg" and not blind.full_model
    again = with_model_defaults(blind, full_pipe.model_defaults)
    assert again.full_model and again.guidance.mode.name == "vae_txt_vit_wapg" and again.num_inference_steps == 50
    assert again.seed == blind.seed


def test_version_detection(full_bundle):
    spec = BundleSpec.read(full_bundle)
    assert spec.version(str(full_bundle)) == "v1"
    assert spec.version("ByteDance/Bernini-Diffusers-v2") == "v2"
    assert spec.version(str(full_bundle), "v2") == "v2"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda pipe: pipe(PROMPT, task_type="rv2v", guidance_mode="rv2v"), "does not run on the full bernini model"),
        (lambda pipe: pipe(PROMPT, task_type="t2i", num_frames=9), "makes one image"),
        (lambda pipe: pipe(PROMPT, task_type="t2v", preset="lightning4"), "the full model has no presets"),
        (lambda pipe: pipe(PROMPT, task_type="t2v", planning_step=0), "planning_step must be at least 1"),
        (
            lambda pipe: pipe(
                PROMPT, task_type="i2i", image=np.zeros((32, 32, 3), np.uint8), images=[np.zeros((32, 32, 3))]
            ),
            "either --image or --images",
        ),
    ],
)
def test_bad_combinations_are_one_line(full_pipe, one_line_error, call, match):
    message = one_line_error(call, full_pipe, match=match)
    if "does not run" in match:
        assert "vae_txt_vit_wapg" in message and "rv2v_wapg" in message


def test_full_bundle_refuses_separate_expert_checkpoints(full_bundle, one_line_error, tmp_path):
    one_line_error(
        BerniniPipeline.from_pretrained, full_bundle, high_noise_ckpt=str(tmp_path), match="--high_noise_ckpt"
    )


def test_planner_settings_on_bernini_r_are_refused(tiny_pipe, one_line_error):
    one_line_error(tiny_pipe, PROMPT, task_type="t2v", planning_step=10, match="only affect the full Bernini model")


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_one_forward_per_distinct_branch_and_source_ids_follow_the_flag(full_pipe, media):
    """t2x: e_I = b is the same forward, so 3 of the 4 branches run per step (B4); --no-use_src_tgt_id puts
    every source at id 0 (B8)."""
    t2v = full_pipe(PROMPT, task_type="t2v", num_frames=9, height=64, width=96, **FAST).parameters["resolved"]
    assert t2v["forwards"] == 3 * FAST["num_inference_steps"]
    inputs = task_inputs("rv2v", media)
    on = full_pipe(PROMPT, task_type="rv2v", **inputs, **FAST).parameters["resolved"]["source_ids"]
    off = full_pipe(PROMPT, task_type="rv2v", use_src_tgt_id=False, **inputs, **FAST).parameters["resolved"]
    assert on["VI"] == [1.0, 2.0] and off["source_ids"]["VI"] == [0.0, 0.0]


def test_batched_planner_and_renderer_branches_give_the_same_frames(full_pipe, media):
    plain = full_pipe(PROMPT, task_type="v2v", **task_inputs("v2v", media), **FAST)
    batched = full_pipe(PROMPT, task_type="v2v", batch_branches=True, **task_inputs("v2v", media), **FAST)
    assert batched.parameters["resolved"]["planner"]["batched_branches"] is True
    assert np.abs(plain.frames - batched.frames).max() < 1e-4


def test_a_case_files_bernini_r_mode_yields_to_the_shipped_mode(full_pipe):
    """Bernini-R's case files name their renderer's modes; from a case (not given by the user) the full model
    runs its shipped mode and says so. Given explicitly, the same mode is refused (see above)."""
    request = GenerationRequest(prompt=PROMPT, task_type="t2v", guidance_mode="t2v_apg", explicit=frozenset())
    resolved = full_pipe.resolve(request)
    assert resolved.guidance.mode.name == "vae_txt_vit_wapg"
    assert [(a.name, a.asked, a.used) for a in resolved.adjustments] == [
        ("guidance_mode", "t2v_apg", "vae_txt_vit_wapg")
    ]


def test_placement_keeps_planner_and_experts_together_only_when_both_fit():
    from bernini.runtime.placement import ModelSizes, choose_placement

    gib = 1024**3
    sizes = ModelSizes(experts=[28 * gib, 28 * gib], text_encoder=11 * gib, vae=gib, planner=20 * gib)
    renderer_only = ModelSizes(experts=[28 * gib, 28 * gib], text_encoder=11 * gib, vae=gib)
    budget = int((70 * gib + 2 * gib) / 0.95)  # everything but the planner fits, with 2 GiB of activations
    assert choose_placement(budget, renderer_only, gib, gib, gib, gib, 0).mode == "none"
    assert choose_placement(budget, sizes, gib, gib, gib, gib, 0).mode == "model"
    assert choose_placement(int(100 * gib / 0.95), sizes, gib, gib, gib, gib, 0).mode == "none"


def test_a_full_model_mode_planned_before_the_model_is_known_waits_for_it(full_pipe, tiny_pipe, one_line_error):
    """A repo id not on disk is planned without the model's defaults: its full-model mode is kept until the
    pipeline plans again for the model it loaded (which refuses it on Bernini-R)."""
    blind = resolve_request(GenerationRequest(prompt=PROMPT, task_type="t2v", guidance_mode="vae_txt_vit"))
    assert with_model_defaults(blind, full_pipe.model_defaults).guidance.mode.name == "vae_txt_vit"
    one_line_error(with_model_defaults, blind, tiny_pipe.model_defaults, match="does not run on Bernini-R")


def test_the_four_contexts_are_cropped_t5_rows_then_planner_rows_then_zeros(full_pipe, media):
    """Spec §4.2–4.3 on the pipeline's own stage: C_full = [T5(p)[:n_p]; G_c], C_txt drops the N slots,
    C_tgt = [T5(neg)[:n_n]; slots], C_null = [T5(neg)[:n_n]; G_u without slots]; zero rows after, up to 512."""
    from bernini.sampling.guidance import Text
    from bernini.text import clean_prompt, token_counts

    inputs = {**task_inputs("v2v", media), **FAST, "neg_prompt": WAN_NEGATIVE_PROMPT}
    request = GenerationRequest(prompt=PROMPT, task_type="v2v", **inputs, explicit=frozenset(inputs))
    resolved = full_pipe.resolve(request)
    assert resolved.t5_negative_text == clean_prompt(resolved.negative_prompt) != resolved.negative_prompt  # spec §4.3
    text = full_pipe.encode_prompts(resolved.t5_text, resolved.t5_negative_text)
    contexts, record = full_pipe.plan_contexts(resolved, text)
    n_p, n_n = token_counts([resolved.t5_text, resolved.t5_negative_text], full_pipe.tokenizer)
    slots, tokens = record["target_slots"], record["branch_tokens"]
    lengths = {
        Text.PLAN_FULL: n_p + tokens["cond"],
        Text.PLAN_TEXT: n_p + tokens["cond"] - slots,
        Text.PLAN_TARGET: n_n + slots,
        Text.PLAN_NULL: n_n + tokens["uncond"] - slots,
    }
    for name, used in lengths.items():
        rows = contexts[name][0]
        assert rows.shape[0] == max(512, used), name
        assert rows[used:].abs().sum() == 0 and rows[used - 1].abs().sum() > 0, name
    for name in (Text.PLAN_FULL, Text.PLAN_TEXT):
        assert torch.equal(contexts[name][0, :n_p], text[Text.PROMPT][0, :n_p])
    for name in (Text.PLAN_TARGET, Text.PLAN_NULL):
        assert torch.equal(contexts[name][0, :n_n], text[Text.NEGATIVE][0, :n_n])
    full, target = contexts[Text.PLAN_FULL][0], contexts[Text.PLAN_TARGET][0]
    assert not torch.equal(full[n_p : n_p + 4], text[Text.PROMPT][0, n_p : n_p + 4])  # planner rows follow T5's
    slot_rows = target[n_n : n_n + slots]
    assert any(torch.equal(slot_rows, full[i : i + slots]) for i in range(n_p, n_p + tokens["cond"] - slots + 1))


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_the_full_model_renders_at_a_given_size_and_follows_the_source_at_zero(full_pipe, media, one_line_error):
    """As its reference: editing tasks default to 0 × 0 (the source video's size); a positive size given explicitly
    is the target's, beside the source latents at their own size; i2i renders at its shipped 512²."""
    video = task_inputs("v2v", media)
    follow = full_pipe(PROMPT, task_type="v2v", **video, **FAST)
    assert follow.frames.shape[1:3] == (48, 80) and follow.parameters["request"]["height"] == 0
    sized = full_pipe(PROMPT, task_type="v2v", height=64, width=96, **video, **FAST)
    assert sized.frames.shape[1:3] == (64, 96)
    assert not [a for a in sized.parameters["adjustments"] if a["name"] in ("height", "width")]
    image = full_pipe(PROMPT, task_type="i2i", image=str(media / "image.png"), **FAST)
    assert image.frames.shape == (1, 512, 512, 3)
    noted = [(a["name"], a["asked"], a["used"]) for a in image.parameters["adjustments"]]
    assert noted == [("height", 48, 512), ("width", 48, 512)]  # the shipped size, not the 48² source's
    assert image.parameters["resolved"]["planner"]["target_slots"] == 64  # spec §2.4: 512² → 64
    one_line_error(full_pipe, PROMPT, task_type="t2v", height=0, width=0, match="task t2v has none")
