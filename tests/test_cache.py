"""``--cache firstblock|magcache|teacache``: hooks on the packed forward, one history per branch, skips recorded."""

from __future__ import annotations

import json

import pytest
import torch
from fakes import CacheContextExpert

from bernini.request import GenerationRequest
from bernini.resolve import resolve_request
from bernini.sampling.cache import magcache_available
from bernini.sampling.guidance import GUIDANCE_MODES
from bernini.sampling.sampler import BranchRunner

SIZE = dict(task_type="t2v", num_frames=5, height=32, width=32, num_inference_steps=8, output_type="latent")


def test_off_identical_and_hooks_removed(tiny_pipe):
    before = tiny_pipe("a fox", **SIZE)
    cached = tiny_pipe("a fox", cache="firstblock", cache_threshold=10.0, **SIZE)
    after = tiny_pipe("a fox", **SIZE)
    assert torch.equal(before.latents, after.latents)  # a cached run leaves nothing behind
    assert not any(e.is_cache_enabled for e in tiny_pipe.experts)
    assert before.parameters["resolved"]["skipped_forwards"] == 0
    resolved = cached.parameters["resolved"]
    assert resolved["cache"] == {"kind": "firstblock", "threshold": 10.0}
    assert 0 < resolved["skipped_forwards"] < resolved["forwards"]
    assert (cached.latents - before.latents).abs().max() > 0  # skipping changes the result


def test_tiny_threshold_skips_nothing_and_matches(tiny_pipe):
    plain = tiny_pipe("a fox", **SIZE)
    cached = tiny_pipe("a fox", cache="firstblock", cache_threshold=1e-12, **SIZE)
    assert cached.parameters["resolved"]["skipped_forwards"] == 0
    assert torch.equal(cached.latents, plain.latents)


def test_skip_count_is_per_branch_and_each_branch_has_its_own_context():
    from bernini.conditions import Conditions
    from bernini.resolved import SourceIdPolicy
    from bernini.sampling.sampler import SamplingInputs, run_batched

    expert = CacheContextExpert()
    mode = GUIDANCE_MODES["rv2v"]
    conditions = Conditions(videos=[torch.zeros(1, 16, 1, 2, 2)], images=[torch.zeros(1, 16, 1, 2, 2)])
    text = {b.text: torch.zeros(1, 3, 4) for b in mode.branches}
    inputs = SamplingInputs(torch.zeros(1, 16, 1, 2, 2), conditions.combos(SourceIdPolicy()), text, mode, None, 1.0)
    BranchRunner()(expert, inputs, mode.branches, inputs.latents, torch.tensor(900))
    assert expert.contexts == ["0/u", "V/u", "VI/u", "VI/c"]
    run_batched(expert, inputs, mode.branches[2:], inputs.latents, torch.tensor(900))
    assert expert.contexts[-1] == "VI/u+VI/c"


def test_cache_flags_validated(one_line_error):
    resolved = resolve_request(GenerationRequest(prompt="x", cache="firstblock"))
    assert resolved.cache.threshold == 0.05 and resolved.request_record()["cache"] == "firstblock"
    one_line_error(resolve_request, GenerationRequest(prompt="x", cache="magic"), match="unknown cache")
    one_line_error(resolve_request, GenerationRequest(prompt="x", cache_threshold=0.1), match="needs a cache")
    one_line_error(
        resolve_request, GenerationRequest(prompt="x", cache="firstblock", cache_threshold=-1), match="positive"
    )


def test_teacache_off_generous_and_near_zero(tiny_pipe):
    plain = tiny_pipe("a fox", **SIZE)
    near_zero = tiny_pipe("a fox", cache="teacache", cache_threshold=1e-12, **SIZE)
    assert near_zero.parameters["resolved"]["skipped_forwards"] == 0
    assert torch.equal(near_zero.latents, plain.latents)
    generous = tiny_pipe("a fox", cache="teacache", cache_threshold=1e9, **SIZE)
    resolved = generous.parameters["resolved"]
    assert resolved["cache"] == {"kind": "teacache", "threshold": 1e9}
    # every history (branch × expert) computes its first forward, then reuses its own residual
    histories = len(GUIDANCE_MODES[resolved["guidance_mode"]].branches) * sum(
        1 for n in (resolved["high_noise_steps"], resolved["low_noise_steps"]) if n
    )
    assert resolved["skipped_forwards"] == resolved["forwards"] - histories
    assert (generous.latents - plain.latents).abs().max() > 0
    assert not any(e.is_cache_enabled for e in tiny_pipe.experts)
    assert torch.equal(tiny_pipe("a fox", **SIZE).latents, plain.latents)


def test_teacache_rescale_coefficients_from_file(tiny_pipe, tmp_path):
    plain = tiny_pipe("a fox", **SIZE)
    zero = tmp_path / "zero.json"
    zero.write_text(json.dumps({"kind": "teacache", "coefficients": [0.0]}))  # rescales every change to 0
    out = tiny_pipe("a fox", cache="teacache", cache_threshold=1e-12, cache_calibration=str(zero), **SIZE)
    resolved = out.parameters["resolved"]
    assert resolved["cache"]["coefficients"] == [0.0] and resolved["skipped_forwards"] > 0
    scaled = tmp_path / "scaled.json"
    scaled.write_text(json.dumps({"kind": "teacache", "coefficients": [1.0, 0.0]}))  # identity
    same = tiny_pipe("a fox", cache="teacache", cache_threshold=1e-12, cache_calibration=str(scaled), **SIZE)
    assert torch.equal(same.latents, plain.latents)


def test_teacache_histories_are_per_branch():
    """Two contexts on one expert: each skip reuses that context's own residual, never the other's."""
    from bernini.models.transformer import BerniniTransformer
    from bernini.sampling.cache import step_cache
    from bernini.sampling.presets import CacheSettings

    torch.manual_seed(0)
    expert = BerniniTransformer(num_attention_heads=2, attention_head_dim=8, ffn_dim=16, num_layers=2, text_dim=8)
    with torch.no_grad():
        for param in expert.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    target = torch.randn(1, 16, 1, 4, 4)
    contexts = {"a": torch.randn(1, 3, 8), "b": torch.randn(1, 3, 8)}

    def forward(name, t):
        with expert.cache_context(name):
            return expert.forward_packed([], target, torch.tensor([t]), contexts[name])

    plain = {name: forward_plain(expert, target, contexts[name]) for name in contexts}
    with step_cache([expert], CacheSettings("teacache", 1e9), [2]) as computed:
        first = {name: forward(name, 900) for name in contexts}
        second = {name: forward(name, 800) for name in contexts}
    assert computed.computed == 2  # each context's first forward
    for name in contexts:
        assert torch.allclose(first[name], plain[name], atol=1e-6)
        assert not torch.allclose(second[name], second["a" if name == "b" else "b"])
        # the skipped forward = head of (block input + own residual): rebuild it from the uncached blocks
        assert torch.allclose(second[name], skipped_by_hand(expert, target, contexts[name], 900, 800), atol=1e-5)


def forward_plain(expert, target, context, t=900):
    return expert.forward_packed([], target, torch.tensor([t]), context)


def skipped_by_hand(expert, target, context, t_computed, t_skipped):
    """The blocks' residual taken at ``t_computed`` added to the block input at ``t_skipped``, then the head."""
    captured = {}

    def grab(name):
        def hook(module, args, output):
            captured.setdefault(name, []).append((args[0], output))

        return hook

    handles = [expert.blocks[0].register_forward_hook(grab("in")), expert.blocks[-1].register_forward_hook(grab("out"))]
    forward_plain(expert, target, context, t_computed)
    residual = captured["out"][0][1] - captured["in"][0][0]
    for handle in handles:
        handle.remove()
    original = [block.forward for block in expert.blocks]
    try:
        expert.blocks[0].forward = lambda hidden, *args: hidden + residual
        for block in expert.blocks[1:]:
            block.forward = lambda hidden, *args: hidden
        return forward_plain(expert, target, context, t_skipped)
    finally:
        for block, fn in zip(expert.blocks, original, strict=True):
            block.forward = fn


needs_magcache = pytest.mark.skipif(
    not magcache_available(), reason="this diffusers has no MagCache hooks (0.35.2 has none): --cache magcache fails"
)


@needs_magcache
def test_magcache_calibrates_then_skips(tiny_pipe, tmp_path):
    plain = tiny_pipe("a fox", **SIZE)
    path = tmp_path / "ratios.json"
    calibrating = tiny_pipe("a fox", cache="magcache", cache_calibration=str(path), **SIZE)
    resolved = calibrating.parameters["resolved"]
    assert resolved["cache"]["calibrating"] and resolved["skipped_forwards"] == 0
    assert torch.equal(calibrating.latents, plain.latents)
    saved = json.loads(path.read_text())
    per_expert = [n for n in (resolved["high_noise_steps"], resolved["low_noise_steps"])]
    assert saved["steps"] == SIZE["num_inference_steps"] and len(saved["ratios"]) == len(tiny_pipe.experts)
    assert [len(r) for r in saved["ratios"]] == per_expert[: len(saved["ratios"])]
    assert all(r[0] == 1.0 for r in saved["ratios"] if r) and any(x != 1.0 for r in saved["ratios"] for x in r[1:])

    near_zero = tiny_pipe("a fox", cache="magcache", cache_threshold=1e-12, cache_calibration=str(path), **SIZE)
    assert near_zero.parameters["resolved"]["skipped_forwards"] == 0
    assert torch.equal(near_zero.latents, plain.latents)
    generous = tiny_pipe("a fox", cache="magcache", cache_threshold=1e9, cache_calibration=str(path), **SIZE)
    resolved = generous.parameters["resolved"]
    assert resolved["cache"] == {"kind": "magcache", "threshold": 1e9, "calibration": str(path)}
    assert 0 < resolved["skipped_forwards"] < resolved["forwards"]
    assert (generous.latents - plain.latents).abs().max() > 0
    assert not any(e.is_cache_enabled for e in tiny_pipe.experts)


def test_magcache_ratio_is_the_mean_token_norm_ratio():
    from bernini.sampling.cache import _magnitude_ratio

    current, previous = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    expected = (current.norm(dim=-1) / (previous.norm(dim=-1) + 1e-8)).mean().item()
    assert _magnitude_ratio(current, previous) == pytest.approx(expected)
    assert _magnitude_ratio(current, None) == 1.0


def test_calibration_flags_validated(one_line_error, tmp_path):
    one_line_error(resolve_request, GenerationRequest(prompt="x", cache="magcache"), match="needs --cache_calibration")
    missing = str(tmp_path / "nowhere" / "r.json")
    one_line_error(
        resolve_request, GenerationRequest(prompt="x", cache="magcache", cache_calibration=missing), match="folder"
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "teacache", "coefficients": [1.0]}))
    one_line_error(
        resolve_request, GenerationRequest(prompt="x", cache="magcache", cache_calibration=str(bad)), match="kind"
    )
    one_line_error(
        resolve_request, GenerationRequest(prompt="x", cache="firstblock", cache_calibration=str(bad)), match="no"
    )
    one_line_error(resolve_request, GenerationRequest(prompt="x", cache_calibration=str(bad)), match="needs a cache")
    bad.write_text(json.dumps({"kind": "teacache", "coefficients": []}))
    one_line_error(
        resolve_request, GenerationRequest(prompt="x", cache="teacache", cache_calibration=str(bad)), match="list"
    )
    new = resolve_request(GenerationRequest(prompt="x", cache="magcache", cache_calibration=str(tmp_path / "new.json")))
    assert new.cache.calibrating and new.request_record()["cache_calibration"] == str(tmp_path / "new.json")
