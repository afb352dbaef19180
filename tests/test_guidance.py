"""Guidance modes against the spec's formulas, written out independently here."""

import pytest
import torch

from bernini.sampling.guidance import (
    GUIDANCE_MODES,
    APGSettings,
    Branch,
    Combo,
    Delta,
    FrameAPG,
    GuidanceMode,
    GuidanceState,
    MediaNeed,
    Text,
    Weights,
    register,
)


def APGState(eta=0.5, norm_threshold=(50.0, 50.0), momentum=0.0):  # noqa: N802 - reads like the settings it builds
    return GuidanceState(APGSettings(eta, tuple(norm_threshold), momentum))


def combine(mode, predictions, latents, sigma, weights, state):
    return GUIDANCE_MODES[mode].combine(predictions, latents, sigma, weights, state)


def project(state, diff, reference, slot):
    return FrameAPG(slot)(diff, reference, state)


W = Weights(vid=1.25, img=4.5, txt=4.0)
SHAPE = (1, 16, 3, 4, 6)


def preds(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(n)]


def test_registry_declares_the_reference_modes_branches_and_needs():
    expected = {
        "rv2v": (["0/u", "V/u", "VI/u", "VI/c"], MediaNeed.VIDEO_AND_REFERENCES),
        "v2v": (["VI/u", "VI/c"], MediaNeed.ANY_VISUAL),
        "v2v_chain": (["0/u", "V/u", "VI/c"], MediaNeed.VIDEO),
        "t2v": (["0/u", "0/c"], MediaNeed.NOTHING),
        "t2v_apg": (["0/u", "0/c"], MediaNeed.NOTHING),
        "v2v_apg": (["VI/u", "VI/c"], MediaNeed.ANY_VISUAL),
        "r2v_apg": (["0/u", "I/u", "I/c"], MediaNeed.REFERENCES),
        "none": (["VI/c"], MediaNeed.NOTHING),  # distilled sampling (--preset lightning4)
    }
    assert list(GUIDANCE_MODES) == list(expected)
    for name, (branches, needs) in expected.items():
        mode = GUIDANCE_MODES[name]
        assert [f"{b.combo.value}/{b.text.value}" for b in mode.branches] == branches
        assert mode.forwards_per_step == len(branches)
        assert mode.needs is needs


def test_a_new_mode_is_declared_not_coded():
    """A mode made only of declared pieces combines as its formula says, without touching the module."""
    mode = GuidanceMode(
        "test_video_then_apg_text",
        (Branch(Combo.EMPTY, Text.NEGATIVE), Branch(Combo.VIDEO, Text.NEGATIVE), Branch(Combo.VIDEO, Text.PROMPT)),
        (Delta(0, 1, "vid"), Delta(1, 2, "txt", FrameAPG(0))),
        x0_space=True,
        needs=MediaNeed.VIDEO,
    )
    register(mode)
    try:
        e, v, c = preds(3, seed=21)
        x = torch.randn(SHAPE, dtype=torch.float64)
        sigma = 0.4
        xe, xv, xc = (x - sigma * p for p in (e, v, c))
        guided = xe + 1.25 * (xv - xe) + 4.0 * independent_project(xc - xv, xc, 0.5, 7.0)
        got = combine("test_video_then_apg_text", [e, v, c], x, sigma, W, APGState(norm_threshold=(7.0,)))
        assert torch.allclose(got, (x - guided) / sigma, atol=1e-9)
        with pytest.raises(ValueError, match="already registered"):
            register(mode)
    finally:
        del GUIDANCE_MODES["test_video_then_apg_text"]


def test_rv2v():
    e, v, vi, c = preds(4)
    x = torch.randn(SHAPE, dtype=torch.float64)
    got = combine("rv2v", [e, v, vi, c], x, 0.7, W, APGState())
    assert torch.allclose(got, e + 1.25 * (v - e) + 4.5 * (vi - v) + 4.0 * (c - vi))


def test_v2v_and_t2v_are_plain_text_cfg():
    u, c = preds(2)
    x = torch.randn(SHAPE, dtype=torch.float64)
    for mode in ("v2v", "t2v"):
        assert torch.allclose(combine(mode, [u, c], x, 0.5, W, APGState()), u + 4.0 * (c - u))


def test_v2v_chain():
    e, v, c = preds(3)
    got = combine("v2v_chain", [e, v, c], torch.zeros(SHAPE, dtype=torch.float64), 0.5, W, APGState())
    assert torch.allclose(got, e + 1.25 * (v - e) + 4.0 * (c - v))


def independent_project(d, r, eta, threshold):
    """P(d; r) frame by frame with explicit loops over T (norms over C, H, W)."""
    out = torch.empty_like(d)
    for t in range(d.shape[2]):
        dt, rt = d[:, :, t].clone(), r[:, :, t]
        norm = dt.pow(2).sum().sqrt()
        if threshold > 0 and norm > threshold:
            dt = dt * threshold / norm
        unit = rt / rt.pow(2).sum().sqrt()
        par = (dt * unit).sum() * unit
        out[:, :, t] = (dt - par) + eta * par
    return out


@pytest.mark.parametrize("threshold", [0.0, 5.0, 1000.0])
def test_apg_single_condition(threshold):
    u, c = preds(2, seed=3)
    x = torch.randn(SHAPE, dtype=torch.float64)
    sigma = 0.6
    xu, xc = x - sigma * u, x - sigma * c
    guided = xu + 4.0 * independent_project(xc - xu, xc, 0.5, threshold)
    for mode in ("t2v_apg", "v2v_apg"):
        apg = APGState(eta=0.5, norm_threshold=(threshold, threshold))
        got = combine(mode, [u, c], x, sigma, W, apg)
        assert torch.allclose(got, (x - guided) / sigma, atol=1e-9)


def test_apg_chained_r2v():
    e, i, c = preds(3, seed=5)
    x = torch.randn(SHAPE, dtype=torch.float64)
    sigma = 0.8
    xe, xi, xc = (x - sigma * p for p in (e, i, c))
    guided = xe + 4.5 * independent_project(xi - xe, xi, 0.5, 7.0) + 4.0 * independent_project(xc - xi, xc, 0.5, 9.0)
    got = combine("r2v_apg", [e, i, c], x, sigma, W, APGState(eta=0.5, norm_threshold=(7.0, 9.0)))
    assert torch.allclose(got, (x - guided) / sigma, atol=1e-9)


def test_apg_with_eta_one_and_no_cap_is_plain_cfg():
    u, c = preds(2, seed=9)
    x = torch.randn(SHAPE, dtype=torch.float64)
    got = combine("t2v_apg", [u, c], x, 0.3, W, APGState(eta=1.0, norm_threshold=(0.0, 0.0)))
    assert torch.allclose(got, u + 4.0 * (c - u), atol=1e-9)
    e, i, t = preds(3, seed=10)
    got = combine("r2v_apg", [e, i, t], x, 0.3, W, APGState(eta=1.0, norm_threshold=(0.0, 0.0)))
    assert torch.allclose(got, e + 4.5 * (i - e) + 4.0 * (t - i), atol=1e-9)


def test_norms_are_per_frame_not_over_time():
    d = torch.zeros(SHAPE, dtype=torch.float64)
    d[:, :, 0] = 10.0
    d[:, :, 1] = 0.01
    r = torch.ones(SHAPE, dtype=torch.float64)
    out = project(APGState(eta=1.0, norm_threshold=(1.0,)), d, r, 0)
    assert out[:, :, 0].pow(2).sum().sqrt().item() == pytest.approx(1.0)
    assert torch.allclose(out[:, :, 1], d[:, :, 1])


def test_momentum_buffers_persist_across_calls():
    apg = APGState(eta=1.0, norm_threshold=(0.0, 0.0), momentum=-0.5)
    d1, d2 = preds(2, seed=11)
    r = torch.ones(SHAPE, dtype=torch.float64)
    first = project(apg, d1, r, 0)
    second = project(apg, d2, r, 0)
    assert torch.allclose(first, d1)
    assert torch.allclose(second, d2 - 0.5 * d1)
    other = project(apg, d2, r, 1)  # second chained condition has its own buffer
    assert torch.allclose(other, d2)


class NoFloat64(torch.overrides.TorchFunctionMode):
    """A device without float64 (Apple MPS), on the CPU: any float64 tensor going in or out raises."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves = torch.utils._pytree.tree_leaves((args, kwargs, out))
        if any(isinstance(x, torch.Tensor) and x.dtype == torch.float64 for x in leaves) or (
            func in (torch.Tensor.double,) or kwargs.get("dtype") == torch.float64
        ):
            raise RuntimeError(f"float64 used by {getattr(func, '__name__', func)}")
        return out


@pytest.mark.parametrize("mode", sorted(GUIDANCE_MODES))
def test_every_mode_runs_without_float64_and_matches_the_float64_math(mode):
    spec = GUIDANCE_MODES[mode]
    settings = APGSettings(0.3, (2.0, 3.0), momentum=-0.5)
    fp32 = [p.float() for p in preds(len(spec.branches), seed=3)]
    latents = preds(1, seed=4)[0].float()
    exact, portable = GuidanceState(settings), GuidanceState(settings, float64=False)
    for _ in range(2):  # the second call reads the momentum buffers written by the first
        want = spec.combine(fp32, latents, 0.7, W, exact)
        with NoFloat64():
            got = spec.combine(fp32, latents, 0.7, W, portable)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if any(d.project is not None for d in spec.deltas):
        with pytest.raises(RuntimeError, match="float64"), NoFloat64():
            spec.combine(fp32, latents, 0.7, W, GuidanceState(settings))


def test_devices_without_float64_are_known():
    from bernini.runtime.devices import parse_dtype, supports_float64

    assert supports_float64("cpu") and not supports_float64("mps")
    assert parse_dtype("auto", torch.device("mps")) == torch.bfloat16
    assert parse_dtype("fp16", torch.device("mps")) == torch.float16
    assert parse_dtype("auto", torch.device("cpu")) == torch.float32


def test_device_mps_is_accepted_where_metal_exists_and_one_line_otherwise(monkeypatch):
    from bernini.errors import BerniniError
    from bernini.runtime.devices import parse_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)  # no Apple GPU here: the probe is faked
    with pytest.raises(BerniniError, match="MPS is not available.*--device cpu"):
        parse_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert parse_device("mps").type == "mps"
    with pytest.raises(BerniniError, match="not supported"):
        parse_device("meta")
