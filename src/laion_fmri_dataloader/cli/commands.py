"""What each ``laion-fmri-glm`` command does, from its parsed arguments.

The pipeline's modules are imported inside the commands, so that
``laion-fmri-glm --help`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.contrasts import STANDARD_CONTRASTS, parse_contrast
from laion_fmri_dataloader.errors import InvalidLabelError, InvalidParameterError
from laion_fmri_dataloader.io.storage import is_remote
from laion_fmri_dataloader.layout import subject_label
from laion_fmri_dataloader.pipeline.scheduler import Scheduler

if TYPE_CHECKING:
    from laion_fmri_dataloader.pipeline.participant import FirstLevelConfig
    from laion_fmri_dataloader.pipeline.roi import RoiConfig

__all__ = [
    "config_from_args",
    "demo",
    "glm",
    "info",
    "parse_condition_map",
    "parse_selection",
    "roi_config_from_args",
    "run_glm_command",
    "scheduler_from_args",
    "simulate",
]

log = logging.getLogger("laion_fmri")


def info(args: argparse.Namespace) -> int:
    """``laion-fmri-glm info DATA_DIR``."""
    from laion_fmri_dataloader.dataset import LAIONfMRIDataset
    from laion_fmri_dataloader.layout import GROUP_STAT_TYPES
    from laion_fmri_dataloader.sidecar import (
        first_level_signature,
        signature_difference,
    )

    dataset = LAIONfMRIDataset(args.data_dir)
    print(f"GLM derivatives in {dataset.root}")
    print(
        f"subjects ({len(dataset.subjects)}): {', '.join(dataset.subjects) or 'none'}"
    )
    print(f"tasks: {', '.join(dataset.tasks()) or 'none'}")
    missing = []
    signatures: dict[str, dict[str, dict[str, str]]] = {}
    for subject in dataset.subjects:
        for task in dataset.tasks(subject):
            contrasts = dataset.contrasts(subject, task)
            stats = dataset.stat_types(subject, task)
            print(
                f"  {subject} task-{task}: {len(contrasts)} contrasts "
                f"({', '.join(contrasts)}); stat types: {', '.join(stats)}"
            )
            state = dataset.first_level_state(subject, task)
            if state.sidecar is not None:
                print(f"    {_parameters_line(state.sidecar)}")
                signatures.setdefault(task, {})[subject] = first_level_signature(
                    [state.sidecar]
                )
            print(f"    state: {_state_line(state)}")
            missing += [f"{subject} task-{task} {item}" for item in state.missing]
            if not dataset.has_mask(subject, task):
                missing.append(f"{subject} task-{task} mask")
    for task, by_subject in signatures.items():
        difference = signature_difference(by_subject)
        if difference is not None:
            key, groups = difference
            print(
                f"parameters differ between subjects (task-{task}) on {key}: "
                + "; ".join(f"{', '.join(s)}: {v}" for v, s in groups.items())
            )
    for task in dataset.tasks():
        without = _subjects_without_maps(dataset, task)
        if without:
            print(
                f"no first-level task-{task} maps (participant level failed or not "
                f"run) but preprocessed BOLD: {', '.join(without)}"
            )
    group_contrasts = dataset.contrasts() if dataset.stat_types() else []
    print(
        f"group level: {len(group_contrasts)} contrasts ({', '.join(group_contrasts)})"
    )
    if group_contrasts:
        print(f"  stat types: {', '.join(dataset.stat_types())}")
        print(f"  corrections: {', '.join(dataset.corrections()) or 'none'}")
    for contrast in group_contrasts:
        missing += [
            f"group {contrast} stat-{stat}"
            for stat in GROUP_STAT_TYPES
            if stat in dataset.stat_types()
            and not dataset.has_map(contrast=contrast, stat_type=stat)
        ]
        for correction in dataset.corrections():
            if correction not in dataset.corrections(contrast):
                missing.append(f"group {contrast} {correction}-corrected")
    if group_contrasts and not dataset.has_mask():
        missing.append("group mask")
    if not group_contrasts:
        missing.append("group level (run `laion-fmri-glm glm ... group`)")
    regions = [f"{roi}-{hemi}" for roi, hemi in dataset.rois()]
    print(f"fROIs: {len(regions)} regions ({', '.join(regions) or 'none'})")
    print("missing: " + ("nothing" if not missing else f"{len(missing)}"))
    for item in missing:
        print(f"  {item}")
    return 0


def _parameters_line(sidecar) -> str:
    """A subject's first-level parameters in one line of ``info``."""
    model = sidecar.Model
    smoothing = f"{model.SmoothingFWHM:g} mm" if model.SmoothingFWHM else "none"
    version = sidecar.Software.Version if sidecar.Software else "unknown"
    return (
        f"{model.HRF} HRF, {model.DriftModel} drift, high-pass "
        f"{model.HighPassFilter:g} Hz, {model.NoiseModel} noise; smoothing "
        f"{smoothing}; {len(sidecar.Runs)} run{'' if len(sidecar.Runs) == 1 else 's'}"
        f" combined by {model.RunCombination or 'unknown'}; "
        f"{len(sidecar.Confounds)} confounds; version {version}"
    )


def _state_line(state) -> str:
    """Whether a subject's first level is complete and up to date, in words."""
    if state.missing:
        return f"incomplete ({len(state.missing)} maps missing)"
    if state.changed_inputs:
        more = len(state.changed_inputs) - 1
        return (
            f"out of date: {state.changed_inputs[0]}"
            + (f" and {more} more" if more else "")
            + " changed after the maps were made; rerun its participant level"
        )
    if state.sidecar is None:
        return "unchecked (no sidecars)"
    if state.missing_inputs:
        return f"complete; {len(state.missing_inputs)} recorded inputs not found"
    return "complete and up to date"


def _subjects_without_maps(dataset, task: str) -> list[str]:
    """Subjects with fMRIPrep BOLD of ``task`` beside the dataset but no maps."""
    from laion_fmri_dataloader.inputs.bids import find_subjects

    if dataset.source_dir is None:
        return []
    fmriprep = dataset.source_dir / "derivatives" / "fmriprep"
    if not fmriprep.is_dir():
        return []
    have = {subject for subject in dataset.subjects if task in dataset.tasks(subject)}
    return [
        f"sub-{label}"
        for label in find_subjects(fmriprep, task)
        if f"sub-{label}" not in have
    ]


def simulate(args: argparse.Namespace) -> int:
    """``laion-fmri-glm simulate OUTPUT_DIR``."""
    from laion_fmri_dataloader.simulate import simulate_dataset

    options = {
        "subjects": args.subjects,
        "runs": args.runs,
        "resolution": args.resolution,
        "n_volumes": args.n_volumes,
        "tr": args.tr,
        "seed": args.seed,
        "null": args.null,
        "task": args.task,
        "sessions": args.sessions,
        "extra_categories": tuple(args.extra_categories),
    }
    if args.effect_size is not None:
        options["effect_size"] = args.effect_size
    path = simulate_dataset(args.output_dir, **options)
    print(f"simulated dataset written to {path}")
    return 0


def glm(args: argparse.Namespace) -> int:
    """``laion-fmri-glm glm BIDS_DIR OUTPUT_DIR {participant,group,roi}``."""
    return run_glm_command(args)


def demo(args: argparse.Namespace) -> int:
    """``laion-fmri-glm demo [DIR]``."""
    from laion_fmri_dataloader.demo import run_demo

    return run_demo(args.directory, Scheduler.parse("local", workers=args.workers))


def parse_condition_map(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Parse ``["face=adult,child", ...]`` into ``{"face": ("adult", "child")}``.

    Examples
    --------
    >>> parse_condition_map(["face=adult,child", "scene=house"])
    {'face': ('adult', 'child'), 'scene': ('house',)}
    """
    mapping: dict[str, tuple[str, ...]] = {}
    for item in items:
        category, sep, trial_types = item.partition("=")
        names = tuple(name.strip() for name in trial_types.split(",") if name.strip())
        if not sep or not category.strip() or not names:
            raise InvalidLabelError(
                f"--condition {item!r} must look like CATEGORY=TYPE[,TYPE...], "
                "e.g. face=adult,child"
            )
        mapping[category.strip()] = mapping.get(category.strip(), ()) + names
    return mapping


def parse_selection(args: argparse.Namespace) -> dict[str, str]:
    """Entities choosing between variants of a run, from ``--res``, ``--den``, ...

    Examples
    --------
    >>> parse_selection(argparse.Namespace(res="2", den=None, bold_filter=["echo=2"]))
    {'res': '2', 'echo': '2'}
    """
    selection = {
        key: layout.validate_label(value, key)
        for key, value in (("res", args.res), ("den", args.den))
        if value is not None
    }
    for item in args.bold_filter:
        entity, sep, label = item.partition("=")
        if not sep or not entity.isalpha():
            raise InvalidLabelError(
                f"--bold-filter {item!r} must look like ENTITY=LABEL, e.g. echo=2"
            )
        selection[entity] = layout.validate_label(label, entity)
    return selection


def _check_timing(args: argparse.Namespace) -> None:
    if args.repetition_time is not None and not args.repetition_time > 0:
        raise InvalidParameterError(
            f"--repetition-time must be > 0 s; got {args.repetition_time}"
        )
    if args.slice_time_ref is not None and not 0 <= args.slice_time_ref < 1:
        raise InvalidParameterError(
            f"--slice-time-ref must be in [0, 1) (a fraction of the TR); got "
            f"{args.slice_time_ref}"
        )
    if args.dummy_scans is not None and args.dummy_scans < 0:
        raise InvalidParameterError(
            f"--dummy-scans must be >= 0; got {args.dummy_scans}"
        )


def config_from_args(args: argparse.Namespace) -> FirstLevelConfig:
    """The first-level configuration of a ``laion-fmri-glm glm`` command line."""
    from laion_fmri_dataloader.inputs.bids import DEFAULT_CONFOUNDS
    from laion_fmri_dataloader.pipeline.participant import FirstLevelConfig
    from laion_fmri_dataloader.stats.design import ModelSettings

    extra = tuple(parse_contrast(text) for text in args.contrast)
    clashes = [c.name for c in extra if c.name in STANDARD_CONTRASTS]
    if clashes:
        raise InvalidLabelError(
            f"--contrast {clashes[0]} would replace a standard contrast; "
            "choose another name"
        )
    _check_fwhm(args.smoothing_fwhm, "--smoothing-fwhm")
    _check_timing(args)
    return FirstLevelConfig(
        bids_dir=Path(args.bids_dir),
        output_dir=Path(args.output_dir),
        task=args.task,
        fmriprep_dir=Path(args.fmriprep_dir) if args.fmriprep_dir else None,
        space=args.space,
        desc=args.desc,
        condition_map=parse_condition_map(args.condition),
        extra_contrasts=extra,
        # a name given twice is one regressor
        confounds=tuple(dict.fromkeys(args.confounds or DEFAULT_CONFOUNDS)),
        model=ModelSettings(smoothing_fwhm=args.smoothing_fwhm or None),
        run_combination=args.run_combination,
        force=args.force,
        # A remote OUTPUT_DIR is written in a local stage: a path relative to
        # the stage would name a folder that does not exist there.
        source_dataset="" if getattr(args, "output_url", None) else None,
        selection=parse_selection(args),
        repetition_time=args.repetition_time,
        slice_time_ref=args.slice_time_ref,
        dummy_scans=args.dummy_scans,
    )


def _tfce_dh(text: str) -> float | str:
    """``--tfce-dh``: ``auto`` or a number (the group configuration checks it)."""
    try:
        return float(text)
    except ValueError:
        return text


def _check_fwhm(value: float | None, option: str) -> None:
    if value is not None and value < 0:
        raise InvalidParameterError(f"{option} must be >= 0 mm; got {value}")


def roi_config_from_args(args: argparse.Namespace) -> RoiConfig:
    """The roi-level configuration of a ``laion-fmri-glm glm ... roi`` line."""
    from laion_fmri_dataloader.pipeline.roi import RoiConfig
    from laion_fmri_dataloader.rois import (
        DEFAULT_ROI_CONTRASTS,
        parse_roi_contrast,
        parse_roi_size,
    )

    contrasts = dict(DEFAULT_ROI_CONTRASTS)
    for text in args.roi_contrast:
        parsed = parse_roi_contrast(text)
        contrasts[parsed.category] = parsed
    return RoiConfig(
        output_dir=Path(args.output_dir),
        task=args.task,
        subjects=tuple(subject_label(s) for s in args.participant_label or ()),
        contrasts=tuple(contrasts.values()),
        size=parse_roi_size(args.roi_size),
        p_threshold=args.parcel_p_threshold,
        smoothing_fwhm=args.parcel_fwhm,
        min_overlap=args.parcel_min_overlap,
        min_subject_fraction=args.parcel_min_subjects,
        min_parcel_voxels=args.parcel_min_voxels,
        parcels_file=Path(args.parcels) if args.parcels else None,
        parcel_labels_file=Path(args.parcel_labels) if args.parcel_labels else None,
    )


def scheduler_from_args(args: argparse.Namespace) -> Scheduler:
    """The one :class:`Scheduler` of a command line's ``--scheduler`` options."""
    return Scheduler.parse(
        args.scheduler,
        workers=args.workers,
        memory_per_worker=args.memory_per_worker,
        slurm_queue=args.slurm_queue,
        slurm_account=args.slurm_account,
        slurm_walltime=args.slurm_walltime,
        slurm_cores=args.slurm_cores,
    )


def run_glm_command(args: argparse.Namespace) -> int:
    """``laion-fmri-glm glm BIDS_DIR OUTPUT_DIR {participant,group,roi}``."""
    if is_remote(args.output_dir):
        from laion_fmri_dataloader.io.upload import staged_output

        # Write locally, upload once complete.  The group level reads the first
        # level; a participant rerun needs the subjects' outputs that are there
        # to skip the complete ones (unchanged files are not uploaded again).
        if args.analysis_level == "group":
            fetch = ("first_level",)
        elif args.analysis_level == "roi":
            fetch = ("first_level", "group_level")
        elif args.force:
            fetch = ()
        elif args.participant_label:
            fetch = tuple(
                str(layout.first_level_dir(label)) for label in args.participant_label
            )
        else:
            fetch = ("first_level",)
        with staged_output(args.output_dir, fetch=fetch) as stage:
            return run_glm_command(
                argparse.Namespace(
                    **{**vars(args), "output_dir": stage, "output_url": args.output_dir}
                )
            )
    from laion_fmri_dataloader.pipeline.group import GroupConfig
    from laion_fmri_dataloader.pipeline.levels import (
        run_group_level,
        run_participants,
        select_subjects,
        summarise_participants,
    )

    if args.analysis_level == "roi":
        from laion_fmri_dataloader.pipeline.roi import run_roi

        run_roi(roi_config_from_args(args))
        if args.reports:
            from laion_fmri_dataloader.report import write_reports

            index = write_reports(Path(args.output_dir), task=args.task)[-1]
            log.info("reports: %s", index)
        return 0
    scheduler = scheduler_from_args(args)
    if args.analysis_level == "participant":
        config = config_from_args(args)
        subjects = select_subjects(config, args.participant_label)
        return summarise_participants(run_participants(config, subjects, scheduler))
    _check_fwhm(args.group_smoothing_fwhm, "--group-smoothing-fwhm")
    if args.smoothing_fwhm:
        log.info(
            "group level: --smoothing-fwhm is the participant level's smoothing of "
            "the BOLD and is not applied again; --group-smoothing-fwhm smooths the "
            "effect maps"
        )
    group = GroupConfig(
        output_dir=Path(args.output_dir),
        task=args.task,
        subjects=tuple(subject_label(s) for s in args.participant_label or ()),
        alpha=args.alpha,
        n_perm=args.n_perm,
        fwe=args.fwe,
        one_sided=args.one_sided,
        seed=args.seed,
        smoothing_fwhm=args.group_smoothing_fwhm or None,
        force=args.force,
        bids_dir=Path(args.bids_dir),
        fmriprep_dir=Path(args.fmriprep_dir) if args.fmriprep_dir else None,
        corrections=tuple(args.corrections),
        cluster_threshold=args.cluster_threshold,
        tfce_e=args.tfce_e,
        tfce_h=args.tfce_h,
        tfce_dh=_tfce_dh(args.tfce_dh),
    )
    run_group_level(group, scheduler)
    if args.reports:
        from laion_fmri_dataloader.report import write_reports

        index = write_reports(Path(args.output_dir), task=args.task)[-1]
        log.info("reports: %s", index)
    return 0
