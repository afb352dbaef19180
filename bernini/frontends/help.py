"""Help text for every flag, with its default, for every front end's parser.

A request setting's flag takes its help from its declaration on :class:`~bernini.request.GenerationRequest`;
other flags declared without a ``help=`` get theirs from :data:`FLAG_HELP` (by destination) through
:func:`document`; the formatter appends ``(default: …)`` unless the text already speaks of its default.
``docs/cli.md`` explains the same flags at length.
"""

from __future__ import annotations

import argparse

FLAG_HELP: dict[str, str] = {
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
