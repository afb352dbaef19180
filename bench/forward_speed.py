"""Renderer forward vs diffusers' WanTransformer3DModel on the same weights, side by side in one run.

Reports the time ratio for a target-only forward (where both do the same work) and the cost of packing
conditions (v2v: one source segment as long as the target; rv2v adds a reference image). CPU by default;
on a GPU pass ``--device cuda --dtype bf16`` for real shapes. Run: ``python bench/forward_speed.py``.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import WanTransformer3DModel

from bernini.models.attention import select_backend
from bernini.models.segment import Segment
from bernini.models.transformer import BerniniTransformer


def timed(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--latent", type=int, nargs=3, default=(5, 30, 52), metavar=("T", "H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    config = dict(
        num_attention_heads=args.heads,
        attention_head_dim=128,
        ffn_dim=args.heads * 128 * 3,
        num_layers=args.layers,
        text_dim=4096,
    )
    reference = WanTransformer3DModel(**config).to(args.device, dtype).eval()
    ours = BerniniTransformer(**config).to(args.device, dtype).eval()
    ours.load_state_dict(reference.state_dict())
    ours.configure(attention=select_backend(args.device, dtype=dtype))
    t, h, w = args.latent
    x = torch.randn(1, 16, t, h, w, device=args.device, dtype=dtype)
    source = Segment(torch.randn_like(x), 1.0)
    ref = Segment(torch.randn(1, 16, 1, h, w, device=args.device, dtype=dtype), 2.0)
    text = torch.randn(1, 512, 4096, device=args.device, dtype=dtype)
    step = torch.tensor([500], device=args.device)
    with torch.no_grad():
        base = timed(lambda: reference(x, step, text), args.repeats)
        target_only = timed(lambda: ours.forward_packed([], x, step, text), args.repeats)
        v2v = timed(lambda: ours.forward_packed([source], x, step, text), args.repeats)
        rv2v = timed(lambda: ours.forward_packed([source, ref], x, step, text), args.repeats)
    tokens = t * (h // 2) * (w // 2)
    print(
        f"{tokens} target tokens, {args.layers} layers x {args.heads} heads, {args.device} {args.dtype}, "
        f"attention {ours.runtime.attention.name}"
    )
    print(f"diffusers WanTransformer3DModel  {base * 1e3:8.1f} ms  1.00x")
    print(f"bernini target-only              {target_only * 1e3:8.1f} ms  {target_only / base:.2f}x")
    print(f"bernini v2v (source + target)     {v2v * 1e3:8.1f} ms  {v2v / base:.2f}x")
    print(f"bernini rv2v (+ one reference)    {rv2v * 1e3:8.1f} ms  {rv2v / base:.2f}x")


if __name__ == "__main__":
    main()
