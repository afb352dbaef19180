"""User-facing errors.

Every problem caused by user input (flags, case files, media, weights on disk) raises
:class:`BerniniError`, a ``ValueError`` whose message is one actionable line. Front ends print
that line and exit non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class BerniniError(ValueError):
    """An error the user can fix; the message is one line that says how."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class WeightsError(BerniniError):
    """Missing, corrupt or mismatched weight files."""


class MediaError(BerniniError):
    """An input image or video that cannot be read or used."""
