"""Peak host RSS while loading an fp32 expert as bf16: bernini's streaming loader vs diffusers.

Writes one fp32 expert (default ≈0.8 GB, sharded like the real bundle), then loads it in fresh
processes and reports peak RSS above the interpreter's baseline (after imports) in units of the bf16
bytes loaded. Run: ``python bench/load_memory.py [--dim 1024 --layers 12]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rss import run_child

CHILD = r"""
import json, sys
import torch
from pathlib import Path
from bernini.loaders.loading import bundle_weight_files, load_expert
from diffusers import WanTransformer3DModel
from rss import PeakRss
mode, folder = sys.argv[1], sys.argv[2]
with PeakRss(interval=0.005) as probe:
    if mode == "bernini":
        files = bundle_weight_files(Path(folder))
        model = load_expert(Path(folder), files, expert="transformer", dtype=torch.bfloat16)
    else:
        model = WanTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
loaded = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"baseline": probe.baseline, "peak": probe.peak, "loaded_bytes": loaded, "seconds": probe.seconds}))
"""


def write_expert(folder: Path, dim: int, layers: int) -> int:
    import torch
    from diffusers import WanTransformer3DModel

    heads = dim // 128
    model = WanTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=128, ffn_dim=dim * 4 - dim // 2, num_layers=layers, text_dim=4096
    )
    model.save_pretrained(folder, max_shard_size="200MB")
    return sum(p.numel() for p in model.parameters()) * torch.finfo(torch.bfloat16).bits // 8


def measure(mode: str, folder: Path) -> dict:
    return run_child(CHILD, mode, str(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "transformer"
        bf16_bytes = write_expert(folder, args.dim, args.layers)
        fp32_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        print(f"expert: {fp32_bytes / 1e9:.2f} GB fp32 on disk, {bf16_bytes / 1e9:.2f} GB as bf16")
        for mode in ("bernini", "diffusers"):
            r = measure(mode, folder)
            extra = r["peak"] - r["baseline"]
            print(
                f"{mode:9s} peak RSS above baseline {extra / 1e9:.2f} GB = {extra / r['loaded_bytes']:.2f}x "
                f"the bf16 bytes loaded ({r['seconds']:.1f} s)"
            )


if __name__ == "__main__":
    main()
