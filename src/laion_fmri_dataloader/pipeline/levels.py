"""Running the pipeline: which subjects, on which scheduler, with what summary.

``laion-fmri-glm glm ... participant`` runs one task per subject; a subject's
failure on bad input is reported and does not stop the others; the exit code
is 2 when any subject failed on bad input.  A rerun skips complete subjects.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from laion_fmri_dataloader import layout
from laion_fmri_dataloader._system import usable_cpus
from laion_fmri_dataloader.contrasts import STANDARD_CONTRASTS, parse_contrast
from laion_fmri_dataloader.errors import (
    InputError,
    InvalidLabelError,
    InvalidParameterError,
    LaionFmriError,
)
from laion_fmri_dataloader.inputs.bids import DEFAULT_CONFOUNDS, find_subjects
from laion_fmri_dataloader.io.storage import is_remote
from laion_fmri_dataloader.layout import subject_label
from laion_fmri_dataloader.pipeline.participant import (
    FirstLevelConfig,
    SubjectResult,
    run_subject,
    write_dataset_description,
)
from laion_fmri_dataloader.stats.design import ModelSettings

__all__ = [
    "config_from_args",
    "parse_condition_map",
    "run_glm_command",
    "run_participants",
    "select_subjects",
]

log = logging.getLogger("laion_fmri")


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


def config_from_args(args: argparse.Namespace) -> FirstLevelConfig:
    """The first-level configuration of a ``laion-fmri-glm glm`` command line."""
    extra = tuple(parse_contrast(text) for text in args.contrast)
    clashes = [c.name for c in extra if c.name in STANDARD_CONTRASTS]
    if clashes:
        raise InvalidLabelError(
            f"--contrast {clashes[0]} would replace a standard contrast; "
            "choose another name"
        )
    if args.smoothing_fwhm is not None and args.smoothing_fwhm < 0:
        raise InvalidParameterError(
            f"--smoothing-fwhm must be >= 0 mm; got {args.smoothing_fwhm}"
        )
    return FirstLevelConfig(
        bids_dir=Path(args.bids_dir),
        output_dir=Path(args.output_dir),
        task=args.task,
        fmriprep_dir=Path(args.fmriprep_dir) if args.fmriprep_dir else None,
        space=args.space,
        desc=args.desc,
        condition_map=parse_condition_map(args.condition),
        extra_contrasts=extra,
        confounds=tuple(args.confounds or DEFAULT_CONFOUNDS),
        model=ModelSettings(smoothing_fwhm=args.smoothing_fwhm or None),
        force=args.force,
    )


def select_subjects(
    config: FirstLevelConfig, labels: Sequence[str] | None
) -> list[str]:
    """Bare labels of the subjects to process; all with the task if none named."""
    if not Path(config.bids_dir).is_dir():
        raise InputError(f"BIDS folder {config.bids_dir} does not exist")
    available = find_subjects(config.fmriprep, config.task)
    if labels:
        return list(dict.fromkeys(subject_label(label) for label in labels))
    if not available:
        raise InputError(
            f"no subject in {config.fmriprep} has a preprocessed BOLD series of "
            f"task-{config.task}; check --task and --fmriprep-dir"
        )
    return available


def _run_one(config: FirstLevelConfig, subject: str) -> SubjectResult:
    try:
        return run_subject(config, subject)
    except LaionFmriError as error:
        return SubjectResult(
            f"sub-{subject_label(subject)}", "failed", message=str(error)
        )


def run_participants(
    config: FirstLevelConfig,
    subjects: Sequence[str],
    scheduler: str = "none",
    **options,
) -> list[SubjectResult]:
    """First level of every subject; failures on bad input are returned, not raised."""
    write_dataset_description(config.output_dir, config.bids_dir)
    scheduler = _resolve_scheduler(scheduler, len(subjects))
    if scheduler == "none":
        return [_run_one(config, subject) for subject in subjects]
    from laion_fmri_dataloader.pipeline.scheduling import map_subjects

    return map_subjects(_run_one, config, subjects, scheduler=scheduler, **options)


def _resolve_scheduler(scheduler: str, n_subjects: int) -> str:
    """``--scheduler auto``: this process for one subject or one CPU, else local.

    A LocalCluster costs seconds to start (measured: one 2 mm subject took 7.9 s
    on it and 3.7 s in this process), and the in-process fit already uses every
    core; it pays off from two subjects on a machine with several cores.
    """
    if scheduler != "auto":
        return scheduler
    return "none" if n_subjects <= 1 or usable_cpus() <= 1 else "local"


def _summarise(results: Sequence[SubjectResult]) -> int:
    done = [r.subject for r in results if r.status == "done"]
    skipped = [r.subject for r in results if r.status == "skipped"]
    failed = [r for r in results if r.status in ("failed", "error")]
    log.info(
        "participant level: %d done, %d skipped (already complete), %d failed",
        len(done),
        len(skipped),
        len(failed),
    )
    for result in failed:
        log.error("%s failed: %s", result.subject, result.message)
    if any(r.status == "error" for r in failed):
        return 1  # a bug, as the architecture's exit codes say
    if len(failed) == 1 and len(results) == 1:
        raise InputError(failed[0].message)
    return 2 if failed else 0


def run_glm_command(args: argparse.Namespace) -> int:
    """``laion-fmri-glm glm BIDS_DIR OUTPUT_DIR {participant,group}``."""
    if is_remote(args.output_dir):
        from laion_fmri_dataloader.io.remote import staged_output

        # Write locally, upload once complete.  The group level reads the first
        # level; a participant rerun needs the subjects' outputs that are there
        # to skip the complete ones (unchanged files are not uploaded again).
        if args.analysis_level == "group":
            fetch = ("first_level",)
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
                argparse.Namespace(**{**vars(args), "output_dir": stage})
            )
    options = {
        "workers": args.workers,
        "memory_per_worker": args.memory_per_worker,
        "slurm_queue": args.slurm_queue,
        "slurm_account": args.slurm_account,
        "slurm_walltime": args.slurm_walltime,
        "slurm_cores": args.slurm_cores,
    }
    if args.analysis_level == "participant":
        config = config_from_args(args)
        subjects = select_subjects(config, args.participant_label)
        results = run_participants(config, subjects, args.scheduler, **options)
        return _summarise(results)
    from laion_fmri_dataloader.pipeline.group import GroupConfig, run_group

    group = GroupConfig(
        output_dir=Path(args.output_dir),
        task=args.task,
        subjects=tuple(subject_label(s) for s in args.participant_label or ()),
        alpha=args.alpha,
        n_perm=args.n_perm,
        fwe=args.fwe,
        one_sided=args.one_sided,
        seed=args.seed,
        smoothing_fwhm=args.smoothing_fwhm,
        force=args.force,
    )
    # the permutations run on this machine's cores unless a cluster is named
    scheduler = "none" if args.scheduler == "auto" else args.scheduler
    run_group(group, scheduler=scheduler, **options)
    if args.reports:
        from laion_fmri_dataloader.report import write_reports

        index = write_reports(Path(args.output_dir), task=args.task)[-1]
        log.info("reports: %s", index)
    return 0
