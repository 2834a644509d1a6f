"""Design matrices of the localizer GLM and their figure.

A run's design is nilearn's ``make_first_level_design_matrix`` with the model of
ARCHITECTURE.md: SPM HRF, cosine drift with a 0.01 Hz high-pass, the confounds
as extra regressors, frame times at the start of each volume
(``slice_time_ref=0``, nilearn's default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["ModelSettings", "make_design", "plot_designs"]


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

    Returns
    -------
    pandas.DataFrame
        One column per condition (sorted), then confounds, drifts and constant.
    """
    from nilearn.glm.first_level import make_first_level_design_matrix

    frame_times = np.arange(n_volumes) * repetition_time
    return make_first_level_design_matrix(
        frame_times,
        events=events,
        hrf_model=settings.hrf_model,
        drift_model=settings.drift_model,
        high_pass=settings.high_pass,
        add_regs=confounds.to_numpy(),
        add_reg_names=list(confounds.columns),
    )


def plot_designs(designs: Sequence[pd.DataFrame], run_names: Sequence[str], title: str):
    """One panel per run, regressors labelled; returns a matplotlib Figure.

    Columns are scaled to unit maximum magnitude per column for display, so that
    task regressors, confounds (mm, degrees, intensity) and drifts are all
    visible at once, as in nilearn's ``plot_design_matrix``.  Columns that sit on
    a large offset (``global_signal``, ``csf``, ``white_matter``: intensities in
    the hundreds that vary by a few percent) are shown around their mean, or
    they would look flat.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    n_runs = len(designs)
    n_columns = max(design.shape[1] for design in designs)
    # constrained layout keeps the colour bar and the rotated labels clear of
    # the panels, for one run or many
    figure = Figure(
        figsize=(max(4.0, 0.32 * n_columns) * n_runs + 1.0, 6.5), layout="constrained"
    )
    axes = figure.subplots(1, n_runs, squeeze=False)[0]
    for ax, design, name in zip(axes, designs, run_names, strict=True):
        values = design.to_numpy(dtype=float, copy=True)
        mean = values.mean(axis=0)
        offset = np.abs(mean) > np.ptp(values, axis=0)
        offset &= np.ptp(values, axis=0) > 0
        values[:, offset] -= mean[offset]
        scale = np.abs(values).max(axis=0)
        scale[scale == 0] = 1.0
        image = ax.imshow(
            values / scale,
            aspect="auto",
            interpolation="nearest",
            cmap="gray",
            vmin=-1,
            vmax=1,
        )
        ax.set_xticks(range(design.shape[1]))
        ax.set_xticklabels(design.columns, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{name}: {design.shape[0]} volumes", fontsize=10)
        ax.set_ylabel("volume")
        ax.tick_params(axis="y", labelsize=8)
    figure.colorbar(image, ax=list(axes), fraction=0.02, pad=0.01, label="scaled value")
    figure.suptitle(title, fontsize=12)
    return figure
