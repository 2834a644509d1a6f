"""Group level: one-sample t over subjects' effect maps, FDR and FWE maps.

Reads every subject's first-level ``stat-effect`` maps (percent signal change)
and masks from the derivative layout, fits an OLS one-sample t test per contrast
inside the intersection of the subjects' masks, and writes the ``t``, ``z`` and
``p`` maps, the corrected maps of ``--corrections`` (the z map, 0 where a voxel
does not survive), a cluster table beside each corrected map, and sidecars.

FWE: sign-flip permutation of the max |t| when the subjects are enough for it to
reach alpha (``--fwe auto``), otherwise Bonferroni, which the sidecar and the
log state.  TFCE (nilearn's defaults: E 0.5, H 2, dh = max |t| / 100 of each
map, 6-connectivity, both signs) and cluster extent (clusters of ``|t|`` above
the t of ``--cluster-threshold``, p < 0.001 by default) come from the same sign
flips, in one pass; they have no parametric fallback, so with too few subjects
their maps are not written, and the log and the other maps' sidecars
(``SkippedCorrections``) say why.  The TFCE statistic itself is written as
``stat-tfce``.  Everything is read and checked before anything is written; the
group folder is written under its lock, as one unit with a manifest of
checksums (:func:`~laion_fmri_dataloader.io.files.output_set`), the group mask
and the cluster tables included.

The group never mixes first levels: the subjects' sidecars must agree on the
model, smoothing, run combination, space, confounds and contrast weights, or
the group level stops naming the subjects that differ (there is no telling
which side was meant).  A subject that cannot be used on its own account, one
whose input files changed since its maps were made or one with preprocessed
BOLD but no maps (its participant level failed or has not run), is left out
with a warning naming it, and the group sidecars list it under
``ExcludedSubjects``; named with ``--participant-label``, it is an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from scipy import special

from laion_fmri_dataloader import layout, provenance
from laion_fmri_dataloader._version import __version__
from laion_fmri_dataloader.contrasts import order_contrast_names
from laion_fmri_dataloader.errors import (
    InputError,
    InvalidLabelError,
    InvalidParameterError,
    NotFoundError,
    did_you_mean,
)
from laion_fmri_dataloader.inputs.bids import find_subjects
from laion_fmri_dataloader.io.files import (
    folder_lock,
    load_image,
    output_set,
    remove_stale_temporaries,
    save_image,
    write_json,
    write_text,
)
from laion_fmri_dataloader.provenance import outputs_complete, read_manifest
from laion_fmri_dataloader.sidecar import (
    ClusterInfo,
    ContrastInfo,
    CorrectionInfo,
    DatasetDescription,
    MapSidecar,
    ModelInfo,
    TFCEInfo,
    changed_inputs,
    dependency_versions,
    first_level_signature,
    signature_difference,
    software,
)
from laion_fmri_dataloader.stats.engine import t_to_z
from laion_fmri_dataloader.stats.inference import (
    PermutationResult,
    SpatialInference,
    bonferroni_mask,
    cluster_table,
    fdr_threshold,
    min_n_perm,
    min_subjects_for_permutation,
    permutation_count,
    sign_flip_max_t,
)
from laion_fmri_dataloader.stats.second_level import OneSampleResult, one_sample_t
from laion_fmri_dataloader.stats.tfce import TFCEParameters

__all__ = [
    "MIN_SUBJECTS",
    "FweMethod",
    "GroupConfig",
    "GroupInputs",
    "SignFlipTest",
    "read_group_inputs",
    "run_group",
]

log = logging.getLogger("laion_fmri")

#: Fewer subjects than this give no usable estimate of between-subject variance.
MIN_SUBJECTS = 3

#: A subject whose mask leaves out more than this share of the voxels that the
#: other subjects' masks share is named in the log.
MASK_LOSS_WARNING = 0.05

#: ``--fwe``: ``auto`` is a permutation when it can reach alpha, else Bonferroni.
FweMethod = Literal["auto", "permutation", "bonferroni"]

#: The sign-flip test the group level is given: ``sign_flip_max_t``'s signature,
#: ``(effects, *, n_perm, alpha, one_sided, seed, spatial) -> PermutationResult``;
#: run in this process or on Dask workers, as the caller chose.
SignFlipTest = Callable[..., PermutationResult]

#: Voxels that touch for TFCE and clusters: sharing a face, as in nilearn and FSL.
CONNECTIVITY = 6

#: How TFCE's step is chosen, in words for the sidecars.
_DH_RULE = {
    "auto": "max |t| / 100 of each map (nilearn, fslmaths)",
    "number": "max |t| / round(max |t| / dh) of each map, 10 to 1000 steps "
    "(nilearn's rule)",
}


@dataclass(frozen=True)
class GroupConfig:
    """Options of the group level.

    Attributes
    ----------
    output_dir : Path
        The GLM derivative folder (holds ``first_level``; gets ``group_level``).
    task : str
        Task of the first-level maps.
    subjects : tuple of str
        Bare labels; empty means every subject with first-level maps.
    alpha : float
        FDR q and FWE alpha.
    n_perm : int
        Sign-flip permutations (the unflipped data included).
    fwe : {'auto', 'permutation', 'bonferroni'}
        FWE method.
    one_sided : bool
        Test effect > 0 only.
    seed : int
        Seed of the permutations.
    smoothing_fwhm : float or None
        Gaussian smoothing of the effect maps before the test, mm
        (``--group-smoothing-fwhm``; the first level's own smoothing is in its
        sidecars).
    force : bool
        Redo contrasts whose outputs are complete.
    bids_dir : Path or None
        The raw dataset, where the first-level inputs are checked for changes;
        None: the source dataset of ``dataset_description.json``.
    fmriprep_dir : Path or None
        Where subjects with preprocessed BOLD but no maps are looked for;
        None: ``bids_dir/derivatives/fmriprep``.
    corrections : tuple of str
        Corrected maps to write, from ``layout.CORRECTIONS`` (all by default).
    cluster_threshold : float
        Cluster-forming threshold of cluster extent, an uncorrected p in (0, 1).
    tfce_e, tfce_h : float
        TFCE's extent and height exponents, > 0.
    tfce_dh : float or 'auto'
        TFCE's threshold step (``'auto'``: max |t| / 100 of each map).

    Raises
    ------
    InvalidLabelError
        An unknown correction.
    InvalidParameterError
        A cluster threshold outside (0, 1) or a TFCE parameter that is not a
        positive number.
    """

    output_dir: Path
    task: str = "experiment"
    subjects: tuple[str, ...] = ()
    alpha: float = 0.05
    n_perm: int = 10000
    fwe: FweMethod = "auto"
    one_sided: bool = False
    seed: int = 0
    smoothing_fwhm: float | None = None
    force: bool = False
    bids_dir: Path | None = None
    fmriprep_dir: Path | None = None
    corrections: tuple[str, ...] = layout.CORRECTIONS
    cluster_threshold: float = 0.001
    tfce_e: float = 0.5
    tfce_h: float = 2.0
    tfce_dh: float | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        unknown = [c for c in self.corrections if c not in layout.CORRECTIONS]
        if unknown:
            raise InvalidLabelError(
                f"unknown correction {unknown[0]!r} in --corrections; "
                + did_you_mean(unknown[0], layout.CORRECTIONS)
            )
        if not self.corrections:
            raise InvalidLabelError(
                "--corrections needs one or more of " + ", ".join(layout.CORRECTIONS)
            )
        # One order whatever the order asked: the layout's.
        object.__setattr__(
            self,
            "corrections",
            tuple(c for c in layout.CORRECTIONS if c in self.corrections),
        )
        threshold = self.cluster_threshold
        if not (
            isinstance(threshold, (int, float))
            and not isinstance(threshold, bool)
            and 0.0 < threshold < 1.0
        ):
            raise InvalidParameterError(
                "--cluster-threshold must be a cluster-forming p-value in (0, 1), "
                f"e.g. 0.001; got {threshold!r}"
            )
        for option, value in (("--tfce-e", self.tfce_e), ("--tfce-h", self.tfce_h)):
            if not _is_positive(value):
                raise InvalidParameterError(
                    f"{option} must be a positive number (nilearn's default: "
                    f"{0.5 if option == '--tfce-e' else 2}); got {value!r}"
                )
        if self.tfce_dh != "auto" and not _is_positive(self.tfce_dh):
            raise InvalidParameterError(
                "--tfce-dh must be 'auto' (max |t| / 100 of each map) or a positive "
                f"number; got {self.tfce_dh!r}"
            )

    @property
    def tfce(self) -> TFCEParameters:
        """TFCE's parameters."""
        return TFCEParameters(E=self.tfce_e, H=self.tfce_h, dh=self.tfce_dh)

    def parameters(self) -> dict[str, object]:
        values = asdict(self)
        for key in ("output_dir", "force", "bids_dir", "fmriprep_dir"):
            values.pop(key)
        return {**values, "version": __version__}


def _is_positive(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


@dataclass
class GroupInputs:
    """Subjects' effect maps of every contrast, inside the group mask."""

    subjects: list[str]
    contrasts: list[str]
    mask: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    effects: dict[str, np.ndarray]
    files: list[Path]
    contrast_info: dict[str, ContrastInfo]
    first_level_model: ModelInfo
    excluded: dict[str, str]


def _subjects_with_maps(root: Path, task: str) -> list[str]:
    folder = root / layout.FIRST_LEVEL_DIR
    return sorted(
        path.name[len("sub-") :]
        for path in folder.glob("sub-*")
        if any(path.glob(f"{path.name}_task-{task}_contrast-*_stat-effect.nii.gz"))
    )


def _contrasts_of(root: Path, subject: str, task: str) -> set[str]:
    folder = root / layout.first_level_dir(subject)
    names = (
        layout.parse_name(path.name) for path in folder.glob("*_stat-effect.nii.gz")
    )
    # half-run maps (split-odd, split-even) are the roi level's, not contrasts
    return {
        n["contrast"]
        for n in names
        if n.get("task") == task and "contrast" in n and "split" not in n
    }


def read_group_inputs(config: GroupConfig) -> GroupInputs:
    """Read and check the subjects' maps: same grid, no NaN, every contrast present.

    Subjects that cannot be used (inputs changed since their maps were made, or
    preprocessed BOLD but no maps) are left out with a warning when they were
    not named, and are an error when they were.

    Raises
    ------
    InputError
        Fewer than three usable subjects, first-level sidecars that disagree,
        grids that differ, a contrast missing in some subject, NaN inside the
        mask, a named subject that cannot be used.
    """
    root = Path(config.output_dir)
    layout.validate_label(config.task, "task")
    available = _subjects_with_maps(root, config.task)
    bids_root = _bids_root(config)
    excluded: dict[str, str] = {}
    if config.subjects:
        missing = [s for s in config.subjects if s not in available]
        if missing:
            raise NotFoundError(
                f"sub-{missing[0]} has no first-level task-{config.task} maps in "
                f"{root / layout.FIRST_LEVEL_DIR}; run the participant level first; "
                + did_you_mean(f"sub-{missing[0]}", [f"sub-{s}" for s in available])
            )
        subjects = list(config.subjects)
    else:
        subjects = available
        for subject in _subjects_without_maps(config, bids_root, available):
            excluded[subject] = (
                f"has preprocessed BOLD of task-{config.task} but no first-level "
                "maps: its participant level failed or has not run"
            )
    per_subject = {s: _contrasts_of(root, s, config.task) for s in subjects}
    contrasts = order_contrast_names(set().union(*per_subject.values()))
    for subject, names in per_subject.items():
        absent = [c for c in contrasts if c not in names]
        if absent:
            raise InputError(
                f"sub-{subject} has no task-{config.task} effect map of contrast "
                f"{absent[0]} (other subjects have it); rerun its participant level "
                "with the same --contrast options, or leave it out with "
                "--participant-label"
            )
    sidecars = {s: _effect_sidecars(root, s, config.task, contrasts) for s in subjects}
    for subject in subjects:
        reason = _out_of_date(sidecars[subject], bids_root)
        if reason is None:
            continue
        if config.subjects:
            raise InputError(
                f"sub-{subject}: {reason}; rerun its participant level, or leave it "
                "out of --participant-label"
            )
        excluded[subject] = reason
    for subject, reason in excluded.items():
        log.warning("group level: sub-%s left out: %s", subject, reason)
    subjects = [s for s in subjects if s not in excluded]
    if len(subjects) < MIN_SUBJECTS:
        left_out = (
            f"; left out: {', '.join(f'sub-{s}' for s in excluded)}" if excluded else ""
        )
        raise InputError(
            f"the group level needs at least {MIN_SUBJECTS} subjects with first-level "
            f"task-{config.task} maps in {root / layout.FIRST_LEVEL_DIR}; found "
            f"{len(subjects)} ({', '.join(f'sub-{s}' for s in subjects) or 'none'})"
            + left_out
        )
    _check_same_first_level(sidecars, subjects)
    reference_path = root / layout.first_level_map(
        subjects[0], config.task, contrasts[0], "effect"
    )
    reference = load_image(reference_path, what="effect map")
    mask = np.ones(reference.shape, dtype=bool)
    files = []
    subject_masks = {}
    for subject in subjects:
        mask_path = root / layout.first_level_mask(subject, config.task)
        if mask_path.is_file():
            subject_mask = load_image(mask_path, what="mask")
            _check_grid(subject_mask, reference, mask_path, reference_path)
            subject_masks[subject] = np.asanyarray(subject_mask.dataobj) > 0
            mask &= subject_masks[subject]
            files.append(mask_path)
    _log_mask_losses(subject_masks)
    effects = {}
    for contrast in contrasts:
        maps = []
        for subject in subjects:
            path = root / layout.first_level_map(
                subject, config.task, contrast, "effect"
            )
            image = load_image(path, what="effect map")
            _check_grid(image, reference, path, reference_path)
            maps.append(image)
            files.append(path)
        effects[contrast] = maps
    for contrast, maps in effects.items():
        if config.smoothing_fwhm:
            from nilearn.image import smooth_img

            maps = smooth_img(maps, config.smoothing_fwhm)
        stacked = np.stack([np.asanyarray(image.dataobj)[mask] for image in maps])
        bad = ~np.isfinite(stacked).all(axis=1)
        if bad.any():
            subject = subjects[int(np.flatnonzero(bad)[0])]
            path = layout.first_level_map(subject, config.task, contrast, "effect")
            raise InputError(
                f"{path} has "
                "NaN or infinite values inside the group mask; rerun that subject's "
                "participant level"
            )
        effects[contrast] = stacked.astype(np.float64)
    if not mask.any():
        raise InputError("the subjects' masks do not overlap; are they in one space?")
    info = {}
    model = ModelInfo()
    for sidecar in sidecars[subjects[0]].values():
        if sidecar is not None:
            info.update(sidecar.Contrasts)
            model = sidecar.Model
    return GroupInputs(
        subjects=[f"sub-{s}" for s in subjects],
        contrasts=contrasts,
        mask=mask,
        affine=reference.affine,
        header=reference.header,
        effects=effects,
        files=files,
        contrast_info=info,
        first_level_model=model,
        excluded={f"sub-{s}": reason for s, reason in excluded.items()},
    )


def _bids_root(config: GroupConfig) -> Path | None:
    """The raw dataset: given, or the source named by dataset_description.json."""
    if config.bids_dir is not None:
        return Path(config.bids_dir)
    path = Path(config.output_dir) / "dataset_description.json"
    try:
        description = DatasetDescription.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None
    return description.local_source(Path(config.output_dir))


def _subjects_without_maps(
    config: GroupConfig, bids_root: Path | None, available: list[str]
) -> list[str]:
    """Subjects the participant level would have fitted that have no maps."""
    if config.fmriprep_dir is not None:
        fmriprep = Path(config.fmriprep_dir)
    elif bids_root is not None:
        fmriprep = bids_root / "derivatives" / "fmriprep"
    else:
        return []
    if not fmriprep.is_dir():
        return []
    return [s for s in find_subjects(fmriprep, config.task) if s not in available]


def _effect_sidecars(
    root: Path, subject: str, task: str, contrasts: list[str]
) -> dict[str, MapSidecar | None]:
    """The sidecar of each effect map of a subject (None where there is none)."""
    sidecars = {}
    for contrast in contrasts:
        path = root / layout.sidecar_of(
            layout.first_level_map(subject, task, contrast, "effect")
        )
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            sidecars[contrast] = None
            continue
        try:
            sidecars[contrast] = MapSidecar.model_validate_json(text)
        except ValueError:
            raise InputError(
                f"{path} is not a sidecar this version can read; rerun the "
                "participant level of that subject"
            ) from None
    return sidecars


def _out_of_date(
    sidecars: dict[str, MapSidecar | None], bids_root: Path | None
) -> str | None:
    """Why a subject's maps are out of date for their inputs, or None."""
    recorded = next((s for s in sidecars.values() if s is not None), None)
    if recorded is None or bids_root is None or not recorded.InputFiles:
        return None
    changed, _ = changed_inputs(recorded.InputFiles, bids_root)
    if not changed:
        return None
    more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
    return f"its input {changed[0]}{more} changed after its maps were made"


def _check_same_first_level(
    sidecars: dict[str, dict[str, MapSidecar | None]], subjects: list[str]
) -> None:
    """Stop if the subjects' first levels differ in anything a group map needs."""
    signatures = {}
    for subject in subjects:
        found = [s for s in sidecars[subject].values() if s is not None]
        if not found:
            log.warning(
                "group level: sub-%s has no first-level sidecars; its model, "
                "confounds and contrasts cannot be checked against the others",
                subject,
            )
            continue
        signatures[subject] = first_level_signature(found)
    difference = signature_difference(signatures)
    if difference is None:
        return
    key, groups = difference
    described = "; ".join(
        f"{', '.join(f'sub-{s}' for s in members)}: {value}"
        for value, members in groups.items()
    )
    raise InputError(
        f"the subjects' first-level sidecars disagree on {key} ({described}); "
        "a group map must not mix them: rerun the participant level of the "
        "subjects that differ with the same options, or choose subjects with "
        "--participant-label"
    )


def _log_mask_losses(masks: dict[str, np.ndarray]) -> None:
    """Name the subjects whose mask cuts the group mask by more than a few %."""
    if len(masks) < 2:
        return
    counts = np.sum(list(masks.values()), axis=0)
    for subject, subject_mask in masks.items():
        others = (counts - subject_mask) == len(masks) - 1
        lost = int((others & ~subject_mask).sum())
        if others.any() and lost > MASK_LOSS_WARNING * others.sum():
            log.warning(
                "group level: the mask of sub-%s leaves out %.1f %% (%d voxels) of "
                "the voxels all other subjects' masks share; the group mask loses "
                "them (check its brain mask, or leave it out with "
                "--participant-label)",
                subject,
                100 * lost / others.sum(),
                lost,
            )


def _check_grid(image, reference, path, reference_path) -> None:
    if image.shape[:3] != reference.shape[:3] or not np.allclose(
        image.affine, reference.affine, atol=1e-3
    ):
        raise InputError(
            f"{path} (shape {image.shape[:3]}) is not on the grid of {reference_path} "
            f"(shape {reference.shape[:3]}); all subjects' maps must share one space "
            "and resolution"
        )


def _fwe_method(config: GroupConfig, n_subjects: int) -> str:
    smallest = min_subjects_for_permutation(config.alpha, config.one_sided)
    if config.fwe == "permutation" and n_subjects < smallest:
        raise InputError(
            f"--fwe permutation cannot reach alpha={config.alpha} with {n_subjects} "
            f"subjects: 2^{n_subjects} sign flips give a smallest corrected p of "
            f"{(1 if config.one_sided else 2) / 2**n_subjects:g}; it needs at least "
            f"{smallest} subjects (use --fwe bonferroni or auto)"
        )
    method = config.fwe
    if method == "auto":
        method = "permutation" if n_subjects >= smallest else "bonferroni"
    if method == "permutation":
        _check_n_perm(config, n_subjects)
    return method


def _check_n_perm(config: GroupConfig, n_subjects: int) -> None:
    n_used, exhaustive = permutation_count(n_subjects, config.n_perm)
    if not exhaustive and n_used < min_n_perm(config.alpha):
        raise InputError(
            f"--n-perm {config.n_perm} is too small for alpha={config.alpha}; "
            f"use at least {min_n_perm(config.alpha)}"
        )


@dataclass(frozen=True)
class _Plan:
    """What the group level writes for every contrast, decided once."""

    fwe_method: str
    corrections: tuple[str, ...]
    spatial: SpatialInference | None
    skipped: dict[str, str]

    @property
    def stats(self) -> tuple[str, ...]:
        return tuple(
            stat
            for stat in layout.GROUP_STAT_TYPES
            if stat != "tfce" or "tfce" in self.corrections
        )


def _plan(config: GroupConfig, n_subjects: int, mask: np.ndarray) -> _Plan:
    """The FWE method, the corrections that can be written, and why not the rest.

    TFCE and cluster extent have no parametric fallback: with fewer subjects
    than a sign-flip test needs to reach alpha, they are left out, with the
    reason.
    """
    method = _fwe_method(config, n_subjects)
    wanted = [c for c in config.corrections if c in layout.PERMUTATION_CORRECTIONS]
    smallest = min_subjects_for_permutation(config.alpha, config.one_sided)
    skipped: dict[str, str] = {}
    if wanted and n_subjects < smallest:
        reason = (
            f"not written: {n_subjects} subjects are too few for a sign-flip test "
            f"at alpha={config.alpha} (2^{n_subjects} sign flips give a smallest "
            f"corrected p of {(1 if config.one_sided else 2) / 2**n_subjects:g}; "
            f"at least {smallest} subjects are needed), and it has no parametric "
            "fallback"
        )
        skipped = {correction: reason for correction in wanted}
        wanted = []
    elif wanted:
        _check_n_perm(config, n_subjects)
    spatial = None
    if wanted:
        spatial = SpatialInference.from_mask(
            mask,
            connectivity=CONNECTIVITY,
            tfce=config.tfce if "tfce" in wanted else None,
            cluster_threshold=config.cluster_threshold if "cluster" in wanted else None,
        )
    return _Plan(
        fwe_method=method,
        corrections=tuple(c for c in config.corrections if c not in skipped),
        spatial=spatial,
        skipped=skipped,
    )


def _group_outputs(contrasts: list[str], plan: _Plan) -> list[str]:
    """File names of every output of the group level (as ``plan`` decides)."""
    maps = [
        path
        for contrast in contrasts
        for path in (
            *(layout.group_map(contrast, stat) for stat in plan.stats),
            *(layout.group_map(contrast, correction=c) for c in plan.corrections),
        )
    ]
    tables = [
        layout.cluster_table(contrast, correction)
        for contrast in contrasts
        for correction in plan.corrections
    ]
    paths = [*maps, *map(layout.sidecar_of, maps), *tables, layout.group_mask()]
    return [path.name for path in paths]


def _is_complete(root: Path, contrasts: list[str], expected: str, plan: _Plan) -> bool:
    return outputs_complete(
        root / layout.GROUP_LEVEL_DIR,
        layout.group_manifest().name,
        _group_outputs(contrasts, plan),
        expected,
    )


def _check_first_levels_finished(root: Path, subjects: list[str], task: str) -> None:
    """Refuse subjects whose first level was interrupted (or is being written).

    Their manifest is then incomplete, and their maps may be of two runs.
    """
    for subject in subjects:
        relative = layout.first_level_manifest(subject, task)
        manifest = read_manifest(root / relative)
        if manifest is not None and not manifest.Complete:
            raise InputError(
                f"the first level of {subject} is incomplete ({relative} lists "
                "outputs not written yet): a participant run was interrupted or "
                "is still running; rerun the participant level for it first"
            )


def _survivor_threshold(z: np.ndarray, survive: np.ndarray) -> float | None:
    """Smallest |z| that survives, so that ``|z| >= threshold`` reproduces the map.

    Taken from the float32 values the map stores, so that it holds on the file.
    """
    stored = np.abs(z.astype(np.float32))
    return float(stored[survive].min()) if survive.any() else None


def _critical_values(p: float, dof: float, one_sided: bool) -> tuple[float, float]:
    """|t| and |z| whose (one- or two-sided) p-value is ``p``, at ``dof``.

    z goes through t as the z map does (:func:`t_to_z`), so that a voxel with
    ``p <= p`` has ``|z| >= ZThreshold`` up to rounding.
    """
    tail = p if one_sided else p / 2
    # The lower tail keeps its precision for the small p of a correction.
    t = float(-special.stdtrit(dof, tail))
    return t, float(t_to_z(np.array([t]), dof)[0])


def run_group(
    config: GroupConfig, sign_flip: SignFlipTest = sign_flip_max_t
) -> list[Path]:
    """Fit the group level of every contrast and write its maps.

    Parameters
    ----------
    config : GroupConfig
        The options of the group level.
    sign_flip : callable, default=sign_flip_max_t
        The sign-flip test of the FWE, TFCE and cluster maps, all from one call
        per contrast (in this process by default; the pipeline passes one that
        runs on Dask workers when a cluster is named).

    Returns
    -------
    list of Path
        The maps written (empty when everything was already complete).
    """
    inputs = read_group_inputs(config)
    root = Path(config.output_dir)
    _check_first_levels_finished(root, inputs.subjects, config.task)
    plan = _plan(config, len(inputs.subjects), inputs.mask)
    fingerprint = provenance.fingerprint(config.parameters(), inputs.files)
    with folder_lock(
        root / layout.lock_of(layout.GROUP_LEVEL_DIR), what="the group level"
    ):
        remove_stale_temporaries(root / layout.GROUP_LEVEL_DIR)
        if not config.force and _is_complete(root, inputs.contrasts, fingerprint, plan):
            log.info("group level: outputs complete and up to date, skipped")
            return []
        with output_set(
            root / layout.GROUP_LEVEL_DIR,
            layout.group_manifest().name,
            _group_outputs(inputs.contrasts, plan),
            fingerprint,
        ):
            return _fit_and_write(config, inputs, plan, fingerprint, sign_flip)


def _fit_and_write(config, inputs, plan, fingerprint, sign_flip) -> list[Path]:
    method = plan.fwe_method
    root = Path(config.output_dir)
    n_subjects = len(inputs.subjects)
    sidedness = "one-sided (effect > 0)" if config.one_sided else "two-sided"
    log.info(
        "group level: %d subjects (%s), %d contrasts, %d voxels in the group mask; "
        "FDR q=%g, FWE %s at alpha=%g, %s",
        n_subjects,
        ", ".join(inputs.subjects),
        len(inputs.contrasts),
        int(inputs.mask.sum()),
        config.alpha,
        method,
        config.alpha,
        sidedness,
    )
    if method == "bonferroni" and config.fwe == "auto":
        log.info(
            "group level: %d subjects are too few for a sign-flip FWE test at "
            "alpha=%g (at least %d needed); the FWE map uses Bonferroni",
            n_subjects,
            config.alpha,
            min_subjects_for_permutation(config.alpha, config.one_sided),
        )
    for correction, reason in plan.skipped.items():
        log.info("group level: %s maps %s", correction.upper(), reason)
    if plan.spatial is not None:
        parts = []
        if plan.spatial.tfce is not None:
            parts.append(
                f"TFCE (E={config.tfce_e:g}, H={config.tfce_h:g}, dh={config.tfce_dh})"
            )
        if plan.spatial.cluster_threshold is not None:
            parts.append(f"cluster extent (p < {config.cluster_threshold:g})")
        log.info(
            "group level: %s from the same sign flips, %d-connectivity",
            " and ".join(parts),
            CONNECTIVITY,
        )
    written: list[Path] = []
    for contrast in inputs.contrasts:
        written += _contrast_outputs(
            config, inputs, contrast, plan, fingerprint, sign_flip
        )
    # The maps' header (qform and sform codes, units), as at the first level.
    mask_header = inputs.header.copy()
    mask_header.set_data_dtype(np.uint8)
    mask_header.set_xyzt_units("mm", "sec")
    mask_image = nib.Nifti1Image(
        inputs.mask.astype(np.uint8), inputs.affine, mask_header
    )
    written.append(save_image(mask_image, root / layout.group_mask()))
    return written


def _contrast_outputs(config, inputs, contrast, plan, fingerprint, sign_flip):
    method = plan.fwe_method
    root = Path(config.output_dir)
    effects = inputs.effects[contrast]
    result: OneSampleResult = one_sample_t(effects, one_sided=config.one_sided)
    base = MapSidecar(
        AnalysisLevel="group_level",
        Model=ModelInfo(
            Type="OLS one-sample t test over subjects' first-level effects",
            HRF=inputs.first_level_model.HRF,
            DriftModel=inputs.first_level_model.DriftModel,
            HighPassFilter=inputs.first_level_model.HighPassFilter,
            NoiseModel="ols",
            SmoothingFWHM=config.smoothing_fwhm,
            RunCombination=inputs.first_level_model.RunCombination,
            FirstLevelSmoothingFWHM=inputs.first_level_model.SmoothingFWHM,
        ),
        Contrasts={contrast: inputs.contrast_info[contrast]}
        if contrast in inputs.contrast_info
        else {},
        Software=software(),
        Dependencies=dependency_versions(),
        Task=config.task,
        Subjects=inputs.subjects,
        ExcludedSubjects=inputs.excluded or None,
        DegreesOfFreedom=float(result.dof),
        Mask=layout.group_mask().name,
        SkippedCorrections=plan.skipped or None,
        Parameters={**config.parameters(), "Fingerprint": fingerprint},
    )
    header = inputs.header.copy()
    header.set_data_dtype(np.float32)

    def volume(values):
        data = np.zeros(inputs.mask.shape, dtype=np.float32)
        data[inputs.mask] = values
        return nib.Nifti1Image(data, inputs.affine, header)

    survivors = {}
    corrections = {}
    p_cut = fdr_threshold(result.p, config.alpha)
    survivors["fdr"] = result.p <= p_cut if p_cut > 0 else np.zeros_like(result.p, bool)
    # With no discovery, the critical p is the first step of Benjamini-Hochberg
    # (q / m): what the smallest p would have needed.
    p_critical = p_cut if p_cut > 0 else config.alpha / result.p.size
    t_critical, z_critical = _critical_values(p_critical, result.dof, config.one_sided)
    corrections["fdr"] = CorrectionInfo(
        Method="fdr (Benjamini-Hochberg)",
        Alpha=config.alpha,
        TwoSided=not config.one_sided,
        PThreshold=p_critical,
        TThreshold=t_critical,
        ZThreshold=z_critical,
        Note=f"voxels with p <= {p_critical:.6g} survive (q = {config.alpha})"
        + ("" if p_cut > 0 else "; no voxel does, q / m is the first step's cutoff"),
    )
    permutation = None
    if plan.spatial is not None or (
        method == "permutation" and "fwe" in plan.corrections
    ):
        # One pass over the sign flips for every permutation-based correction.
        permutation = sign_flip(
            effects,
            n_perm=config.n_perm,
            alpha=config.alpha,
            one_sided=config.one_sided,
            seed=config.seed,
            spatial=plan.spatial,
        )
    if "tfce" in plan.corrections:
        survivors["tfce"] = permutation.tfce.mask
        corrections["tfce"] = _tfce_info(config, permutation)
    if "cluster" in plan.corrections:
        survivors["cluster"] = permutation.cluster.mask
        corrections["cluster"] = _cluster_info(config, permutation)
    if method == "permutation" and "fwe" in plan.corrections:
        survivors["fwe"] = permutation.mask
        z_cutoff = float(t_to_z(np.array([permutation.t_cutoff]), result.dof)[0])
        corrections["fwe"] = CorrectionInfo(
            Method="fwe (sign-flip permutation of max |t|)"
            if not config.one_sided
            else "fwe (sign-flip permutation of max t)",
            Alpha=config.alpha,
            TwoSided=not config.one_sided,
            TThreshold=permutation.t_cutoff,
            ZThreshold=z_cutoff,
            NPermutations=permutation.n_perm,
            Exhaustive=permutation.exhaustive,
            Seed=permutation.seed,
            Note=f"voxels with {'|t|' if not config.one_sided else 't'} > "
            f"{permutation.t_cutoff:.6g} survive (chunk size {permutation.chunk_size})",
        )
    elif "fwe" in plan.corrections:
        survive, p_bonferroni = bonferroni_mask(result.p, config.alpha)
        survivors["fwe"] = survive
        t_critical, z_critical = _critical_values(
            p_bonferroni, result.dof, config.one_sided
        )
        corrections["fwe"] = CorrectionInfo(
            Method="fwe (Bonferroni, parametric)",
            Alpha=config.alpha,
            TwoSided=not config.one_sided,
            PThreshold=p_bonferroni,
            TThreshold=t_critical,
            ZThreshold=z_critical,
            Note=f"voxels with p <= {p_bonferroni:.6g} survive (alpha / "
            f"{result.p.size} voxels)"
            + (
                "; a sign-flip test cannot reach alpha with this few subjects"
                if config.fwe == "auto"
                else ""
            ),
        )
    written = []
    values_of = {"t": result.t, "z": result.z, "p": result.p}
    if "tfce" in plan.corrections:
        values_of["tfce"] = permutation.tfce.tfce
    for stat in plan.stats:
        relative = layout.group_map(contrast, stat)
        written.append(save_image(volume(values_of[stat]), root / relative))
        update: dict[str, object] = {"StatType": stat}
        if stat == "p":
            update["TwoSided"] = not config.one_sided
        if stat == "tfce":
            update["TFCE"] = corrections["tfce"].TFCE
        write_json(base.model_copy(update=update), root / layout.sidecar_of(relative))
    for correction in plan.corrections:
        survive = survivors[correction]
        if config.one_sided:
            survive = survive & (result.z > 0)
        corrected = np.where(survive, result.z, 0.0)
        z_threshold = _survivor_threshold(result.z, survive)
        info = corrections[correction].model_copy(
            update={"SmallestSurvivingZ": z_threshold}
        )
        relative = layout.group_map(contrast, correction=correction)
        image = volume(corrected)
        table_path = root / layout.cluster_table(contrast, correction)
        if z_threshold is not None:
            table = cluster_table(
                image, z_threshold - 1e-6, two_sided=not config.one_sided
            )
            write_text(table.to_csv(sep="\t", index=False), table_path)
        else:
            write_text(
                "Cluster ID\tX\tY\tZ\tPeak Stat\tCluster Size (mm3)\t"
                "Cluster Size (voxels)\n",
                table_path,
            )
        written.append(save_image(image, root / relative))
        write_json(
            base.model_copy(update={"StatType": "z", "Correction": info}),
            root / layout.sidecar_of(relative),
        )
        log.info(
            "group %s: %d voxels survive %s",
            contrast,
            int(survive.sum()),
            info.Method,
        )
    return written


def _tfce_info(config: GroupConfig, permutation: PermutationResult) -> CorrectionInfo:
    tfce = permutation.tfce
    sides = "|TFCE|" if not config.one_sided else "TFCE"
    return CorrectionInfo(
        Method=f"tfce (sign-flip permutation of max {sides})",
        Alpha=config.alpha,
        TwoSided=not config.one_sided,
        NPermutations=permutation.n_perm,
        Exhaustive=permutation.exhaustive,
        Seed=permutation.seed,
        TFCE=TFCEInfo(
            E=tfce.parameters.E,
            H=tfce.parameters.H,
            Dh=tfce.dh,
            DhRule=_DH_RULE["auto" if tfce.parameters.dh == "auto" else "number"],
            Connectivity=tfce.connectivity,
            TwoSided=not config.one_sided,
        ),
        CriticalMaxTFCE=tfce.cutoff,
        Note=f"voxels with {sides} > {tfce.cutoff:.6g} survive; TFCE as nilearn's "
        f"(sum over heights h of extent^{tfce.parameters.E:g} h^{tfce.parameters.H:g},"
        f" not multiplied by dh; dh = {tfce.dh:.4g} on this map)",
    )


def _cluster_info(
    config: GroupConfig, permutation: PermutationResult
) -> CorrectionInfo:
    cluster = permutation.cluster
    sides = "|t|" if not config.one_sided else "t"
    return CorrectionInfo(
        Method="cluster extent (sign-flip permutation of the largest cluster)",
        Alpha=config.alpha,
        TwoSided=not config.one_sided,
        NPermutations=permutation.n_perm,
        Exhaustive=permutation.exhaustive,
        Seed=permutation.seed,
        Cluster=ClusterInfo(
            FormingP=cluster.forming_p,
            FormingT=cluster.forming_t,
            Connectivity=cluster.connectivity,
        ),
        CriticalClusterSize=cluster.cutoff,
        Note=f"clusters of {sides} > {cluster.forming_t:.4g} (p < "
        f"{cluster.forming_p:g}) with more than {cluster.cutoff} voxels survive",
    )
