"""Long runs in memory: the VAE encodes and decodes chunk by chunk with each decoded chunk going to host memory, and
the one memory model sizes a windowed run by one window plus the whole clip's latents (device) and its decoded
frames (host)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bernini.conditions import LatentCodec
from bernini.io.output import to_uint8_frames
from bernini.runtime.memory import GIB, Request, estimate_memory, frames_bytes, latent_bytes


def test_a_961_frame_windowed_run_is_one_window_plus_the_clip_latents_on_the_device():
    long = Request(961, 480, 832, source_videos=1, window_frames=81)
    window = Request(81, 480, 832, source_videos=1)
    whole = Request(961, 480, 832, source_videos=1)
    windowed, one, unwindowed = (estimate_memory(r, mode="none") for r in (long, window, whole))
    assert windowed.tokens == one.tokens  # an expert forward packs one window
    clip_latents = latent_bytes(long)
    assert 50 * 2**20 < clip_latents < 200 * 2**20  # 16 x 241 x 60 x 104 fp32
    # the long run's device peak: the window's, plus the whole clip's latent state (a few copies) beside it
    assert one.peak_device < windowed.peak_device <= one.peak_device + 8 * clip_latents
    assert unwindowed.peak_device > windowed.peak_device + 10 * GIB  # the whole clip in one forward does not fit
    decode = {p.name: p for p in windowed.phases}["decode"]
    short_decode = {p.name: p for p in one.phases}["decode"]
    assert decode.device == short_decode.device  # chunked decoding: the VAE's device peak does not grow with length
    # the host holds the decoded frames (uint8) and the clip's latents
    assert decode.host - short_decode.host >= frames_bytes(long) - frames_bytes(window)
    assert frames_bytes(long) == 961 * 480 * 832 * 3


def test_bernini_estimate_sizes_the_forward_by_the_window(capsys):
    from bernini.frontends.cli import main

    def tokens(*flags: str) -> int:
        assert main(["estimate", "--source_videos", "0", *flags]) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if "packed sequence" in line)
        return int(line.split("packed sequence ")[1].split()[0])

    assert tokens("--num_frames", "961", "--window_frames", "81") == tokens("--num_frames", "81") == 21 * 30 * 53
    assert tokens("--num_frames", "961") == 241 * 30 * 53


@pytest.fixture(scope="module")
def codec(tiny_pipe) -> LatentCodec:
    return LatentCodec(tiny_pipe.vae)


def test_decoding_streams_chunks_to_the_host_and_matches_the_one_call_decode(tiny_pipe, codec, monkeypatch):
    latents = torch.randn(1, 16, 5, 2, 4, generator=torch.Generator().manual_seed(0))
    reference = codec.decode(latents)  # diffusers' AutoencoderKLWan.decode in one call: [1, 3, 17, 16, 32]
    calls: list[int] = []
    handle = tiny_pipe.vae.decoder.register_forward_hook(lambda module, args, out: calls.append(out.shape[2]))

    def whole_clip(*args, **kwargs):
        raise AssertionError("the whole clip went through vae.decode on the device")

    monkeypatch.setattr(tiny_pipe.vae, "decode", whole_clip)
    try:
        frames = tiny_pipe.decode(latents, output_type="uint8")
        floats = tiny_pipe.decode(latents, output_type="np")
    finally:
        handle.remove()
    assert calls[:5] == [1, 4, 4, 4, 4]  # one decoder call per latent frame, each chunk at most 4 frames
    expected = ((reference[0].permute(1, 2, 3, 0) * 0.5 + 0.5).clamp(0, 1)).numpy()
    assert np.array_equal(floats, expected)  # bit for bit diffusers' decode + VideoProcessor
    assert frames.dtype == np.uint8 and np.array_equal(frames, to_uint8_frames(expected))


def test_encoding_moves_one_chunk_at_a_time_and_matches_the_one_call_encode(tiny_pipe, codec, monkeypatch):
    pixels = torch.rand(3, 13, 16, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    whole = tiny_pipe.vae.encode(pixels.unsqueeze(0)).latent_dist.mode().float()
    reference = (whole - codec.mean) / codec.std
    seen: list[int] = []
    handle = tiny_pipe.vae.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[2]))
    monkeypatch.setattr(tiny_pipe.vae, "encode", lambda *a, **k: (_ for _ in ()).throw(AssertionError("one call")))
    try:
        latents = codec.encode(pixels)
    finally:
        handle.remove()
    assert seen == [1, 4, 4, 4]
    assert torch.equal(latents, reference)


@pytest.mark.parametrize("frames", ["3", "80"])
def test_bernini_estimate_refuses_a_window_generate_would_refuse(frames, capsys):
    from bernini.frontends.cli import main

    assert main(["estimate", "--window_frames", frames]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: window_frames must be 4k+1 and at least 5 (e.g. 81), got {frames}"]
