"""Target-slot geometry of the planner against spec §2.4 and §6.2 item 4."""

import pytest

from bernini.planner.geometry import VitGrid, smart_resize, target_grid, tokens_per_group, vit_frame_indices


@pytest.mark.parametrize(
    ("size", "resized", "tokens"),
    [
        ((512, 512), (224, 224), 64),
        ((480, 848), (168, 280), 60),
        ((480, 832), (168, 280), 60),
        ((1920, 1080), (280, 168), 60),
        ((1024, 768), (252, 168), 54),
    ],
)
def test_smart_resize_table(size, resized, tokens):
    assert smart_resize(*size) == resized
    assert tokens_per_group(*size) == tokens


def test_small_inputs_grow_to_the_minimum_area():
    height, width = smart_resize(20, 30)
    assert height % 28 == 0 and width % 28 == 0 and height * width >= 3136


def test_frame_sampler_counts_and_spread():
    assert len(vit_frame_indices(81, 16.0, 16.0, 81)) == 10
    assert len(vit_frame_indices(49, 16.0, 16.0, 49)) == 6
    assert len(vit_frame_indices(121, 16.0, 16.0, 121)) == 14
    five_seconds = vit_frame_indices(125, 25.0, 16.0, 81)
    assert len(five_seconds) == 10 and five_seconds[0] == 0 and five_seconds[-1] == 124
    assert len(vit_frame_indices(150, 29.97, 16.0, 81)) == 10
    assert len(vit_frame_indices(3, 16.0, 4.0, 81)) == 2  # fps < 8 gives 0 ViT fps: degenerates to 2 frames


def test_source_longer_than_the_render_is_clipped_to_its_span():
    """Bug B6: upstream spreads the ViT frames over the whole clip while the VAE sees its start."""
    ours = vit_frame_indices(250, 25.0, 16.0, 81)
    upstream = vit_frame_indices(250, 25.0, 16.0, 81, match_render_span=False)
    assert max(ours) <= 125 and len(ours) == 10
    assert max(upstream) > 200 and len(upstream) == 20


@pytest.mark.parametrize(
    ("frames", "height", "width", "slots"),
    [(81, 480, 848, 300), (49, 480, 848, 180), (121, 480, 848, 420), (1, 512, 512, 64)],
)
def test_target_slots_without_a_source(frames, height, width, slots):
    assert target_grid(frames, height, width).tokens == slots


def test_target_slots_follow_the_first_source_video():
    assert target_grid(81, 480, 848, source=(125, 25.0, 1920, 1080)).tokens == 300
    assert target_grid(81, 480, 848, source=(150, 29.97, 1920, 1080)).tokens == 300
    assert VitGrid.of_video(10, 480, 848) == VitGrid(5, 12, 20)
