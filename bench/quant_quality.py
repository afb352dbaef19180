"""Output distance (PSNR) of fp8, int8, GGUF Q8_0 and GGUF Q4_K weights against bf16, on one random expert.

The expert has Wan's block structure at the 1.3B width (dim 1536, FFN 8960; 12 layers, ≈0.58 B
parameters). Its linear weights get the statistics of trained transformers rather than a plain init:
heavy-tailed values (Student-t, 4 degrees of freedom) and per-output-channel scales spread log-normally
(σ 0.5), so a few channels carry outliers, which is what per-channel and per-block scales are for.
Each variant loads through bernini's loader (fp8 / int8 by ``quantize=``, GGUF from files written here;
Q4_K through the test suite's encoder, since ``gguf`` has no K-quant quantiser), runs in bf16 on the same
packed v2v-like input, and is compared with the bf16 model: PSNR of one velocity prediction and of the
latents after a 4-step Euler loop. Run: ``python bench/quant_quality.py [--layers 12 --dim 1536]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def realistic_expert(dim: int, ffn: int, layers: int, seed: int):
    from bernini.models.transformer import BerniniTransformer

    torch.manual_seed(seed)
    model = BerniniTransformer(
        num_attention_heads=dim // 128, attention_head_dim=128, ffn_dim=ffn, num_layers=layers, text_dim=4096
    )
    generator = torch.Generator().manual_seed(seed)
    student = torch.distributions.StudentT(4.0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                rows, cols = param.shape
                values = student.sample((rows, cols)) / math.sqrt(2.0)  # unit variance
                row_scale = torch.exp(0.5 * torch.randn(rows, 1, generator=generator))
                param.copy_(values * row_scale / math.sqrt(cols))
            elif "scale_shift_table" in name:
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(dim))
    return model.eval()


def psnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    reference, other = reference.float(), other.float()
    mse = torch.mean((reference - other) ** 2).item()
    peak = (reference.max() - reference.min()).item()
    return float("inf") if mse == 0 else 20 * math.log10(peak) - 10 * math.log10(mse)


def run(model, inputs, steps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    from bernini.models.segment import Segment

    source, target, text = inputs
    with torch.no_grad():
        first = model.forward_packed([Segment(source, 1.0)], target, torch.tensor([900.0]), text)
        x = target
        sigmas = torch.linspace(1.0, 0.0, steps + 1)
        for i in range(steps):
            v = model.forward_packed([Segment(source, 1.0)], x, sigmas[i : i + 1] * 1000, text)
            x = (x.float() + (sigmas[i + 1] - sigmas[i]) * v.float()).to(x.dtype)
    return first.float(), x.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--ffn", type=int, default=8960)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from community_files import write_gguf as write_test_gguf

    from bernini.loaders.convert import expert_state, save_sharded
    from bernini.loaders.gguf_file import write_gguf
    from bernini.loaders.loading import load_expert

    bf16 = torch.bfloat16
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = realistic_expert(args.dim, args.ffn, args.layers, args.seed)
        params = sum(p.numel() for p in model.parameters())
        model.save_config(root / "transformer")
        state = expert_state(model, torch.float32)
        del model
        save_sharded(state, root / "transformer", max_shard_size="1GB")
        write_gguf(state, root / "q8_0.gguf", "Q8_0")
        write_test_gguf(state, root / "q4_k.gguf", "Q4_K")
        del state
        generator = torch.Generator().manual_seed(1)
        latent = lambda: torch.randn(1, 16, 3, 8, 12, generator=generator).to(bf16)  # noqa: E731
        inputs = (latent(), latent(), torch.randn(1, 64, 4096, generator=generator).to(bf16))
        folder = root / "transformer"
        files = sorted(folder.glob("*.safetensors"))
        variants = {
            "bf16": (files, "none"),
            "fp8 e4m3 (per channel)": (files, "fp8"),
            "int8 (per channel)": (files, "int8"),
            "GGUF Q8_0": ([root / "q8_0.gguf"], "none"),
            "GGUF Q4_K": ([root / "q4_k.gguf"], "none"),
        }
        print(f"expert: {params / 1e6:.0f} M parameters (dim {args.dim}, FFN {args.ffn}, {args.layers} layers)")
        reference = None
        for name, (paths, quantize) in variants.items():
            expert = load_expert(folder, paths, expert="transformer", dtype=bf16, quantize=quantize)
            first, last = run(expert, inputs)
            del expert
            if reference is None:
                reference = (first, last)
                continue
            print(
                f"{name:24s} PSNR vs bf16: velocity {psnr(reference[0], first):5.1f} dB, "
                f"after 4 Euler steps {psnr(reference[1], last):5.1f} dB"
            )


if __name__ == "__main__":
    main()
