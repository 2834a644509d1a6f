"""The roi level: GSS parcels, subject fROIs, held-out response profiles.

Runs after the participant and group levels (it reads the subjects' z maps,
their half-run maps and the group mask) and writes, for every defining contrast
(:data:`~laion_fmri_dataloader.rois.DEFAULT_ROI_CONTRASTS` or
``--roi-contrast``):

- the group parcels (:func:`~laion_fmri_dataloader.stats.froi.make_parcels`),
  one mask per region ``group_roi-<name>_hemi-<h>_parcel.nii.gz``, named after
  the canonical table (:func:`~laion_fmri_dataloader.rois.name_parcels`), or
  the parcels given with ``--parcels FILE --parcel-labels FILE.tsv``;
- each subject's fROI in each parcel, from all runs and from each half of the
  runs (``split-odd``, ``split-even``), with a sidecar (defining contrast,
  parcel, rule, runs, voxel count, peak);
- each subject's response table: the percent signal change of every condition
  in each fROI, measured in the half of the runs that did not define it
  (odd-run fROI in even runs and the reverse, averaged), and the Dice of the
  two half-run fROIs; the group table (mean, SEM, n) and a bar plot per region;
- the probability map of each region: the share of subjects whose fROI (all
  runs) holds each voxel.

Everything is read and checked before anything is written; files of an
earlier roi run that this run does not make again are removed, so the loader
never lists a stale region.  The level takes seconds, so it is redone on every
call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pandas as pd

from laion_fmri_dataloader import layout
from laion_fmri_dataloader._version import __version__
from laion_fmri_dataloader.contrasts import CONDITIONS
from laion_fmri_dataloader.errors import (
    InputError,
    InvalidLabelError,
    InvalidParameterError,
    did_you_mean,
)
from laion_fmri_dataloader.io.files import (
    atomic_output,
    folder_lock,
    load_image,
    save_image,
    write_json,
    write_text,
)
from laion_fmri_dataloader.pipeline.roi_figure import profile_png
from laion_fmri_dataloader.rois import (
    DEFAULT_ROI_CONTRASTS,
    DEFAULT_ROI_SIZE,
    NAMING_RADIUS_MM,
    RoiContrast,
    RoiSize,
    canonical_entry,
    name_parcels,
)
from laion_fmri_dataloader.sidecar import dependency_versions, software
from laion_fmri_dataloader.stats.froi import (
    dice,
    held_out_responses,
    make_parcels,
    peak_voxel,
    select_froi,
    voxel_coordinates,
)

__all__ = ["RoiConfig", "RoiSummary", "run_roi"]

log = logging.getLogger("laion_fmri")


@dataclass(frozen=True)
class RoiConfig:
    """Options of the roi level.

    Attributes
    ----------
    output_dir : Path
        The GLM derivative folder (holds ``first_level`` and ``group_level``).
    task : str
        Task of the first-level maps.
    subjects : tuple of str
        Bare labels; empty means every subject with first-level maps.
    contrasts : tuple of RoiContrast
        Defining contrasts, one per category.
    size : RoiSize
        How a subject's fROI is picked inside a parcel.
    p_threshold : float
        Voxel threshold of the subjects' maps for the parcels (one-sided).
    smoothing_fwhm : float
        Smoothing of the overlap map, mm.
    min_overlap : float
        Smallest smoothed overlap in a parcel (share of subjects).
    min_subject_fraction : float
        Share of subjects with supra-threshold voxels a parcel needs.
    min_parcel_voxels : int
        Smallest parcel kept, voxels.
    naming_radius_mm : float
        Largest distance to a canonical entry that gives its name, mm.
    parcels_file, parcel_labels_file : Path or None
        Given parcels (integer labels on the data's grid) and their TSV
        (columns ``index``, ``name``; optional ``hemi`` and ``category``),
        used instead of the group-constrained parcels.
    """

    output_dir: Path
    task: str = "experiment"
    subjects: tuple[str, ...] = ()
    contrasts: tuple[RoiContrast, ...] = tuple(DEFAULT_ROI_CONTRASTS.values())
    size: RoiSize = DEFAULT_ROI_SIZE
    p_threshold: float = 0.001
    smoothing_fwhm: float = 8.0
    min_overlap: float = 0.1
    min_subject_fraction: float = 0.6
    min_parcel_voxels: int = 0
    naming_radius_mm: float = NAMING_RADIUS_MM
    parcels_file: Path | None = None
    parcel_labels_file: Path | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.p_threshold < 1.0:
            raise InvalidParameterError(
                f"--parcel-p-threshold must be in (0, 1); got {self.p_threshold}"
            )
        if self.smoothing_fwhm < 0:
            raise InvalidParameterError(
                f"--parcel-fwhm must be >= 0 mm; got {self.smoothing_fwhm}"
            )
        for flag, value in (
            ("--parcel-min-overlap", self.min_overlap),
            ("--parcel-min-subjects", self.min_subject_fraction),
        ):
            if not 0.0 <= value <= 1.0:
                raise InvalidParameterError(
                    f"{flag} must be a share of subjects in [0, 1]; got {value}"
                )
        if self.min_parcel_voxels < 0:
            raise InvalidParameterError(
                f"--parcel-min-voxels must be >= 0; got {self.min_parcel_voxels}"
            )
        if (self.parcels_file is None) != (self.parcel_labels_file is None):
            raise InvalidParameterError(
                "--parcels and --parcel-labels go together: give both or neither"
            )

    def parameters(self) -> dict[str, object]:
        """The parameters in the sidecars."""
        return {
            "Task": self.task,
            "DefiningContrasts": {c.category: c.describe() for c in self.contrasts},
            "RoiSize": self.size.to_text(),
            "ParcelPThreshold": self.p_threshold,
            "ParcelSmoothingFWHM": self.smoothing_fwhm,
            "ParcelMinOverlap": self.min_overlap,
            "ParcelMinSubjectFraction": self.min_subject_fraction,
            "ParcelMinVoxels": self.min_parcel_voxels,
            "NamingRadiusMM": self.naming_radius_mm,
            "ParcelsFile": str(self.parcels_file) if self.parcels_file else None,
            "Version": __version__,
        }


@dataclass
class RoiSummary:
    """What the roi level made: the regions and the files written."""

    regions: list[tuple[str, str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


@dataclass
class _Subject:
    label: str
    mask: np.ndarray
    z: dict[str, np.ndarray]  # all runs, by contrast
    half_z: dict[str, dict[str, np.ndarray]]  # split -> contrast -> z
    half_effects: dict[str, np.ndarray]  # split -> (n_conditions, X, Y, Z)
    runs: list[str]
    half_runs: dict[str, list[str]]


@dataclass
class _Inputs:
    subjects: list[_Subject]
    conditions: list[str]
    group_mask: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header


@dataclass
class _Region:
    name: str
    hemi: str
    contrast: RoiContrast
    parcel: np.ndarray
    info: dict[str, object]


def _read_sidecar(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _same_grid(image: nib.Nifti1Image, shape, affine) -> bool:
    return image.shape[:3] == tuple(shape) and np.allclose(
        image.affine, affine, atol=1e-3
    )


def _load_on_grid(path: Path, shape, affine, what: str) -> np.ndarray:
    image = load_image(path, what=what)
    if not _same_grid(image, shape, affine):
        raise InputError(
            f"{what} {path} is on grid {image.shape[:3]} with another affine than "
            f"the group mask {tuple(shape)}; the roi level needs one grid"
        )
    return np.asarray(image.dataobj, dtype=np.float32)


def _subjects_with_maps(root: Path, task: str) -> list[str]:
    folder = root / layout.FIRST_LEVEL_DIR
    return sorted(
        path.name[len("sub-") :]
        for path in folder.glob("sub-*")
        if any(path.glob(f"{path.name}_task-{task}_contrast-*_stat-z.nii.gz"))
    )


def _contrasts_of(root: Path, subject: str, task: str) -> list[str]:
    folder = root / layout.first_level_dir(subject)
    names = (layout.parse_name(p.name) for p in folder.glob("*_stat-z.nii.gz"))
    return sorted(
        n["contrast"]
        for n in names
        if n.get("task") == task and "split" not in n and "contrast" in n
    )


def _half_conditions(root: Path, subject: str, task: str) -> list[str]:
    folder = root / layout.first_level_dir(subject)
    found = set()
    for path in folder.glob("*_split-odd_contrast-*_stat-effect.nii.gz"):
        entities = layout.parse_name(path.name)
        if entities.get("task") == task:
            found.add(entities["contrast"])
    order = [c for c in CONDITIONS if c in found]
    return order + sorted(found - set(order))


def _read_inputs(config: RoiConfig) -> _Inputs:
    root = Path(config.output_dir)
    group_mask_path = root / layout.group_mask()
    labels = list(config.subjects) or _subjects_with_maps(root, config.task)
    if not labels:
        raise InputError(
            f"{root / layout.FIRST_LEVEL_DIR} holds no first-level z maps of "
            f"task-{config.task}; run `laion-fmri-glm glm BIDS_DIR {root} "
            "participant` first"
        )
    if not group_mask_path.is_file():
        raise InputError(
            f"group mask {group_mask_path} is missing; the roi level runs after "
            f"`laion-fmri-glm glm BIDS_DIR {root} group`"
        )
    mask_image = load_image(group_mask_path, what="group mask")
    group_mask = np.asarray(mask_image.dataobj) > 0
    shape, affine = group_mask.shape, mask_image.affine
    available = _contrasts_of(root, labels[0], config.task)
    for roi_contrast in config.contrasts:
        if roi_contrast.contrast not in available:
            raise InvalidLabelError(
                f"--roi-contrast {roi_contrast.category}={roi_contrast.describe()}: "
                f"no contrast '{roi_contrast.contrast}' in the first level of "
                f"sub-{labels[0]}; " + did_you_mean(roi_contrast.contrast, available)
            )
    names = list(dict.fromkeys(c.contrast for c in config.contrasts))
    conditions = _half_conditions(root, labels[0], config.task)
    subjects = []
    for label in labels:
        subjects.append(
            _read_subject(root, config.task, label, names, conditions, shape, affine)
        )
    header = mask_image.header.copy()
    return _Inputs(subjects, conditions, group_mask, affine, header)


def _read_subject(root, task, label, names, conditions, shape, affine) -> _Subject:
    z = {}
    for name in names:
        path = root / layout.first_level_map(label, task, name, "z")
        if not path.is_file():
            raise InputError(
                f"z map {path} is missing; run the participant level for sub-{label} "
                "(with the same --contrast options) first"
            )
        z[name] = _load_on_grid(path, shape, affine, "z map")
    mask_path = root / layout.first_level_mask(label, task)
    if mask_path.is_file():
        mask = _load_on_grid(mask_path, shape, affine, "brain mask") > 0
    else:
        mask = np.isfinite(z[names[0]]) & (z[names[0]] != 0)
    runs = _read_sidecar(
        root / layout.sidecar_of(layout.first_level_map(label, task, names[0], "z"))
    ).get("Runs", [])
    half_z: dict[str, dict[str, np.ndarray]] = {}
    half_effects: dict[str, np.ndarray] = {}
    half_runs: dict[str, list[str]] = {}
    paths = {
        split: [
            root / layout.first_level_map(label, task, n, "z", split) for n in names
        ]
        + [
            root / layout.first_level_map(label, task, c, "effect", split)
            for c in conditions
        ]
        for split in layout.SPLITS
    }
    if len(runs) < 2:
        log.info(
            "sub-%s: %d run, so no half-run fROIs or response profiles",
            label,
            len(runs),
        )
    elif not conditions or not all(p.is_file() for ps in paths.values() for p in ps):
        log.info(
            "sub-%s: half-run maps missing, so no half-run fROIs or response "
            "profiles; rerun its participant level with --force to make them",
            label,
        )
    else:
        for split in layout.SPLITS:
            half_z[split] = {
                name: _load_on_grid(path, shape, affine, "half-run z map")
                for name, path in zip(names, paths[split], strict=False)
            }
            half_effects[split] = np.stack(
                [
                    _load_on_grid(path, shape, affine, "half-run effect map")
                    for path in paths[split][len(names) :]
                ]
            )
            half_runs[split] = _read_sidecar(
                root / layout.sidecar_of(paths[split][0])
            ).get("Runs", [])
    return _Subject(label, mask, z, half_z, half_effects, runs, half_runs)


def _read_given_parcels(config: RoiConfig, inputs: _Inputs) -> list[_Region]:
    """Regions of ``--parcels FILE --parcel-labels FILE.tsv``."""
    path, labels_path = Path(config.parcels_file), Path(config.parcel_labels_file)
    image = load_image(path, what="parcels")
    if not _same_grid(image, inputs.group_mask.shape, inputs.affine):
        raise InputError(
            f"parcels {path} are on grid {image.shape[:3]} (or another affine), not "
            f"the data's {inputs.group_mask.shape}; resample them to the first-level "
            "maps' grid (e.g. nilearn.image.resample_to_img, nearest interpolation)"
        )
    values = np.rint(np.asarray(image.dataobj)).astype(np.int64)
    try:
        table = pd.read_csv(labels_path, sep="\t", dtype={"name": str})
    except (OSError, ValueError) as error:
        raise InputError(
            f"parcel labels {labels_path} cannot be read: {error}"
        ) from None
    missing = {"index", "name"} - set(table.columns)
    if missing:
        raise InputError(
            f"parcel labels {labels_path} need the columns index and name (tab "
            f"separated); missing: {', '.join(sorted(missing))}"
        )
    by_category = {c.category: c for c in config.contrasts}
    x_mm = voxel_coordinates(values.shape, inputs.affine)[..., 0]
    regions = []
    for row in table.itertuples(index=False):
        parcel = (values == int(row.index)) & inputs.group_mask
        category = getattr(row, "category", None)
        if not isinstance(category, str):
            if len(by_category) != 1:
                raise InputError(
                    f"parcel labels {labels_path}: add a 'category' column naming "
                    f"one of {', '.join(by_category)} for each parcel"
                )
            category = next(iter(by_category))
        if category not in by_category:
            raise InputError(
                f"parcel labels {labels_path}: category '{category}' of parcel "
                f"{row.name} has no --roi-contrast; "
                + did_you_mean(category, by_category)
            )
        hemi = getattr(row, "hemi", None)
        if hemi not in ("L", "R"):
            hemi = "L" if parcel.any() and x_mm[parcel].mean() < 0 else "R"
        try:
            name = layout.validate_label(str(row.name), "roi")
        except InvalidLabelError as error:
            raise InputError(f"parcel labels {labels_path}: {error}") from None
        if not parcel.any():
            log.info(
                "parcel %s (%s): no voxel inside the group mask, skipped", name, hemi
            )
            continue
        info = {"Source": str(path), "Index": int(row.index)}
        regions.append(_Region(name, hemi, by_category[category], parcel, info))
    return regions


def _group_parcels(config: RoiConfig, inputs: _Inputs) -> list[_Region]:
    regions = []
    for roi_contrast in config.contrasts:
        z_maps = np.stack([s.z[roi_contrast.contrast] for s in inputs.subjects])
        result = make_parcels(
            z_maps,
            inputs.group_mask,
            inputs.affine,
            p_threshold=config.p_threshold,
            direction=roi_contrast.direction,
            smoothing_fwhm=config.smoothing_fwhm,
            min_overlap=config.min_overlap,
            min_subject_fraction=config.min_subject_fraction,
            min_voxels=config.min_parcel_voxels,
        )
        names = name_parcels(
            roi_contrast.category,
            [p.peak_mm for p in result.parcels],
            [p.hemi for p in result.parcels],
            config.naming_radius_mm,
        )
        log.info(
            "%s (%s): %d parcel%s kept, %d below %g%% of subjects or %d voxels%s",
            roi_contrast.category,
            roi_contrast.describe(),
            len(result.parcels),
            "" if len(result.parcels) == 1 else "s",
            len(result.rejected),
            100 * config.min_subject_fraction,
            config.min_parcel_voxels,
            ": "
            + ", ".join(
                f"{n}-{p.hemi} ({p.coverage:.0%})"
                for (n, _), p in zip(names, result.parcels, strict=True)
            )
            if result.parcels
            else "",
        )
        for parcel, (name, distance) in zip(result.parcels, names, strict=True):
            entry = canonical_entry(name)
            info = {
                "Label": parcel.label,
                "NumberOfVoxels": parcel.n_voxels,
                "SubjectCoverage": round(parcel.coverage, 6),
                "PeakMNI": [round(v, 2) for v in parcel.peak_mm],
                "PeakOverlap": round(parcel.peak_overlap, 6),
                "CanonicalName": entry.name if entry else None,
                "CanonicalDescription": entry.description if entry else None,
                "CanonicalCentreMNI": list(entry.centre(parcel.hemi))
                if entry
                else None,
                "DistanceToCanonicalMM": None
                if distance is None
                else round(distance, 2),
                "Reference": entry.reference if entry else None,
                "ZThreshold": round(result.z_cut, 6),
            }
            regions.append(
                _Region(
                    name,
                    parcel.hemi,
                    roi_contrast,
                    result.labels == parcel.label,
                    info,
                )
            )
    return regions


@dataclass
class _RegionResult:
    region: _Region
    frois: dict[str, dict[str | None, np.ndarray]]  # subject -> split -> mask
    rows: list[dict[str, object]]
    profile: np.ndarray  # (n_subjects, n_conditions), NaN without halves


def _measure_region(
    config: RoiConfig, inputs: _Inputs, region: _Region
) -> _RegionResult | None:
    contrast, direction = region.contrast.contrast, region.contrast.direction
    parcel = region.parcel
    frois: dict[str, dict[str | None, np.ndarray]] = {}
    rows = []
    profile = np.full((len(inputs.subjects), len(inputs.conditions)), np.nan)
    any_voxels = False
    for index, subject in enumerate(inputs.subjects):
        voxels = parcel & subject.mask
        masks: dict[str | None, np.ndarray] = {}
        z_all = np.where(voxels, subject.z[contrast], np.nan)[parcel]
        masks[None] = select_froi(z_all, config.size, direction)
        for split, maps in subject.half_z.items():
            z_half = np.where(voxels, maps[contrast], np.nan)[parcel]
            masks[split] = select_froi(z_half, config.size, direction)
        any_voxels |= bool(masks[None].any())
        frois[subject.label] = masks
        if not subject.half_z:
            continue
        responses = held_out_responses(
            masks["odd"],
            masks["even"],
            subject.half_effects["odd"][:, parcel],
            subject.half_effects["even"][:, parcel],
        )
        profile[index] = responses.mean
        overlap = dice(masks["odd"], masks["even"])
        for position, condition in enumerate(inputs.conditions):
            rows.append(
                {
                    "subject": f"sub-{subject.label}",
                    "roi": region.name,
                    "hemi": region.hemi,
                    "category": region.contrast.category,
                    "contrast": region.contrast.describe(),
                    "condition": condition,
                    "psc": responses.mean[position],
                    "psc_odd_froi": responses.odd_froi[position],
                    "psc_even_froi": responses.even_froi[position],
                    "n_voxels": int(masks[None].sum()),
                    "n_voxels_odd": int(masks["odd"].sum()),
                    "n_voxels_even": int(masks["even"].sum()),
                    "dice": overlap,
                }
            )
    if not any_voxels:
        log.info(
            "%s-%s: no subject has voxels in the parcel, skipped",
            region.name,
            region.hemi,
        )
        return None
    return _RegionResult(region, frois, rows, profile)


def _roi_sidecar(config, inputs, base: dict, **update) -> dict:
    return {
        **base,
        **update,
        "Software": software().model_dump(),
        "Dependencies": dependency_versions(),
        "Parameters": config.parameters(),
    }


def run_roi(config: RoiConfig) -> RoiSummary:
    """Run the roi level; return the regions made and the files written.

    Raises
    ------
    InputError
        If the participant or group outputs are missing or unusable, or given
        parcels are on another grid.
    InvalidLabelError
        If a defining contrast does not exist.
    """
    inputs = _read_inputs(config)
    if config.parcels_file is not None:
        regions = _read_given_parcels(config, inputs)
    else:
        regions = _group_parcels(config, inputs)
    results = [
        result
        for region in regions
        if (result := _measure_region(config, inputs, region)) is not None
    ]
    root = Path(config.output_dir)
    # The roi level writes into the group folder and every subject's: it holds
    # their locks, group first and subjects in order, so that a participant or
    # group run on the same folders waits instead of cleaning its temporaries.
    with ExitStack() as locks:
        locks.enter_context(
            folder_lock(
                root / layout.lock_of(layout.GROUP_LEVEL_DIR), what="the group level"
            )
        )
        for subject in sorted(inputs.subjects, key=lambda s: s.label):
            folder = layout.first_level_dir(subject.label)
            locks.enter_context(
                folder_lock(root / layout.lock_of(folder), what=f"sub-{subject.label}")
            )
        return _write_outputs(config, inputs, results)


def _write_outputs(config, inputs: _Inputs, results: Sequence[_RegionResult]):
    root = Path(config.output_dir)
    header = inputs.header.copy()
    header.set_data_dtype(np.uint8)
    summary = RoiSummary()
    written: set[PurePosixPath] = set()
    coords_mm = voxel_coordinates(inputs.group_mask.shape, inputs.affine)
    subjects = [f"sub-{s.label}" for s in inputs.subjects]

    def _save(volume, relative, dtype, sidecar):
        image = nib.Nifti1Image(volume.astype(dtype), inputs.affine)
        image.header.set_xyzt_units("mm")
        save_image(image, root / relative)
        write_json(sidecar, root / layout.sidecar_of(relative))
        written.update({relative, layout.sidecar_of(relative)})
        summary.files.append(root / relative)

    all_rows = []
    for result in results:
        region = result.region
        name, hemi = region.name, region.hemi
        summary.regions.append((name, hemi, region.contrast.category))
        base = {
            "Roi": name,
            "Hemisphere": hemi,
            "Category": region.contrast.category,
            "DefiningContrast": region.contrast.contrast,
            "Direction": "positive" if region.contrast.direction > 0 else "negative",
        }
        parcel_path = layout.group_roi_map(name, hemi, "parcel")
        _save(
            region.parcel,
            parcel_path,
            np.uint8,
            _roi_sidecar(
                config,
                inputs,
                base,
                AnalysisLevel="group_level",
                StatType="parcel",
                Subjects=subjects,
                Parcel=region.info,
            ),
        )
        probability = np.zeros(inputs.group_mask.shape, dtype=np.float32)
        for subject in inputs.subjects:
            for split, selected in result.frois[subject.label].items():
                volume = np.zeros(inputs.group_mask.shape, dtype=bool)
                volume[region.parcel] = selected
                if split is None:
                    probability += volume
                runs = subject.runs if split is None else subject.half_runs[split]
                z_map = (subject.z if split is None else subject.half_z[split])[
                    region.contrast.contrast
                ]
                peak = (
                    [
                        round(float(v), 2)
                        for v in coords_mm[
                            peak_voxel(z_map * region.contrast.direction, volume)
                        ]
                    ]
                    if volume.any()
                    else None
                )
                _save(
                    volume,
                    layout.roi_mask(subject.label, config.task, name, hemi, split),
                    np.uint8,
                    _roi_sidecar(
                        config,
                        inputs,
                        base,
                        AnalysisLevel="first_level",
                        StatType="roi",
                        Subject=f"sub-{subject.label}",
                        Task=config.task,
                        Split=split,
                        Runs=runs,
                        Parcel=parcel_path.name,
                        Rule=config.size.to_text(),
                        RuleDescription=config.size.describe(),
                        NumberOfVoxels=int(volume.sum()),
                        PeakMNI=peak,
                    ),
                )
        probability /= len(inputs.subjects)
        _save(
            probability,
            layout.group_roi_map(name, hemi, "probability"),
            np.float32,
            _roi_sidecar(
                config,
                inputs,
                base,
                AnalysisLevel="group_level",
                StatType="probability",
                Units="share of subjects whose fROI (all runs) holds the voxel",
                Subjects=subjects,
            ),
        )
        if np.isfinite(result.profile).any():
            figure = layout.group_roi_figure(name, hemi)
            title = (
                f"{name} {hemi} ({region.contrast.describe()}, "
                f"{config.size.to_text()}), n = "
                f"{int(np.isfinite(result.profile[:, 0]).sum())}"
            )
            with atomic_output(root / figure) as temporary:
                temporary.write_bytes(
                    profile_png(inputs.conditions, result.profile, title)
                )
            written.add(figure)
        all_rows += result.rows
    table = pd.DataFrame(all_rows, columns=_ROW_COLUMNS)
    for subject in inputs.subjects:
        rows = table[table["subject"] == f"sub-{subject.label}"]
        if rows.empty:
            continue
        relative = layout.roi_responses(subject.label, config.task)
        write_text(_tsv(rows), root / relative)
        written.add(relative)
    if not table.empty:
        relative = layout.group_roi_responses()
        write_text(_tsv(_group_table(table)), root / relative)
        written.add(relative)
    _remove_stale(root, written)
    log.info(
        "roi level: %d region%s, %d subjects",
        len(summary.regions),
        "" if len(summary.regions) == 1 else "s",
        len(inputs.subjects),
    )
    return summary


_ROW_COLUMNS = [
    "subject",
    "roi",
    "hemi",
    "category",
    "contrast",
    "condition",
    "psc",
    "psc_odd_froi",
    "psc_even_froi",
    "n_voxels",
    "n_voxels_odd",
    "n_voxels_even",
    "dice",
]


def _group_table(table: pd.DataFrame) -> pd.DataFrame:
    keys = ["roi", "hemi", "category", "contrast", "condition"]
    grouped = table.groupby(keys, sort=False)
    summary = grouped.agg(
        mean=("psc", "mean"),
        sem=("psc", "sem"),
        n=("psc", "count"),
        dice_mean=("dice", "mean"),
        n_voxels_mean=("n_voxels", "mean"),
    )
    return summary.reset_index()


def _tsv(table: pd.DataFrame) -> str:
    return table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g")


def _is_roi_output(name: str) -> bool:
    entities = layout.parse_name(name)
    return entities.get("suffix") in (
        "roi",
        "roiresponses",
        "parcel",
        "probability",
        "roi-figure",
    )


def _remove_stale(root: Path, written: set[PurePosixPath]) -> None:
    """Delete roi outputs of an earlier run that this run did not make."""
    folders = [
        root / layout.GROUP_LEVEL_DIR,
        *(root / layout.FIRST_LEVEL_DIR).glob("sub-*"),
    ]
    for folder in folders:
        for path in folder.glob("*"):
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if _is_roi_output(path.name) and relative not in written:
                path.unlink(missing_ok=True)
