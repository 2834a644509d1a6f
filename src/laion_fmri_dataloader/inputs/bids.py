"""Find and read the inputs of the first level in a BIDS + fMRIPrep tree.

Runs are found by BIDS entities, not by fixed names: a preprocessed BOLD series
is any ``sub-<s>[_ses-<x>]_task-<t>[_run-<r>]_space-<space>_desc-<desc>_bold.nii.gz``
under ``<fmriprep_dir>/sub-<s>/[ses-<x>/]func/``; its brain mask, confounds and
JSON sidecar share its entities, and its events file is the raw dataset's
``..._events.tsv`` with the same ``sub``, ``ses``, ``task``, ``acq`` and ``run``.
Runs from every session are returned together, for fixed effects.

Every problem becomes an :class:`~laion_fmri_dataloader.errors.InputError`
whose one-line message names the file and says what to do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from laion_fmri_dataloader.errors import InputError, NotFoundError, did_you_mean
from laion_fmri_dataloader.io.files import load_image
from laion_fmri_dataloader.layout import (
    parse_bids_name,
    subject_label,
    validate_label,
)

__all__ = [
    "DEFAULT_CONFOUNDS",
    "RunInputs",
    "find_runs",
    "find_subjects",
    "read_bold",
    "read_confounds",
    "read_events",
    "read_mask",
    "read_repetition_time",
]

#: The model's confounds: six motion parameters and three physiological signals.
DEFAULT_CONFOUNDS = (
    "trans_x",
    "trans_y",
    "trans_z",
    "rot_x",
    "rot_y",
    "rot_z",
    "global_signal",
    "csf",
    "white_matter",
)
#: Entities that identify a run across raw and derivative files.
_RUN_ENTITIES = ("sub", "ses", "task", "acq", "ce", "dir", "rec", "run")


@dataclass(frozen=True)
class RunInputs:
    """The files of one run.

    Attributes
    ----------
    name : str
        The run's identity in words, e.g. ``"ses-01 run-2"``.
    bold, mask, confounds, events : Path
        Preprocessed BOLD series, brain mask, confounds TSV, events TSV.
    bold_json : Path or None
        The BOLD's JSON sidecar, where the repetition time is read.
    """

    name: str
    bold: Path
    mask: Path
    confounds: Path
    events: Path
    bold_json: Path | None

    @property
    def files(self) -> list[Path]:
        """Every input file of the run."""
        paths = [self.bold, self.mask, self.confounds, self.events]
        return paths + ([self.bold_json] if self.bold_json else [])


def _func_files(root: Path, subject: str) -> list[Path]:
    folder = root / f"sub-{subject}"
    return sorted(folder.glob("func/*")) + sorted(folder.glob("ses-*/func/*"))


def find_subjects(fmriprep_dir: Path, task: str) -> list[str]:
    """Bare labels of the subjects with a preprocessed BOLD series of ``task``."""
    labels = []
    for folder in sorted(Path(fmriprep_dir).glob("sub-*")):
        if folder.is_dir() and any(
            parse_bids_name(path.name).get("task") == task
            and parse_bids_name(path.name)["suffix"] == "bold"
            for path in _func_files(Path(fmriprep_dir), folder.name[len("sub-") :])
        ):
            labels.append(folder.name[len("sub-") :])
    return labels


def _same_run(entities: Mapping[str, str], other: Mapping[str, str]) -> bool:
    return all(entities.get(key) == other.get(key) for key in _RUN_ENTITIES)


def _sibling(
    candidates: Sequence[Path], run: Mapping[str, str], **wanted: str
) -> Path | None:
    for path in candidates:
        entities = parse_bids_name(path.name)
        if _same_run(entities, run) and all(
            entities.get(k) == v for k, v in wanted.items()
        ):
            return path
    return None


def find_runs(
    bids_dir: Path,
    fmriprep_dir: Path,
    subject: str,
    task: str,
    *,
    space: str = "MNI152NLin2009cAsym",
    desc: str = "preproc",
) -> list[RunInputs]:
    """Every run of ``task`` for ``subject``, across sessions, with its files.

    Raises
    ------
    NotFoundError
        If the subject or its runs do not exist (the message lists what does).
    InputError
        If a run lacks its mask, confounds or events file.
    """
    label = subject_label(subject)
    validate_label(task, "task")
    bids_dir, fmriprep_dir = Path(bids_dir), Path(fmriprep_dir)
    if not fmriprep_dir.is_dir():
        raise NotFoundError(
            f"fMRIPrep folder {fmriprep_dir} is missing; name it with --fmriprep-dir"
        )
    if not (fmriprep_dir / f"sub-{label}").is_dir():
        available = [f"sub-{s}" for s in find_subjects(fmriprep_dir, task)]
        raise NotFoundError(
            f"subject 'sub-{label}' not found in {fmriprep_dir}; "
            + did_you_mean(f"sub-{label}", available)
        )
    derivatives = _func_files(fmriprep_dir, label)
    raw = _func_files(bids_dir, label)
    bolds = [
        path
        for path in derivatives
        if (entities := parse_bids_name(path.name))["suffix"] == "bold"
        and entities["extension"] in (".nii.gz", ".nii")
        and entities.get("task") == task
        and entities.get("space") == space
        and entities.get("desc") == desc
    ]
    if not bolds:
        found = sorted(
            {
                f"task-{e.get('task')} space-{e.get('space')} desc-{e.get('desc')}"
                for e in map(parse_bids_name, (p.name for p in derivatives))
                if e["suffix"] == "bold" and e["extension"] in (".nii.gz", ".nii")
            }
        )
        raise NotFoundError(
            f"no BOLD series of sub-{label} with task-{task} space-{space} desc-{desc} "
            f"in {fmriprep_dir / f'sub-{label}'}; found: {', '.join(found) or 'none'}"
        )
    runs = []
    for bold in bolds:
        run = parse_bids_name(bold.name)
        mask = _sibling(
            derivatives,
            run,
            space=space,
            desc="brain",
            suffix="mask",
            extension=".nii.gz",
        )
        confounds = _sibling(
            derivatives, run, desc="confounds", suffix="timeseries", extension=".tsv"
        ) or _sibling(
            derivatives, run, desc="confounds", suffix="regressors", extension=".tsv"
        )
        events = _sibling(raw, run, suffix="events", extension=".tsv")
        bold_json = bold.with_name(bold.name.split(".")[0] + ".json")
        described = " ".join(f"{k}-{run[k]}" for k in ("ses", "acq", "run") if k in run)
        name = described or bold.name.split("_space-")[0]
        for what, path, hint in (
            ("brain mask", mask, f"a *_space-{space}_desc-brain_mask.nii.gz"),
            ("confounds", confounds, "a *_desc-confounds_timeseries.tsv"),
            ("events", events, f"an events file in {bids_dir / f'sub-{label}'}"),
        ):
            if path is None:
                raise InputError(
                    f"{bold}: the run has no {what} file; expected {hint} with the "
                    "same sub/ses/task/run entities"
                )
        runs.append(
            RunInputs(
                name=name,
                bold=bold,
                mask=mask,
                confounds=confounds,
                events=events,
                bold_json=bold_json if bold_json.is_file() else None,
            )
        )
    return runs


def read_events(
    path: Path, condition_map: Mapping[str, Sequence[str]] | None = None
) -> pd.DataFrame:
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
    pandas.DataFrame
        ``onset``, ``duration``, ``trial_type`` (categories), sorted by onset.

    Raises
    ------
    InputError
        If the file is empty, lacks a column, or holds non-numeric timings.
    """
    try:
        events = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except pd.errors.EmptyDataError:
        raise InputError(
            f"events file {path} is empty; it needs onset, duration and "
            "trial_type columns and one row per block or trial"
        ) from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise InputError(f"events file {path} cannot be read: {error}") from None
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
    events = events[["onset", "duration", "trial_type"]].dropna(subset=["trial_type"])
    for column in ("onset", "duration"):
        values = pd.to_numeric(events[column], errors="coerce")
        if values.isna().any() or not np.isfinite(values).all():
            raise InputError(
                f"events file {path}: column {column} must hold numbers (s)"
            )
        events[column] = values
    if (events["duration"] < 0).any():
        raise InputError(f"events file {path}: negative durations")
    reverse = {
        trial_type: category
        for category, trial_types in (condition_map or {}).items()
        for trial_type in trial_types
    }
    events["trial_type"] = (
        events["trial_type"].astype(str).map(lambda t: reverse.get(t, t))
    )
    return events.sort_values("onset", kind="stable").reset_index(drop=True)


def read_confounds(path: Path, columns: Sequence[str], n_volumes: int) -> pd.DataFrame:
    """Read the requested confound columns of an fMRIPrep confounds file.

    The ``n/a`` that fMRIPrep writes in the first row of derivative columns is
    replaced by the second row's value, as nilearn's ``load_confounds`` does.

    Raises
    ------
    InputError
        If a column is missing, the row count differs from ``n_volumes``, or
        values are missing beyond the first row.
    """
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except (
        OSError,
        UnicodeDecodeError,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
    ) as error:
        raise InputError(f"confounds file {path} cannot be read: {error}") from None
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise InputError(
            f"confounds file {path} lacks column(s) {', '.join(missing)}; "
            + did_you_mean(missing[0], table.columns)
            + "; choose others with --confounds"
        )
    if len(table) != n_volumes:
        raise InputError(
            f"confounds file {path} has {len(table)} rows but the BOLD series has "
            f"{n_volumes} volumes; use the confounds of this very run"
        )
    confounds = table[list(columns)].apply(pd.to_numeric, errors="coerce")
    if n_volumes > 1:
        first = confounds.iloc[0].isna()
        confounds.loc[0, first] = confounds.loc[1, first]
    bad = confounds.columns[confounds.isna().any()].tolist()
    if bad:
        raise InputError(
            f"confounds file {path}: column(s) {', '.join(bad)} have missing or "
            "non-numeric values beyond the first row"
        )
    return confounds.astype(float)


def read_repetition_time(
    bold_json: Path | None, bold: nib.Nifti1Image, bold_path: Path
) -> float:
    """Repetition time (s) from the JSON sidecar, checked against the NIfTI header.

    Raises
    ------
    InputError
        If neither gives a TR, or they disagree by more than 1 ms.
    """
    zooms = bold.header.get_zooms()
    header_tr = float(zooms[3]) if len(zooms) > 3 else 0.0
    if bold.header.get_xyzt_units()[1] == "msec":
        header_tr /= 1000.0
    if bold_json is None:
        if header_tr > 0:
            return header_tr
        raise InputError(f"{bold_path}: no JSON sidecar and no TR in the header")
    try:
        metadata = json.loads(Path(bold_json).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"sidecar {bold_json} cannot be read: {error}") from None
    tr = metadata.get("RepetitionTime")
    if not isinstance(tr, int | float) or tr <= 0:
        raise InputError(
            f"sidecar {bold_json} has no positive RepetitionTime (seconds)"
        )
    if header_tr > 0 and abs(header_tr - tr) > 1e-3:
        raise InputError(
            f"{bold_path}: TR in the NIfTI header ({header_tr:g} s) differs from "
            f"RepetitionTime in {bold_json.name} ({tr:g} s); correct one of them"
        )
    return float(tr)


def read_bold(path: Path) -> nib.Nifti1Image:
    """Load a BOLD series, checking that it is 4D."""
    image = load_image(path, what="BOLD series")
    if image.ndim != 4 or image.shape[3] < 2:
        raise InputError(
            f"BOLD series {path} has shape {image.shape}; a 4D series with at least "
            "two volumes is needed"
        )
    return image


def read_mask(path: Path, bold: nib.Nifti1Image, bold_path: Path) -> np.ndarray:
    """Boolean brain mask on the BOLD's grid.

    Raises
    ------
    InputError
        If the mask's grid (shape or affine) differs from the BOLD's.
    """
    mask = load_image(path, what="brain mask")
    if mask.shape[:3] != bold.shape[:3] or not np.allclose(
        mask.affine, bold.affine, atol=1e-3
    ):
        raise InputError(
            f"brain mask {path} (shape {mask.shape[:3]}) is not on the grid of "
            f"{bold_path.name} (shape {bold.shape[:3]}); use the mask of the same space"
        )
    return np.asanyarray(mask.dataobj).reshape(mask.shape[:3]) > 0
