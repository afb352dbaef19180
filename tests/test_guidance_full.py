"""The full model's renderer modes (spec bernini-full.md §4.5, §6.2 item 10) with a fake DiT."""

import pytest
import torch
from diffusers import UniPCMultistepScheduler

from bernini.conditions import Conditions
from bernini.resolved import SourceIdPolicy
from bernini.sampling.guidance import FULL_MODEL_MODES, Combo, FlatAPG, GuidanceMode, GuidanceState, Text, Weights
from bernini.sampling.sampler import Experts, SamplingInputs, sample

SHAPE = (1, 16, 2, 4, 4)


class FakeExpert:
    """Velocity = a known function of the packed sources and the context; counts its forwards."""

    execution_device = torch.device("cpu")

    def __init__(self):
        self.calls = 0

    def forward_packed(self, conditions, target, timestep, context):
        self.calls += 1
        sources = sum((0.1 * (i + 1) * s.latent.mean() for i, s in enumerate(conditions)), torch.tensor(0.0))
        return 0.01 * target + sources + context.mean()


def inputs_for(mode: str, videos: int, images: int, weights: Weights) -> SamplingInputs:
    g = torch.Generator().manual_seed(0)
    conditions = Conditions(
        videos=[torch.randn(SHAPE, generator=g) for _ in range(videos)],
        images=[torch.randn(1, 16, 1, 4, 4, generator=g) for _ in range(images)],
    )
    guidance = FULL_MODEL_MODES[mode]
    text = {name: torch.randn(1, 7, 8, generator=g) for name in Text}
    return SamplingInputs(
        latents=torch.randn(SHAPE, generator=g),
        combos=conditions.combos(SourceIdPolicy(), tuple(b.combo for b in guidance.branches)),
        text=text,
        mode=guidance,
        weights=weights,
        omega_scale=0.75,
        state=GuidanceState(),
    )


def scheduler():
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)


W = Weights(vid=1.25, img=1.25, txt=4.0, tgt=0.5)


@pytest.mark.parametrize(
    ("mode", "videos", "images", "weights", "per_step"),
    [
        ("vae_txt_vit_wapg", 1, 1, W, 4),
        ("vae_txt_vit_wapg", 0, 0, W, 3),  # t2x: the sources set is empty, e_I = b (one forward per distinct branch)
        ("vae_txt_vit", 1, 0, Weights(1.0, 0.0, 4.0, 0.5), 3),  # ω_img = 0: e_I is b
        ("vae_txt_vit", 1, 0, Weights(1.0, 1.0, 4.0, 0.0), 3),  # ω_tgt = 0: e_C is e_T
        ("rv2v_wapg", 1, 2, W, 5),  # the reference runs 6 (bug B4)
        ("rv2v_wapg", 2, 1, Weights(0.0, 3.0, 4.0, 1.5), 4),
        ("v2v_apg", 1, 0, W, 2),
    ],
)
def test_forwards_per_step(mode, videos, images, weights, per_step):
    expert = FakeExpert()
    inputs = inputs_for(mode, videos, images, weights)
    sample(Experts(high=expert, low=expert), scheduler(), inputs, 6)
    assert expert.calls == 6 * per_step


def preds(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(n)]


def flat_apg(delta, reference):
    """A(Δ, r) = 0.2Δ∥ + Δ⊥, written per sample with explicit flattening."""
    d, r = delta.flatten(1), reference.flatten(1)
    along = ((d * r).sum(1, keepdim=True) / (r * r).sum(1, keepdim=True).clamp_min(1e-8)) * r
    return (d - along + 0.2 * along).view_as(delta)


def test_flat_apg_scales_only_the_parallel_part():
    r = preds(1, 3)[0]
    assert torch.allclose(FlatAPG()(3.0 * r, r, GuidanceState()), 0.6 * r)
    d = preds(1, 4)[0]
    orthogonal = d - (d * r).sum() / (r * r).sum() * r
    assert torch.allclose(FlatAPG()(orthogonal, r, GuidanceState()), orthogonal)


def test_planner_chain_formulas():
    b, e_i, e_t, e_c = preds(4, 5)
    x = torch.zeros(SHAPE, dtype=torch.float64)
    got = FULL_MODEL_MODES["vae_txt_vit_wapg"].combine([b, e_i, e_t, e_c], x, 0.5, W, GuidanceState())
    expected = b + 1.25 * flat_apg(e_i - b, e_i) + 4.0 * flat_apg(e_t - e_i, e_t) + 0.5 * flat_apg(e_c - e_t, e_c)
    assert torch.allclose(got, expected)
    plain = FULL_MODEL_MODES["vae_txt_vit"].combine([b, e_i, e_t, e_c], x, 0.5, W, GuidanceState())
    assert torch.allclose(plain, b + 1.25 * (e_i - b) + 4.0 * (e_t - e_i) + 0.5 * (e_c - e_t))
    b, e_v, e_vi, e_vt, e_vtc = preds(5, 6)
    got = FULL_MODEL_MODES["rv2v_wapg"].combine([b, e_v, e_vi, e_vt, e_vtc], x, 0.5, W, GuidanceState())
    assert torch.allclose(got, b + 1.25 * (e_v - b) + 1.25 * (e_vi - e_v) + 4.0 * (e_vt - e_vi) + 0.5 * (e_vtc - e_vt))


def test_zero_weights_reuse_the_start_of_their_delta():
    mode = FULL_MODEL_MODES["vae_txt_vit"]
    always_different = lambda a, b: False  # noqa: E731
    assert mode.forward_plan(Weights(1, 0, 4, 0.5), always_different) == [0, 0, 2, 3]
    assert mode.forward_plan(Weights(1, 0, 0, 0.5), always_different) == [0, 0, 0, 3]
    assert mode.forward_plan(Weights(1, 1, 4, 0), always_different) == [0, 1, 2, 2]
    renderer_like = GuidanceMode("plain", mode.branches, mode.deltas)  # without the rule nothing is skipped
    assert renderer_like.forward_plan(Weights(1, 0, 0, 0), always_different) == [0, 1, 2, 3]


def test_omega_scale_multiplies_every_weight_once(monkeypatch):
    seen = []
    original = GuidanceMode.combine

    def spy(self, predictions, latents, sigma, weights, state):
        seen.append(weights)
        return original(self, predictions, latents, sigma, weights, state)

    monkeypatch.setattr(GuidanceMode, "combine", spy)
    expert = FakeExpert()
    sample(Experts(high=expert, low=FakeExpert()), scheduler(), inputs_for("rv2v_wapg", 1, 1, W), 40)
    assert seen[:17] == [W] * 17
    assert seen[17:] == [W.scaled(0.75)] * 23 and W.scaled(0.75).tgt == pytest.approx(0.375)


def test_the_videos_combo_holds_every_video_with_ids_before_the_images():
    conditions = Conditions(videos=[torch.zeros(1), torch.ones(1)], images=[torch.full((1,), 2.0)])
    assert [s.source_id for s in conditions.combo(Combo.VIDEOS)] == [1.0, 2.0]
    assert [s.source_id for s in conditions.combo(Combo.ALL)] == [1.0, 2.0, 3.0]
