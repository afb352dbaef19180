"""The full Bernini model's memory plan at the published sizes, from meta-device modules (no weights, no GPU).

Prints the peak device bytes of the planning phase (Qwen2.5-VL-7B without its last layer, norm and lm_head,
ViT decoder, connector, VAE, activations of three branches) and of the rendering phase (one A14B expert
resident at a time, as Bernini-R), which are never resident together, and the host bytes after loading.
Run: ``python bench/full_memory_plan.py [--tokens 2048] [--frames 81 --height 480 --width 832 --sources 1]``.
"""

from __future__ import annotations

import argparse

from bernini.planner.memory import PLANNER_TOKENS, FullShapes, estimate_full_memory
from bernini.runtime.memory import Request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=PLANNER_TOKENS, help="planner tokens per branch")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--sources", type=int, default=1, help="source videos packed beside the target")
    args = parser.parse_args()
    request = Request(args.frames, args.height, args.width, source_videos=args.sources)
    resolved = estimate_full_memory(request, FullShapes(planner_tokens=args.tokens))
    print("\n".join(resolved.lines()))


if __name__ == "__main__":
    main()
