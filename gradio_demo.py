"""Upstream-compatible entry point: ``python gradio_demo.py --config BUNDLE --port 7860`` (see bernini/frontends/demo/)."""

import sys

from bernini.frontends.demo import main

if __name__ == "__main__":
    sys.exit(main(prog="gradio_demo.py"))
