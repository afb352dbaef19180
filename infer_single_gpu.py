"""Upstream-compatible entry point: ``python infer_single_gpu.py --config ... --case ...``."""

import sys

from bernini.frontends.cli import upstream_script_main

if __name__ == "__main__":
    sys.exit(upstream_script_main())
