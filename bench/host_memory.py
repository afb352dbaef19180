"""Host memory per rank of a torchrun job: does each rank hold more than one bf16 copy of the experts?

Writes a tiny bundle whose two experts are replaced by bigger fp32 ones (default ≈350 MB each on
disk), then runs ``bernini generate --dtype bf16 --device cpu`` on one tiny frame under torchrun
(gloo) with 1 rank and with 2 ranks (``--ulysses 2``), and reports per rank: RSS after the imports
(baseline), peak RSS, peak USS (private memory), and ``(peak RSS - baseline) / bf16 bytes of both
experts``; the same run on the tiny bundle gives the fixed cost (text encoder, VAE, lazily imported
modules) to subtract. A net ratio near 1.0 per rank means: no fp32 copy, no second bf16 copy.
Run: ``python bench/host_memory.py [--dim 1024 --layers 5]`` (about a minute on two cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GENERATE = ["--prompt", "a kite", "--task_type", "t2i", "--height", "32", "--width", "32", "--num_inference_steps", "1"]


def write_bundle(root: Path, dim: int, layers: int) -> tuple[Path, int]:
    """The tiny bundle with both experts swapped for ``dim``-wide, ``layers``-deep fp32 ones."""
    import torch
    from diffusers import WanTransformer3DModel

    from bernini.tiny.bundle import TINY_TRANSFORMER, write_tiny_bundle

    bundle = write_tiny_bundle(root / "bundle")
    config = {**TINY_TRANSFORMER, "num_attention_heads": dim // 128, "attention_head_dim": 128}
    config.update(ffn_dim=dim * 4 - dim // 2, num_layers=layers, freq_dim=256)
    bf16_bytes = 0
    for seed, name in enumerate(("transformer", "transformer_2")):
        torch.manual_seed(seed)
        model = WanTransformer3DModel(**config)
        shutil.rmtree(bundle / name)
        model.save_pretrained(bundle / name, max_shard_size="100MB")
        bf16_bytes += sum(p.numel() for p in model.parameters()) * 2
        del model
    return bundle, bf16_bytes


def worker(out: Path, cli_args: list[str]) -> int:
    """One rank: note the baseline after imports, run the CLI, write the memory figures as JSON."""
    import psutil
    import torch.distributed  # noqa: F401 - part of the baseline, as in a real run

    import bernini.pipeline  # noqa: F401
    from bernini.frontends.cli import main

    proc = psutil.Process()
    baseline = proc.memory_info().rss
    peak_uss = 0
    running = True

    def watch() -> None:
        nonlocal peak_uss
        while running:
            peak_uss = max(peak_uss, proc.memory_full_info().uss)
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    start = time.perf_counter()
    code = main(["generate", *cli_args])
    running = False
    thread.join()
    rank = int(os.environ.get("RANK", "0"))
    figures = {
        "rank": rank,
        "exit": code,
        "baseline": baseline,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_uss": peak_uss,
        "seconds": time.perf_counter() - start,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(figures))
    return code


def launch(nproc: int, bundle: Path, out: Path, extra: list[str]) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    cli_args = ["--config", str(bundle), "--dtype", "bf16", "--device", "cpu", *GENERATE]
    cli_args += ["--output", str(out / "out.png"), *extra]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += [__file__, "--worker", str(out), "--", *cli_args]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1024, help="expert width (heads of 128)")
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        sys.exit(worker(Path(args.worker), [a for a in rest if a != "--"]))
    with tempfile.TemporaryDirectory() as tmp:
        from bernini.tiny.bundle import write_tiny_bundle

        bundle, bf16 = write_bundle(Path(tmp), args.dim, args.layers)
        files = [f for n in ("transformer", "transformer_2") for f in (bundle / n).glob("*.safetensors")]
        print(f"experts: {sum(f.stat().st_size for f in files) / 1e6:.0f} MB fp32 on disk, {bf16 / 1e6:.0f} MB bf16")
        tiny = launch(1, write_tiny_bundle(Path(tmp) / "tiny"), Path(tmp) / "tiny_run", [])[0]
        fixed = tiny["peak_rss"] - tiny["baseline"]
        print(f"fixed cost of a run with the tiny experts (text encoder, VAE, lazy imports): {fixed / 1e6:.0f} MB")
        print("ranks rank  baseline MB  peak RSS MB  peak USS MB  (peak - baseline) / bf16  (... - fixed) / bf16")
        for nproc, extra in ((1, []), (2, ["--ulysses", "2"])):
            for r in launch(nproc, bundle, Path(tmp) / f"run{nproc}", extra):
                grown = r["peak_rss"] - r["baseline"]
                print(
                    f"{nproc:5d} {r['rank']:4d} {r['baseline'] / 1e6:12.0f} {r['peak_rss'] / 1e6:12.0f} "
                    f"{r['peak_uss'] / 1e6:12.0f}  {grown / bf16:24.2f}  {(grown - fixed) / bf16:20.2f}"
                )


if __name__ == "__main__":
    main()
