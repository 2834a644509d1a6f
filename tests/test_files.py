"""Atomic, reproducible writes and safe reads."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from laion_fmri_dataloader.io.files import atomic_output, load_image, save_image

WRITE = """
import sys
import numpy as np, nibabel as nib
from laion_fmri_dataloader.io.files import save_image
rng = np.random.default_rng(0)
volume = np.zeros((40, 48, 40), np.float32)
volume[10:30, 10:38, 10:30] = rng.normal(size=(20, 28, 20))
save_image(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), sys.argv[1])
"""


def test_gzip_output_is_byte_identical_across_processes(tmp_path):
    paths = [tmp_path / f"map{i}.nii.gz" for i in range(3)]
    for path in paths:
        subprocess.run([sys.executable, "-c", WRITE, str(path)], check=True)
    contents = {path.read_bytes() for path in paths}
    assert len(contents) == 1
    loaded = load_image(paths[0])
    assert loaded.shape == (40, 48, 40)
    # gzip header: no timestamp, no file name
    header = paths[0].read_bytes()[:10]
    assert header[4:8] == b"\x00\x00\x00\x00" and not header[3] & 0x08


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_outputs_follow_the_umask(tmp_path):
    path = save_image(
        nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)),
        tmp_path / "m.nii.gz",
    )
    mode = stat.S_IMODE(os.stat(path).st_mode)
    current = os.umask(0)
    os.umask(current)
    assert mode == 0o666 & ~current


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float64])
def test_masked_series_reader_equals_nibabel(tmp_path, dtype):
    from laion_fmri_dataloader.io.files import load_masked_series
    from laion_fmri_dataloader.pipeline.participant import masked_timeseries

    rng = np.random.default_rng(1)
    data = (rng.normal(size=(7, 8, 6, 30)) * 100 + 1000).astype(dtype)
    image = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    if dtype is np.int16:
        image.header.set_slope_inter(0.5, 10.0)
    path = save_image(image, tmp_path / "bold.nii.gz")
    mask = rng.random((7, 8, 6)) > 0.4
    expected = masked_timeseries(nib.load(path), mask)
    np.testing.assert_array_equal(load_masked_series(path, mask), expected)
