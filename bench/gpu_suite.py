"""The GPU benchmark: A14B-shaped experts with random weights, one command, under 10 minutes on one H100/H200.

Compute cost does not depend on the weight values, so no download is needed. For 480p t2v, v2v and rv2v
packing it reports seconds per forward, TFLOP/s (from the model's FLOP count) and the share of the
790 TFLOP/s dense bf16 floor, then varies one thing at a time on t2v: each attention kernel that runs,
regional ``torch.compile``, two guidance branches batched into one forward, fp8 linears (torchao) where
available, eager and compiled; peak device memory for every row. Things that cannot run here are listed with
the reason.

    python bench/gpu_suite.py                    # the real shapes (CUDA, bf16)
    python bench/gpu_suite.py --tiny --device cpu  # reduced shapes on the CPU, as CI runs it
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from bernini.models.attention import KERNELS, select_backend
from bernini.models.segment import Segment
from bernini.models.transformer import BerniniTransformer

FLOOR_TFLOPS = 790.0
SHAPES = {
    "a14b": dict(heads=40, head_dim=128, layers=40, ffn=13824, text_dim=4096, text_len=512, latent=(21, 60, 104)),
    "tiny": dict(heads=2, head_dim=32, layers=2, ffn=160, text_dim=32, text_len=16, latent=(2, 6, 8)),
}
PACKINGS = ("t2v", "v2v", "rv2v")


@dataclass
class Row:
    name: str
    packing: str
    tokens: int
    seconds: float | None = None
    tflop: float | None = None
    tflops: float | None = None
    floor_share: float | None = None
    peak_gib: float | None = None
    note: str = ""


def forward_flops(tokens: int, text_len: int, dim: int, ffn: int, layers: int) -> float:
    """Matmul FLOPs of one forward (performance.md): per block 8Nd² + 4Nd² + 4Md² + 4Ndf + 4N²d + 4NMd."""
    n, m, d, f = tokens, text_len, dim, ffn
    return layers * (12 * n * d * d + 4 * m * d * d + 4 * n * d * f + 4 * n * n * d + 4 * n * m * d)


def build_expert(shape: dict, device: torch.device, dtype: torch.dtype) -> BerniniTransformer:
    """An expert of ``shape`` with random weights, created on the device without a CPU copy."""
    config = dict(
        num_attention_heads=shape["heads"],
        attention_head_dim=shape["head_dim"],
        ffn_dim=shape["ffn"],
        num_layers=shape["layers"],
        text_dim=shape["text_dim"],
    )
    with torch.device("meta"):
        expert = BerniniTransformer(**config)
    expert = expert.to_empty(device=device).eval()
    keep = tuple(expert._keep_in_fp32_modules or ())
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, param in expert.named_parameters():
            param.data = param.data.to(torch.float32 if any(k in name for k in keep) else dtype)
            param.normal_(0.0, 0.02, generator=generator)
    return expert


def packing_inputs(packing: str, shape: dict, device, dtype, batch: int = 1):
    t, h, w = shape["latent"]
    latent = torch.randn(batch, 16, t, h, w, device=device, dtype=dtype)
    conditions = []
    if packing in ("v2v", "rv2v"):
        conditions.append(Segment(torch.randn_like(latent), 1.0))
    if packing == "rv2v":
        conditions.append(Segment(torch.randn(batch, 16, 1, h, w, device=device, dtype=dtype), 2.0))
    text = torch.randn(batch, shape["text_len"], shape["text_dim"], device=device, dtype=dtype)
    timestep = torch.full((batch,), 900, device=device, dtype=torch.long)
    tokens = sum(s.latent[0, 0].numel() // 4 for s in conditions) + latent[0, 0].numel() // 4
    return (conditions, latent, timestep, text), tokens


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float | None]:
    """Best of ``repeats`` after one warm-up, and the peak device memory (GiB) over them."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return best, peak


def measure(
    name: str, packing: str, expert, shape: dict, device, dtype, repeats: int, branches: int = 1, batched=False
):
    """One row: ``branches`` forwards of a packing (one batched forward when ``batched``), per-forward figures."""
    args, tokens = packing_inputs(packing, shape, device, dtype, batch=branches if batched else 1)

    @torch.no_grad()
    def run() -> None:
        for _ in range(1 if batched else branches):
            expert.forward_packed(*args)

    seconds, peak = timed(run, device, repeats)
    per_forward = seconds / branches
    flop = forward_flops(tokens, shape["text_len"], shape["heads"] * shape["head_dim"], shape["ffn"], shape["layers"])
    tflops = flop / per_forward / 1e12
    return Row(name, packing, tokens, per_forward, flop / 1e12, tflops, tflops / FLOOR_TFLOPS, peak)


def fp8_expert(expert) -> str | None:
    """Quantise the linears to fp8 with torchao in place; the reason when that is not possible here."""
    if not torch.cuda.is_available() or next(expert.parameters()).device.type != "cuda":
        return "fp8 needs a CUDA device"
    if torch.cuda.get_device_capability() < (8, 9):
        return "fp8 needs compute capability 8.9 or newer"
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_
    except Exception as exc:  # noqa: BLE001 - torchao is optional
        return f"torchao not usable: {type(exc).__name__}"
    quantize_(expert.blocks, Float8DynamicActivationFloat8WeightConfig())
    return None


def run_suite(shape_name: str, device: torch.device, dtype: torch.dtype, repeats: int, compile_on_cpu: bool = False):
    shape = SHAPES[shape_name]
    expert = build_expert(shape, device, dtype)
    default = select_backend(device, "auto", dtype)
    expert.configure(attention=default)
    rows: list[Row] = []
    for packing in PACKINGS:
        rows.append(measure(f"{packing}, {default.name}", packing, expert, shape, device, dtype, repeats))
    for kernel in KERNELS:
        if kernel == default.name:
            continue
        try:
            backend = select_backend(device, kernel, dtype)
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot run is a row with its reason
            rows.append(Row(f"t2v, {kernel}", "t2v", 0, note=str(exc)))
            continue
        expert.configure(attention=backend)
        rows.append(measure(f"t2v, {kernel}", "t2v", expert, shape, device, dtype, repeats))
    expert.configure(attention=default)
    rows.append(measure("t2v, 2 branches one by one", "t2v", expert, shape, device, dtype, repeats, branches=2))
    rows.append(
        measure("t2v, 2 branches batched", "t2v", expert, shape, device, dtype, repeats, branches=2, batched=True)
    )
    if device.type == "cuda" or compile_on_cpu:
        start = time.perf_counter()
        expert.compile_repeated_blocks(fullgraph=False)
        row = measure(f"t2v, {default.name}, compiled", "t2v", expert, shape, device, dtype, repeats)
        row.note = f"first call incl. compile: {time.perf_counter() - start:.0f} s total"
        rows.append(row)
    else:
        rows.append(Row("t2v, compiled", "t2v", 0, note="compile skipped on the CPU (pass --compile_on_cpu)"))
    del expert  # the fp8 rows start from a fresh, uncompiled expert
    if device.type == "cuda":
        torch.cuda.empty_cache()
    expert = build_expert(shape, device, dtype)
    expert.configure(attention=default)
    reason = fp8_expert(expert)
    if reason is None:
        rows.append(measure(f"t2v, {default.name}, fp8 linears", "t2v", expert, shape, device, dtype, repeats))
        if device.type == "cuda" or compile_on_cpu:
            expert.compile_repeated_blocks(fullgraph=False)
            name = f"t2v, {default.name}, fp8 linears, compiled"
            rows.append(measure(name, "t2v", expert, shape, device, dtype, repeats))
    else:
        rows.append(Row("t2v, fp8 linears", "t2v", 0, note=reason))
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| run | tokens | s/forward | TFLOP/forward | TFLOP/s | share of 790 | peak GiB | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.seconds is None:
            lines.append(f"| {r.name} | | | | | | | {r.note} |")
            continue
        peak = f"{r.peak_gib:.1f}" if r.peak_gib is not None else "n/a"
        lines.append(
            f"| {r.name} | {r.tokens} | {r.seconds:.3g} | {r.tflop:.4g} | {r.tflops:.4g} | "
            f"{100 * r.floor_share:.3g} % | {peak} | {r.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="reduced shapes (CI, CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=("bf16", "fp32"), help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile_on_cpu", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    shape = "tiny" if args.tiny else "a14b"
    start = time.perf_counter()
    rows = run_suite(shape, device, dtype, args.repeats, args.compile_on_cpu)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{shape} expert, {name}, {dtype_name}, random weights, best of {args.repeats} after a warm-up")
    print(table(rows))
    print(f"suite time: {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"shape": shape, "device": name, "dtype": dtype_name, "rows": [asdict(r) for r in rows]}, handle)
    return rows


if __name__ == "__main__":
    main()
