"""Read a BIDS events file into the events of the model.

What BIDS allows and real datasets hold is accepted and said: ``n/a`` in
``duration`` (an event of unknown duration, modelled as an impulse, as a zero
duration is), ``n/a`` in ``onset`` or ``trial_type`` (the row cannot be
modelled and is left out), whitespace around trial types (removed).  A trial
type that would take the name of a design column (``constant``, ``drift_1``, a
confound) is refused: the map would silently mix the two.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from laion_fmri_dataloader.errors import InputError

__all__ = ["Events", "check_trial_type_names", "read_events"]

_DRIFT_OR_CONSTANT = re.compile(r"constant|drift_\d+")


@dataclass
class Events:
    """The events of one run.

    Attributes
    ----------
    table : pandas.DataFrame
        ``onset``, ``duration`` (s), ``trial_type`` (categories), by onset.
    warnings : list of str
        What was changed or left out, in words naming the file.
    """

    table: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def _rows(count: int) -> str:
    return f"{count} row{'' if count == 1 else 's'}"


def read_events(
    path: Path, condition_map: Mapping[str, Sequence[str]] | None = None
) -> Events:
    """Read an events file and map its trial types onto categories.

    Parameters
    ----------
    path : Path
        BIDS ``_events.tsv`` with ``onset``, ``duration`` and ``trial_type``
        (seconds).
    condition_map : mapping of str to sequence of str, optional
        Category -> trial types, e.g. ``{"face": ["adult", "child"]}``.  Trial
        types not named keep their own name (and so become their own regressor).

    Returns
    -------
    Events
        The table, sorted by onset, and warnings about ``n/a`` values.

    Raises
    ------
    InputError
        If the file is empty, lacks a column, holds non-numeric timings or
        negative durations, or no row is left.
    """
    try:
        events = pd.read_csv(
            path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype=str
        )
    except pd.errors.EmptyDataError:
        raise InputError(
            f"events file {path} is empty; it needs onset, duration and "
            "trial_type columns and one row per block or trial"
        ) from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise InputError(f"events file {path} cannot be read: {error}") from None
    events.columns = [str(column).strip() for column in events.columns]
    missing = [
        c for c in ("onset", "duration", "trial_type") if c not in events.columns
    ]
    if missing:
        raise InputError(
            f"events file {path} lacks column(s) {', '.join(missing)}; it has "
            f"{', '.join(map(str, events.columns))} (BIDS: onset, duration, trial_type)"
        )
    if events.empty:
        raise InputError(f"events file {path} has no events; add one row per block")
    events = events[["onset", "duration", "trial_type"]].copy()
    events["trial_type"] = events["trial_type"].str.strip()
    events.loc[events["trial_type"] == "", "trial_type"] = np.nan
    notes = []
    for column in ("onset", "duration"):
        text = events[column].str.strip()
        values = pd.to_numeric(text, errors="coerce")
        bad = values.isna() & text.notna() | ~np.isfinite(values.fillna(0))
        if bad.any():
            example = events.loc[bad, column].iloc[0]
            raise InputError(
                f"events file {path}: column {column} must hold numbers (s) or "
                f"n/a; found {example!r}"
            )
        events[column] = values
    unknown_duration = events["duration"].isna()
    if unknown_duration.any():
        notes.append(
            f"events file {path.name}: {_rows(int(unknown_duration.sum()))} with "
            "duration n/a modelled as impulses (duration 0)"
        )
        events.loc[unknown_duration, "duration"] = 0.0
    unplaced = events["onset"].isna() | events["trial_type"].isna()
    if unplaced.any():
        notes.append(
            f"events file {path.name}: {_rows(int(unplaced.sum()))} with onset or "
            "trial_type n/a left out"
        )
        events = events[~unplaced]
    if events.empty:
        raise InputError(
            f"events file {path}: no row has both an onset and a trial_type"
        )
    if (events["duration"] < 0).any():
        raise InputError(f"events file {path}: negative durations")
    reverse = {
        trial_type.strip(): category
        for category, trial_types in (condition_map or {}).items()
        for trial_type in trial_types
    }
    events["trial_type"] = events["trial_type"].map(lambda t: reverse.get(t, t))
    table = events.sort_values("onset", kind="stable").reset_index(drop=True)
    return Events(table, notes)


def check_trial_type_names(
    events: Events, path: Path, design_columns: Collection[str]
) -> None:
    """Refuse trial types named like a column of the design.

    Parameters
    ----------
    events : Events
        A run's events, categories mapped.
    path : Path
        The events file, for the message.
    design_columns : collection of str
        The confound columns of the run's design (drifts and the constant are
        known here).

    Raises
    ------
    InputError
        If a trial type is ``constant``, ``drift_<k>`` or a confound's name.
    """
    for trial_type in sorted(set(events.table["trial_type"])):
        if _DRIFT_OR_CONSTANT.fullmatch(trial_type) or trial_type in design_columns:
            raise InputError(
                f"events file {path}: trial type '{trial_type}' has the name of a "
                "column of the design (the constant, a drift or a confound); map it "
                f"onto another name with --condition NEWNAME={trial_type}"
            )
