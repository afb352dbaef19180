"""Peak host RSS while loading a high/low expert pair from each weight format, next to the bytes held.

Writes one random expert (default ≈0.45 B parameters, A14B block structure at a smaller width) as a pair
of files in each layout: Comfy-Org fp16, Comfy-Org fp8_scaled, GGUF Q8_0, and this project's
pre-quantised fp8 bundle; then loads each pair with ``--dtype bf16`` in a fresh process and reports the
peak RSS above the interpreter's baseline (after imports) as a ratio to the bytes of the two files and to
the bytes the loaded experts hold. Run: ``python bench/format_memory.py [--dim 1024 --layers 24]``.
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
from bernini.loaders.loading import load_expert
from bernini.runtime.placement import module_bytes
from rss import PeakRss
config = Path(sys.argv[1])
high, low = ([Path(p) for p in arg.split(",")] for arg in sys.argv[2:4])
with PeakRss() as probe:
    experts = [load_expert(config, files, expert=name, dtype=torch.bfloat16, separate=True)
               for name, files in (("transformer", high), ("transformer_2", low))]
held = sum(module_bytes(e) for e in experts)
print(json.dumps({"extra": probe.extra, "held": held, "seconds": probe.seconds}))
"""


def write_formats(root: Path, dim: int, layers: int) -> dict[str, tuple[list[Path], list[Path]]]:
    import torch
    from safetensors.torch import save_file

    from bernini.loaders.convert import comfy_state, expert_state, save_sharded
    from bernini.loaders.gguf_file import write_gguf
    from bernini.loaders.quant import quantizable, quantize_rows
    from bernini.models.transformer import BerniniTransformer

    config = dict(
        num_attention_heads=dim // 128,
        attention_head_dim=128,
        ffn_dim=dim * 27 // 10 // 256 * 256,
        num_layers=layers,
        text_dim=4096,
        freq_dim=256,
    )
    model = BerniniTransformer(**config)
    (root / "transformer").mkdir(parents=True)
    model.save_config(root / "transformer")
    dense = expert_state(model, torch.float16)
    del model
    fp8 = dict(dense)
    for key in list(fp8):
        if quantizable(key, tuple(fp8[key].shape)):
            fp8[key], fp8[key[: -len("weight")] + "weight_scale"] = quantize_rows(fp8[key].float(), "fp8")
    formats: dict[str, tuple[list[Path], list[Path]]] = {}
    pair = {}
    for noise in ("high", "low"):
        files = {
            "comfy fp16": root / f"wan2.2_bernini_r_{noise}_noise_fp16.safetensors",
            "comfy fp8_scaled": root / f"wan2.2_bernini_r_{noise}_noise_fp8_scaled.safetensors",
            "gguf Q8_0": root / f"bernini_r_{noise}_noise_Q8_0.gguf",
        }
        save_file(comfy_state(dense, torch.float16), str(files["comfy fp16"]))
        save_file(comfy_state(fp8, torch.float16), str(files["comfy fp8_scaled"]))
        write_gguf(dense, files["gguf Q8_0"], "Q8_0")
        bundle = root / f"fp8-bundle-{noise}"
        save_sharded(fp8, bundle, max_shard_size="200MB")
        files["bundle fp8 (pre-quantised)"] = bundle
        pair[noise] = files
    for name in pair["high"]:
        high, low = pair["high"][name], pair["low"][name]
        expand = lambda p: sorted(p.glob("*.safetensors")) if p.is_dir() else [p]  # noqa: E731
        formats[name] = (expand(high), expand(low))
    return formats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        formats = write_formats(root, args.dim, args.layers)
        for name, (high, low) in formats.items():
            file_bytes = sum(p.stat().st_size for p in high + low)
            r = run_child(CHILD, str(root / "transformer"), ",".join(map(str, high)), ",".join(map(str, low)))
            print(
                f"{name:28s} files {file_bytes / 1e9:5.2f} GB  held {r['held'] / 1e9:5.2f} GB  peak RSS above baseline "
                f"{r['extra'] / 1e9:5.2f} GB = {r['extra'] / file_bytes:.2f}x the files, {r['extra'] / r['held']:.2f}x "
                f"held ({r['seconds']:.1f} s)"
            )


if __name__ == "__main__":
    main()
