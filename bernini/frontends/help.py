"""Help text for every flag, with its default, for every front end's parser.

Flags declared without a ``help=`` get theirs from :data:`FLAG_HELP` (by destination) through
:func:`document`; the formatter appends ``(default: …)`` unless the text already speaks of its default.
``docs/cli.md`` explains the same flags at length.
"""

from __future__ import annotations

import argparse

FLAG_HELP: dict[str, str] = {
    "prompt": "what to generate, or how to edit the source (required unless --case or --inputs gives it)",
    "video": "source video(s): one for v2v/mv2v/rv2v; two for ads2v (the second is inserted into the first)",
    "image": "source image (i2i) or one reference image (rv2v, r2v, ads2v)",
    "images": "reference images (rv2v, r2v; optional for v2v, mv2v, i2i, ads2v)",
    "seed": "random seed, 0 to 2**63-1; -1 draws one at random and records it in the sidecar",
    "num_frames": "frames to generate, snapped down to 4k+1; a source video caps it; image tasks make 1",
    "num_inference_steps": "denoising steps (each runs the guidance mode's forwards)",
    "flow_shift": "shift of the flow-matching noise schedule (higher: more steps at high noise)",
    "omega_vid": "guidance weight of the source-video term (alias --omega_V)",
    "omega_img": "guidance weight of the reference-image term (alias --omega_I)",
    "omega_txt": "guidance weight of the text term (alias --omega_TI)",
    "omega_scale": "factor applied once to every guidance weight when the low-noise expert takes over",
    "eta": "APG: how much of the guidance delta parallel to the conditional prediction is kept (1: all)",
    "norm_threshold": "APG: per-frame norm cap of each guidance delta, one value per term (the last repeats)",
    "momentum": "APG: weight of the previous step's delta added to this one (0: no momentum)",
    "fps": "output frame rate; source videos are resampled to it",
    "max_image_size": "longest side, in pixels, that source videos and images are resized to (multiples of 16)",
    "height": "output height for tasks without a source (t2v, t2i, r2v); a source sets the size otherwise",
    "width": "output width for tasks without a source (t2v, t2i, r2v); a source sets the size otherwise",
    "neg_prompt": "negative prompt (default: Wan2.2's standard negative prompt)",
    "verbose": "log more (model loading, each stage)",
    "port": "port the demo listens on",
}


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: …)`` after each flag's help unless its text already names the default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def document(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every flag of ``parser`` that has no help its text from :data:`FLAG_HELP`."""
    for action in parser._actions:
        if action.help is None and action.dest in FLAG_HELP:
            action.help = FLAG_HELP[action.dest]
    return parser


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """Flags (and positionals) of ``parser`` without help text; hidden ones (``SUPPRESS``) excepted."""
    return [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not action.help and action.help is not argparse.SUPPRESS
    ]
