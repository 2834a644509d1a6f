"""Simulate a BIDS + fMRIPrep category-localizer dataset with known ground truth.

:func:`simulate_dataset` writes a raw BIDS dataset (events, a small raw BOLD
series, sidecars), an fMRIPrep-like derivative (preprocessed BOLD in
``MNI152NLin2009cAsym``, brain masks, confounds) and the truth under
``derivatives/truth`` (true effect and support of every standard contrast per
subject and for the group, the AR(1) map, the noise level, and every parameter
in ``simulation.json``).  :func:`load_truth` reads the truth back.

Realism choices (what a methods reader should check)
-----------------------------------------------------
Grid and anatomy
    The grid, brain mask, T1 intensity and grey/white-matter probability maps
    are nilearn's bundled MNI152 2009 template (no download), resampled to the
    requested resolution (nearest neighbour for the mask).  nilearn's template
    is the ICBM 2009a nonlinear asymmetric brain, the same family as fMRIPrep's
    ``MNI152NLin2009cAsym``; the files are labelled with the fMRIPrep space.
    Each run's fMRIPrep mask drops a random 1 % of the mask's edge voxels
    (different per run), as brain extraction does from run to run; the BOLD
    series itself covers the whole template mask and is zero outside it
    (a skull-stripped series).
Timing and design
    TR 1.9 s, 160 volumes per run and 12 s without stimuli at the start follow
    the released LAION-fMRI acquisition.  Blocks of ``block_duration`` seconds
    (16 s by default, deliberately not a multiple of the TR) show one category
    each; every cycle shows each category once in an order rotated by run and
    cycle (a Latin square over runs, with a per-subject random base order),
    followed by a fixation block (``trial_type`` ``baseline``).  Only whole
    cycles are used when one fits; at least 12 s of fixation end the run so
    that the last response is sampled.  Fixation is given no response of its
    own (its true effect is zero), so ``faceVsBaseline`` equals the face
    response.
Responses
    Category-selective regions sit at textbook MNI coordinates: FFA
    (±40, -52, -18; right stronger than left), PPA (±26, -44, -10), LO
    (±44, -76, -6), early visual cortex (±10, -90, 0) responding equally to
    every category (so category contrasts are truly null there), EBA
    (±46, -70, 2) when ``body`` is simulated and a left VWFA (-44, -56, -14)
    when ``character`` is simulated; ``scrambled`` drives early visual cortex
    fully and the category regions weakly.  Each region is a smooth plateau
    (a ball of radius 7 mm, 9 mm for early visual cortex, with a smoothstep
    taper of 3 mm to exactly zero: about 1 to 2 cm3 of selective cortex per
    hemisphere once blurred by the voxel grid), so the truth has a sharp
    support.  Per subject each region and hemisphere
    moves by N(0, 3 mm) along each axis and its amplitude is multiplied by a
    log-normal factor (sd 0.15), the same for every category, so contrasts that
    are null in a region stay exactly null.  Responses are weighted by
    ``0.75 + 0.25 * grey-matter probability`` (partial volume with white
    matter).
    ``effect_size`` is the response (percent signal change per unit of the
    SPM-HRF regressor) of a pure grey-matter voxel at the centre of a region to
    its preferred category; other categories respond with a fraction of it
    (e.g. FFA: face 1, object 0.3, scene 0.2; LO: object 1, face and scene 0.5).
Signal model
    Each category's blocks are convolved with the SPM canonical HRF by
    nilearn's ``compute_regressor`` (oversampling 50, so onsets that are not a
    multiple of the TR are exact); volumes are sampled at ``k * TR`` and the
    preprocessed sidecar says ``StartTime`` 0 (fMRIPrep's
    ``--slice-time-ref start``).  Every component is expressed in percent of
    the voxel's mean intensity and the voxel's series is
    ``S0 * (1 + percent / 100)``; regressors are centred within the run, so the
    voxel mean is ``S0`` and an estimate in nilearn's ``signal_scaling=0``
    units (percent of the voxel mean) matches the truth exactly.
Intensity
    ``S0`` is a T2*-weighted-looking mean image derived from the T1 template
    (cerebrospinal fluid brightest, white matter darkest; roughly 500 to 1400)
    times a smooth receive-coil bias field (sd 10 %).
Noise
    Temporally AR(1) with a coefficient that varies smoothly across the brain
    between 0.1 and 0.5 (mean 0.3), driven by innovations smoothed in space with
    a Gaussian of FWHM 1.5 voxels and renormalised to unit variance.  Its
    standard deviation (percent) combines a physiological part that is larger
    in grey matter with a thermal part that scales with voxel volume
    (``0.7 * (4 / resolution) ** 1.5``), so the median temporal SNR
    of a run is about 50 to 75 at 4 mm (voxels range from about 50 to 105)
    and about 40 at 2 mm, as in 3 T EPI.  Scanner drift is a sum
    of the first three discrete-cosine components (periods of at least
    ``2 * run duration / 3``, i.e. frequencies below nilearn's 0.01 Hz
    high-pass, which removes them), about 1 % in amplitude, global plus a
    smooth spatial variation.  A global fluctuation (AR(1), coefficient 0.95,
    sd 0.25 %) is shared by all voxels.
Motion
    Six rigid-body parameters (translations in mm, rotations in radians, as
    fMRIPrep writes them) are smooth random walks (steps of 0.015 mm and
    0.0002 rad per volume) with rare abrupt moves (1 % of volumes: 0.2 to
    0.8 mm, 0.002 to 0.008 rad), starting at zero at the reference volume;
    framewise displacement uses Power's 50 mm head radius.  Motion leaks into
    the signal through a smooth voxel-wise random linear mix of the six
    parameters (about 0.3 % per mm, three times larger at the brain's edge).
Confounds
    ``global_signal``, ``csf`` and ``white_matter`` are computed from the
    written series like fMRIPrep does: the mean over the run's brain mask, over
    an eroded ventricular mask (low grey and white-matter probability, deep in
    the brain) and over a white-matter mask (probability above 0.9); each comes
    with ``_derivative1``, ``_power2`` and ``_derivative1_power2`` columns,
    ``n/a`` in the first row of derivative columns and of
    ``framewise_displacement``.
Null data
    ``null=True`` draws exactly the same random numbers and leaves out the task
    response only, so a null dataset is the noise of the matching non-null one.
Determinism
    Every random number comes from ``numpy.random.Generator`` streams keyed by
    the seed, subject, session and run; smoothing uses fixed kernels, voxel
    sums are written as explicit element-wise arithmetic (no BLAS), and gzip
    is written with a zero timestamp and no file name, so the same seed gives
    byte-identical files with the same numpy, scipy, nilearn and zlib
    versions.  Across CPUs, numpy's vectorised float64 ``exp`` (HRF and
    smooth maps) may differ in the last bit, which can flip the last bit of a
    float32 value; compressed bytes also depend on the zlib build.
Memory
    A run is generated one volume at a time into a single float32 array that
    is written once; the peak is about one run's float32 size plus the
    per-subject maps and a raw series of one sixteenth of that size.  Runs of
    up to 256 MiB are compressed in a background thread while the next run is
    generated (so two such runs may be alive); larger runs are written in turn.

Files
-----
``<task>`` is the task label, ``[_ses-<s>]`` appears with ``sessions > 1``
(runs are numbered 1..``runs`` within each session)::

    dataset_description.json, README, participants.tsv/.json,
    task-<task>_bold.json, task-<task>_events.json
    sub-01/[ses-01/]func/sub-01[_ses-01]_task-<task>_run-1_{bold.nii.gz,bold.json,events.tsv}
    derivatives/fmriprep/dataset_description.json
    derivatives/fmriprep/sub-01/[ses-01/]func/sub-01[_ses-01]_task-<task>_run-1_
        space-MNI152NLin2009cAsym_desc-preproc_bold.{nii.gz,json}
        space-MNI152NLin2009cAsym_desc-brain_mask.{nii.gz,json}
        desc-confounds_timeseries.tsv
    derivatives/truth/simulation.json, dataset_description.json
    derivatives/truth/sub-01/sub-01_task-<task>_contrast-<c>_truth-{effect,mask}.nii.gz
    derivatives/truth/sub-01/sub-01_task-<task>_condition-<category>_truth-effect.nii.gz
    derivatives/truth/sub-01/sub-01_task-<task>_truth-{ar1,noisesd}.nii.gz
    derivatives/truth/group/group_task-<task>_contrast-<c>_truth-{effect,anymask,allmask}.nii.gz

The raw BOLD is the preprocessed series averaged over 2x2x2 voxels and stored
as int16 (a cheap stand-in that keeps the raw dataset valid); analyses should
use the fMRIPrep derivative.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import math
import os
import pathlib
import re
import zlib
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from laion_fmri_dataloader._version import __version__
from laion_fmri_dataloader.contrasts import CONDITIONS, STANDARD_CONTRASTS
from laion_fmri_dataloader.errors import (
    InvalidLabelError,
    InvalidParameterError,
    NotFoundError,
    did_you_mean,
)
from laion_fmri_dataloader.io.files import atomic_output, write_json, write_text
from laion_fmri_dataloader.layout import validate_label

__all__ = [
    "CONTRAST_WEIGHTS",
    "EXTRA_CATEGORIES",
    "SPACE",
    "SimulationConfig",
    "load_truth",
    "simulate_dataset",
]

#: The template space the fMRIPrep-like outputs are labelled with.
SPACE = "MNI152NLin2009cAsym"

#: The standard contrasts (from :mod:`laion_fmri_dataloader.contrasts`), as
#: weights over (face, scene, object, baseline).
CONTRAST_WEIGHTS: dict[str, tuple[float, ...]] = {
    name: tuple(contrast.weights.get(condition, 0.0) for condition in CONDITIONS)
    for name, contrast in STANDARD_CONTRASTS.items()
}

#: Categories that may be added to face, scene and object.
EXTRA_CATEGORIES = ("body", "character", "scrambled")

_CORE_CATEGORIES = ("face", "scene", "object")
_BASELINE = "baseline"
_INITIAL_REST = 12.0  # seconds without stimuli at the start (LAION-fMRI)
_MIN_FINAL_REST = 12.0  # seconds of fixation after the last block
_HEAD_RADIUS = 50.0  # mm, Power et al. (2012) framewise displacement
_SMOOTH_FWHM_VOXELS = 1.5  # spatial smoothness of the noise innovations
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_N_DRIFT_COSINES = 3
_AR1_CENTRE = 0.3  # noise AR(1) coefficient spans centre +- half range
_AR1_HALF_RANGE = 0.2
_GLOBAL_AR1 = 0.95  # slow global fluctuation (respiration, arousal)
_GLOBAL_SD = 0.25  # percent
_OVERLAP_MAX_BYTES = 256 * 2**20  # runs up to this size are written in the background
_GZIP_LEVEL = 1  # nibabel's default; noise does not compress anyway
_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9]+$")
_MAX_RESOLUTION = 8.0


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """All parameters of a simulation (written to ``simulation.json``).

    Parameters
    ----------
    subjects : int
        Number of subjects, labelled ``01``, ``02``, ...
    runs : int
        Number of runs per session.
    resolution : float
        Isotropic voxel size in mm of the MNI grid (2 gives the full-size
        2 mm grid with about 235 000 brain voxels).
    n_volumes : int
        Volumes per run.
    tr : float
        Repetition time in seconds.
    seed : int
        Seed of every random stream.
    effect_size : float
        Response of a pure grey-matter voxel at a region's centre to the
        region's preferred category, in percent signal change per unit
        regressor (nilearn's ``signal_scaling=0`` unit).
    null : bool
        Write the same data without any task response.
    task : str
        BIDS task label.
    sessions : int
        Number of sessions (``ses-01``, ...); 1 writes no session level.
    extra_categories : tuple of str
        Categories added to face, scene and object, from
        :data:`EXTRA_CATEGORIES`.
    block_duration : float
        Duration of a stimulus or fixation block in seconds.
    noise_scale : float
        Multiplies every noise component (AR(1) noise, drift, global signal,
        motion leakage); 0 gives noiseless data, for tests.
    """

    subjects: int = 4
    runs: int = 2
    resolution: float = 4.0
    n_volumes: int = 160
    tr: float = 1.9
    seed: int = 0
    effect_size: float = 2.5
    null: bool = False
    task: str = "experiment"
    sessions: int = 1
    extra_categories: tuple[str, ...] = ()
    block_duration: float = 16.0
    noise_scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_categories", tuple(self.extra_categories))
        for name in ("subjects", "runs", "sessions", "n_volumes", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidParameterError(f"{name} must be an integer; got {value!r}")
        for name in ("subjects", "runs", "sessions"):
            value = getattr(self, name)
            if value < 1:
                raise InvalidParameterError(f"{name} must be >= 1; got {value}")
        if self.seed < 0:
            raise InvalidParameterError(f"seed must be >= 0; got {self.seed}")
        if self.subjects > 99:
            raise InvalidParameterError(f"subjects must be <= 99; got {self.subjects}")
        if not 1.0 <= float(self.resolution) <= _MAX_RESOLUTION:
            raise InvalidParameterError(
                f"resolution must be between 1 and {_MAX_RESOLUTION:g} mm; "
                f"got {self.resolution!r}"
            )
        if self.n_volumes < 10:
            raise InvalidParameterError(
                f"n_volumes must be >= 10; got {self.n_volumes}"
            )
        if not 0.1 <= float(self.tr) <= 10.0:
            raise InvalidParameterError(
                f"tr must be between 0.1 and 10 seconds; got {self.tr!r}"
            )
        if not float(self.effect_size) >= 0.0:
            raise InvalidParameterError(
                f"effect_size must be >= 0 percent; got {self.effect_size!r}"
            )
        if not float(self.noise_scale) >= 0.0:
            raise InvalidParameterError(
                f"noise_scale must be >= 0; got {self.noise_scale!r}"
            )
        if not isinstance(self.task, str) or not _LABEL_PATTERN.match(self.task):
            raise InvalidLabelError(
                f"task must be a BIDS label (letters and digits only); "
                f"got {self.task!r}"
            )
        for category in self.extra_categories:
            if category not in EXTRA_CATEGORIES:
                raise InvalidLabelError(
                    f"extra category {category!r} is not simulated; "
                    + did_you_mean(str(category), EXTRA_CATEGORIES)
                )
        if len(set(self.extra_categories)) != len(self.extra_categories):
            raise InvalidParameterError(
                f"extra_categories must not repeat; got {self.extra_categories!r}"
            )
        if not float(self.block_duration) > 0.0:
            raise InvalidParameterError(
                f"block_duration must be > 0 seconds; got {self.block_duration!r}"
            )
        run_duration = self.n_volumes * self.tr
        needed = _INITIAL_REST + self.block_duration + _MIN_FINAL_REST
        if run_duration < needed:
            raise InvalidParameterError(
                f"a run of {self.n_volumes} volumes x {self.tr:g} s = "
                f"{run_duration:g} s cannot hold {_INITIAL_REST:g} s of rest, one "
                f"{self.block_duration:g} s block and {_MIN_FINAL_REST:g} s of "
                f"fixation; got n_volumes={self.n_volumes}"
            )

    @property
    def categories(self) -> tuple[str, ...]:
        """Stimulus categories in regressor order (without ``baseline``)."""
        return _CORE_CATEGORIES + self.extra_categories

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as JSON-ready values."""
        values = dataclasses.asdict(self)
        values["extra_categories"] = list(self.extra_categories)
        return values


# ---------------------------------------------------------------------------
# Regions of the ground truth


@dataclasses.dataclass(frozen=True)
class _Region:
    name: str
    centre: tuple[float, float, float]  # right hemisphere; left mirrors x
    hemispheres: tuple[str, ...]
    core_radius: float  # mm of full response
    responses: dict[str, float]  # fraction of effect_size per category
    hemisphere_gain: dict[str, float]
    requires: str | None = None  # only simulated with this extra category


_TAPER = 3.0  # mm from full response to exactly zero
_GM_WEIGHT_FLOOR = 0.75  # response of a pure white-matter voxel, relative

_REGIONS = (
    _Region(
        "EVC",
        (10.0, -90.0, 0.0),
        ("L", "R"),
        9.0,
        {c: 1.0 for c in (*_CORE_CATEGORIES, *EXTRA_CATEGORIES)},
        {"L": 1.0, "R": 1.0},
    ),
    _Region(
        "FFA",
        (40.0, -52.0, -18.0),
        ("L", "R"),
        7.0,
        {
            "face": 1.0,
            "scene": 0.2,
            "object": 0.3,
            "body": 0.35,
            "character": 0.3,
            "scrambled": 0.1,
        },
        {"L": 0.8, "R": 1.0},
    ),
    _Region(
        "PPA",
        (26.0, -44.0, -10.0),
        ("L", "R"),
        7.0,
        {
            "face": 0.2,
            "scene": 1.0,
            "object": 0.35,
            "body": 0.2,
            "character": 0.2,
            "scrambled": 0.1,
        },
        {"L": 1.0, "R": 1.0},
    ),
    _Region(
        "LO",
        (44.0, -76.0, -6.0),
        ("L", "R"),
        7.0,
        {
            "face": 0.5,
            "scene": 0.5,
            "object": 1.0,
            "body": 0.6,
            "character": 0.5,
            "scrambled": 0.3,
        },
        {"L": 1.0, "R": 1.0},
    ),
    _Region(
        "EBA",
        (46.0, -70.0, 2.0),
        ("L", "R"),
        7.0,
        {
            "face": 0.35,
            "scene": 0.2,
            "object": 0.35,
            "body": 1.0,
            "character": 0.2,
            "scrambled": 0.1,
        },
        {"L": 0.9, "R": 1.0},
        requires="body",
    ),
    _Region(
        "VWFA",
        (-44.0, -56.0, -14.0),
        ("L",),
        7.0,
        {
            "face": 0.3,
            "scene": 0.2,
            "object": 0.3,
            "body": 0.2,
            "character": 1.0,
            "scrambled": 0.15,
        },
        {"L": 1.0},
        requires="character",
    ),
)


# ---------------------------------------------------------------------------
# Public API


def simulate_dataset(
    output_dir: str | os.PathLike[str],
    *,
    subjects: int = 4,
    runs: int = 2,
    resolution: float = 4.0,
    n_volumes: int = 160,
    tr: float = 1.9,
    seed: int = 0,
    effect_size: float = 2.5,
    null: bool = False,
    task: str = "experiment",
    sessions: int = 1,
    extra_categories: Sequence[str] = (),
    block_duration: float = 16.0,
    noise_scale: float = 1.0,
) -> pathlib.Path:
    """Write a simulated BIDS + fMRIPrep category-localizer dataset.

    Parameters
    ----------
    output_dir : str or path-like
        Folder of the BIDS dataset; created if needed.  Existing simulated
        files are overwritten.
    subjects : int
        Number of subjects (labels ``01``, ``02``, ...).
    runs : int
        Runs per session.
    resolution : float
        Isotropic voxel size of the MNI grid in mm (1 to 8).
    n_volumes : int
        Volumes per run.
    tr : float
        Repetition time in seconds.
    seed : int
        Random seed; the same seed gives byte-identical files.
    effect_size : float
        Response of a region's centre to its preferred category in percent
        signal change per unit regressor (see the module docstring).  The
        default, 2.5 %, is a typical block-design FFA face response at 3 T
        (about 2 % in an average voxel after grey-matter weighting; the
        face-minus-scene difference is 0.8 of it).  With the default noise
        (median temporal SNR 50 to 75 at 4 mm) and two runs, ``faceVsScene`` at
        z > 3.1 finds most true face-selective voxels of one subject (about
        60 %, all of the central ones; the misses are at the taper) without
        being trivially huge.
    null : bool
        Leave the task response out (same noise as the non-null dataset).
    task : str
        BIDS task label.
    sessions : int
        Number of sessions; with more than one, runs go to ``ses-01``, ...
    extra_categories : sequence of str
        Extra stimulus categories from ``('body', 'character', 'scrambled')``.
    block_duration : float
        Block duration in seconds.
    noise_scale : float
        Scale of all noise components; 0 gives noiseless data (for tests).

    Returns
    -------
    pathlib.Path
        ``output_dir``.

    Raises
    ------
    InvalidParameterError
        If a parameter is out of range.
    """
    config = SimulationConfig(
        subjects=subjects,
        runs=runs,
        resolution=float(resolution),
        n_volumes=n_volumes,
        tr=float(tr),
        seed=seed,
        effect_size=float(effect_size),
        null=null,
        task=task,
        sessions=sessions,
        extra_categories=tuple(extra_categories),
        block_duration=float(block_duration),
        noise_scale=float(noise_scale),
    )
    return _simulate(pathlib.Path(output_dir), config)


def load_truth(
    dataset_dir: str | os.PathLike[str],
    subject: str,
    contrast: str,
    *,
    task: str = "experiment",
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Read the true effect and its support for one subject and contrast.

    Parameters
    ----------
    dataset_dir : str or path-like
        The simulated BIDS dataset.
    subject : str
        Subject label, with or without ``sub-`` (``"01"``), or ``"group"``
        for the group truth (effect: mean over subjects; mask: non-zero in
        any subject).
    contrast : str
        One of :data:`CONTRAST_WEIGHTS`.
    task : str
        Task label.

    Returns
    -------
    effect_img : nibabel.Nifti1Image
        True effect in percent signal change per unit regressor.
    mask_img : nibabel.Nifti1Image
        1 where the true effect is non-zero, else 0 (uint8).

    Raises
    ------
    NotFoundError
        If the contrast or subject does not exist.
    InvalidLabelError
        If the subject or task is not a BIDS label.
    """
    if contrast not in CONTRAST_WEIGHTS:
        raise NotFoundError(
            f"contrast {contrast!r} not found; "
            + did_you_mean(contrast, CONTRAST_WEIGHTS)
        )
    truth_dir = pathlib.Path(dataset_dir) / "derivatives" / "truth"
    label = validate_label(str(subject).removeprefix("sub-"), "subject")
    validate_label(task, "task")
    if label == "group":
        effect_path = (
            truth_dir / "group" / _truth_name("group", task, contrast, "effect")
        )
        mask_path = (
            truth_dir / "group" / _truth_name("group", task, contrast, "anymask")
        )
    else:
        folder = truth_dir / f"sub-{label}"
        effect_path = folder / _truth_name(f"sub-{label}", task, contrast, "effect")
        mask_path = folder / _truth_name(f"sub-{label}", task, contrast, "mask")
    if not effect_path.exists() or not mask_path.exists():
        available = sorted(p.name for p in truth_dir.glob("sub-*") if p.is_dir())
        raise NotFoundError(
            f"no truth for subject {subject!r}, task {task!r} and contrast "
            f"{contrast!r} in {truth_dir}; " + did_you_mean(f"sub-{label}", available)
        )
    return nib.load(effect_path), nib.load(mask_path)


# ---------------------------------------------------------------------------
# File names (one place)


def _entities(subject: str, session: str | None, task: str, run: int | None) -> str:
    parts = [f"sub-{subject}"]
    if session is not None:
        parts.append(f"ses-{session}")
    parts.append(f"task-{task}")
    if run is not None:
        parts.append(f"run-{run}")
    return "_".join(parts)


def _func_dir(root: pathlib.Path, subject: str, session: str | None) -> pathlib.Path:
    folder = root / f"sub-{subject}"
    if session is not None:
        folder = folder / f"ses-{session}"
    return folder / "func"


def _truth_name(prefix: str, task: str, contrast: str | None, kind: str) -> str:
    """Name a truth file.

    >>> _truth_name("sub-01", "experiment", "faceVsScene", "effect")
    'sub-01_task-experiment_contrast-faceVsScene_truth-effect.nii.gz'
    """
    middle = f"_contrast-{contrast}" if contrast is not None else ""
    return f"{prefix}_task-{task}{middle}_truth-{kind}.nii.gz"


# ---------------------------------------------------------------------------
# Geometry and per-subject maps (arrays in, arrays out)


@dataclasses.dataclass
class _Geometry:
    affine: np.ndarray
    shape: tuple[int, int, int]
    mask: np.ndarray  # bool, grid shape
    coords: np.ndarray  # (n_vox, 3) mm
    t1: np.ndarray  # (n_vox,) template intensity in [0, 1]
    gm: np.ndarray  # (n_vox,) grey-matter probability
    wm: np.ndarray
    edge_distance: np.ndarray  # (n_vox,) mm to the outside of the mask
    csf_index: np.ndarray  # indices into the voxel vector
    wm_index: np.ndarray
    edge_index: np.ndarray  # voxels on the mask's boundary
    bbox: tuple[slice, slice, slice]  # grid box holding the mask plus a margin
    bbox_mask: np.ndarray  # mask within the box


def _load_templates(resolution: float) -> dict[str, nib.Nifti1Image]:
    from nilearn import datasets
    from nilearn.image import resample_img

    loaders = {
        "mask": datasets.load_mni152_brain_mask,
        "t1": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
    }
    if float(resolution).is_integer():
        return {key: load(resolution=int(resolution)) for key, load in loaders.items()}
    # nilearn resamples only to whole millimetres; other sizes resample here
    images = {key: load() for key, load in loaders.items()}
    source = images["mask"]
    extent = np.array(source.shape) * np.abs(np.diag(source.affine)[:3])
    target_shape = tuple(int(n) for n in np.ceil(extent / resolution))
    target_affine = source.affine.copy()
    target_affine[:3, :3] = np.diag(np.sign(np.diag(source.affine)[:3]) * resolution)
    return {
        key: resample_img(
            image,
            target_affine=target_affine,
            target_shape=target_shape,
            interpolation="nearest" if key == "mask" else "continuous",
            force_resample=True,
            copy_header=True,
        )
        for key, image in images.items()
    }


@functools.lru_cache(maxsize=2)
def _make_geometry(resolution: float) -> _Geometry:
    # cached: loading and resampling the templates takes about a second, and
    # the arrays are only read afterwards
    images = _load_templates(resolution)
    mask = np.asarray(images["mask"].dataobj) > 0
    affine = images["mask"].affine.copy()
    ijk = np.argwhere(mask)  # C order, the same as mask indexing
    coords = ijk @ affine[:3, :3].T + affine[:3, 3]

    def _values(key: str) -> np.ndarray:
        data = np.asarray(images[key].dataobj, dtype=np.float64)
        data = data / max(float(data.max()), 1e-12)
        return np.clip(data[mask], 0.0, 1.0)

    t1, gm, wm = _values("t1"), _values("gm"), _values("wm")
    edge_distance = ndimage.distance_transform_edt(mask)[mask] * resolution
    # ventricles: neither grey nor white matter, well inside the brain
    csf_index = np.flatnonzero((gm < 0.2) & (wm < 0.2) & (edge_distance > 20.0))
    if csf_index.size < 5:
        csf_index = np.argsort(t1 + (edge_distance < 20.0), kind="stable")[:20]
    wm_core = wm > 0.9
    eroded = np.zeros(mask.shape, dtype=bool)
    eroded[mask] = wm_core
    eroded = ndimage.binary_erosion(eroded)[mask]
    wm_index = np.flatnonzero(eroded if eroded.sum() >= 20 else wm_core)
    boundary = mask & ~ndimage.binary_erosion(mask)
    edge_index = np.flatnonzero(boundary[mask])
    margin = math.ceil(4 * _SMOOTH_FWHM_VOXELS * _FWHM_TO_SIGMA) + 1
    lower = np.maximum(ijk.min(axis=0) - margin, 0)
    upper = np.minimum(ijk.max(axis=0) + margin + 1, mask.shape)
    bbox = tuple(slice(int(a), int(b)) for a, b in zip(lower, upper, strict=True))
    return _Geometry(
        affine=affine,
        shape=mask.shape,
        mask=mask,
        coords=coords,
        t1=t1,
        gm=gm,
        wm=wm,
        edge_distance=edge_distance,
        csf_index=csf_index,
        wm_index=wm_index,
        edge_index=edge_index,
        bbox=bbox,
        bbox_mask=mask[bbox],
    )


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Return a normalised 1-D Gaussian kernel (sigma in voxels)."""
    # math.exp keeps the weights identical on every CPU (no SIMD variants)
    radius = max(math.ceil(truncate * sigma), 1)
    weights = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    total = math.fsum(weights)
    return np.array([w / total for w in weights], dtype=np.float64)


def _smooth(volume: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    for axis in range(volume.ndim):
        volume = ndimage.correlate1d(volume, kernel, axis=axis, mode="reflect")
    return volume


def _smooth_field(
    rng: np.random.Generator, geometry: _Geometry, sigma_mm: float, size: int = 1
) -> np.ndarray:
    """Draw smooth Gaussian random fields, unit sd over the mask, (size, n_vox)."""
    kernel = _gaussian_kernel(sigma_mm / float(abs(geometry.affine[0, 0])))
    box_shape = geometry.bbox_mask.shape
    fields = np.empty((size, int(geometry.mask.sum())), dtype=np.float64)
    for index in range(size):
        white = rng.standard_normal(box_shape)
        values = _smooth(white, kernel)[geometry.bbox_mask]
        values = values - values.mean()
        fields[index] = values / max(float(values.std()), 1e-12)
    return fields


def _profile(distance: np.ndarray, core_radius: float) -> np.ndarray:
    """Plateau of 1 within ``core_radius`` mm, smoothstep taper to exactly 0."""
    s = np.clip((distance - core_radius) / _TAPER, 0.0, 1.0)
    return 1.0 - s * s * (3.0 - 2.0 * s)


def _active_regions(config: SimulationConfig) -> list[_Region]:
    return [
        region
        for region in _REGIONS
        if region.requires is None or region.requires in config.extra_categories
    ]


def _subject_maps(
    config: SimulationConfig, geometry: _Geometry, subject_index: int
) -> dict[str, Any]:
    """Per-subject maps: responses, contrasts, AR(1), noise sd, S0, leak, drift."""
    rng = np.random.default_rng([config.seed, 1, subject_index])
    n_vox = geometry.coords.shape[0]
    categories = config.categories
    gm_weight = _GM_WEIGHT_FLOOR + (1.0 - _GM_WEIGHT_FLOOR) * geometry.gm
    responses = np.zeros((len(categories), n_vox), dtype=np.float64)
    contrast_effects = {name: np.zeros(n_vox) for name in CONTRAST_WEIGHTS}
    placed = []
    active = _active_regions(config)
    # jitter is drawn for every region so that the streams do not depend on
    # which extra categories or null were asked for
    for region in _REGIONS:
        for hemisphere in ("L", "R"):
            shift = rng.normal(0.0, 3.0, size=3)
            gain = math.exp(rng.normal(0.0, 0.15))
            if hemisphere not in region.hemispheres or region not in active:
                continue
            centre = np.array(region.centre, dtype=np.float64)
            if hemisphere == "L":
                centre[0] = -abs(centre[0])
            else:
                centre[0] = abs(centre[0])
            centre = centre + shift
            amplitude = config.effect_size * gain * region.hemisphere_gain[hemisphere]
            distance = np.sqrt(((geometry.coords - centre) ** 2).sum(axis=1))
            shape = _profile(distance, region.core_radius) * gm_weight
            for index, category in enumerate(categories):
                responses[index] += amplitude * region.responses[category] * shape
            for name, weights in CONTRAST_WEIGHTS.items():
                # per region, so that a contrast null in a region is exactly 0
                # fixation (baseline) has no response of its own
                net = sum(
                    weight * region.responses.get(condition, 0.0)
                    for weight, condition in zip(weights, CONDITIONS, strict=True)
                    if condition != _BASELINE
                )
                if net != 0.0:
                    contrast_effects[name] += amplitude * net * shape
            placed.append(
                {
                    "region": region.name,
                    "hemisphere": hemisphere,
                    "centre_mm": [round(float(x), 3) for x in centre],
                    "amplitude_percent": round(amplitude, 6),
                    "core_radius_mm": region.core_radius,
                    "taper_mm": _TAPER,
                    "responses": {c: region.responses[c] for c in categories},
                }
            )
    ar_field, bias_field, global_field, *leak_fields = _smooth_field(
        rng, geometry, 12.0, size=3 + 6
    )
    drift_fields = _smooth_field(rng, geometry, 25.0, size=_N_DRIFT_COSINES)
    ar1 = _AR1_CENTRE + _AR1_HALF_RANGE * ar_field / np.sqrt(1.0 + ar_field**2)
    thermal = 0.7 * (4.0 / config.resolution) ** 1.5
    physiological = 0.8 * (0.5 + 0.7 * geometry.gm)
    noise_sd = np.sqrt(physiological**2 + thermal**2)
    s0 = (450.0 + 900.0 * (1.0 - geometry.t1)) * (1.0 + 0.1 * bias_field)
    edge_gain = 1.0 + 2.0 * np.exp(-geometry.edge_distance / 6.0)
    leak = 0.3 * np.asarray(leak_fields) * edge_gain  # percent per mm
    global_loading = 0.8 + 0.2 * global_field
    if config.null:
        responses[:] = 0.0
        contrast_effects = {name: np.zeros(n_vox) for name in CONTRAST_WEIGHTS}
    return {
        "responses": responses.astype(np.float32),
        "contrasts": contrast_effects,
        "ar1": ar1.astype(np.float32),
        "noise_sd": noise_sd.astype(np.float32),
        "s0": s0.astype(np.float32),
        "leak": leak.astype(np.float32),
        "global_loading": global_loading.astype(np.float32),
        "drift_fields": drift_fields.astype(np.float32),
        "regions": placed,
    }


# ---------------------------------------------------------------------------
# Design, motion and confounds (arrays in, arrays out)


def _block_sequence(
    config: SimulationConfig, base_order: Sequence[str], run_index: int
) -> list[tuple[float, float, str]]:
    """Return ``(onset, duration, trial_type)`` blocks of one run (seconds)."""
    n_categories = len(base_order)
    cycle = n_categories + 1
    available = config.n_volumes * config.tr - _INITIAL_REST - _MIN_FINAL_REST
    n_blocks = math.floor(available / config.block_duration + 1e-9)
    if n_blocks >= cycle:
        n_blocks -= n_blocks % cycle
    blocks = []
    for index in range(n_blocks):
        cycle_index, position = divmod(index, cycle)
        if position == n_categories:
            trial_type = _BASELINE
        else:
            shift = (run_index + cycle_index) % n_categories
            trial_type = base_order[(position + shift) % n_categories]
        onset = _INITIAL_REST + index * config.block_duration
        blocks.append((onset, config.block_duration, trial_type))
    return blocks


def _regressors(
    config: SimulationConfig, blocks: Sequence[tuple[float, float, str]]
) -> np.ndarray:
    """Centred SPM-HRF regressors, (n_volumes, n_categories + 1), baseline last."""
    from nilearn.glm.first_level import compute_regressor

    frame_times = np.arange(config.n_volumes) * config.tr
    names = [*config.categories, _BASELINE]
    columns = np.zeros((config.n_volumes, len(names)))
    for index, name in enumerate(names):
        own = [(onset, duration) for onset, duration, kind in blocks if kind == name]
        if not own:
            continue
        condition = np.array(
            [[o for o, _ in own], [d for _, d in own], [1.0] * len(own)]
        )
        regressor, _ = compute_regressor(condition, "spm", frame_times, oversampling=50)
        columns[:, index] = regressor[:, 0]
    return columns - columns.mean(axis=0)


def _motion(rng: np.random.Generator, n_volumes: int) -> np.ndarray:
    """Rigid-body parameters (n_volumes, 6): trans_x..z in mm, rot_x..z in rad."""
    steps = np.empty((n_volumes, 6))
    steps[:, :3] = rng.normal(0.0, 0.015, size=(n_volumes, 3))
    steps[:, 3:] = rng.normal(0.0, 0.0002, size=(n_volumes, 3))
    moves = rng.random(n_volumes) < 0.01
    sizes = rng.uniform(0.2, 0.8, size=(n_volumes, 3)) * rng.choice(
        [-1.0, 1.0], size=(n_volumes, 3)
    )
    angles = rng.uniform(0.002, 0.008, size=(n_volumes, 3)) * rng.choice(
        [-1.0, 1.0], size=(n_volumes, 3)
    )
    steps[moves, :3] += sizes[moves]
    steps[moves, 3:] += angles[moves]
    steps[0] = 0.0
    return np.cumsum(steps, axis=0)


def _framewise_displacement(motion: np.ndarray) -> np.ndarray:
    delta = np.abs(np.diff(motion, axis=0))
    fd = delta[:, :3].sum(axis=1) + _HEAD_RADIUS * delta[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])


def _confound_columns(
    signals: dict[str, np.ndarray], motion: np.ndarray
) -> dict[str, np.ndarray]:
    """fMRIPrep-named confound columns (NaN where fMRIPrep writes ``n/a``)."""

    def _expand(name: str, values: np.ndarray) -> dict[str, np.ndarray]:
        derivative = np.concatenate([[np.nan], np.diff(values)])
        return {
            name: values,
            f"{name}_derivative1": derivative,
            f"{name}_derivative1_power2": derivative**2,
            f"{name}_power2": values**2,
        }

    columns: dict[str, np.ndarray] = {}
    for name in ("global_signal", "csf", "white_matter"):
        columns.update(_expand(name, signals[name]))
    columns["framewise_displacement"] = _framewise_displacement(motion)
    for index, name in enumerate(
        ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
    ):
        columns.update(_expand(name, motion[:, index]))
    return columns


def _cosine_basis(n_volumes: int, n_cosines: int) -> np.ndarray:
    """The first DCT-II components (nilearn's cosine drift), peak 1."""
    return np.array(
        [
            [
                math.cos(math.pi / n_volumes * (t + 0.5) * k)
                for k in range(1, n_cosines + 1)
            ]
            for t in range(n_volumes)
        ]
    )


def _weighted_sum(weights: np.ndarray, maps: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out += sum_k weights[k] * maps[k]``, element-wise for exact repeatability."""
    for weight, values in zip(weights, maps, strict=True):
        if weight != 0.0:
            out += np.float32(weight) * values
    return out


def _simulate_run(
    config: SimulationConfig,
    geometry: _Geometry,
    maps: dict[str, Any],
    regressors: np.ndarray,
    motion: np.ndarray,
    rng: np.random.Generator,
    dropped_index: np.ndarray,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Generate one run volume by volume.

    Returns the 4-D float32 series (Fortran order, so each volume is contiguous
    and nibabel writes it without a copy) and the global, csf and white-matter
    mean signals.
    """
    n_volumes = config.n_volumes
    scale = config.noise_scale
    n_cosines = min(_N_DRIFT_COSINES, math.floor(2 * n_volumes * config.tr * 0.01))
    cosines = _cosine_basis(n_volumes, _N_DRIFT_COSINES)
    drift_global = rng.normal(0.0, 1.0, size=_N_DRIFT_COSINES)
    drift_spatial = rng.normal(0.0, 0.5, size=_N_DRIFT_COSINES)
    drift_global[n_cosines:] = 0.0
    drift_spatial[n_cosines:] = 0.0
    global_course = np.empty(n_volumes)
    global_innovations = rng.standard_normal(n_volumes)
    global_course[0] = global_innovations[0]
    for t in range(1, n_volumes):
        global_course[t] = (
            _GLOBAL_AR1 * global_course[t - 1]
            + math.sqrt(1 - _GLOBAL_AR1**2) * global_innovations[t]
        )
    global_course *= _GLOBAL_SD
    motion_mm = motion.copy()
    motion_mm[:, 3:] *= _HEAD_RADIUS  # rotations as displacement at the cortex
    motion_mm -= motion_mm.mean(axis=0)

    ar1 = maps["ar1"]
    innovation_gain = np.sqrt(1.0 - ar1 * ar1).astype(np.float32)
    noise_sd = maps["noise_sd"] * np.float32(scale)
    s0 = maps["s0"]
    s0_percent = s0 / np.float32(100.0)
    # 3 sigma: the next weight would be 1e-5 of the centre, and 5 taps instead
    # of 7 make the smoothing of every volume a third cheaper
    kernel = _gaussian_kernel(
        _SMOOTH_FWHM_VOXELS * _FWHM_TO_SIGMA, truncate=3.0
    ).astype(np.float32)
    # white noise smoothed by a separable kernel has variance (sum w^2)^3
    renormalise = np.float32(
        1.0 / math.sqrt(math.fsum(float(w) ** 2 for w in kernel) ** 3)
    )
    responses = maps["responses"]
    leak = maps["leak"]
    drift_maps = maps["drift_fields"]
    global_loading = maps["global_loading"]

    data = np.zeros((*geometry.shape, n_volumes), dtype=np.float32, order="F")
    # positions of the mask voxels (C enumeration) within a Fortran-ordered volume
    flat_index = np.ravel_multi_index(
        np.nonzero(geometry.mask), geometry.shape, order="F"
    )
    signals = {
        name: np.empty(n_volumes) for name in ("global_signal", "csf", "white_matter")
    }
    n_vox = responses.shape[1]
    n_kept = n_vox - dropped_index.size
    # deviations from S0 (tens) keep float32 sums of squares exact enough
    total = np.zeros(n_vox, dtype=np.float32)
    total_squares = np.zeros(n_vox, dtype=np.float32)
    box_shape = geometry.bbox_mask.shape
    state = None
    percent = np.empty(n_vox, dtype=np.float32)
    for t in range(n_volumes):
        white = rng.standard_normal(box_shape, dtype=np.float32)
        innovation = _smooth(white, kernel)[geometry.bbox_mask]
        innovation *= renormalise
        if state is None:
            state = innovation
        else:
            state *= ar1
            state += innovation_gain * innovation
        percent[:] = 0.0
        _weighted_sum(regressors[t, : responses.shape[0]], responses, percent)
        if scale > 0.0:
            percent += noise_sd * state
            drift_here = cosines[t] * drift_global
            percent += np.float32(scale * drift_here.sum())
            _weighted_sum(scale * cosines[t] * drift_spatial, drift_maps, percent)
            _weighted_sum(scale * motion_mm[t], leak, percent)
            percent += np.float32(scale * global_course[t]) * global_loading
        deviation = s0_percent * percent
        volume_values = s0 + deviation
        data[..., t].ravel(order="K")[flat_index] = volume_values
        total += deviation
        total_squares += deviation * deviation
        brain_sum = volume_values.sum(dtype=np.float64)
        dropped_sum = volume_values[dropped_index].sum(dtype=np.float64)
        signals["global_signal"][t] = (brain_sum - dropped_sum) / n_kept
        signals["csf"][t] = volume_values[geometry.csf_index].mean(dtype=np.float64)
        signals["white_matter"][t] = volume_values[geometry.wm_index].mean(
            dtype=np.float64
        )
    mean_deviation = total / np.float32(n_volumes)
    variance = (total_squares / np.float32(n_volumes) - mean_deviation**2) * (
        n_volumes / (n_volumes - 1)
    )
    signals["temporal_snr"] = (s0 + mean_deviation) / np.sqrt(
        np.maximum(variance, 1e-12)
    )
    return data, signals


def _downsample_raw(data: np.ndarray) -> np.ndarray:
    """Average 2x2x2 blocks volume by volume into an int16 'raw' series."""
    nx, ny, nz, n_volumes = data.shape
    mx, my, mz = nx // 2, ny // 2, nz // 2
    raw = np.zeros((mx, my, mz, n_volumes), dtype=np.int16, order="F")
    block = np.empty((mx, my, mz), dtype=np.float32, order="F")
    for t in range(n_volumes):
        volume = data[..., t]
        # the eight strided corners of each 2x2x2 block, summed without a copy
        block[:] = 0.0
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    block += volume[dx : 2 * mx : 2, dy : 2 * my : 2, dz : 2 * mz : 2]
        raw[..., t] = np.rint(block * np.float32(0.125))
    return raw


# ---------------------------------------------------------------------------
# Writers


def _write_json(path: pathlib.Path, content: dict[str, Any]) -> None:
    write_json(content, path)


def _format_number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return repr(float(value))


def _write_tsv(path: pathlib.Path, columns: dict[str, Sequence[Any]]) -> None:
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


def _write_nifti(path: pathlib.Path, image: nib.Nifti1Image) -> None:
    """Write a .nii.gz deterministically (zero gzip timestamp, no file name)."""
    # Streamed, not files.save_image: a 4D run must not be copied whole to bytes.
    with atomic_output(path) as temporary, open(temporary, "wb") as raw_file:
        stream = _GzipWriter(raw_file)
        image.to_file_map({"image": nib.FileHolder(fileobj=stream)})
        stream.close()


def _image(
    data: np.ndarray, affine: np.ndarray, zooms: Sequence[float]
) -> nib.Nifti1Image:
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    image = nib.Nifti1Image(data, affine, header)
    image.header.set_zooms(tuple(zooms))
    image.header.set_xyzt_units("mm", "sec")
    # code 4 = MNI 152, as for fMRIPrep's template-space outputs
    image.set_sform(affine, code=4)
    image.set_qform(affine, code=4)
    return image


def _volume_image(
    geometry: _Geometry, values: np.ndarray, dtype: type = np.float32
) -> nib.Nifti1Image:
    grid = np.zeros(geometry.shape, dtype=dtype)
    grid[geometry.mask] = values.astype(dtype)
    resolution = float(abs(geometry.affine[0, 0]))
    return _image(grid, geometry.affine, (resolution,) * 3)


# ---------------------------------------------------------------------------
# The whole dataset


def _simulate(root: pathlib.Path, config: SimulationConfig) -> pathlib.Path:
    root.mkdir(parents=True, exist_ok=True)
    geometry = _make_geometry(config.resolution)
    fmriprep = root / "derivatives" / "fmriprep"
    truth_dir = root / "derivatives" / "truth"
    subject_labels = [f"{index + 1:02d}" for index in range(config.subjects)]
    session_labels: list[str | None] = (
        [None]
        if config.sessions == 1
        else [f"{index + 1:02d}" for index in range(config.sessions)]
    )
    _write_top_level(root, fmriprep, truth_dir, config, subject_labels)

    resolution = config.resolution
    pending: concurrent.futures.Future | None = None
    truth_subjects: dict[str, Any] = {}
    group_effects = {name: [] for name in CONTRAST_WEIGHTS}
    # a writer thread; leaving the block waits for it, also after an error
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer:
        for subject_index, subject in enumerate(subject_labels):
            maps = _subject_maps(config, geometry, subject_index)
            order_rng = np.random.default_rng([config.seed, 2, subject_index])
            base_order = [
                config.categories[i]
                for i in order_rng.permutation(len(config.categories))
            ]
            runs_written = []
            for session_index, session in enumerate(session_labels):
                for run in range(1, config.runs + 1):
                    run_index = session_index * config.runs + (run - 1)
                    rng = np.random.default_rng(
                        [config.seed, 3, subject_index, session_index, run]
                    )
                    blocks = _block_sequence(config, base_order, run_index)
                    regressors = _regressors(config, blocks)
                    motion = _motion(rng, config.n_volumes)
                    dropped = rng.random(geometry.edge_index.size) < 0.01
                    keep = np.ones(geometry.coords.shape[0], dtype=bool)
                    keep[geometry.edge_index[dropped]] = False
                    data, signals = _simulate_run(
                        config,
                        geometry,
                        maps,
                        regressors,
                        motion,
                        rng,
                        geometry.edge_index[dropped],
                    )
                    arguments = (
                        root,
                        fmriprep,
                        config,
                        geometry,
                        subject,
                        session,
                        run,
                    )
                    arguments += (blocks, data, signals, motion, keep)
                    if pending is not None:
                        pending.result()
                        pending = None
                    if data.nbytes <= _OVERLAP_MAX_BYTES:
                        # compressing this run overlaps with generating the next;
                        # at most two small runs are alive at once
                        pending = writer.submit(_write_run, *arguments)
                    else:
                        _write_run(*arguments)
                    del data, arguments
                    runs_written.append(
                        {
                            "session": session,
                            "run": run,
                            "blocks": [list(block) for block in blocks],
                            "n_mask_voxels_dropped": int(dropped.sum()),
                            "median_temporal_snr": round(
                                float(np.median(signals["temporal_snr"])), 3
                            ),
                            "mean_framewise_displacement_mm": round(
                                float(np.nanmean(_framewise_displacement(motion))), 6
                            ),
                        }
                    )
            _write_subject_truth(truth_dir, config, geometry, subject, maps)
            for name in CONTRAST_WEIGHTS:
                group_effects[name].append(maps["contrasts"][name])
            truth_subjects[f"sub-{subject}"] = {
                "regions": maps["regions"],
                "category_order": base_order,
                "runs": runs_written,
            }
        if pending is not None:
            pending.result()
    _write_group_truth(truth_dir, config, geometry, group_effects)
    _write_json(
        truth_dir / "simulation.json",
        {
            "GeneratedBy": {"Name": "laion-fmri-glm simulate", "Version": __version__},
            "parameters": config.to_dict(),
            "fixed": {
                "space": SPACE,
                "resolution_mm": resolution,
                "grid_shape": list(geometry.shape),
                "n_brain_voxels": int(geometry.mask.sum()),
                "initial_rest_s": _INITIAL_REST,
                "min_final_rest_s": _MIN_FINAL_REST,
                "hrf_model": "spm",
                "oversampling": 50,
                "slice_time_reference_s": 0.0,
                "noise_innovation_fwhm_voxels": _SMOOTH_FWHM_VOXELS,
                "ar1_range": [
                    _AR1_CENTRE - _AR1_HALF_RANGE,
                    _AR1_CENTRE + _AR1_HALF_RANGE,
                ],
                "thermal_noise_sd_percent": 0.7 * (4.0 / resolution) ** 1.5,
                "drift_cosines": _N_DRIFT_COSINES,
                "global_signal_ar1": _GLOBAL_AR1,
                "global_signal_sd_percent": _GLOBAL_SD,
                "head_radius_mm": _HEAD_RADIUS,
                "effect_unit": "percent signal change per unit regressor "
                "(nilearn signal_scaling=0)",
            },
            "categories": [*config.categories, _BASELINE],
            "contrasts": {name: list(w) for name, w in CONTRAST_WEIGHTS.items()},
            "contrast_weight_order": list(CONDITIONS),
            "subjects": truth_subjects,
        },
    )
    return root


def _write_top_level(
    root: pathlib.Path,
    fmriprep: pathlib.Path,
    truth_dir: pathlib.Path,
    config: SimulationConfig,
    subject_labels: Sequence[str],
) -> None:
    generated_by = {
        "Name": "laion-fmri-glm simulate",
        "Version": __version__,
        "Description": "Simulated category localizer with known ground truth",
    }
    _write_json(
        root / "dataset_description.json",
        {
            "Name": "Simulated LAION-fMRI category localizer",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["laion-fmri-glm simulate"],
            "GeneratedBy": [generated_by],
        },
    )
    readme = (
        "Simulated category-localizer dataset written by `laion-fmri-glm simulate`.\n\n"
        "The BOLD data are synthetic. derivatives/fmriprep holds an fMRIPrep-like\n"
        "preprocessed series in MNI152NLin2009cAsym space with brain masks and\n"
        "confounds; derivatives/truth holds the true effect of every standard\n"
        "contrast per subject and for the group, and simulation.json lists every\n"
        "parameter of the simulation.\n"
    )
    write_text(readme, root / "README")
    rng = np.random.default_rng([config.seed, 0])
    ages = rng.integers(19, 41, size=len(subject_labels))
    sexes = rng.choice(["F", "M"], size=len(subject_labels))
    _write_tsv(
        root / "participants.tsv",
        {
            "participant_id": [f"sub-{label}" for label in subject_labels],
            "age": [str(int(age)) for age in ages],
            "sex": [str(sex) for sex in sexes],
        },
    )
    _write_json(
        root / "participants.json",
        {
            "age": {"Description": "age of the participant", "Units": "year"},
            "sex": {
                "Description": "sex of the participant",
                "Levels": {"F": "female", "M": "male"},
            },
        },
    )
    _write_json(
        root / f"task-{config.task}_bold.json",
        {
            "RepetitionTime": config.tr,
            "TaskName": config.task,
            "TaskDescription": "Category localizer: blocks of images of one "
            "category alternate with fixation blocks.",
            "Instructions": "Keep your eyes on the central fixation dot and "
            "press a button when an image repeats.",
            "MagneticFieldStrength": 3,
            "MRAcquisitionType": "2D",
            "PulseSequenceType": "Gradient Echo EPI",
            "EchoTime": 0.03,
            "FlipAngle": 75,
            "PhaseEncodingDirection": "j-",
        },
    )
    levels = {category: f"block of {category} images" for category in config.categories}
    levels[_BASELINE] = "fixation block"
    _write_json(
        root / f"task-{config.task}_events.json",
        {
            "onset": {"Description": "block onset", "Units": "s"},
            "duration": {"Description": "block duration", "Units": "s"},
            "trial_type": {"Description": "stimulus category", "Levels": levels},
        },
    )
    _write_json(
        fmriprep / "dataset_description.json",
        {
            "Name": "fMRIPrep - fMRI PREProcessing workflow",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "fMRIPrep",
                    "Version": "23.2.1",
                    "CodeURL": "https://github.com/nipreps/fmriprep",
                    "Description": "simulated by laion-fmri-glm simulate",
                }
            ],
            "SourceDatasets": [{"URL": "../../"}],
        },
    )
    _write_json(
        truth_dir / "dataset_description.json",
        {
            "Name": "Ground truth of the simulated dataset",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [generated_by],
            "SourceDatasets": [{"URL": "../../"}],
        },
    )


def _write_run(
    root: pathlib.Path,
    fmriprep: pathlib.Path,
    config: SimulationConfig,
    geometry: _Geometry,
    subject: str,
    session: str | None,
    run: int,
    blocks: Sequence[tuple[float, float, str]],
    data: np.ndarray,
    signals: dict[str, np.ndarray],
    motion: np.ndarray,
    keep: np.ndarray,
) -> None:
    stem = _entities(subject, session, config.task, run)
    raw_dir = _func_dir(root, subject, session)
    resolution = config.resolution
    _write_tsv(
        raw_dir / f"{stem}_events.tsv",
        {
            "onset": [onset for onset, _, _ in blocks],
            "duration": [duration for _, duration, _ in blocks],
            "trial_type": [kind for _, _, kind in blocks],
        },
    )
    raw = _downsample_raw(data)
    raw_affine = geometry.affine.copy()
    raw_affine[:3, :3] *= 2.0
    raw_affine[:3, 3] += 0.5 * np.diag(geometry.affine)[:3]  # block centres
    raw_image = _image(raw, raw_affine, (2 * resolution,) * 3 + (config.tr,))
    raw_image.set_sform(raw_affine, code=1)  # scanner space
    raw_image.set_qform(raw_affine, code=1)
    _write_nifti(raw_dir / f"{stem}_bold.nii.gz", raw_image)
    n_slices = raw.shape[2]
    _write_json(
        raw_dir / f"{stem}_bold.json",
        {
            "RepetitionTime": config.tr,
            "TaskName": config.task,
            "SliceTiming": [
                round(i * config.tr / n_slices, 6) for i in range(n_slices)
            ],
        },
    )
    del raw

    func_dir = _func_dir(fmriprep, subject, session)
    preproc = _image(data, geometry.affine, (resolution,) * 3 + (config.tr,))
    _write_nifti(func_dir / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz", preproc)
    _write_json(
        func_dir / f"{stem}_space-{SPACE}_desc-preproc_bold.json",
        {
            "RepetitionTime": config.tr,
            "TaskName": config.task,
            "SkullStripped": True,
            "SliceTimingCorrected": True,
            "StartTime": 0.0,
        },
    )
    mask_grid = np.zeros(geometry.shape, dtype=np.uint8)
    mask_grid[geometry.mask] = keep.astype(np.uint8)
    mask_image = _image(mask_grid, geometry.affine, (resolution,) * 3)
    _write_nifti(func_dir / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz", mask_image)
    _write_json(
        func_dir / f"{stem}_space-{SPACE}_desc-brain_mask.json",
        {"Type": "Brain"},
    )
    _write_tsv(
        func_dir / f"{stem}_desc-confounds_timeseries.tsv",
        _confound_columns(signals, motion),
    )


def _write_subject_truth(
    truth_dir: pathlib.Path,
    config: SimulationConfig,
    geometry: _Geometry,
    subject: str,
    maps: dict[str, Any],
) -> None:
    folder = truth_dir / f"sub-{subject}"
    prefix = f"sub-{subject}"
    for name, effect in maps["contrasts"].items():
        _write_nifti(
            folder / _truth_name(prefix, config.task, name, "effect"),
            _volume_image(geometry, effect),
        )
        _write_nifti(
            folder / _truth_name(prefix, config.task, name, "mask"),
            _volume_image(geometry, effect != 0.0, np.uint8),
        )
    for index, category in enumerate(config.categories):
        _write_nifti(
            folder
            / f"{prefix}_task-{config.task}_condition-{category}_truth-effect.nii.gz",
            _volume_image(geometry, maps["responses"][index]),
        )
    _write_nifti(
        folder / _truth_name(prefix, config.task, None, "ar1"),
        _volume_image(geometry, maps["ar1"]),
    )
    _write_nifti(
        folder / _truth_name(prefix, config.task, None, "noisesd"),
        _volume_image(geometry, maps["noise_sd"] * np.float32(config.noise_scale)),
    )


def _write_group_truth(
    truth_dir: pathlib.Path,
    config: SimulationConfig,
    geometry: _Geometry,
    group_effects: dict[str, list[np.ndarray]],
) -> None:
    folder = truth_dir / "group"
    for name, effects in group_effects.items():
        stacked = np.asarray(effects)
        nonzero = stacked != 0.0
        _write_nifti(
            folder / _truth_name("group", config.task, name, "effect"),
            _volume_image(geometry, stacked.mean(axis=0)),
        )
        _write_nifti(
            folder / _truth_name("group", config.task, name, "anymask"),
            _volume_image(geometry, nonzero.any(axis=0), np.uint8),
        )
        _write_nifti(
            folder / _truth_name("group", config.task, name, "allmask"),
            _volume_image(geometry, nonzero.all(axis=0), np.uint8),
        )
