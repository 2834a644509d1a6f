"""The one place that builds and parses file names.

Every path of the GLM derivatives is built here from BIDS entities (``sub``,
``task``, ``contrast``, ``stat``, ``correction``) and parsed back here; so are
the BIDS and fMRIPrep input names (:func:`bids_name`, :func:`parse_bids_name`).
No other module formats a file name.  Paths are returned relative to the GLM derivative
root (``<data_dir>/derivatives/glm``) as :class:`~pathlib.PurePosixPath`, so that
the same names serve a local folder and an object store.

Labels are validated before they reach a path: a label may hold only the BIDS
label characters ``[A-Za-z0-9]``, so that no ``/``, ``..`` or whitespace can make
a loader read outside its data directory.

Examples
--------
>>> first_level_map("01", "experiment", "faceVsBaseline", "z")
PurePosixPath('first_level/sub-01/sub-01_task-experiment_contrast-faceVsBaseline_stat-z.nii.gz')
>>> group_map("faceVsScene", correction="fdr").name
'group_contrast-faceVsScene_fdr-corrected.nii.gz'
>>> parse_name("sub-01_task-experiment_contrast-faceVsBaseline_stat-z.nii.gz")["stat"]
'z'
>>> roi_mask("01", "experiment", "FFA", "R", split="odd").name
'sub-01_task-experiment_split-odd_roi-FFA_hemi-R_mask.nii.gz'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath

from laion_fmri_dataloader.errors import InvalidLabelError

__all__ = [
    "CORRECTIONS",
    "DERIVATIVE_SUBDIR",
    "FIRST_LEVEL_DIR",
    "FIRST_LEVEL_STAT_TYPES",
    "GROUP_LEVEL_DIR",
    "GROUP_ROI_KINDS",
    "GROUP_STAT_TYPES",
    "PERMUTATION_CORRECTIONS",
    "SPLITS",
    "bids_name",
    "cluster_table",
    "design_matrix_png",
    "first_level_dir",
    "first_level_manifest",
    "first_level_map",
    "first_level_mask",
    "group_manifest",
    "group_map",
    "group_mask",
    "group_roi_figure",
    "group_roi_map",
    "group_roi_responses",
    "lock_of",
    "parse_bids_name",
    "parse_name",
    "roi_mask",
    "roi_responses",
    "sidecar_of",
    "subject_label",
    "validate_choice",
    "validate_label",
]

#: Where the GLM derivatives sit below a dataset's root folder.
DERIVATIVE_SUBDIR = PurePosixPath("derivatives/glm")
FIRST_LEVEL_DIR = PurePosixPath("first_level")
GROUP_LEVEL_DIR = PurePosixPath("group_level")

#: Stat types written per subject; ``effect`` is in percent signal change.
FIRST_LEVEL_STAT_TYPES = ("effect", "variance", "t", "z")
#: Stat types written per contrast at the group level; ``tfce`` (threshold-free
#: cluster enhancement of t, with its sign) only with the tfce correction.
GROUP_STAT_TYPES = ("t", "z", "p", "tfce")
#: Multiple-comparison corrections with a corrected map: adding one here names
#: its map, sidecar and cluster table, and lets the loader and parser find them.
#: ``fdr``: Benjamini-Hochberg; ``fwe``: voxel-wise family-wise error (sign-flip
#: max |t|, or Bonferroni); ``tfce`` and ``cluster``: family-wise error of TFCE
#: and of cluster extent from the same sign flips.
CORRECTIONS = ("fdr", "fwe", "tfce", "cluster")
#: The corrections that only a sign-flip permutation test gives (no parametric
#: fallback): with too few subjects for it to reach alpha they are not written.
PERMUTATION_CORRECTIONS = ("tfce", "cluster")
#: Halves of a subject's runs (odd and even positions in its run list): the
#: ``split`` entity of half-run maps and of the fROIs defined from them.
SPLITS = ("odd", "even")
#: Group-level maps of a region: its parcel and the share of subjects whose
#: fROI holds each voxel.
GROUP_ROI_KINDS = ("parcel", "probability")
#: The order of entities in the BIDS input names built here (the specification's
#: entity table); an entity not listed goes after these, in the order given.
BIDS_ENTITY_ORDER = (
    "sub",
    "ses",
    "task",
    "acq",
    "ce",
    "rec",
    "dir",
    "run",
    "echo",
    "space",
    "res",
    "den",
    "desc",
)

_LABEL = re.compile(r"[A-Za-z0-9]+")
_NIFTI_SUFFIX = ".nii.gz"
_ENTITY = re.compile(r"(sub|ses|task|run|split|roi|hemi|contrast|stat)-([A-Za-z0-9]+)")
_GROUP_ROI = re.compile(
    rf"_({'|'.join(GROUP_ROI_KINDS)})(\.nii\.gz|\.json)$|_(responses)(\.png)$"
)
_CORRECTED = re.compile(
    rf"_({'|'.join(CORRECTIONS)})-corrected(\.nii\.gz|\.json|_clusters\.tsv)$"
)
_BIDS_PAIR = re.compile(r"([a-zA-Z]+)-([a-zA-Z0-9]+)")


def validate_label(value: object, entity: str) -> str:
    """Return ``value`` if it is a valid BIDS label, else raise.

    Parameters
    ----------
    value : object
        The label given by the user (``"01"``, ``"experiment"``).
    entity : str
        What the label names, used in the error message (``"task"``).

    Returns
    -------
    str
        The label, unchanged.

    Raises
    ------
    InvalidLabelError
        If the label is empty or holds anything other than letters and digits.

    Examples
    --------
    >>> validate_label("faceVsScene", "contrast")
    'faceVsScene'
    """
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise InvalidLabelError(
            f"{entity} label {value!r} is not allowed: a BIDS label holds only "
            "letters and digits (no '/', '..', '-', '_' or whitespace)"
        )
    return value


def subject_label(subject: object) -> str:
    """Return the bare subject label of ``"sub-01"`` or ``"01"``.

    Examples
    --------
    >>> subject_label("sub-01"), subject_label("01")
    ('01', '01')
    """
    if isinstance(subject, int) and not isinstance(subject, bool):
        subject = f"{subject:02d}"
    if isinstance(subject, str) and subject.startswith("sub-"):
        subject = subject[len("sub-") :]
    return validate_label(subject, "subject")


def validate_choice(value: object, allowed: tuple[str, ...], name: str) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise with the list.

    Examples
    --------
    >>> validate_choice("z", FIRST_LEVEL_STAT_TYPES, "stat_type")
    'z'
    """
    if value not in allowed:
        raise InvalidLabelError(f"{name} must be one of {list(allowed)}; got {value!r}")
    return str(value)


def first_level_dir(subject: str) -> PurePosixPath:
    """Folder of one subject's first-level maps."""
    return FIRST_LEVEL_DIR / f"sub-{subject_label(subject)}"


def _subject_prefix(subject: str, task: str) -> str:
    return f"sub-{subject_label(subject)}_task-{validate_label(task, 'task')}"


def _split_entity(split: str | None) -> str:
    return "" if split is None else f"_split-{validate_choice(split, SPLITS, 'split')}"


def first_level_map(
    subject: str, task: str, contrast: str, stat: str, split: str | None = None
) -> PurePosixPath:
    """Path of a first-level map, e.g. ``..._contrast-faceVsBaseline_stat-z.nii.gz``.

    ``split`` (``odd`` or ``even``) names a map estimated from that half of
    the runs: ``..._task-experiment_split-odd_contrast-face_stat-effect.nii.gz``.
    """
    validate_choice(stat, FIRST_LEVEL_STAT_TYPES, "stat_type")
    contrast = validate_label(contrast, "contrast")
    name = (
        f"{_subject_prefix(subject, task)}{_split_entity(split)}"
        f"_contrast-{contrast}_stat-{stat}"
    )
    return first_level_dir(subject) / (name + _NIFTI_SUFFIX)


def _roi_entities(roi: str, hemi: str) -> str:
    roi = validate_label(roi, "roi")
    return f"roi-{roi}_hemi-{validate_choice(hemi, ('L', 'R'), 'hemi')}"


def roi_mask(
    subject: str, task: str, roi: str, hemi: str, split: str | None = None
) -> PurePosixPath:
    """Path of a subject's fROI mask (from all runs, or from one ``split``)."""
    name = (
        f"{_subject_prefix(subject, task)}{_split_entity(split)}"
        f"_{_roi_entities(roi, hemi)}_mask"
    )
    return first_level_dir(subject) / (name + _NIFTI_SUFFIX)


def roi_responses(subject: str, task: str) -> PurePosixPath:
    """Path of a subject's fROI response table (TSV)."""
    name = f"{_subject_prefix(subject, task)}_roiresponses.tsv"
    return first_level_dir(subject) / name


def group_roi_map(roi: str, hemi: str, kind: str) -> PurePosixPath:
    """Path of a region's group ``parcel`` or ``probability`` map."""
    validate_choice(kind, GROUP_ROI_KINDS, "kind")
    return GROUP_LEVEL_DIR / f"group_{_roi_entities(roi, hemi)}_{kind}{_NIFTI_SUFFIX}"


def group_roi_figure(roi: str, hemi: str) -> PurePosixPath:
    """Path of a region's response-profile bar plot (PNG)."""
    return GROUP_LEVEL_DIR / f"group_{_roi_entities(roi, hemi)}_responses.png"


def group_roi_responses() -> PurePosixPath:
    """Path of the group table of fROI responses (TSV)."""
    return GROUP_LEVEL_DIR / "group_roiresponses.tsv"


def first_level_mask(subject: str, task: str) -> PurePosixPath:
    """Path of the brain mask a subject's first-level maps were fitted in."""
    return first_level_dir(subject) / f"{_subject_prefix(subject, task)}_mask.nii.gz"


def design_matrix_png(subject: str, task: str) -> PurePosixPath:
    """Path of the design-matrix figure (one panel per run)."""
    name = f"{_subject_prefix(subject, task)}_design-matrix.png"
    return first_level_dir(subject) / name


def group_map(
    contrast: str, stat: str = "z", correction: str | None = None
) -> PurePosixPath:
    """Path of a group map: ``stat`` map, or the corrected z map if ``correction``."""
    contrast = validate_label(contrast, "contrast")
    if correction is None:
        validate_choice(stat, GROUP_STAT_TYPES, "stat_type")
        name = f"group_contrast-{contrast}_stat-{stat}"
    else:
        validate_choice(correction, CORRECTIONS, "correction")
        name = f"group_contrast-{contrast}_{correction}-corrected"
    return GROUP_LEVEL_DIR / (name + _NIFTI_SUFFIX)


def cluster_table(contrast: str, correction: str) -> PurePosixPath:
    """Path of the cluster table (TSV) beside a corrected group map."""
    corrected = group_map(contrast, correction=correction)
    return corrected.with_name(
        corrected.name.replace("-corrected.nii.gz", "-corrected_clusters.tsv")
    )


def group_mask() -> PurePosixPath:
    """Path of the group mask (intersection of the subjects' masks)."""
    return GROUP_LEVEL_DIR / "group_mask.nii.gz"


def first_level_manifest(subject: str, task: str) -> PurePosixPath:
    """Path of the record of a subject's first-level outputs (their checksums).

    Written last, it says the outputs are complete (see :mod:`.provenance`).

    Examples
    --------
    >>> first_level_manifest("01", "experiment").name
    'sub-01_task-experiment_outputs.json'
    """
    return first_level_dir(subject) / f"{_subject_prefix(subject, task)}_outputs.json"


def group_manifest() -> PurePosixPath:
    """Path of the record of the group level's outputs (their checksums)."""
    return GROUP_LEVEL_DIR / "group_outputs.json"


def lock_of(folder: PurePosixPath) -> PurePosixPath:
    """Lock file of an output folder, hidden beside it (the top folder's inside).

    Beside rather than inside, so that taking the lock creates nothing in a
    subject's folder before its outputs are written.

    Examples
    --------
    >>> lock_of(first_level_dir("01"))
    PurePosixPath('first_level/.sub-01.lock')
    >>> lock_of(PurePosixPath("."))
    PurePosixPath('.lock')
    """
    if not folder.name:
        return PurePosixPath(".lock")
    return folder.parent / f".{folder.name}.lock"


def sidecar_of(path: PurePosixPath) -> PurePosixPath:
    """JSON sidecar path of a map (``.nii.gz`` replaced by ``.json``)."""
    name = path.name
    if name.endswith(_NIFTI_SUFFIX):
        name = name[: -len(_NIFTI_SUFFIX)]
    else:
        name = name.rsplit(".", 1)[0]
    return path.with_name(name + ".json")


def parse_name(filename: str) -> dict[str, str]:
    """Parse the entities of a derivative file name.

    Returns a dict with the entities found (``sub``, ``task``, ``split``,
    ``roi``, ``hemi``, ``contrast``, ``stat``), ``correction`` for corrected
    group maps, ``level`` (``"first"`` or ``"group"``) and ``suffix``
    (``"map"``, ``"design-matrix"``, ``"mask"``, ``"roi"`` for an fROI mask,
    ``"roiresponses"``, ``"parcel"``, ``"probability"``, ``"roi-figure"``...).
    An empty dict means the name is not one of ours.

    Examples
    --------
    >>> parse_name("group_contrast-faceVsScene_fwe-corrected.nii.gz")["correction"]
    'fwe'
    >>> parse_name("sub-01_task-experiment_roi-FFA_hemi-R_mask.nii.gz")["suffix"]
    'roi'
    >>> parse_name("group_roi-PPA_hemi-L_parcel.nii.gz")["roi"]
    'PPA'
    >>> parse_name("notes.txt")
    {}
    """
    name = PurePosixPath(filename).name
    entities: dict[str, str] = dict(_ENTITY.findall(name))
    if name.startswith("group_"):
        entities["level"] = "group"
    elif "sub" in entities:
        entities["level"] = "first"
    else:
        return {}
    corrected = _CORRECTED.search(name)
    group_roi = _GROUP_ROI.search(name) if "roi" in entities else None
    if group_roi:
        entities["suffix"] = group_roi.group(1) or "roi-figure"
    elif name.endswith(("_roiresponses.tsv", "_roiresponses.json")):
        entities["suffix"] = "roiresponses"
    elif "roi" in entities and name.endswith(("_mask.nii.gz", "_mask.json")):
        entities["suffix"] = "roi"
    elif corrected:
        entities["correction"] = corrected.group(1)
        entities["suffix"] = (
            "clusters" if corrected.group(2) == "_clusters.tsv" else "map"
        )
    elif name.endswith("_design-matrix.png"):
        entities["suffix"] = "design-matrix"
    elif name.endswith(("_mask.nii.gz", "_mask.json")):
        entities["suffix"] = "mask"
    elif "stat" in entities:
        entities["suffix"] = "map"
    else:
        return {}
    entities["extension"] = (
        ".json" if name.endswith(".json") else name[name.find(".") :]
    )
    return entities


def bids_name(entities: Mapping[str, object], suffix: str, extension: str) -> str:
    """A BIDS file name from its entities, suffix and extension.

    Entities are written in the specification's order (:data:`BIDS_ENTITY_ORDER`),
    others after them in the order given; an entity whose value is ``None`` is
    left out.

    Examples
    --------
    >>> bids_name({"task": "oloc", "sub": "01", "run": 2}, "events", ".tsv")
    'sub-01_task-oloc_run-2_events.tsv'
    >>> bids_name({"sub": "01", "desc": "confounds"}, "timeseries", ".tsv")
    'sub-01_desc-confounds_timeseries.tsv'
    """
    known = [key for key in BIDS_ENTITY_ORDER if key in entities]
    keys = known + [key for key in entities if key not in BIDS_ENTITY_ORDER]
    parts = [f"{key}-{entities[key]}" for key in keys if entities[key] is not None]
    return "_".join([*parts, suffix]) + extension


def parse_bids_name(filename: str) -> dict[str, str]:
    """BIDS entities of a file name, plus ``suffix`` and ``extension``.

    Examples
    --------
    >>> parse_bids_name("sub-01_ses-2_task-oloc_run-3_desc-preproc_bold.nii.gz")["run"]
    '3'
    >>> parse_bids_name("sub-01_task-x_events.tsv")["suffix"]
    'events'
    """
    stem, dot, extension = PurePosixPath(filename).name.partition(".")
    parts = stem.split("_")
    pairs = [_BIDS_PAIR.fullmatch(part) for part in parts]
    entities = dict(pair.groups() for pair in pairs if pair)
    entities["suffix"] = parts[-1] if not pairs[-1] else ""
    entities["extension"] = dot + extension
    return entities
