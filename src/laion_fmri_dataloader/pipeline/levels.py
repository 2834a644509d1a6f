"""The analysis levels as the command line and the demo run them.

``participant`` runs one task per subject; a subject's failure on bad input, or
on an output it cannot write (a full disk, a folder it may not write), is
reported and does not stop the others, whose outputs are untouched; the exit
code is 2 when any subject failed so.  A rerun skips complete subjects.
``group`` runs the group level with its sign flips where the scheduler says.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from laion_fmri_dataloader.errors import InputError, LaionFmriError
from laion_fmri_dataloader.inputs.bids import (
    check_output_dir,
    find_subjects,
    has_task_files,
    subject_folders,
)
from laion_fmri_dataloader.layout import subject_label
from laion_fmri_dataloader.pipeline.group import GroupConfig, run_group
from laion_fmri_dataloader.pipeline.participant import (
    FirstLevelConfig,
    SubjectResult,
    run_subject,
    write_dataset_description,
)
from laion_fmri_dataloader.pipeline.scheduler import IN_PROCESS, Scheduler

__all__ = [
    "run_group_level",
    "run_participants",
    "select_subjects",
    "summarise_participants",
]

log = logging.getLogger("laion_fmri")


def select_subjects(
    config: FirstLevelConfig, labels: Sequence[str] | None
) -> list[str]:
    """Bare labels of the subjects to process; all with the task if none named.

    Without ``labels``: every subject with a BOLD series of the task in
    fMRIPrep's folder or with task files in the raw dataset (a subject whose
    fMRIPrep outputs are missing then fails with its reason, never skipped
    silently).  Entries that only look like subjects (``sub-02.bak``) and
    subject folders without any file of the task are named in one warning each.
    """
    if not Path(config.bids_dir).is_dir():
        raise InputError(f"BIDS folder {config.bids_dir} does not exist")
    if labels:
        return list(dict.fromkeys(subject_label(label) for label in labels))
    derivative = subject_folders(config.fmriprep)
    raw = subject_folders(config.bids_dir)
    strays = [
        *(str(Path(config.fmriprep) / name) for name in derivative.others),
        *(str(Path(config.bids_dir) / name) for name in raw.others),
    ]
    if strays:
        log.warning(
            "skipped %d entr%s that %s not subject folders: %s",
            len(strays),
            "y" if len(strays) == 1 else "ies",
            "is" if len(strays) == 1 else "are",
            ", ".join(strays),
        )
    with_bold = set(find_subjects(config.fmriprep, config.task))
    with_raw = {
        label
        for label in raw.labels
        if has_task_files(config.bids_dir, label, config.task)
    }
    selected = sorted(with_bold | with_raw)
    unused = sorted(set(derivative.labels) - set(selected))
    if unused:
        log.warning(
            "left out %s: no file of task-%s in %s or %s",
            ", ".join(f"sub-{label}" for label in unused),
            config.task,
            config.fmriprep,
            config.bids_dir,
        )
    if not selected:
        raise InputError(
            f"no subject in {config.fmriprep} has a preprocessed BOLD series of "
            f"task-{config.task}; check --task and --fmriprep-dir"
        )
    return selected


def _run_one(config: FirstLevelConfig, subject: str) -> SubjectResult:
    # LaionFmriError covers bad input and outputs that cannot be written
    # (OutputError); anything else is a bug and is raised.
    try:
        return run_subject(config, subject)
    except LaionFmriError as error:
        return SubjectResult(
            f"sub-{subject_label(subject)}", "failed", message=str(error)
        )


def run_participants(
    config: FirstLevelConfig,
    subjects: Sequence[str],
    scheduler: Scheduler = IN_PROCESS,
) -> list[SubjectResult]:
    """First level of every subject; failures on bad input are returned, not raised.

    ``scheduler`` ``auto`` is decided by :meth:`Scheduler.for_subjects`.

    Raises
    ------
    InputError
        If OUTPUT_DIR is an input folder (see :func:`check_output_dir`), before
        anything is written.
    """
    check_output_dir(config.output_dir, config.bids_dir, config.fmriprep)
    write_dataset_description(config.output_dir, config.bids_dir, config.source_dataset)
    scheduler = scheduler.for_subjects(len(subjects))
    if scheduler.in_process:
        return [_run_one(config, subject) for subject in subjects]
    from laion_fmri_dataloader.pipeline.scheduling import map_subjects

    return map_subjects(_run_one, config, subjects, scheduler)


def run_group_level(
    config: GroupConfig, scheduler: Scheduler = IN_PROCESS
) -> list[Path]:
    """The group level, its sign flips on ``scheduler`` (``auto``: this process)."""
    check_output_dir(config.output_dir)
    if scheduler.for_group().in_process:
        return run_group(config)
    from laion_fmri_dataloader.pipeline.scheduling import permutation_function

    return run_group(config, permutation_function(scheduler))


def summarise_participants(results: Sequence[SubjectResult]) -> int:
    """Log what the participant level did; return its exit code.

    0 when every subject is done or skipped, 2 when some failed on bad input
    or on an output that cannot be written, 1 when a task hit a bug.

    Raises
    ------
    InputError
        When the only subject asked for failed (its one line).
    """
    done = [r.subject for r in results if r.status == "done"]
    skipped = [r.subject for r in results if r.status == "skipped"]
    failed = [r for r in results if r.status in ("failed", "error")]
    log.info(
        "participant level: %d done, %d skipped (already complete), %d failed",
        len(done),
        len(skipped),
        len(failed),
    )
    if len(results) == 1 and failed and failed[0].status == "failed":
        # The command line prints it, once.
        raise InputError(failed[0].message)
    for result in failed:
        log.error("%s failed: %s", result.subject, result.message)
    if any(r.status == "error" for r in failed):
        return 1  # a bug, as the architecture's exit codes say
    return 2 if failed else 0
