"""The group report's comparison of the corrected maps with a simulation's truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from laion_fmri_dataloader.report.figures import Figure, cut_coords, truth_overlay
from laion_fmri_dataloader.simulate.scoring import (
    TruthComparison,
    compare_with_truth,
    group_truth_on_grid,
)

__all__ = ["TruthRow", "newest_truth_file", "truth_rows"]


@dataclass(frozen=True)
class TruthRow:
    """One corrected map against the truth: counts, percentages, overlay."""

    name: str
    comparison: TruthComparison
    strong_found_percent: float
    false_discovery_percent: float
    figure: Figure


def truth_rows(
    truth_dir: Path,
    contrast: str,
    task: str,
    corrected: dict[str, nib.Nifti1Image],
    mask: np.ndarray,
) -> list[TruthRow]:
    """Score each corrected map of ``contrast`` against the true group effect.

    Parameters
    ----------
    truth_dir : Path
        ``<dataset>/derivatives/truth`` of a simulated dataset.
    contrast, task : str
        What was tested.
    corrected : dict of str to nibabel.Nifti1Image
        The corrected maps, by correction.
    mask : numpy.ndarray of bool
        The group mask.

    Returns
    -------
    list of TruthRow
        One per corrected map; empty if the dataset has no truth for
        ``contrast``.
    """
    reference = next(iter(corrected.values()))
    # the truth folder is <dataset>/derivatives/truth
    effect = group_truth_on_grid(
        truth_dir.parent.parent, contrast, reference, task=task
    )
    if effect is None:
        return []
    rows = []
    for correction, image in corrected.items():
        found = np.asanyarray(image.dataobj).astype(np.float64)
        comparison, labels = compare_with_truth(found, effect, mask)
        overlay = truth_overlay(
            labels,
            image.affine,
            f"{contrast} {correction.upper()}: found vs true",
            cut_coords(labels, image.affine),
        )
        rows.append(
            TruthRow(
                name=correction,
                comparison=comparison,
                strong_found_percent=round(100 * comparison.strong_sensitivity, 1),
                false_discovery_percent=round(
                    100 * comparison.false_discovery_proportion, 1
                ),
                figure=Figure(
                    overlay, f"{contrast} {correction} map against the truth"
                ),
            )
        )
    return rows


def newest_truth_file(truth_dir: Path | None) -> int:
    """When the group truth last changed, ns since the epoch (0 if it has none)."""
    if truth_dir is None or not (truth_dir / "group").is_dir():
        return 0
    return max(
        (path.stat().st_mtime_ns for path in (truth_dir / "group").iterdir()),
        default=0,
    )
