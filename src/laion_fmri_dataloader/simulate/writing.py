"""Deterministic, atomic writers of the simulator's NIfTI and TSV files.

The same seed gives byte-identical files: gzip streams carry a zero timestamp
and no file name, numbers in TSV files are written with ``repr``.
"""

from __future__ import annotations

import io
import math
import pathlib
import zlib
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from laion_fmri_dataloader.io.files import atomic_output, write_text
from laion_fmri_dataloader.simulate.anatomy import Geometry

__all__ = ["mni_image", "volume_image", "write_nifti", "write_tsv"]

_GZIP_LEVEL = 1  # nibabel's default; noise does not compress anyway


def _format_number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return repr(float(value))


def write_tsv(path: pathlib.Path, columns: dict[str, Sequence[Any]]) -> None:
    """Write a BIDS TSV file of ``columns`` (NaN as ``n/a``)."""
    names = list(columns)
    n_rows = len(columns[names[0]])
    lines = ["\t".join(names)]
    for row in range(n_rows):
        cells = []
        for name in names:
            value = columns[name][row]
            if isinstance(value, str):
                cells.append(value)
            else:
                cells.append(_format_number(float(value)))
        lines.append("\t".join(cells))
    write_text("\n".join(lines) + "\n", path)


class _GzipWriter:
    """Write-only gzip stream with a zero timestamp, for nibabel.

    zlib's run-length strategy finds the long runs of zeros outside the brain
    and does not search for repeats in the (random) brain voxels, which makes
    it about twice as fast as gzip level 1 and a little smaller.
    """

    def __init__(self, raw_file: Any) -> None:
        # wbits 31: a gzip header (mtime 0, no file name) and trailer
        self._compressor = zlib.compressobj(
            _GZIP_LEVEL, zlib.DEFLATED, 31, 8, zlib.Z_RLE
        )
        self._raw_file = raw_file
        self._position = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._raw_file.write(self._compressor.compress(view))
        self._position += view.nbytes
        return view.nbytes

    def read(self, size: int = -1) -> bytes:
        raise io.UnsupportedOperation("write-only gzip stream")

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        # nibabel seeks to where it already is, or forward over zero padding
        target = offset if whence == io.SEEK_SET else self._position + offset
        if target < self._position:
            raise io.UnsupportedOperation("cannot seek backwards in a gzip stream")
        if target > self._position:
            self.write(bytes(target - self._position))
        return self._position

    def flush(self) -> None:
        self._raw_file.flush()

    def close(self) -> None:
        self._raw_file.write(self._compressor.flush())


def write_nifti(path: pathlib.Path, image: nib.Nifti1Image) -> None:
    """Write a .nii.gz deterministically (zero gzip timestamp, no file name)."""
    # Streamed, not files.save_image: a 4D run must not be copied whole to bytes.
    with atomic_output(path) as temporary, open(temporary, "wb") as raw_file:
        stream = _GzipWriter(raw_file)
        image.to_file_map({"image": nib.FileHolder(fileobj=stream)})
        stream.close()


def mni_image(
    data: np.ndarray, affine: np.ndarray, zooms: Sequence[float]
) -> nib.Nifti1Image:
    """An image in MNI space (sform and qform code 4) with mm and s units."""
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    image = nib.Nifti1Image(data, affine, header)
    image.header.set_zooms(tuple(zooms))
    image.header.set_xyzt_units("mm", "sec")
    # code 4 = MNI 152, as for fMRIPrep's template-space outputs
    image.set_sform(affine, code=4)
    image.set_qform(affine, code=4)
    return image


def volume_image(
    geometry: Geometry, values: np.ndarray, dtype: type = np.float32
) -> nib.Nifti1Image:
    """A 3-D image of a voxel vector, 0 outside the template mask."""
    grid = np.zeros(geometry.shape, dtype=dtype)
    grid[geometry.mask] = values.astype(dtype)
    return mni_image(grid, geometry.affine, (geometry.resolution,) * 3)
