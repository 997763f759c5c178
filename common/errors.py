"""One exception type for every user-facing failure, so CLIs can print one line, never a traceback."""

from __future__ import annotations


class BeatSightError(Exception):
    """A problem the user can fix (bad file, bad flag, mismatched model); the message is one line."""
