"""Reading images safely and writing every output atomically.

Reads turn a corrupt or truncated ``.nii.gz`` into a :class:`CorruptFileError`
that names the file, instead of a zlib traceback from deep inside nibabel.
Writes go to a temporary file in the destination folder and are renamed into
place, so that a reader (or a rerun) never sees a half-written output.

Compression is the slow part of reading and writing NIfTI: a 2 mm BOLD run is
about 1.3 GB of float32.  It is decompressed by zlib-ng on a background thread
straight into the image's array (or, for the first level, volume by volume into
the masked time series); maps are compressed by the standard library's zlib,
the one compressor that gives the same bytes everywhere (see
``benchmarks/RESULTS.md`` for the measured alternatives).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling
from pydantic import BaseModel
from zlib_ng import gzip_ng_threaded, zlib_ng

from laion_fmri_dataloader.errors import CorruptFileError, InputError, NotFoundError

__all__ = [
    "atomic_output",
    "load_image",
    "load_masked_series",
    "save_image",
    "write_json",
    "write_text",
]

# Bytes asked of the decompressor at a time: large requests make it build
# and copy a large temporary buffer, small ones cost a call each.
_READ_CHUNK = 1 << 23
# sizeof_hdr of NIfTI-1, in either byte order; other formats go through nib.load.
_NIFTI1_MAGIC = (348).to_bytes(4, "little"), (348).to_bytes(4, "big")
# The header and the 4 bytes that say whether extensions follow.
_NIFTI1_PREFIX = 352

_READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    zlib_ng.error,
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
    path = _existing(path, what)
    with _naming_the_file(path, what):
        read = _read_gzipped_nifti1(path) if path.name.endswith(".gz") else None
        if read is None:
            image = nib.load(path)
            read = image.header, np.asanyarray(image.dataobj)
    header, data = read
    return nib.Nifti1Image(data, header.get_best_affine(), header)


def load_masked_series(
    path: str | os.PathLike, mask: np.ndarray, *, what: str = "image"
) -> np.ndarray:
    """Time series of the voxels in ``mask`` of a 4D image, read volume by volume.

    A NIfTI-1 ``.nii.gz`` is decompressed one volume at a time and only the
    voxels in the mask are kept, so the full 4D array (1.3 GB for a 2 mm run)
    is never in memory and each volume is gathered while it is in cache.

    Parameters
    ----------
    path : path-like
        A 4D ``.nii`` or ``.nii.gz`` file.
    mask : numpy.ndarray of bool, 3D
        Voxels to keep, on the image's grid.
    what : str
        What the file is, for the error message ("BOLD series").

    Returns
    -------
    numpy.ndarray of shape (n_volumes, n_voxels), float32
        Scaled values, voxels in the C order of ``mask`` (as ``volume[mask]``).

    Raises
    ------
    NotFoundError
        If the file does not exist.
    CorruptFileError
        If the file cannot be read or decompressed.
    InputError
        If the image is not 4D or not on the grid of ``mask``.
    """
    path = _existing(path, what)
    columns = np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")
    with _naming_the_file(path, what), contextlib.ExitStack() as stack:
        header = None
        if path.name.endswith(".gz"):
            stream = stack.enter_context(gzip_ng_threaded.open(path, "rb"))
            header = _nifti1_header(stream)
        if header is not None:
            volumes = _volumes_of_stream(stream, header)
            slope, inter = _read_scaling(header)
        else:
            image = nib.load(path)
            header, data = image.header, np.asanyarray(image.dataobj)
            volumes = (data[..., index] for index in range(data.shape[-1]))
            slope, inter = _read_scaling(None)
        shape = header.get_data_shape()
        if len(shape) != 4 or shape[:3] != mask.shape:
            raise InputError(
                f"{what} {path} has shape {shape}; a 4D series on the grid of "
                f"the mask, {mask.shape}, is needed"
            )
        series = np.empty((shape[3], columns.size), dtype=np.float32)
        gathered = None
        for index, volume in enumerate(volumes):
            flat = volume.reshape(-1, order="F")
            if gathered is None:
                gathered = np.empty(columns.size, dtype=flat.dtype)
            # ``take`` into one reused buffer is several times faster than
            # fancy indexing; the indices come from the image's own grid, so
            # "clip" never clips, and spares the buffered copy of "raise".
            np.take(flat, columns, out=gathered, mode="clip")
            series[index] = apply_read_scaling(gathered, slope, inter)
    return series


def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{what} {path} does not exist")
    return path


@contextlib.contextmanager
def _naming_the_file(path: Path, what: str) -> Iterator[None]:
    """Turn any read or decompression error into a CorruptFileError."""
    try:
        yield
    except InputError:
        raise
    except _READ_ERRORS as error:
        reason = " ".join(str(error).split())
        raise CorruptFileError(
            f"{what} {path} cannot be read ({type(error).__name__}: {reason}); "
            "the file is corrupt or truncated: download it again or rerun the step "
            "that made it"
        ) from None


def _nifti1_header(stream) -> nib.Nifti1Header | None:
    """The NIfTI-1 header at the start of ``stream``; None for another format.

    Leaves ``stream`` at the first byte of the data.
    """
    start = stream.read(_NIFTI1_PREFIX)
    if start[:4] not in _NIFTI1_MAGIC:
        return None
    offset = nib.Nifti1Header(start[:348], check=False).get_data_offset()
    start += stream.read(max(int(offset) - len(start), 0))
    return nib.Nifti1Header.from_fileobj(io.BytesIO(start))


def _fill(stream, buffer: memoryview) -> None:
    """Decompress into ``buffer`` (bytes); EOFError if the data end first."""
    filled = 0
    while filled < buffer.nbytes:
        count = stream.readinto(buffer[filled : filled + _READ_CHUNK])
        if not count:
            raise EOFError(f"the data end after {filled} of {buffer.nbytes} bytes")
        filled += count


def _read_scaling(header: nib.Nifti1Header | None) -> tuple[np.ndarray, np.ndarray]:
    """Slope and intercept as nibabel's array proxy applies them."""
    slope, inter = (None, None) if header is None else header.get_slope_inter()
    return (
        np.asanyarray(1.0 if slope is None else slope),
        np.asanyarray(0.0 if inter is None else inter),
    )


def _read_gzipped_nifti1(path: Path) -> tuple[nib.Nifti1Header, np.ndarray] | None:
    """Header and scaled data of a ``.nii.gz``; None if it is not NIfTI-1.

    ``readinto`` decompresses straight into the array's memory, so the
    decompressed bytes are never held twice.
    """
    with gzip_ng_threaded.open(path, "rb") as stream:
        header = _nifti1_header(stream)
        if header is None:
            return None
        data = np.empty(header.get_data_shape(), header.get_data_dtype(), order="F")
        _fill(stream, memoryview(data.reshape(-1, order="F")).cast("B"))
    return header, apply_read_scaling(data, *_read_scaling(header))


def _volumes_of_stream(stream, header: nib.Nifti1Header) -> Iterator[np.ndarray]:
    """Each 3D volume of a 4D series, decompressed into one reused buffer."""
    shape = header.get_data_shape()
    volume = np.empty(shape[:3], header.get_data_dtype(), order="F")
    buffer = memoryview(volume.reshape(-1, order="F")).cast("B")
    for _ in range(shape[3] if len(shape) == 4 else 0):
        _fill(stream, buffer)
        yield volume


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# Read once at import: os.umask can only be read by setting it, which is not
# safe while other threads create files.
_UMASK = _read_umask()


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
        # mkstemp creates 0600; outputs are shared files, so honour the umask.
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_image(image: nib.Nifti1Image, path: str | os.PathLike) -> Path:
    """Write a NIfTI image atomically; ``.nii.gz`` files are byte-reproducible.

    Gzip output carries a zero timestamp and no embedded file name, so the same
    image always gives the same bytes (reruns and retried tasks are comparable
    with a checksum).  The compressor is the standard library's zlib at level 1:
    ISA-L is 8x faster but its level-1 stream varied between worker processes
    for identical input, and zlib-ng's hashing depends on the CPU's features,
    so only zlib gives the same bytes on every machine of a cluster.  The whole
    image is compressed in one call (about 0.03 s per 2 mm map).
    """
    path = Path(path)
    with atomic_output(path) as temporary:
        if path.name.endswith(".gz"):
            compressed = gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)
            temporary.write_bytes(compressed)
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
