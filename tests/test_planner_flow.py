"""The ViT-embedding decoder and its sampler against spec §3.2 and §6.2 items 7, 8."""

import math

import pytest
import torch

from bernini.planner.flow import VitDecoder, flow_sigmas, sample_embeddings, timestep_features


@pytest.mark.parametrize(
    ("steps", "sigmas", "timesteps"),
    [
        (1, [1.0], [1000]),
        (3, [1.0, 0.80078, 0.50391], [1000, 800, 504]),
        (5, [1.0, 0.89062, 0.75, 0.57031, 0.33594], [1000, 892, 752, 572, 336]),
    ],
)
def test_bf16_schedule_tables(steps, sigmas, timesteps):
    got = flow_sigmas(steps)
    assert got.dtype == torch.bfloat16
    assert got.float().tolist() == pytest.approx(sigmas, abs=6e-6)
    assert (1000 * got).float().tolist() == timesteps


def test_real_size_names_shapes_and_count_on_meta():
    with torch.device("meta"):
        decoder = VitDecoder()
    state = decoder.state_dict()
    assert len(state) == 140
    assert sum(t.numel() for t in state.values()) == 1_438_084_608
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    assert shapes["net.time_embed.mlp.0.weight"] == (4096, 256)
    assert shapes["net.res_blocks.15.adaLN_modulation.1.weight"] == (12288, 4096)
    assert shapes["net.final_layer.adaLN_modulation.1.weight"] == (8192, 4096)
    assert shapes["net.final_layer.linear.weight"] == (3584, 4096)
    assert "net.final_layer.norm_final.weight" not in shapes


def test_timestep_features_cos_then_sin():
    t = torch.tensor([892.0])
    features = timestep_features(t)
    assert features.shape == (1, 256)
    for i, tolerance in ((5, 3e-4), (100, 1e-6)):  # fp32 angles: large ones carry ~1e-4 of rounding
        frequency = math.exp(-math.log(10000.0) * i / 128)
        assert features[0, i].item() == pytest.approx(math.cos(892.0 * frequency), abs=tolerance)
        assert features[0, 128 + i].item() == pytest.approx(math.sin(892.0 * frequency), abs=tolerance)
    assert timestep_features(t.to(torch.bfloat16)).dtype == torch.bfloat16


class LinearInCondition(torch.nn.Module):
    """v = a·c: the closed form of the guided update is then known."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, x, t, c):
        return self.a * c


def test_three_way_cfg_closed_form():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(4, 8, generator=g, dtype=torch.float64)
    s_t, s_i, a = 1.2, 0.7, 0.5
    out = sample_embeddings(LinearInCondition(a), z, noise, 1, text_scale=s_t, image_scale=s_i)
    c, u, t = (a * z[i] for i in range(3))
    guided = u + s_i * (t - u) + s_t * (c - t)
    assert torch.allclose(out, noise - guided, atol=1e-12)  # one Euler step from σ=1 to 0
    two_way = sample_embeddings(LinearInCondition(a), z, noise, 1, text_scale=s_t, image_scale=None)
    assert torch.allclose(two_way, noise - (u + s_t * (c - u)), atol=1e-12)
    no_cfg = sample_embeddings(LinearInCondition(a), z, noise, 1, text_scale=1.0, image_scale=s_i)
    assert torch.allclose(no_cfg, noise - c, atol=1e-12)


def randomised_decoder(seed: int = 0) -> VitDecoder:
    """A tiny decoder with every parameter random, so none of its layers is a silent no-op."""
    decoder = VitDecoder(target_channels=12, z_channels=10, width=16, depth=2).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=g, dtype=torch.float64) * 0.2)
    return decoder


def test_uncond_rows_do_not_matter_at_image_scale_one():
    decoder = randomised_decoder()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 5, 10, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 12, generator=g, dtype=torch.float64)
    out = sample_embeddings(decoder.net, z, noise, 3, text_scale=1.2, image_scale=1.0)
    other = z.clone()
    other[1] = torch.randn(5, 10, generator=g, dtype=torch.float64)
    assert torch.allclose(out, sample_embeddings(decoder.net, other, noise, 3, 1.2, 1.0), atol=1e-12)
    other[2] += 1.0  # but the text-only rows do
    assert not torch.allclose(out, sample_embeddings(decoder.net, other, noise, 3, 1.2, 1.0), atol=1e-6)


def test_one_step_integrates_the_velocity_and_same_x_feeds_every_branch():
    decoder = randomised_decoder(2)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, 10, generator=g, dtype=torch.float64)
    noise = torch.randn(4, 12, generator=g, dtype=torch.float64)
    t = torch.tensor([1000.0], dtype=torch.float64)
    v_c, v_u, v_t = (decoder.net(noise, t, z[i]) for i in range(3))
    expected = noise - (v_u + 1.0 * (v_t - v_u) + 1.2 * (v_c - v_t))
    assert torch.allclose(sample_embeddings(decoder.net, z, noise, 1), expected, atol=1e-12)
