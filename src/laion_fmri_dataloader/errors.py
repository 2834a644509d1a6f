"""Errors raised by laion_fmri_dataloader.

Every error the package raises on purpose derives from :class:`LaionFmriError`;
subclasses also inherit the built-in exception they mean, so that callers can
catch either (``except FileNotFoundError`` keeps working).  The command line
turns any :class:`LaionFmriError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "CorruptFileError",
    "InputError",
    "InvalidLabelError",
    "InvalidParameterError",
    "LaionFmriError",
    "NotFoundError",
    "RemoteError",
    "did_you_mean",
]


class LaionFmriError(Exception):
    """Base class of every error raised on purpose by this package."""


class NotFoundError(LaionFmriError, FileNotFoundError):
    """A subject, contrast, stat type, correction or file does not exist."""


class InvalidLabelError(LaionFmriError, ValueError):
    """A BIDS label or a name of a closed set (a stat type) is not allowed."""


class InvalidParameterError(LaionFmriError, ValueError):
    """A parameter that is not a label (a number, an array's shape) is not allowed."""


class InputError(LaionFmriError, ValueError):
    """An input file of the pipeline is unusable; the message names the file."""


class CorruptFileError(InputError):
    """A file exists but cannot be read (truncated or corrupt)."""


class RemoteError(LaionFmriError, OSError):
    """A remote object store could not be read or written."""


def did_you_mean(asked: str, available: Iterable[str]) -> str:
    """Describe what is available and suggest the nearest name.

    Parameters
    ----------
    asked : str
        The name the user asked for.
    available : iterable of str
        The names that exist.

    Returns
    -------
    str
        A sentence fragment such as ``"did you mean 'faceVsBaseline'? Available:
        faceVsBaseline, faceVsScene"``, or ``"nothing is available"``.

    Examples
    --------
    >>> did_you_mean("faceVsbaseline", ["faceVsBaseline", "faceVsScene"])
    "did you mean 'faceVsBaseline'? Available: faceVsBaseline, faceVsScene"
    """
    names = [str(name) for name in available]
    if not names:
        return "nothing is available"
    lowered = {name.lower(): name for name in names}
    close = difflib.get_close_matches(asked.lower(), list(lowered), n=1, cutoff=0.6)
    listing = "Available: " + ", ".join(names)
    if close:
        return f"did you mean '{lowered[close[0]]}'? {listing}"
    return listing
