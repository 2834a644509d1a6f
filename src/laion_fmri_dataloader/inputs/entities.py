"""BIDS entities: which files belong to a run, and which apply to it.

Three rules of the BIDS specification and of real datasets, on names parsed by
:func:`~laion_fmri_dataloader.layout.parse_bids_name`:

- Index entities (``run``, ``echo``) are numbers: ``run-01`` and ``run-1`` are
  the same run.  fMRIPrep 20.2 and other tools built on pybids before 0.15
  write ``run-1`` where the raw dataset has ``run-01``.
- A run's identity is its acquisition entities (:data:`IDENTITY_ENTITIES`);
  every other entity of a derivative (``res``, ``den``, ``cohort``, ``echo`` of
  fMRIPrep's per-echo outputs, ...) makes a variant of the same run, fitted
  once: :func:`group_variants`.
- The inheritance principle: a metadata file applies to a data file when it
  sits in the data file's folder or above, has the suffix asked for, and has no
  entity the data file lacks or holds with another value
  (:func:`applicable_files`).  At most one applicable file may sit at a level
  (where the data file's own, with all its entities, sits beside less specific
  ones, as in fMRIPrep's outputs, it is the one); JSON files are merged from
  the top down, for other files the deepest applies.

Examples
--------
>>> same_value("run", "01", "1"), same_value("acq", "01", "1")
(True, False)
>>> applies({"task": "oloc"}, {"sub": "01", "task": "oloc", "run": "2"})
True
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from laion_fmri_dataloader.errors import InputError
from laion_fmri_dataloader.layout import parse_bids_name

__all__ = [
    "IDENTITY_ENTITIES",
    "INDEX_ENTITIES",
    "FolderListing",
    "applicable_files",
    "applies",
    "entities_of",
    "entity_key",
    "group_variants",
    "identity",
    "same_value",
    "variant_entities",
]

#: Entities whose value is a non-negative integer (BIDS "index" entities).
INDEX_ENTITIES = ("run", "echo")
#: The acquisition entities that identify a run in raw and derivative files.
IDENTITY_ENTITIES = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run")
_NOT_ENTITIES = ("suffix", "extension")


class FolderListing:
    """The parsed names of the files of folders, each folder read once.

    A subject of 34 sessions has thousands of files; parsing each name once
    keeps finding its runs linear in their number.
    """

    def __init__(self) -> None:
        self._folders: dict[Path, list[tuple[Path, dict[str, str]]]] = {}

    def __call__(self, folder: Path) -> list[tuple[Path, dict[str, str]]]:
        """``(path, parse_bids_name(name))`` of every entry of ``folder``, sorted."""
        if folder not in self._folders:
            try:
                names = sorted(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                names = []
            self._folders[folder] = [(folder / n, parse_bids_name(n)) for n in names]
        return self._folders[folder]


def entities_of(path: Path | str) -> dict[str, str]:
    """Entities of a file name, without ``suffix`` and ``extension``."""
    return _entities(parse_bids_name(Path(path).name))


def _entities(parsed: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in parsed.items() if k not in _NOT_ENTITIES}


def _normalised(key: str, value: str) -> str | int:
    if key in INDEX_ENTITIES and value.isdigit():
        return int(value)
    return value


def same_value(key: str, value: str, other: str) -> bool:
    """Whether two values of entity ``key`` are equal (index entities as numbers)."""
    return _normalised(key, value) == _normalised(key, other)


def identity(entities: Mapping[str, str]) -> tuple[tuple[str, str | int], ...]:
    """The run a file belongs to: its identity entities, index values as numbers.

    Examples
    --------
    >>> identity({"sub": "01", "task": "x", "run": "01", "res": "2"})
    (('sub', '01'), ('task', 'x'), ('run', 1))
    """
    return tuple(
        (key, _normalised(key, entities[key]))
        for key in IDENTITY_ENTITIES
        if key in entities
    )


def entity_key(
    entities: Mapping[str, str], ignore: Iterable[str] = ()
) -> tuple[tuple[str, str | int], ...]:
    """All entities but ``ignore``, index values as numbers, sorted: a dict key.

    Examples
    --------
    >>> entity_key({"sub": "01", "run": "01", "desc": "brain"}, ignore=("desc",))
    (('run', 1), ('sub', '01'))
    """
    skip = set(ignore)
    return tuple(
        sorted((k, _normalised(k, v)) for k, v in entities.items() if k not in skip)
    )


def applies(metadata: Mapping[str, str], data: Mapping[str, str]) -> bool:
    """Whether a file with entities ``metadata`` may apply to one with ``data``.

    Rule 2c of the inheritance principle: the metadata file holds no entity
    that the data file lacks, and no value that differs.
    """
    return all(
        key in data and same_value(key, value, data[key])
        for key, value in metadata.items()
    )


def applicable_files(
    data: Mapping[str, str],
    levels: Sequence[Path],
    suffix: str,
    extensions: Iterable[str],
    listing: FolderListing | None = None,
) -> list[Path]:
    """Files that apply to a data file by the inheritance principle, top down.

    Parameters
    ----------
    data : mapping of str to str
        Entities of the data file (a BOLD series).
    levels : sequence of Path
        The folders to search, from the data file's own folder up to the
        dataset's root (``sub-01/ses-1/func``, ``sub-01/ses-1``, ``sub-01``, ``.``).
    suffix : str
        Suffix of the metadata file (``"events"``, ``"bold"``).
    extensions : iterable of str
        Accepted extensions (``(".tsv",)``, ``(".json",)``).
    listing : FolderListing, optional
        Shared between the runs of a subject, so that each folder is read once.

    Returns
    -------
    list of Path
        At most one file per level, from the root down: merge JSON files in
        this order; of other files the last one applies.

    Raises
    ------
    InputError
        If two files apply at the same level, which the specification forbids,
        and neither has all the entities of the data file.
    """
    extensions = tuple(extensions)
    listing = listing or FolderListing()
    found = []
    for level in levels:
        here = [
            path
            for path, parsed in listing(level)
            if parsed["suffix"] == suffix
            and parsed["extension"] in extensions
            and applies(_entities(parsed), data)
        ]
        own = [path for path in here if entities_of(path).keys() == data.keys()]
        if len(here) > 1 and len(own) == 1:
            # The data file's own sidecar beside less specific ones, as fMRIPrep
            # writes a res-2 series' sidecar beside the default one's.
            here = own
        if len(here) > 1:
            raise InputError(
                f"{here[0]} and {here[1].name} both apply to the same run "
                f"({' '.join(f'{k}-{v}' for k, v in data.items())}); the BIDS "
                "inheritance principle allows one file per folder: remove or rename "
                "one"
            )
        found += here
    return found[::-1]


def group_variants(
    paths: Iterable[Path],
    selection: Mapping[str, str],
) -> dict[tuple, list[Path]]:
    """Files of the same run, grouped by identity, after ``selection``.

    Parameters
    ----------
    paths : iterable of Path
        Derivative files of one kind (preprocessed BOLD series).
    selection : mapping of str to str
        Entity values a variant must have (``{"res": "2"}``); ``echo`` given
        here selects fMRIPrep's series of that echo.

    Returns
    -------
    dict
        Identity (see :func:`identity`) -> the files left for that run.  Where
        several remain, they differ in an entity that the caller must choose.
        fMRIPrep's optimally combined series (no ``echo``) is kept over its
        per-echo series unless an echo is selected.
    """
    runs: dict[tuple, list[Path]] = {}
    for path in paths:
        entities = entities_of(path)
        if not all(
            key in entities and same_value(key, value, entities[key])
            for key, value in selection.items()
        ):
            continue
        runs.setdefault(identity(entities), []).append(path)
    for key, files in runs.items():
        combined = [path for path in files if "echo" not in entities_of(path)]
        if "echo" not in selection and combined and len(combined) < len(files):
            runs[key] = combined
    return runs


def variant_entities(path: Path, ignored: Iterable[str] = ("space", "desc")) -> str:
    """The entities that make a file a variant, as ``res-2 den-91k`` (or ``none``)."""
    skip = set(IDENTITY_ENTITIES) | set(ignored)
    words = [f"{k}-{v}" for k, v in entities_of(path).items() if k not in skip]
    return " ".join(words) or "none"
