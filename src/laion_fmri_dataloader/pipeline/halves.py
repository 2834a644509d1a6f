"""Half-run maps of the participant level: what the roi level defines and measures on.

A subject with at least two runs gets, for each half of its runs (``odd`` and
``even``: the 1st, 3rd, ... and the 2nd, 4th, ... run of its run list, sessions
in order), the z map of every contrast (to define fROIs from one half) and the
effect map of every condition (a contrast of weight 1 on the condition alone,
in percent signal change, to measure response profiles in the other half).
The runs are fitted one by one anyway, so a half is one more combination
(as the all-runs maps combine them) of fits that exist; nothing is fitted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.contrasts import Contrast
from laion_fmri_dataloader.errors import InvalidLabelError
from laion_fmri_dataloader.stats.engine import (
    ContrastResult,
    RunCombination,
    combine_runs,
)

__all__ = [
    "HALF_CONDITION_STAT",
    "HALF_CONTRAST_STAT",
    "condition_contrasts",
    "half_maps",
    "split_runs",
]

log = logging.getLogger("laion_fmri")

#: The stat written per half for a contrast, and for a condition.
HALF_CONTRAST_STAT = "z"
HALF_CONDITION_STAT = "effect"


def split_runs(n_runs: int) -> dict[str, list[int]]:
    """Run positions (0-based) of each half; empty if fewer than two runs.

    Examples
    --------
    >>> split_runs(5)
    {'odd': [0, 2, 4], 'even': [1, 3]}
    >>> split_runs(1)
    {}
    """
    if n_runs < 2:
        return {}
    return {"odd": list(range(0, n_runs, 2)), "even": list(range(1, n_runs, 2))}


def condition_contrasts(
    conditions: Sequence[str],
    design_columns: Sequence[Sequence[str]],
    taken: Sequence[str],
) -> dict[str, Contrast]:
    """One contrast per condition modelled in every run (weight 1 on it alone).

    Conditions whose name is not a BIDS label, or is already a contrast's name,
    get no half-run map (logged once).
    """
    common = set(design_columns[0]).intersection(*map(set, design_columns[1:]))
    contrasts = {}
    for condition in conditions:
        if condition not in common:
            continue
        try:
            contrast = Contrast(condition, f"{condition} response", {condition: 1.0})
        except InvalidLabelError:
            log.info(
                "condition %r is not a BIDS label: no half-run effect map", condition
            )
            continue
        if condition in taken:
            log.info(
                "condition %r has the name of a contrast: no half-run effect map",
                condition,
            )
            continue
        contrasts[condition] = contrast
    return contrasts


def half_maps(
    subject: str,
    task: str,
    per_run: Sequence[Mapping[str, ContrastResult]],
    contrasts: Sequence[str],
    conditions: Sequence[str],
    combination: RunCombination = "mean",
) -> list[tuple[PurePosixPath, ContrastResult, str, str, list[int]]]:
    """The half-run maps of a subject: ``(path, result, name, stat, runs)``.

    Parameters
    ----------
    subject, task : str
        Labels of the maps.
    per_run : sequence of mapping
        Each run's fit, by contrast or condition name.
    contrasts, conditions : sequence of str
        Names whose z map (contrasts) or effect map (conditions) is written.
    combination : {'mean', 'precision'}
        How a half's runs are combined, as the all-runs maps are.

    Returns
    -------
    list
        Empty for a subject with a single run.
    """
    maps = []
    for split, positions in split_runs(len(per_run)).items():
        for names, stat in (
            (contrasts, HALF_CONTRAST_STAT),
            (conditions, HALF_CONDITION_STAT),
        ):
            for name in names:
                results = [per_run[i][name] for i in positions]
                combined = (
                    results[0]
                    if len(results) == 1
                    else combine_runs(results, combination)
                )
                path = layout.first_level_map(subject, task, name, stat, split=split)
                maps.append((path, combined, name, stat, positions))
    return maps
