"""The connector (spec §1.3, §6.2 item 8) and the four renderer contexts (§4.2–4.3, §6.2 item 9)."""

import math

import torch

from bernini.planner.connector import MLPConnector
from bernini.planner.contexts import planner_contexts


def test_real_size_names_shapes_and_count_on_meta():
    with torch.device("meta"):
        connector = MLPConnector()
    shapes = {name: tuple(t.shape) for name, t in connector.state_dict().items()}
    assert len(shapes) == 12 and sum(math.prod(s) for s in shapes.values()) == 70_019_072
    assert shapes["proj_gen.0.weight"] == (4096, 3584) and shapes["proj_gen.2.weight"] == (4096,)
    assert shapes["pred_vit.3.weight"] == (3584,) and shapes["pred_vit.4.weight"] == (3584, 3584)


def test_pred_vit_layers_after_the_first_are_out_vit_wide_when_it_differs_from_in_dim():
    with torch.device("meta"):
        connector = MLPConnector(in_dim=64, out_gen=40, out_vit=48)
    shapes = {name: tuple(t.shape) for name, t in connector.state_dict().items()}
    assert shapes["pred_vit.0.weight"] == (48, 64) and shapes["pred_vit.0.bias"] == (48,)  # the reference's widths
    assert shapes["pred_vit.2.weight"] == (48, 48) and shapes["pred_vit.3.weight"] == (48,)
    assert shapes["pred_vit.4.weight"] == (48, 48) and shapes["pred_vit.4.bias"] == (48,)
    assert shapes["proj_gen.0.weight"] == (40, 64) and shapes["proj_gen.2.weight"] == (40,)
    assert shapes["proj_gen.3.weight"] == (40, 40)


def test_widths_differ_and_math_is_exact_gelu_then_rmsnorm():
    connector = MLPConnector(in_dim=64, out_gen=40, out_vit=48)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in connector.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=g))
    hidden = torch.randn(1, 7, 64, generator=g)
    assert connector.generation_context(hidden).shape == (1, 7, 40)
    assert connector.vit_condition(hidden).shape == (1, 7, 48)
    first, norm, last = connector.proj_gen[0], connector.proj_gen[2], connector.proj_gen[3]
    x = first(hidden)
    x = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # exact-erf GELU (the tanh form differs by ~1e-3)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(connector.generation_context(hidden), last(x), atol=1e-5)
    first, second, norm, last = (connector.pred_vit[i] for i in (0, 2, 3, 4))
    x = first(hidden)
    x = second(0.5 * x * (1 + torch.erf(x / math.sqrt(2))))
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(connector.vit_condition(hidden), last(x), atol=1e-4)


def test_rmsnorm_runs_in_fp32_for_half_inputs():
    norm = MLPConnector(in_dim=8, out_gen=16, out_vit=8).proj_gen[2]
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 16))
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    values = x.float()
    expected = (values * torch.rsqrt(values.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.float()).to(x.dtype)
    assert torch.equal(norm(x), expected) and norm(x).dtype == torch.bfloat16


def test_contexts_lengths_padding_and_no_truncation():
    dim, n_p, n_n = 6, 9, 4
    prompt = torch.full((1, 512, dim), 7.0)
    prompt[:, n_p:] = -99.0  # padding rows past the real length must never appear
    negative = torch.full((1, 512, dim), 3.0)
    negative[:, n_n:] = -99.0
    cond = torch.arange(20 * dim, dtype=torch.float32).view(1, 20, dim) + 1
    cond_targets = torch.zeros(20, dtype=torch.bool)
    cond_targets[12:18] = True
    uncond = torch.arange(15 * dim, dtype=torch.float32).view(1, 15, dim) + 1
    uncond_targets = torch.zeros(15, dtype=torch.bool)
    uncond_targets[7:13] = True
    contexts = planner_contexts(prompt, n_p, negative, n_n, cond, cond_targets, uncond, uncond_targets)
    real = {
        "full": n_p + 20,
        "text": n_p + 20 - 6,
        "target": n_n + 6,
        "null": n_n + 15 - 6,
    }
    for name, length in real.items():
        context = getattr(contexts, name)
        assert context.shape == (1, 512, dim)
        assert (context == -99.0).sum() == 0
        assert context[:, :length].abs().sum(-1).gt(0).all() and context[:, length:].eq(0).all()
    assert torch.equal(contexts.target[:, n_n : n_n + 6], cond[:, 12:18])
    assert torch.equal(contexts.text[:, n_p : n_p + 12], cond[:, :12])
    long_cond = torch.ones(1, 600, dim)
    long = planner_contexts(prompt, n_p, negative, n_n, long_cond, torch.zeros(600, dtype=torch.bool), uncond,
                            uncond_targets)  # fmt: skip
    assert long.full.shape[1] == n_p + 600  # never cut (bug B1)
    cut = planner_contexts(prompt, n_p, negative, n_n, long_cond, torch.zeros(600, dtype=torch.bool), uncond,
                           uncond_targets, truncate=True)  # fmt: skip
    assert cut.full.shape[1] == 512
