"""Reading images safely and writing every output atomically.

Reads turn a corrupt or truncated ``.nii.gz`` into a :class:`CorruptFileError`
that names the file, instead of a zlib traceback from deep inside nibabel.
Writes go to a temporary file in the destination folder and are renamed into
place, so that a reader (or a rerun) never sees a half-written output.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from pydantic import BaseModel

from laion_fmri_dataloader.errors import CorruptFileError, NotFoundError

__all__ = [
    "atomic_output",
    "load_image",
    "save_image",
    "write_json",
    "write_text",
]

_READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    ValueError,
    nib.filebasedimages.ImageFileError,
)


def load_image(path: str | os.PathLike, *, what: str = "image") -> nib.Nifti1Image:
    """Load a NIfTI image fully into memory, naming the file on any failure.

    Parameters
    ----------
    path : path-like
        A ``.nii`` or ``.nii.gz`` file.
    what : str
        What the file is, for the error message ("BOLD series", "mask").

    Returns
    -------
    nibabel.Nifti1Image
        The image with its data read (not a lazy proxy), so that a truncated
        file fails here and not later in a user's plot.

    Raises
    ------
    NotFoundError
        If the file does not exist.
    CorruptFileError
        If the file cannot be read or decompressed.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{what} {path} does not exist")
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except _READ_ERRORS as error:
        reason = " ".join(str(error).split())
        raise CorruptFileError(
            f"{what} {path} cannot be read ({type(error).__name__}: {reason}); "
            "the file is corrupt or truncated: download it again or rerun the step "
            "that made it"
        ) from None
    return nib.Nifti1Image(data, image.affine, image.header)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success.

    The temporary name keeps the final suffixes (``.nii.gz``), so that writers
    that pick a format from the name still work.  On any exception the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_image(image: nib.Nifti1Image, path: str | os.PathLike) -> Path:
    """Write a NIfTI image atomically; ``.nii.gz`` files are byte-reproducible.

    Gzip output carries a zero timestamp and no embedded file name, so the same
    image always gives the same bytes (reruns and retried tasks are comparable
    with a checksum).  Level 1 compression: maps of zeros outside the brain
    compress well at any level, and level 1 is several times faster.
    """
    path = Path(path)
    with atomic_output(path) as temporary:
        if path.name.endswith(".gz"):
            with (
                open(temporary, "wb") as raw_file,
                gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw_file, compresslevel=1, mtime=0
                ) as stream,
            ):
                image.to_file_map({"image": nib.FileHolder(fileobj=stream)})
        else:
            nib.save(image, temporary)
    return path


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(content: BaseModel | dict, path: str | os.PathLike) -> Path:
    """Write a pydantic model or a dict as indented JSON, atomically."""
    if isinstance(content, BaseModel):
        text = content.model_dump_json(indent=2, exclude_none=True)
    else:
        text = json.dumps(content, indent=2, sort_keys=False, default=str)
    return write_text(text + "\n", path)
