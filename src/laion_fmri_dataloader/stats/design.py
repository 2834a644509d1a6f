"""Design matrices of the localizer GLM.

A run's design is nilearn's ``make_first_level_design_matrix`` with the model of
ARCHITECTURE.md: SPM HRF, cosine drift with a 0.01 Hz high-pass, the confounds
as extra regressors, frame times as ``FirstLevelModel`` sets them: frame ``i``
at ``(i + slice_time_ref) * TR`` (``slice_time_ref=0``, nilearn's default, is
the start of each volume).

For the SPM and Glover HRFs with cosine drifts the matrix is computed here, step
by step as nilearn computes it (events sampled on a grid 50 times finer than the
TR from 24 s before the first scan, convolved with the gamma-difference HRF,
read back at the frame times by linear interpolation; DCT-II drifts below the
high-pass; a constant) and equal to nilearn's to rounding (tests/test_design.py
compares them).  The reason is the cost of nilearn's import: its design-matrix
module pulls in scikit-learn and ``scipy.stats`` (1.3 s of a subject's 4-5 s
on a 2-core machine).  Every other model, and any case nilearn warns about or
regularises (a high-pass above Nyquist, a rank-deficient matrix, NaN or
duplicate names), is handed to nilearn itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["ModelSettings", "make_design", "nilearn_design"]


@dataclass(frozen=True)
class ModelSettings:
    """The first-level model; printed into every sidecar."""

    hrf_model: str = "spm"
    drift_model: str = "cosine"
    high_pass: float = 0.01
    noise_model: str = "ar1"
    smoothing_fwhm: float | None = None


def make_design(
    events: pd.DataFrame,
    confounds: pd.DataFrame,
    n_volumes: int,
    repetition_time: float,
    settings: ModelSettings = ModelSettings(),
    *,
    slice_time_ref: float = 0.0,
) -> pd.DataFrame:
    """Design matrix of one run.

    Parameters
    ----------
    events : pandas.DataFrame
        ``onset``, ``duration`` (seconds) and ``trial_type`` (categories).
    confounds : pandas.DataFrame
        One row per volume.
    n_volumes : int
        Number of volumes.
    repetition_time : float
        Seconds.
    settings : ModelSettings
        HRF, drift model and high-pass (Hz).
    slice_time_ref : float, default=0.0
        Fraction of the TR at which volumes are sampled, in [0, 1).

    Returns
    -------
    pandas.DataFrame
        One column per condition (sorted), then confounds, drifts and constant.
    """
    # FirstLevelModel's frame times, to the bit.
    frame_times = np.linspace(
        slice_time_ref * repetition_time,
        (n_volumes - 1 + slice_time_ref) * repetition_time,
        n_volumes,
    )
    design = _fast_design(events, confounds, frame_times, settings)
    if design is None:
        design = nilearn_design(events, confounds, frame_times, settings)
    return design


def nilearn_design(
    events: pd.DataFrame,
    confounds: pd.DataFrame,
    frame_times: np.ndarray,
    settings: ModelSettings = ModelSettings(),
) -> pd.DataFrame:
    """The same design from nilearn's ``make_first_level_design_matrix``.

    ``frame_times`` in seconds; see :func:`make_design` for the rest.
    """
    from nilearn.glm.first_level import make_first_level_design_matrix

    return make_first_level_design_matrix(
        frame_times,
        events=events,
        hrf_model=settings.hrf_model,
        drift_model=settings.drift_model,
        high_pass=settings.high_pass,
        add_regs=confounds.to_numpy(),
        add_reg_names=list(confounds.columns),
    )


# nilearn's defaults (make_first_level_design_matrix, full_rank)
_OVERSAMPLING = 50
_MIN_ONSET = -24.0
_HRF_LENGTH = 32.0
_MAX_CONDITION_NUMBER = 1e15
# _gamma_difference_hrf parameters: delay, undershoot, dispersion, ratio
_HRF_PARAMETERS = {
    "spm": (6.0, 16.0, 1.0, 0.167),
    "glover": (6.0, 12.0, 0.9, 0.48),
}


def _fast_design(
    events: pd.DataFrame,
    confounds: pd.DataFrame,
    frame_times: np.ndarray,
    settings: ModelSettings,
) -> pd.DataFrame | None:
    """nilearn's design matrix computed without nilearn, or None to use nilearn."""
    hrf_model = str(settings.hrf_model).lower()
    if hrf_model not in _HRF_PARAMETERS or settings.drift_model != "cosine":
        return None
    regressors = confounds.to_numpy(dtype=float)
    onsets = events["onset"].to_numpy(dtype=float)
    n_frames = frame_times.size
    step = (frame_times[-1] - frame_times[0]) / (n_frames - 1)
    if (
        len(events) == 0
        or np.isnan(regressors).any()
        or (onsets < frame_times[0] + _MIN_ONSET).any()
        or settings.high_pass * step >= 0.5
    ):
        return None
    trial_types = events["trial_type"].to_numpy()
    durations = events["duration"].to_numpy(dtype=float)
    conditions = [str(name) for name in np.unique(trial_types)]
    hrf = _gamma_difference_hrf(
        float(np.min(np.diff(frame_times))), *_HRF_PARAMETERS[hrf_model]
    )
    columns = [
        _convolved_regressor(
            onsets[trial_types == name],
            durations[trial_types == name],
            hrf,
            frame_times,
        )
        for name in conditions
    ]
    drifts = _cosine_drift(settings.high_pass, frame_times)
    names = [
        *conditions,
        *map(str, confounds.columns),
        *(f"drift_{k}" for k in range(1, drifts.shape[1])),
        "constant",
    ]
    matrix = np.hstack([np.column_stack(columns), regressors, drifts])
    if len(set(names)) != len(names):
        return None
    singular_values = np.linalg.svd(matrix, compute_uv=False)
    if not singular_values.max() / singular_values.min() < _MAX_CONDITION_NUMBER:
        return None
    return pd.DataFrame(matrix, columns=names, index=frame_times)


def _gamma_difference_hrf(
    repetition_time: float,
    delay: float,
    undershoot: float,
    dispersion: float,
    ratio: float,
) -> np.ndarray:
    """nilearn's ``_gamma_difference_hrf`` on the oversampled grid (sum 1)."""
    dt = repetition_time / _OVERSAMPLING
    times = np.linspace(0, _HRF_LENGTH, int(np.rint(_HRF_LENGTH / dt)))
    peak = _gamma_pdf(times, delay / dispersion, dt, dispersion)
    dip = _gamma_pdf(times, undershoot / dispersion, dt, dispersion)
    hrf = peak - ratio * dip
    return hrf / hrf.sum()


def _gamma_pdf(x: np.ndarray, shape: float, loc: float, scale: float) -> np.ndarray:
    """``scipy.stats.gamma.pdf(x, shape, loc=loc, scale=scale)`` for shape > 1."""
    y = (x - loc) / scale
    density = np.zeros_like(y)
    inside = y > 0
    density[inside] = np.exp(
        (shape - 1.0) * np.log(y[inside]) - y[inside] - math.lgamma(shape)
    )
    return density / scale


def _convolved_regressor(
    onsets: np.ndarray, durations: np.ndarray, hrf: np.ndarray, frame_times: np.ndarray
) -> np.ndarray:
    """One condition's boxcars convolved with the HRF, at the frame times.

    nilearn's ``compute_regressor``: unit boxcars on the oversampled grid
    (a zero duration lasts one grid step), ``np.convolve`` truncated, then
    ``scipy.interpolate.interp1d``'s linear interpolation written out.
    """
    n_frames = frame_times.size
    first, last = frame_times.min(), frame_times.max()
    n_high_res = (n_frames - 1) / (last - first)
    n_high_res *= (last * (1 + 1.0 / (n_frames - 1)) - first - _MIN_ONSET) * (
        _OVERSAMPLING
    )
    grid = np.linspace(
        first + _MIN_ONSET,
        last * (1 + 1.0 / (n_frames - 1)),
        int(np.rint(n_high_res + 1)),
    )
    size = grid.size
    starts = np.minimum(np.searchsorted(grid, onsets), size - 1)
    ends = np.minimum(np.searchsorted(grid, onsets + durations), size - 1)
    ends[(ends < size - 1) & (ends == starts)] += 1
    boxcars = np.zeros(size)
    np.add.at(boxcars, starts, 1.0)
    np.add.at(boxcars, ends, -1.0)
    convolved = np.convolve(np.cumsum(boxcars), hrf)[:size]
    upper = np.clip(np.searchsorted(grid, frame_times), 1, size - 1)
    lower = upper - 1
    slope = (convolved[upper] - convolved[lower]) / (grid[upper] - grid[lower])
    return slope * (frame_times - grid[lower]) + convolved[lower]


def _cosine_drift(high_pass: float, frame_times: np.ndarray) -> np.ndarray:
    """nilearn's ``create_cosine_drift``: DCT-II basis below ``high_pass``, constant."""
    n_frames = frame_times.size
    step = (frame_times[-1] - frame_times[0]) / (n_frames - 1)
    order = min(n_frames - 1, int(np.floor(2 * n_frames * high_pass * step)))
    drifts = np.zeros((n_frames, order + 1))
    scans = np.arange(n_frames)
    for k in range(1, order + 1):
        drifts[:, k - 1] = np.sqrt(2.0 / n_frames) * np.cos(
            (np.pi / n_frames) * (scans + 0.5) * k
        )
    drifts[:, -1] = 1.0
    return drifts
