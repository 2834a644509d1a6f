"""The bar plot of an fROI's response profile (group mean, SEM, subjects)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

__all__ = ["profile_png"]

_COLOURS = {
    "face": "#d62728",
    "scene": "#2ca02c",
    "object": "#1f77b4",
    "baseline": "#7f7f7f",
    "body": "#ff7f0e",
    "character": "#9467bd",
    "scrambled": "#8c564b",
}


def profile_png(
    conditions: Sequence[str], per_subject: np.ndarray, title: str
) -> bytes:
    """PNG bytes of the classic fROI bar plot.

    Parameters
    ----------
    conditions : sequence of str
        Bar labels.
    per_subject : ndarray, shape (n_subjects, n_conditions)
        Held-out percent signal change of each subject (NaN where missing).
    title : str
        Figure title.
    """
    # a bare Figure: no pyplot state, no backend chosen for the caller
    from matplotlib.figure import Figure

    values = np.asarray(per_subject, dtype=float)
    counts = np.isfinite(values).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(np.where(counts > 0, values, 0.0), axis=0)
        sem = np.nanstd(values, axis=0, ddof=1) / np.sqrt(counts)
    figure = Figure(figsize=(1.0 + 0.9 * len(conditions), 3.4), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(conditions))
    colours = [_COLOURS.get(name, "#bcbd22") for name in conditions]
    ax.bar(positions, mean, yerr=np.nan_to_num(sem), color=colours, capsize=4)
    rng = np.random.default_rng(0)  # fixed jitter: the same file every time
    for index in positions:
        column = values[:, index]
        column = column[np.isfinite(column)]
        jitter = rng.uniform(-0.15, 0.15, column.size)
        ax.plot(index + jitter, column, "o", ms=3, color="black", alpha=0.6)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(positions, list(conditions))
    ax.set_ylabel("% signal change (held-out runs)")
    ax.set_title(title, fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=90, format="png", metadata={"Software": None})
    return buffer.getvalue()
