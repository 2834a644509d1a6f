"""The figure of a subject's design matrices, one panel per run."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["plot_designs"]


def plot_designs(designs: Sequence[pd.DataFrame], run_names: Sequence[str], title: str):
    """One panel per run, regressors labelled; returns a matplotlib Figure.

    Columns are scaled to unit maximum magnitude per column for display, so that
    task regressors, confounds (mm, degrees, intensity) and drifts are all
    visible at once, as in nilearn's ``plot_design_matrix``.  Columns that sit on
    a large offset (``global_signal``, ``csf``, ``white_matter``: intensities in
    the hundreds that vary by a few percent) are shown around their mean, or
    they would look flat.
    """
    # A bare Figure draws without pyplot or a backend being chosen, so the
    # caller's matplotlib settings are left as they are.
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
