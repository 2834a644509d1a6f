"""``laion-fmri-glm``: the command line.

Thin on purpose: it parses arguments, calls the modules and turns every known
error (:class:`~laion_fmri_dataloader.errors.LaionFmriError`) into one line on
stderr and exit code 2, and so an error of the file system the user can fix
(disk full, quota, read-only, permission denied) wherever it was raised.  Exit
code 1 means a bug.  Heavy modules are imported inside the commands, so that
``laion-fmri-glm --help`` starts fast.
"""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Sequence

from laion_fmri_dataloader.cli.parser import build_parser
from laion_fmri_dataloader.errors import LaionFmriError, os_error_message

__all__ = ["build_parser", "main"]

log = logging.getLogger("laion_fmri")

# Errors of the file system that are the user's to fix, not bugs; the writers
# of io.files name the path themselves, this catches those raised elsewhere.
_USER_OS_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``laion-fmri-glm``; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.handler(args)
    except LaionFmriError as error:
        print(f"laion-fmri-glm: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in _USER_OS_ERRORS:
            raise
        message = os_error_message(error, action="use")
        print(f"laion-fmri-glm: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "laion-fmri-glm: interrupted; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
