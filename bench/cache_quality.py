"""Step caching on a random model large enough to mean something: skipped forwards and PSNR to the uncached run.

A Wan-architecture expert of ≈ 110 M parameters (random weights, 8 heads × 128, 6 blocks) denoises one
t2v latent with text APG (two branches per step) through bernini's own sampler, once without a cache
and once per cache kind and threshold (``firstblock``, ``teacache``, and ``magcache`` after one
calibration run whose ratios it then uses). PSNR is on the final latents, with the uncached run's value
range as the peak. Run: ``python bench/cache_quality.py`` (CPU, a few minutes).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from diffusers import UniPCMultistepScheduler

from bernini.conditions import Conditions
from bernini.models.transformer import BerniniTransformer
from bernini.resolved import SourceIdPolicy
from bernini.sampling.cache import magcache_available, step_cache
from bernini.sampling.cachefile import read_calibration
from bernini.sampling.guidance import GUIDANCE_MODES, GuidanceState, Text, Weights
from bernini.sampling.presets import CacheSettings
from bernini.sampling.sampler import Experts, SamplingInputs, SamplingStats, sample

THRESHOLDS = {"firstblock": [0.05, 0.2], "teacache": [0.1, 0.3], "magcache": [0.06, 0.2]}


def psnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    mse = (reference - other).pow(2).mean().item()
    peak = (reference.max() - reference.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--kinds", nargs="+", default=["firstblock", "teacache", "magcache"])
    parser.add_argument("--thresholds", type=float, nargs="+", default=None, help="default: per kind, see THRESHOLDS")
    parser.add_argument("--latent", type=int, nargs=3, default=(3, 16, 24), metavar=("T", "H", "W"))
    args = parser.parse_args()
    torch.manual_seed(0)
    expert = BerniniTransformer(
        num_attention_heads=8, attention_head_dim=128, ffn_dim=4096, num_layers=args.layers, text_dim=256
    ).eval()
    with torch.no_grad():  # diffusers zero-initialises some layers; random everywhere so every input matters
        for param in expert.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    params = sum(p.numel() for p in expert.parameters()) / 1e6
    latents = torch.randn(1, 16, *args.latent)
    text = {Text.PROMPT: torch.randn(1, 64, 256), Text.NEGATIVE: torch.randn(1, 64, 256)}
    mode = GUIDANCE_MODES["t2v_apg"]

    def run(cache: CacheSettings | None) -> tuple[torch.Tensor, SamplingStats, float]:
        inputs = SamplingInputs(
            latents, Conditions().combos(SourceIdPolicy()), text, mode, Weights(1.25, 4.5, 4.0), 0.8, GuidanceState()
        )
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0, final_sigmas_type="zero"
        )
        stats = SamplingStats()
        start = time.perf_counter()
        with step_cache([expert], cache, [args.steps]) as computed:
            out = sample(Experts(high=expert), scheduler, inputs, args.steps, stats=stats)
            if computed is not None:
                stats.skipped_forwards = computed.skipped(stats.forwards)
        return out, stats, time.perf_counter() - start

    reference, stats, seconds = run(None)
    tokens = args.latent[0] * args.latent[1] * args.latent[2] // 4
    print(f"{params:.0f} M-parameter random expert, {tokens} tokens, {args.steps} steps × 2 branches, CPU fp32")
    print("| cache | threshold | forwards | skipped | time | time ratio | PSNR to uncached (latents) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| off | | {stats.forwards} | 0 | {seconds:.1f} s | 1.00× | ∞ |")
    calibration = Path(tempfile.mkdtemp()) / "magcache.json"
    for kind in args.kinds:
        if kind == "magcache":
            if not magcache_available():
                print("| magcache | | | | | | this diffusers has no MagCache hooks |")
                continue
            out, cached, took = run(CacheSettings("magcache", 1.0, str(calibration)))  # calibrating: skips nothing
            print(
                f"| magcache (calibration run) | | {cached.forwards} | {cached.skipped_forwards} | {took:.1f} s | "
                f"{took / seconds:.2f}× | {psnr(reference, out):.1f} dB |"
            )
        for threshold in args.thresholds or THRESHOLDS[kind]:
            resolved = CacheSettings(kind, threshold)
            if kind == "magcache":
                data = read_calibration(str(calibration), "magcache")
                resolved = CacheSettings(kind, threshold, str(calibration), data["ratios"], data["steps"])
            out, cached, took = run(resolved)
            print(
                f"| {kind} | {threshold:g} | {cached.forwards} | {cached.skipped_forwards} | {took:.1f} s | "
                f"{took / seconds:.2f}× | {psnr(reference, out):.1f} dB |"
            )


if __name__ == "__main__":
    main()
