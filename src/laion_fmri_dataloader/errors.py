"""Errors raised by laion_fmri_dataloader.

Every error the package raises on purpose derives from :class:`LaionFmriError`;
subclasses also inherit the built-in exception they mean, so that callers can
catch either (``except FileNotFoundError`` keeps working).  The command line
turns any :class:`LaionFmriError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import difflib
import errno
import os
from collections.abc import Iterable

__all__ = [
    "CorruptFileError",
    "InputError",
    "InvalidLabelError",
    "InvalidParameterError",
    "LaionFmriError",
    "NotFoundError",
    "OutputError",
    "RemoteError",
    "did_you_mean",
    "os_error_message",
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


class OutputError(LaionFmriError, OSError):
    """An output could not be written (disk full, read-only, permission denied).

    The message names the path and the cause; ``errno`` is the cause's.
    """


# What to do about the errors of the file system a user can fix.
_ADVICE = {
    errno.ENOSPC: "free space on that disk or choose another output folder",
    errno.EDQUOT: "free space within your quota or choose another output folder",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.EACCES: "give this user write permission there or choose another output "
    "folder",
    errno.EPERM: "give this user write permission there or choose another output "
    "folder",
}


def os_error_message(
    error: OSError, path: str | os.PathLike | None = None, *, action: str = "write"
) -> str:
    """One line naming the path, the cause and, for a write, what to do.

    Examples
    --------
    >>> os_error_message(OSError(errno.ENOSPC, "No space left on device"), "/o/m.json")
    'cannot write /o/m.json: No space left on device [ENOSPC]; free space on that disk or choose another output folder'
    """  # noqa: E501
    path = error.filename if path is None else path
    cause = error.strerror or " ".join(str(error).split()) or type(error).__name__
    code = errno.errorcode.get(error.errno) if error.errno else None
    message = f"cannot {action} {os.fspath(path) if path is not None else 'a file'}"
    message += f": {cause}" + (f" [{code}]" if code else "")
    advice = _ADVICE.get(error.errno) if action == "write" else None
    return f"{message}; {advice}" if advice else message


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
