"""Peak host RSS while loading a full Bernini bundle (planner + renderer parts) in bf16 from its fp32 shards.

Writes a full bundle in the published layout (``bernini.tiny.full.write_tiny_full_bundle``) at widths that
make its weights a few hundred MB, so the figure is not interpreter noise; then, in a fresh process,
``load_planner`` and ``load_renderer_parts`` with ``dtype=bf16`` and reports the peak RSS above the RSS after
the imports, as a ratio to the bytes the loaded modules hold (bf16, with the fp32-kept connector, ViT decoder,
VAE and Wan/UMT5 fp32 modules as kept). The fp32 ``bernini/`` shards are about twice those bytes and hold
``lm_head`` and the last Qwen layer, which are never read.
Run: ``python bench/full_load_memory.py`` (≈1 minute on two cores); ``--tiny`` for spec §6.1's sizes.
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
from transformers import AutoConfig, AutoTokenizer, UMT5EncoderModel
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
import accelerate
import bernini.models.transformer
from bernini.planner.loading import FullBundle, load_planner, load_renderer_parts
from bernini.planner.connector import MLPConnector
from bernini.planner.flow import VitDecoder
from rss import PeakRss
def held(module):
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
with PeakRss() as probe:
    bundle = FullBundle.open(sys.argv[1])
    planner = load_planner(bundle, torch.bfloat16)
    parts = load_renderer_parts(bundle, torch.bfloat16)
modules = {
    "qwen": planner.qwen, "connector": planner.connector, "vit_decoder": planner.vit_decoder,
    **{name: parts[name] for name in ("transformer", "transformer_2", "text_encoder", "vae")},
}
kept = {name: held(module) for name, module in modules.items()}
kept["mask_token"] = planner.mask_token.numel() * planner.mask_token.element_size()
print(json.dumps({"extra": probe.extra, "kept": kept, "seconds": probe.seconds}))
"""


def main() -> None:
    from bernini.tiny.full import TINY_SIZES, FullSizes, write_tiny_full_bundle

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="spec §6.1's tiny sizes (a few MB: noise dominates)")
    parser.add_argument("--qwen_hidden", type=int, default=512)
    parser.add_argument("--qwen_layers", type=int, default=6)
    parser.add_argument("--expert_heads", type=int, default=4, help="× 128 = the experts' width")
    parser.add_argument("--expert_layers", type=int, default=8)
    parser.add_argument("--decoder_width", type=int, default=1024)
    parser.add_argument("--decoder_depth", type=int, default=6)
    parser.add_argument("--limit", type=float, default=1.25, help="the acceptance ratio")
    args = parser.parse_args()
    hidden, width = args.qwen_hidden, args.expert_heads * 128
    sizes = TINY_SIZES
    if not args.tiny:
        sizes = FullSizes(
            qwen_hidden=hidden,
            qwen_intermediate=4 * hidden,
            qwen_layers=args.qwen_layers,
            qwen_heads=hidden // 64,
            qwen_kv_heads=max(1, hidden // 256),
            vision_hidden=hidden // 2,
            vision_intermediate=2 * hidden,
            vision_depth=4,
            vision_heads=hidden // 128,
            out_gen=width,
            out_vit=hidden,
            decoder_width=args.decoder_width,
            decoder_depth=args.decoder_depth,
            expert_heads=args.expert_heads,
            expert_head_dim=128,
            expert_ffn=4 * width,
            expert_layers=args.expert_layers,
            t5_ff=4 * width,
            t5_layers=4,
            shard_size=200 * 1024 * 1024,
        )
    with tempfile.TemporaryDirectory() as tmp:
        root = write_tiny_full_bundle(Path(tmp) / "full", sizes=sizes)
        shards = sum(p.stat().st_size for p in (root / "bernini").glob("*.safetensors"))
        r = run_child(CHILD, str(root))
    kept = sum(r["kept"].values())
    ratio = r["extra"] / kept
    print(f"bernini/ shards {shards / 1e6:.0f} MB fp32; loaded modules hold {kept / 1e6:.0f} MB:")
    for name, nbytes in sorted(r["kept"].items(), key=lambda item: -item[1]):
        print(f"  {name:13s} {nbytes / 1e6:8.1f} MB")
    verdict = "ok" if ratio <= args.limit else "OVER"
    print(
        f"peak RSS above baseline {r['extra'] / 1e6:.0f} MB = {ratio:.2f}x the bytes kept "
        f"(limit {args.limit:.2f}x: {verdict}; {r['seconds']:.1f} s)"
    )


if __name__ == "__main__":
    main()
