"""The index of the reports, and writing every report of a GLM folder."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.dataset import LAIONfMRIDataset
from laion_fmri_dataloader.io.files import write_text
from laion_fmri_dataloader.io.storage import is_remote
from laion_fmri_dataloader.report.group import (
    glance_rows,
    group_contrasts,
    write_group_report,
)
from laion_fmri_dataloader.report.paths import open_dataset, report_path, reports_folder
from laion_fmri_dataloader.report.subject import (
    read_subject,
    subjects,
    write_subject_report,
)
from laion_fmri_dataloader.report.templates import Link, get_template

__all__ = ["write_index", "write_reports"]

log = logging.getLogger("laion_fmri")


@dataclass(frozen=True)
class _SubjectLine:
    link: Link
    n_runs: int
    worst_mean_fd: float | None
    n_warnings: int
    details: str


def write_index(
    glm_dir: str | os.PathLike | LAIONfMRIDataset,
    task: str = "experiment",
    group: bool = True,
    *,
    output_dir: str | os.PathLike | None = None,
) -> Path:
    """Write ``reports/index.html``: links to every report, one line per subject.

    Parameters
    ----------
    glm_dir : str, path-like or LAIONfMRIDataset
        The GLM derivative folder, a URL of one, or a dataset opened already.
    task : str
        Task of the first-level maps.
    group : bool
        Whether a group report exists to link to.
    output_dir : str or path-like, optional
        Local folder of the reports; by default ``<glm_dir>/reports``.

    Returns
    -------
    Path
        ``<output_dir>/index.html``.
    """
    dataset = open_dataset(glm_dir)
    lines = []
    for label in subjects(dataset, task):
        info = read_subject(dataset, label, task)
        motions = [run.motion for run in info.runs if run.motion]
        lines.append(
            _SubjectLine(
                link=Link(f"sub-{label}.html", f"sub-{label}"),
                n_runs=len(info.runs),
                worst_mean_fd=max((m.mean_fd for m in motions), default=None),
                n_warnings=len(info.warnings),
                details="; ".join(info.warnings) or "none",
            )
        )
    path = reports_folder(dataset, output_dir) / report_path("index").name
    html = get_template("index.html.jinja").render(
        title="GLM reports",
        subtitle=f"task-{task}, {dataset.root}",
        nav=[],
        glance=glance_rows(dataset, "group.html") if group else None,
        corrections=dataset.corrections(),
        subjects=lines,
    )
    write_text(html, path)
    return path


def _default_truth(dataset: LAIONfMRIDataset) -> Path | None:
    """``<dataset>/derivatives/truth`` of a local simulated dataset, if any."""
    if is_remote(dataset.root):
        return None
    truth = Path(dataset.root).parent / "truth"
    return truth if (truth / "group").is_dir() else None


def write_reports(
    glm_dir: str | os.PathLike | LAIONfMRIDataset,
    truth_dir: str | os.PathLike | None = None,
    task: str = "experiment",
    force: bool = False,
    *,
    output_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Write every report of a GLM derivative folder and the index.

    Parameters
    ----------
    glm_dir : str, path-like or LAIONfMRIDataset
        The GLM derivative folder (``<data_dir>/derivatives/glm``), a URL such
        as ``s3://bucket/data/derivatives/glm``, or a dataset opened already.
    truth_dir : str or path-like, optional
        Ground truth of a simulated dataset (a local folder); by default
        ``<data_dir>/derivatives/truth`` when it exists.
    task : str
        Task of the analysis.
    force : bool
        Rewrite reports that are newer than their inputs.
    output_dir : str or path-like, optional
        Local folder of the reports; by default ``<glm_dir>/reports``.  A
        remote dataset needs one, and its reports are always written anew.

    Returns
    -------
    list of Path
        The subject reports, the group report (if there is a group level) and
        the index, last.
    """
    dataset = open_dataset(glm_dir)
    layout.validate_label(task, "task")
    folder = reports_folder(dataset, output_dir)
    if truth_dir is None:
        truth_dir = _default_truth(dataset)
    written = []
    labels = subjects(dataset, task)
    for index, label in enumerate(labels, start=1):
        log.info("report: sub-%s (%d of %d)", label, index, len(labels))
        written.append(
            write_subject_report(dataset, label, task, force=force, output_dir=folder)
        )
    group = bool(group_contrasts(dataset))
    if group:
        log.info("report: group level")
        written.append(
            write_group_report(dataset, task, truth_dir, force=force, output_dir=folder)
        )
    written.append(write_index(dataset, task, group=group, output_dir=folder))
    log.info("reports written to %s", written[-1].parent)
    return written
