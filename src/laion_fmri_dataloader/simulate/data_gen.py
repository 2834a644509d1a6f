"""Small fake data for tests and benchmarks, generated in one place.

Where :func:`~laion_fmri_dataloader.simulate.simulate_dataset` writes a realistic
dataset, these make the small inputs that unit tests and benchmarks need: a
run's design matrix and voxel series as arrays, null group effect maps, a NIfTI
image of a voxel array, and a GLM derivative tree with the documented layout.
Every function takes a seed (or a generator) and gives the same data for it.

It lives in the package, not in ``tests/``, so that the tests, the benchmarks
(scripts run from ``benchmarks/``) and user code can import it alike, as
nilearn's ``_utils/data_gen`` is shared by its tests, examples and benchmarks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.contrasts import (
    CONDITIONS,
    STANDARD_CONTRASTS,
    contrast_vector,
)
from laion_fmri_dataloader.io.files import save_image, write_json
from laion_fmri_dataloader.sidecar import (
    CorrectionInfo,
    MapSidecar,
    contrast_info,
    dependency_versions,
    software,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "TREE_AFFINE",
    "TREE_SHAPE",
    "ar1_series",
    "block_design",
    "null_group_effects",
    "standard_contrast_vectors",
    "voxels_as_nifti",
    "write_derivative_tree",
]

#: Grid of the maps of :func:`write_derivative_tree`: 4 mm voxels.
TREE_SHAPE = (9, 11, 9)
TREE_AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
TREE_AFFINE[:3, 3] = [-16.0, -20.0, -16.0]

_N_CONFOUNDS = 9


def block_design(n_volumes: int, tr: float, seed: int) -> pd.DataFrame:
    """Design matrix of a block-design run of the four conditions.

    12 s blocks every 15 s from 6 s on, of the four conditions in random order;
    nine random-walk confounds (``confound_0`` ...) and nilearn's cosine drift
    (0.01 Hz), with the SPM HRF (nilearn's ``make_first_level_design_matrix``).

    Parameters
    ----------
    n_volumes : int
        Number of volumes.
    tr : float
        Repetition time in seconds.
    seed : int
        Seed of the order and the confounds.

    Returns
    -------
    pandas.DataFrame
        (n_volumes, n_regressors), with nilearn's column names.

    Examples
    --------
    >>> list(block_design(120, 2.0, seed=0).columns[:4])
    ['baseline', 'face', 'object', 'scene']
    """
    import pandas as pd
    from nilearn.glm.first_level import make_first_level_design_matrix

    rng = np.random.default_rng(seed)
    frame_times = np.arange(n_volumes) * tr
    onsets = np.arange(6.0, frame_times[-1] - 18, 15.0)
    trial_types = [CONDITIONS[i] for i in rng.permutation(len(onsets)) % 4]
    events = pd.DataFrame(
        {"onset": onsets, "duration": 12.0, "trial_type": trial_types}
    )
    confounds = np.cumsum(rng.standard_normal((n_volumes, _N_CONFOUNDS)), axis=0)
    return make_first_level_design_matrix(
        frame_times,
        events,
        hrf_model="spm",
        drift_model="cosine",
        high_pass=0.01,
        add_regs=confounds,
        add_reg_names=[f"confound_{i}" for i in range(_N_CONFOUNDS)],
    )


def ar1_series(design: pd.DataFrame, n_voxels: int, seed: int) -> np.ndarray:
    """Voxel series of a run: baseline, task effects, drift and AR(1) noise.

    A baseline of 800 to 1200, responses to the four conditions (sd 4) in the
    second half of the voxels only, a linear drift (sd 10 at the ends) and AR(1)
    noise (innovations of sd 8) whose coefficient varies across voxels from
    -0.2 to 0.7.  Computed in float64 (about five times the returned array at
    the peak) and returned as float32.

    Parameters
    ----------
    design : pandas.DataFrame
        A design matrix with a column per condition, from :func:`block_design`.
    n_voxels : int
        Number of voxels.
    seed : int
        Seed of the data.

    Returns
    -------
    numpy.ndarray
        (n_volumes, n_voxels) float32, one volume per row (as nilearn's maskers
        return it).

    Examples
    --------
    >>> ar1_series(block_design(120, 2.0, seed=0), 50, seed=1).shape
    (120, 50)
    """
    rng = np.random.default_rng(seed)
    n_volumes = design.shape[0]
    rho = rng.uniform(-0.2, 0.7, n_voxels)
    # the innovations, turned into the AR(1) noise in place
    noise = rng.standard_normal((n_volumes, n_voxels))
    for scan in range(1, n_volumes):
        noise[scan] += rho * noise[scan - 1]
    amplitude = rng.normal(0, 4, (len(CONDITIONS), n_voxels))
    amplitude[:, : n_voxels // 2] = 0
    drift_size = rng.normal(0, 10, n_voxels)
    baseline = rng.uniform(800, 1200, n_voxels)
    data = design[list(CONDITIONS)].to_numpy() @ amplitude
    data += baseline
    for scan, position in enumerate(np.linspace(-1, 1, n_volumes)):
        data[scan] += position * drift_size
    noise *= 8
    data += noise
    return data.astype(np.float32)


def standard_contrast_vectors(columns: Sequence[str]) -> dict[str, np.ndarray]:
    """The standard contrasts as weight vectors over design-matrix ``columns``.

    Examples
    --------
    >>> standard_contrast_vectors(["face", "scene", "object", "baseline"])[
    ...     "faceVsBaseline"
    ... ].tolist()
    [1.0, 0.0, 0.0, -1.0]
    """
    return {
        name: contrast_vector(contrast, columns)
        for name, contrast in STANDARD_CONTRASTS.items()
    }


def voxels_as_nifti(
    data: np.ndarray, voxel_size: float = 2.0
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """A voxel array as a 4-D image and its mask, on the smallest near-cubic grid.

    Parameters
    ----------
    data : numpy.ndarray
        The series, (n_volumes, n_voxels).
    voxel_size : float
        Voxel size in mm.

    Returns
    -------
    image : nibabel.Nifti1Image
        float32, the voxels in the mask's C order, 0 elsewhere.
    mask : nibabel.Nifti1Image
        int8, 1 on the first ``n_voxels`` voxels of the grid in C order, so
        that a masker returns ``data`` again.

    Examples
    --------
    >>> image, mask = voxels_as_nifti(np.ones((3, 10)))
    >>> image.shape, int(mask.get_fdata().sum())
    ((3, 3, 2, 3), 10)
    """
    n_volumes, n_voxels = data.shape
    side = int(np.ceil(n_voxels ** (1 / 3)))
    shape = (side, side, int(np.ceil(n_voxels / side**2)))
    mask = np.zeros(np.prod(shape), dtype=bool)
    mask[:n_voxels] = True
    mask = mask.reshape(shape)
    volume = np.zeros((*shape, n_volumes), dtype=np.float32)
    volume[mask] = data.T
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    return nib.Nifti1Image(volume, affine), nib.Nifti1Image(
        mask.astype(np.int8), affine
    )


def null_group_effects(
    rng: np.random.Generator,
    n_subjects: int,
    grid: Sequence[int],
    fwhm: float | None = None,
) -> np.ndarray:
    """Standard normal effect maps of a group, optionally smooth in space.

    Parameters
    ----------
    rng : numpy.random.Generator
        Where the noise comes from (one draw of ``(n_subjects, *grid)``).
    n_subjects : int
        Number of maps.
    grid : sequence of int
        Shape of one map; ``(n_voxels,)`` for a vector.
    fwhm : float, optional
        Full width at half maximum of a Gaussian smoothing in voxels, within
        each map; the smoothed maps are scaled to unit variance over all of
        them.  None: white noise.

    Returns
    -------
    numpy.ndarray
        (n_subjects, n_voxels) float64.

    Examples
    --------
    >>> null_group_effects(np.random.default_rng(0), 5, (4, 4, 4), fwhm=2.0).shape
    (5, 64)
    """
    noise = rng.standard_normal((n_subjects, *grid))
    if fwhm is not None:
        from scipy import ndimage

        sigma = fwhm / np.sqrt(8 * np.log(2))
        noise = ndimage.gaussian_filter(noise, sigma=(0, *(sigma,) * len(grid)))
        noise /= noise.std()
    return noise.reshape(n_subjects, -1)


def _write_map(
    root: Path, relative: PurePosixPath, data: np.ndarray, sidecar: MapSidecar
) -> None:
    save_image(nib.Nifti1Image(data.astype(np.float32), TREE_AFFINE), root / relative)
    write_json(sidecar, root / layout.sidecar_of(relative))


def _tree_mask() -> nib.Nifti1Image:
    return nib.Nifti1Image(np.ones(TREE_SHAPE, np.uint8), TREE_AFFINE)


def write_derivative_tree(
    data_dir: str | os.PathLike[str],
    subjects: Sequence[str] = ("01", "02"),
    task: str = "experiment",
    group: bool = True,
) -> Path:
    """Write a small GLM derivative tree with the documented layout.

    Every first-level map of the standard contrasts, the mask, a stand-in
    design-matrix PNG (its signature only) per subject, and (with ``group``)
    every group map and corrected map and the group mask, on a 9 x 11 x 9 grid
    of 4 mm voxels, with valid sidecars; the values are random (seed 0), not a
    fit.

    Parameters
    ----------
    data_dir : str or path-like
        The dataset folder; the tree goes to ``<data_dir>/derivatives/glm``.
    subjects : sequence of str
        Subject labels.
    task : str
        Task label.
    group : bool
        Write the group level too.

    Returns
    -------
    pathlib.Path
        ``data_dir``.
    """
    data_dir = Path(data_dir)
    root = data_dir / layout.DERIVATIVE_SUBDIR
    rng = np.random.default_rng(0)
    for subject in subjects:
        for name, contrast in STANDARD_CONTRASTS.items():
            for stat in layout.FIRST_LEVEL_STAT_TYPES:
                sidecar = MapSidecar(
                    AnalysisLevel="first_level",
                    StatType=stat,
                    Subject=f"sub-{subject}",
                    Task=task,
                    Contrasts={name: contrast_info(contrast, list(CONDITIONS))},
                    Software=software(),
                    Dependencies=dependency_versions(),
                    DegreesOfFreedom=280.0,
                )
                _write_map(
                    root,
                    layout.first_level_map(subject, task, name, stat),
                    rng.normal(size=TREE_SHAPE),
                    sidecar,
                )
        png = root / layout.design_matrix_png(subject, task)
        png.write_bytes(b"\x89PNG\r\n\x1a\n")
        save_image(_tree_mask(), root / layout.first_level_mask(subject, task))
    if group:
        save_image(_tree_mask(), root / layout.group_mask())
        for name, contrast in STANDARD_CONTRASTS.items():
            z_map = rng.normal(size=TREE_SHAPE) * 2
            base = MapSidecar(
                AnalysisLevel="group_level",
                Subjects=[f"sub-{s}" for s in subjects],
                Contrasts={name: contrast_info(contrast, list(CONDITIONS))},
                Software=software(),
                Dependencies=dependency_versions(),
                DegreesOfFreedom=len(subjects) - 1,
            )
            for stat in layout.GROUP_STAT_TYPES:
                sidecar = base.model_copy(update={"StatType": stat})
                _write_map(root, layout.group_map(name, stat), z_map, sidecar)
            for correction in layout.CORRECTIONS:
                corrected = np.where(np.abs(z_map) > 3, z_map, 0)
                sidecar = base.model_copy(
                    update={
                        "StatType": "z",
                        "Correction": CorrectionInfo(
                            Method=correction,
                            Alpha=0.05,
                            ZThreshold=3.0,
                            SmallestSurvivingZ=3.0,
                        ),
                    }
                )
                _write_map(
                    root,
                    layout.group_map(name, correction=correction),
                    corrected,
                    sidecar,
                )
    return data_dir
