"""Head motion of a run, from the framewise displacement in its fMRIPrep confounds.

fMRIPrep writes one confounds table per run, beside the preprocessed BOLD
series, with the same run entities (``sub``, ``ses``, ``task``, ``run``...)
and ``desc-confounds``; its ``framewise_displacement`` column (Power et al.,
2012) is what the reports summarise.  The model's confound columns are read by
:func:`laion_fmri_dataloader.inputs.bids.read_confounds`.

Examples
--------
>>> confounds_names("sub-01_task-x_run-2_space-T1w_desc-preproc_bold.nii.gz")[0]
'sub-01_task-x_run-2_desc-confounds_timeseries.tsv'
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from laion_fmri_dataloader.layout import bids_name, parse_bids_name

__all__ = [
    "HIGH_MOTION_FD_MM",
    "HIGH_MOTION_SHARE_LIMIT",
    "MEAN_FD_LIMIT_MM",
    "MotionSummary",
    "confounds_names",
    "motion_summary",
]

#: Framewise displacement (Power et al., 2012) above which a volume counts as
#: high motion, mm; the usual scrubbing criterion.
HIGH_MOTION_FD_MM = 0.5
#: Mean framewise displacement of a run above which the report warns, mm
#: (the stringent criterion of Parkes et al., 2018).
MEAN_FD_LIMIT_MM = 0.25
#: Share of high-motion volumes above which the report warns (Parkes et al.).
HIGH_MOTION_SHARE_LIMIT = 0.2

# Entities that tell the outputs of one run apart, not the run itself.
_OUTPUT_ENTITIES = ("space", "res", "den", "desc", "suffix", "extension")
# fMRIPrep's name of the table since 20.2, then the older one.
_CONFOUNDS_SUFFIXES = ("timeseries", "regressors")


@dataclass(frozen=True)
class MotionSummary:
    """Head motion of one run from fMRIPrep's framewise displacement.

    Attributes
    ----------
    n_volumes : int
        Volumes in the confounds file.
    mean_fd, max_fd : float
        Mean and largest framewise displacement, mm (the first volume, which
        has none, left out).
    high_motion_share : float
        Share of volumes with a displacement above :data:`HIGH_MOTION_FD_MM`.
    """

    n_volumes: int
    mean_fd: float
    max_fd: float
    high_motion_share: float

    @property
    def warnings(self) -> list[str]:
        """Reasons, in words, to look at this run twice."""
        found = []
        if self.mean_fd > MEAN_FD_LIMIT_MM:
            found.append(
                f"mean framewise displacement {self.mean_fd:.2f} mm exceeds "
                f"{MEAN_FD_LIMIT_MM} mm"
            )
        if self.high_motion_share > HIGH_MOTION_SHARE_LIMIT:
            found.append(
                f"{100 * self.high_motion_share:.0f}% of volumes move more than "
                f"{HIGH_MOTION_FD_MM} mm (limit {100 * HIGH_MOTION_SHARE_LIMIT:.0f}%)"
            )
        return found


def confounds_names(bold: str | os.PathLike) -> list[str]:
    """Names the confounds file of a preprocessed BOLD series may have, likeliest first.

    Parameters
    ----------
    bold : str or path-like
        The BOLD series (only its file name is used).

    Returns
    -------
    list of str
        File names in the BOLD's folder: ``..._desc-confounds_timeseries.tsv``
        (fMRIPrep 20.2 and later), then ``..._desc-confounds_regressors.tsv``.
    """
    run = {
        key: value
        for key, value in parse_bids_name(os.fspath(bold)).items()
        if key not in _OUTPUT_ENTITIES
    }
    run["desc"] = "confounds"
    return [bids_name(run, suffix, ".tsv") for suffix in _CONFOUNDS_SUFFIXES]


def motion_summary(confounds: str | os.PathLike) -> MotionSummary | None:
    """Summarise the ``framewise_displacement`` column of an fMRIPrep confounds file.

    Parameters
    ----------
    confounds : str or path-like
        A ``*_desc-confounds_timeseries.tsv`` file.

    Returns
    -------
    MotionSummary or None
        None if the file cannot be read or has no usable column, so that a
        report never fails on it.
    """
    try:
        table = pd.read_csv(confounds, sep="\t", na_values=["n/a"])
        displacement = pd.to_numeric(table["framewise_displacement"], errors="coerce")
    except (OSError, KeyError, ValueError, pd.errors.ParserError):
        return None
    values = displacement.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    return MotionSummary(
        n_volumes=int(values.size),
        mean_fd=float(finite.mean()),
        max_fd=float(finite.max()),
        high_motion_share=float((finite > HIGH_MOTION_FD_MM).sum() / values.size),
    )
