import math

import pytest
import torch

from bernini.models.rope import apply_rope, assign_source_ids, axis_dims, packed_rope, rope_angles


def independent_angle(f: int, y: int, x: int, s: float, k: int, head_dim: int) -> float:
    """Spec §1.4 written out per pair: 3D RoPE pair k at (f, y, x) plus s * 10000^(-2k/d)."""
    t_dim, h_dim, w_dim = head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)
    t_pairs, h_pairs = t_dim // 2, h_dim // 2
    if k < t_pairs:
        base = f * 10000 ** (-2 * k / t_dim)
    elif k < t_pairs + h_pairs:
        base = y * 10000 ** (-2 * (k - t_pairs) / h_dim)
    else:
        base = x * 10000 ** (-2 * (k - t_pairs - h_pairs) / w_dim)
    return base + s * 10000 ** (-2 * k / head_dim)


@pytest.mark.parametrize("head_dim", [16, 128])
@pytest.mark.parametrize("source_id", [0.0, 1.0, 3.0, 2.142857142857143])
def test_angles_match_independent_formula(head_dim, source_id):
    grid = (3, 4, 5)
    angles = rope_angles(grid, head_dim, source_id)
    assert angles.shape == (60, head_dim // 2)
    for token, (f, y, x) in enumerate((f, y, x) for f in range(3) for y in range(4) for x in range(5)):
        for k in range(head_dim // 2):
            assert math.isclose(
                angles[token, k].item(),
                independent_angle(f, y, x, source_id, k, head_dim),
                rel_tol=1e-12,
                abs_tol=1e-12,
            )


def test_axis_split_of_the_14b_head():
    assert axis_dims(128) == (44, 42, 42)


def test_source_id_zero_is_identity_rotation_of_base_rope():
    cos0, sin0 = packed_rope([(2, 3, 4)], [0.0], 16)
    q = torch.randn(1, 24, 2, 16)
    shifted = apply_rope(q, *packed_rope([(2, 3, 4)], [1.0], 16))
    plain = apply_rope(q, cos0, sin0)
    assert not torch.allclose(shifted, plain)
    # id 0 adds no phase: token (0,0,0) is not rotated at all
    assert torch.allclose(plain[:, 0], q[:, 0])


def test_segments_restart_positions_at_zero():
    cos, _ = packed_rope([(1, 2, 2), (1, 2, 2)], [0.0, 0.0], 16)
    assert torch.equal(cos[:, :4], cos[:, 4:])
    cos_ids, _ = packed_rope([(1, 2, 2), (1, 2, 2)], [1.0, 0.0], 16)
    assert not torch.equal(cos_ids[:, :4], cos_ids[:, 4:])


def test_relative_phase_between_segments_is_source_id_difference():
    """q·k between segments depends on the id difference only (RoPE is relative in s as well)."""
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(sq, sk):
        rq = apply_rope(q, *packed_rope([(1, 1, 1)], [sq], 16))
        rk = apply_rope(k, *packed_rope([(1, 1, 1)], [sk], 16))
        return (rq * rk).sum().item()

    assert math.isclose(score(1.0, 3.0), score(2.0, 4.0), rel_tol=1e-5)
    assert not math.isclose(score(1.0, 3.0), score(1.0, 2.0), rel_tol=1e-3)


def test_source_id_assignment():
    assert assign_source_ids(0) == []
    assert assign_source_ids(3) == [1.0, 2.0, 3.0]
    assert assign_source_ids(5) == [1.0, 2.0, 3.0, 4.0, 5.0]
    eight = assign_source_ids(8)
    assert eight == pytest.approx([1 + 4 * i / 7 for i in range(8)])
    assert eight[0] == 1.0 and eight[-1] == 5.0
    assert assign_source_ids(8, interpolate=False) == [float(i) for i in range(1, 9)]
    assert assign_source_ids(7, max_trained=7) == [float(i) for i in range(1, 8)]
