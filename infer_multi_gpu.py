"""Upstream-compatible entry point: ``torchrun --nproc-per-node N infer_multi_gpu.py --ulysses U ...``."""

import sys

from bernini.frontends.cli import upstream_script_main

if __name__ == "__main__":
    sys.exit(upstream_script_main())
