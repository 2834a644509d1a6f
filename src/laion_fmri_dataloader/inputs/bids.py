"""Find and read the inputs of the first level in a BIDS + fMRIPrep tree.

Runs are found by BIDS entities, not by fixed names: a preprocessed BOLD series
is any ``sub-<s>[_ses-<x>]_task-<t>[_run-<r>]_space-<space>[_res-<r>]_desc-<desc>
_bold.nii[.gz]`` under ``<fmriprep_dir>/sub-<s>/[ses-<x>/]func/``; its brain
mask (``.nii`` or ``.nii.gz``) shares its entities, its confounds its identity
(:data:`~laion_fmri_dataloader.inputs.entities.IDENTITY_ENTITIES`, run indices
as numbers: fMRIPrep 20.2's ``run-1`` is the raw ``run-01``).  Its events file
and its sidecars are found by the BIDS inheritance principle
(:mod:`.entities`): in the raw dataset, in the run's folder or above, without
the entities the events do not depend on.  Variants of a run (``res-``,
``den-``, ...) are chosen, never fitted twice.  Runs from every session are
returned together.  Listing one subject's folders takes milliseconds on a
dataset of 5 subjects x 34 sessions; pybids 0.22 took 22-49 s to index it and
bids2table 2.3 2.1 s (and pyarrow, 170 MB).

Every problem becomes an :class:`~laion_fmri_dataloader.errors.InputError`
whose one-line message names the file and says what to do.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from laion_fmri_dataloader.errors import InputError, NotFoundError, did_you_mean
from laion_fmri_dataloader.inputs.entities import (
    IDENTITY_ENTITIES,
    FolderListing,
    applicable_files,
    entities_of,
    entity_key,
    group_variants,
    identity,
    variant_entities,
)
from laion_fmri_dataloader.io.files import load_image
from laion_fmri_dataloader.layout import (
    parse_bids_name,
    subject_label,
    validate_label,
)

__all__ = [
    "DEFAULT_CONFOUNDS",
    "Confounds",
    "RunInputs",
    "SubjectFolders",
    "check_output_dir",
    "find_runs",
    "find_subjects",
    "has_task_files",
    "read_bold",
    "read_confounds",
    "read_mask",
    "subject_folders",
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
_NIFTI = (".nii.gz", ".nii")
_SUBJECT_FOLDER = re.compile(r"sub-[A-Za-z0-9]+")
# fMRIPrep writes one HTML report per subject beside the subject folders.
_SUBJECT_REPORT = re.compile(r"sub-[A-Za-z0-9]+\.html")
_NON_STEADY_STATE = "non_steady_state_outlier*"
# fMRIPrep before 1.2: ..._bold_confounds.tsv, ..._bold_space-X_preproc.nii.gz
_OLD_FMRIPREP_NAME = re.compile(r"_bold_(confounds\.tsv|space-[A-Za-z0-9]+_preproc\.)")
_OLD_CONFOUND_COLUMNS = ("X", "RotX", "GlobalSignal", "WhiteMatter", "CSF")
_SUPPORTED_FMRIPREP = (
    "fMRIPrep 1.2 and later (desc-confounds_timeseries.tsv, or "
    "desc-confounds_regressors.tsv before 20.2)"
)
_NEAREST = 3
_GLOB_CHARACTERS = re.compile(r"[*?\[]")


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
        The BOLD series' own JSON sidecar, written by fMRIPrep.
    sidecars : tuple of Path
        Every JSON sidecar that applies to the run, in the order they are
        merged: the raw dataset's from the root down, then fMRIPrep's.
    """

    name: str
    bold: Path
    mask: Path
    confounds: Path
    events: Path
    bold_json: Path | None
    sidecars: tuple[Path, ...] = ()

    @property
    def files(self) -> list[Path]:
        """Every input file of the run."""
        return [
            self.bold,
            self.mask,
            self.confounds,
            self.events,
            *dict.fromkeys(self.sidecars),
        ]


@dataclass(frozen=True)
class SubjectFolders:
    """The entries named ``sub-*`` in a dataset's root folder.

    Attributes
    ----------
    labels : list of str
        Bare labels of the subject folders.
    others : list of str
        Entries that look like subjects but are not (``sub-02.bak``,
        ``sub-02_old``, a stray file); fMRIPrep's ``sub-<s>.html`` reports
        are not listed.
    """

    labels: list[str]
    others: list[str]


def subject_folders(root: Path) -> SubjectFolders:
    """The subject folders of ``root`` and the entries that only look like them."""
    labels, others = [], []
    for entry in sorted(Path(root).glob("sub-*")):
        if entry.is_dir() and _SUBJECT_FOLDER.fullmatch(entry.name):
            labels.append(entry.name[len("sub-") :])
        elif not (entry.is_file() and _SUBJECT_REPORT.fullmatch(entry.name)):
            others.append(entry.name)
    return SubjectFolders(labels, others)


def _levels(root: Path, label: str, session: str | None) -> list[Path]:
    """Folders of a run, from its ``func`` folder up to the dataset root."""
    subject = root / f"sub-{label}"
    if session is None:
        return [subject / "func", subject, root]
    session_dir = subject / f"ses-{session}"
    return [session_dir / "func", session_dir, subject, root]


def _func_folders(root: Path, subject: str) -> list[Path]:
    folder = root / f"sub-{subject}"
    return [folder / "func", *sorted(folder.glob("ses-*/func"))]


def _func_files(root: Path, subject: str) -> list[Path]:
    return [
        path
        for folder in _func_folders(root, subject)
        if folder.is_dir()
        for path in sorted(folder.iterdir())
    ]


def _is_bold(path: Path, task: str) -> bool:
    parsed = parse_bids_name(path.name)
    return (
        parsed["suffix"] == "bold"
        and parsed["extension"] in _NIFTI
        and parsed.get("task") == task
    )


def find_subjects(fmriprep_dir: Path, task: str) -> list[str]:
    """Bare labels of the subjects with a preprocessed BOLD series of ``task``."""
    root = Path(fmriprep_dir)
    return [
        label
        for label in subject_folders(root).labels
        if any(_is_bold(path, task) for path in _func_files(root, label))
    ]


def has_task_files(bids_dir: Path, subject: str, task: str) -> bool:
    """Whether the raw dataset holds a BOLD series or events of ``task`` for it."""
    return any(
        parse_bids_name(path.name).get("task") == task
        for path in _func_files(Path(bids_dir), subject)
    )


def _old_fmriprep(derivatives: Sequence[Path]) -> Path | None:
    return next((p for p in derivatives if _OLD_FMRIPREP_NAME.search(p.name)), None)


@dataclass
class _Derivatives:
    """A subject's fMRIPrep ``func`` files, each name parsed once."""

    paths: list[Path]
    bolds: list[Path]
    masks: dict[tuple, Path]
    confounds: dict[tuple, Path]

    @classmethod
    def index(cls, files: Sequence[tuple[Path, dict[str, str]]], task: str):
        bolds, masks, confounds = [], {}, {}
        for path, parsed in files:
            entities = {
                k: v for k, v in parsed.items() if k not in ("suffix", "extension")
            }
            kind = (parsed["suffix"], parsed["extension"], entities.get("desc"))
            if kind[0] == "bold" and kind[1] in _NIFTI and entities.get("task") == task:
                bolds.append(path)
            elif kind[0] == "mask" and kind[1] in _NIFTI and kind[2] == "brain":
                masks.setdefault(entity_key(entities, ("desc",)), path)
            elif kind[1] == ".tsv" and kind[2] == "confounds":
                if kind[0] == "timeseries":
                    confounds[identity(entities)] = path
                elif kind[0] == "regressors":
                    confounds.setdefault(identity(entities), path)
        return cls([path for path, _ in files], bolds, masks, confounds)


def _selected_bolds(
    derivatives: _Derivatives,
    space: str,
    desc: str,
    selection: Mapping[str, str],
    task: str,
    where: Path,
) -> list[Path]:
    """One BOLD series per run: the variant ``selection`` picks."""
    candidates = [
        path
        for path in derivatives.bolds
        if (entities := entities_of(path)).get("space") == space
        and entities.get("desc") == desc
    ]
    if not candidates:
        old = _old_fmriprep(derivatives.paths)
        if old is not None:
            raise InputError(
                f"{old} is named as fMRIPrep before 1.2 wrote its outputs; supported "
                f"are {_SUPPORTED_FMRIPREP}: rerun a newer fMRIPrep"
            )
        found = sorted(
            {
                f"task-{e.get('task')} space-{e.get('space')} desc-{e.get('desc')}"
                for path in derivatives.paths
                if (e := parse_bids_name(path.name))["suffix"] == "bold"
                and e["extension"] in _NIFTI
            }
        )
        raise NotFoundError(
            f"no BOLD series with task-{task} space-{space} desc-{desc} in {where}; "
            f"found: {', '.join(found) or 'none'}; choose with --task, --space, --desc"
        )
    runs = group_variants(candidates, selection)
    if not runs:
        variants = sorted({variant_entities(path) for path in candidates})
        chosen = " ".join(f"{k}-{v}" for k, v in selection.items())
        raise NotFoundError(
            f"no BOLD series in {where} has {chosen}; the variants there: "
            f"{', '.join(variants)}"
        )
    bolds = []
    for files in runs.values():
        if len(files) > 1:
            variants = ", ".join(variant_entities(path) for path in files)
            raise InputError(
                f"{files[0]} has {len(files)} variants ({variants}) that are the same "
                "run; choose one with --res, --den or --bold-filter ENTITY=LABEL"
            )
        bolds.append(files[0])
    return sorted(bolds)


def _run_name(run: Mapping[str, str], bold: Path) -> str:
    shown = [k for k in IDENTITY_ENTITIES if k in run and k not in ("sub", "task")]
    described = " ".join(f"{k}-{run[k]}" for k in shown)
    return described or bold.name.split("_space-")[0]


def find_runs(
    bids_dir: Path,
    fmriprep_dir: Path,
    subject: str,
    task: str,
    *,
    space: str = "MNI152NLin2009cAsym",
    desc: str = "preproc",
    selection: Mapping[str, str] | None = None,
) -> list[RunInputs]:
    """Every run of ``task`` for ``subject``, across sessions, with its files.

    Parameters
    ----------
    bids_dir, fmriprep_dir : Path
        The raw dataset (events, raw sidecars) and fMRIPrep's derivatives.
    subject, task : str
        Labels.
    space, desc : str
        Entities of the preprocessed BOLD series.
    selection : mapping of str to str, optional
        Entities that choose between variants of a run (``{"res": "2"}``).

    Raises
    ------
    NotFoundError
        If the subject or its runs do not exist (the message lists what does).
    InputError
        If a run lacks its mask, confounds or events file, has several
        variants that ``selection`` does not choose between, or is named as
        fMRIPrep before 1.2 named its outputs.
    """
    label = subject_label(subject)
    validate_label(task, "task")
    bids_dir, fmriprep_dir = Path(bids_dir), Path(fmriprep_dir)
    if not fmriprep_dir.is_dir():
        raise NotFoundError(
            f"fMRIPrep folder {fmriprep_dir} is missing; name it with --fmriprep-dir"
        )
    subject_dir = fmriprep_dir / f"sub-{label}"
    if not subject_dir.is_dir():
        available = [f"sub-{s}" for s in find_subjects(fmriprep_dir, task)]
        raise NotFoundError(
            f"subject 'sub-{label}' not found in {fmriprep_dir}; "
            + did_you_mean(f"sub-{label}", available)
        )
    listing = FolderListing()
    derivatives = _Derivatives.index(
        [
            entry
            for folder in _func_folders(fmriprep_dir, label)
            for entry in listing(folder)
        ],
        task,
    )
    bolds = _selected_bolds(
        derivatives, space, desc, dict(selection or {}), task, subject_dir
    )
    runs = []
    for bold in bolds:
        run = entities_of(bold)
        mask = derivatives.masks.get(entity_key(run, ("desc",)))
        confounds = derivatives.confounds.get(identity(run))
        acquisition = {k: v for k, v in run.items() if k in IDENTITY_ENTITIES}
        raw_levels = _levels(bids_dir, label, run.get("ses"))
        events = applicable_files(acquisition, raw_levels, "events", (".tsv",), listing)
        old = _old_fmriprep(derivatives.paths) if confounds is None else None
        if old is not None:
            raise InputError(
                f"{old} is named as fMRIPrep before 1.2 wrote its outputs; supported "
                f"are {_SUPPORTED_FMRIPREP}: rerun a newer fMRIPrep"
            )
        variant = variant_entities(bold)
        for what, path, hint in (
            (
                "brain mask",
                mask,
                f"a *_space-{space}"
                + ("" if variant == "none" else "_" + variant.replace(" ", "_"))
                + "_desc-brain_mask.nii[.gz]",
            ),
            ("confounds", confounds, "a *_desc-confounds_timeseries.tsv"),
            (
                "events",
                events,
                f"a *_task-{task}[_run-<index>]_events.tsv in {raw_levels[0]} or a "
                "folder above it",
            ),
        ):
            if not path:
                raise InputError(
                    f"{bold}: the run has no {what} file; expected {hint} with the "
                    "same sub/ses/task/run entities"
                )
        own_json = bold.with_name(bold.name.split(".")[0] + ".json")
        derivative_levels = _levels(fmriprep_dir, label, run.get("ses"))
        sidecars = [
            *applicable_files(acquisition, raw_levels, "bold", (".json",), listing),
            *applicable_files(run, derivative_levels, "bold", (".json",), listing),
        ]
        runs.append(
            RunInputs(
                name=_run_name(run, bold),
                bold=bold,
                mask=mask,
                confounds=confounds,
                events=events[-1],
                bold_json=own_json if own_json.is_file() else None,
                sidecars=tuple(sidecars),
            )
        )
    return runs


@dataclass
class Confounds:
    """The confound regressors of a run and its non-steady-state volumes.

    Attributes
    ----------
    table : pandas.DataFrame
        One column per confound (the names the patterns matched, in the file's
        order, each once), one row per volume.
    non_steady_state : tuple of int
        Volumes that fMRIPrep's ``non_steady_state_outlier_XX`` columns flag.
    """

    table: pd.DataFrame
    non_steady_state: tuple[int, ...]


def _nearest(name: str, columns: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, columns, n=_NEAREST, cutoff=0.5)
    if not close:
        close = [c for c in columns if c.startswith(name[:3])][:_NEAREST]
    return ", ".join(close) if close else "none close"


def _expand(patterns: Sequence[str], columns: Sequence[str], path: Path) -> list[str]:
    """Column names of ``patterns`` (exact names or globs), each once."""
    usable = [c for c in columns if not fnmatch.fnmatchcase(c, _NON_STEADY_STATE)]
    chosen: list[str] = []
    for pattern in patterns:
        if _GLOB_CHARACTERS.search(pattern):
            matched = [c for c in usable if fnmatch.fnmatchcase(c, pattern)]
        else:
            matched = [pattern] if pattern in usable else []
        if not matched and fnmatch.fnmatchcase(pattern, _NON_STEADY_STATE):
            continue
        if not matched:
            if any(c in columns for c in _OLD_CONFOUND_COLUMNS):
                raise InputError(
                    f"confounds file {path} has the column names of fMRIPrep before "
                    f"1.2 (X, RotX, GlobalSignal); supported are "
                    f"{_SUPPORTED_FMRIPREP}: rerun a newer fMRIPrep"
                )
            raise InputError(
                f"confounds file {path} has no column "
                f"{'matching ' if pattern != _GLOB_CHARACTERS.sub('', pattern) else ''}"
                f"'{pattern}'; nearest: {_nearest(pattern, usable)}; choose others "
                "with --confounds"
            )
        chosen += [c for c in matched if c not in chosen]
    return chosen


def read_confounds(path: Path, patterns: Sequence[str], n_volumes: int) -> Confounds:
    """Read the requested confound columns of an fMRIPrep confounds file.

    Parameters
    ----------
    path : Path
        ``..._desc-confounds_timeseries.tsv``.
    patterns : sequence of str
        Column names or glob patterns (``a_comp_cor_0[0-5]``); a column named
        twice is used once.  ``non_steady_state_outlier_XX`` columns are never
        regressors: they are returned as volumes to leave out.
    n_volumes : int
        Volumes of the BOLD series.

    Returns
    -------
    Confounds
        The ``n/a`` that fMRIPrep writes in the first row of derivative columns
        is replaced by the second row's value, as nilearn's ``load_confounds``
        does.

    Raises
    ------
    InputError
        If a name matches no column (the few nearest are listed), the columns
        are those of fMRIPrep before 1.2, the row count differs from
        ``n_volumes``, or values are missing beyond the first row.
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
    columns = [str(c) for c in table.columns]
    chosen = _expand(patterns, columns, path)
    if len(table) != n_volumes:
        raise InputError(
            f"confounds file {path} has {len(table)} rows but the BOLD series has "
            f"{n_volumes} volumes; use the confounds of this very run"
        )
    confounds = table[chosen].apply(pd.to_numeric, errors="coerce")
    if n_volumes > 1:
        first = confounds.iloc[0].isna()
        confounds.loc[0, first] = confounds.loc[1, first]
    bad = confounds.columns[confounds.isna().any()].tolist()
    if bad:
        raise InputError(
            f"confounds file {path}: column(s) {', '.join(bad)} have missing or "
            "non-numeric values beyond the first row"
        )
    outliers = [c for c in columns if fnmatch.fnmatchcase(c, _NON_STEADY_STATE)]
    flagged = table[outliers].apply(pd.to_numeric, errors="coerce").fillna(0)
    volumes = np.flatnonzero(flagged.to_numpy().any(axis=1)) if outliers else []
    return Confounds(confounds.astype(float), tuple(int(v) for v in volumes))


def check_output_dir(
    output_dir: Path, bids_dir: Path | None = None, fmriprep_dir: Path | None = None
) -> None:
    """Refuse an output folder that would write into the inputs.

    Raises
    ------
    InputError
        If ``output_dir`` is the raw dataset's or fMRIPrep's folder, or holds
        a ``dataset_description.json`` of a raw dataset (``DatasetType`` other
        than ``derivative``; BIDS takes a missing one as raw).
    """
    output = Path(output_dir).resolve()
    suggestion = Path(bids_dir or output_dir) / "derivatives" / "glm"
    for what, folder, option in (
        ("the BIDS dataset", bids_dir, "BIDS_DIR"),
        ("fMRIPrep's folder", fmriprep_dir, "--fmriprep-dir"),
    ):
        if folder is not None and output == Path(folder).resolve():
            raise InputError(
                f"OUTPUT_DIR {output_dir} is {what} ({option}); write the GLM "
                f"derivatives elsewhere, e.g. {suggestion}"
            )
    description = output / "dataset_description.json"
    if not description.is_file():
        return
    try:
        content = json.loads(description.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(
            f"{description} cannot be read ({error}); is OUTPUT_DIR a dataset of "
            "its own? Write the GLM derivatives elsewhere"
        ) from None
    if not isinstance(content, dict) or content.get("DatasetType") != "derivative":
        raise InputError(
            f"OUTPUT_DIR {output_dir} holds a raw dataset ({description} has no "
            "DatasetType 'derivative'); write the GLM derivatives elsewhere, e.g. "
            "its derivatives/glm"
        )


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
