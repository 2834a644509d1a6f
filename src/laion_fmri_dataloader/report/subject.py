"""The report of one subject's first level: warnings, model, runs, design, z maps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.dataset import LAIONfMRIDataset
from laion_fmri_dataloader.errors import NotFoundError
from laion_fmri_dataloader.inputs.confounds import (
    HIGH_MOTION_FD_MM,
    HIGH_MOTION_SHARE_LIMIT,
    MEAN_FD_LIMIT_MM,
    MotionSummary,
    confounds_names,
    motion_summary,
)
from laion_fmri_dataloader.io.files import write_text
from laion_fmri_dataloader.layout import parse_bids_name
from laion_fmri_dataloader.report.clusters import (
    PEAK_Z_THRESHOLD,
    ClusterTable,
    subject_peaks,
)
from laion_fmri_dataloader.report.figures import Figure, glass_brains, png_uri
from laion_fmri_dataloader.report.model import (
    ContrastDescription,
    contrast_description,
    metadata,
    model_rows,
    software_text,
)
from laion_fmri_dataloader.report.paths import (
    is_fresh,
    open_dataset,
    report_path,
    reports_folder,
)
from laion_fmri_dataloader.report.templates import Link, get_template
from laion_fmri_dataloader.sidecar import MapSidecar

__all__ = ["Run", "Subject", "read_subject", "subjects", "write_subject_report"]


@dataclass(frozen=True)
class Run:
    """A run the first level used, and its head motion.

    Attributes
    ----------
    name : str
        The run in words (``"ses-01 run-2"``), else its BOLD file name.
    bold : str
        Where its preprocessed BOLD series is (path or URL).
    n_volumes : int or None
        Volumes fitted, from the sidecar.
    motion : MotionSummary or None
        None if no confounds file with framewise displacement was found.
    """

    name: str
    bold: str
    n_volumes: int | None
    motion: MotionSummary | None

    @property
    def file(self) -> str:
        """The BOLD series' file name."""
        return PurePosixPath(self.bold).name

    @property
    def mean_fd(self) -> float | None:
        return self.motion.mean_fd if self.motion else None

    @property
    def max_fd(self) -> float | None:
        return self.motion.max_fd if self.motion else None

    @property
    def high_motion_percent(self) -> float | None:
        return round(100 * self.motion.high_motion_share, 1) if self.motion else None


@dataclass(frozen=True)
class Subject:
    """What the reports know of one subject's first level."""

    label: str
    contrasts: list[str]
    sidecar: MapSidecar
    runs: list[Run]
    warnings: list[str]


@dataclass(frozen=True)
class _ContrastBlock:
    name: str
    description: ContrastDescription | None
    figure: Figure
    dof: float | None
    peaks: ClusterTable | None


def _z_contrasts(dataset: LAIONfMRIDataset, label: str, task: str) -> list[str]:
    if f"sub-{label}" not in dataset.subjects:
        return []
    return [
        contrast
        for contrast in dataset.contrasts(label, task)
        if dataset.has_map(label, task, contrast, "z")
    ]


def subjects(dataset: LAIONfMRIDataset, task: str) -> list[str]:
    """Bare labels of the subjects with z maps of ``task``."""
    labels = [subject.removeprefix("sub-") for subject in dataset.subjects]
    return [label for label in labels if _z_contrasts(dataset, label, task)]


def _run_name(bold: str) -> str:
    entities = parse_bids_name(bold)
    parts = [f"{key}-{entities[key]}" for key in ("ses", "run") if key in entities]
    return " ".join(parts) or PurePosixPath(bold).name


def _read_run(
    dataset: LAIONfMRIDataset, bold: str, n_volumes: int | None
) -> tuple[Run, list[str]]:
    """A run and the warnings about it; its confounds sit beside its BOLD."""
    beside = PurePosixPath(bold).parent
    confounds, local = None, None
    for name in confounds_names(bold):
        local = dataset.find_input(str(beside / name))
        if local is not None:
            confounds = str(beside / name)
            break
    motion = motion_summary(local) if local is not None else None
    run = Run(_run_name(bold), dataset.input_location(bold), n_volumes, motion)
    if motion is not None:
        return run, [f"{run.name}: {text}" for text in motion.warnings]
    where = dataset.input_location(confounds) if confounds else f"beside {run.bold}"
    return run, [
        f"{run.name}: no framewise displacement found (confounds file {where} "
        "missing or without the column), head motion not checked"
    ]


def read_subject(dataset: LAIONfMRIDataset, label: str, task: str) -> Subject:
    """Contrasts, model, runs (with their head motion) and warnings of a subject.

    Raises
    ------
    NotFoundError
        If the subject has no z maps of ``task``.
    """
    contrasts = _z_contrasts(dataset, label, task)
    if not contrasts:
        raise NotFoundError(
            f"sub-{label} has no task-{task} z maps in "
            f"{dataset.root}/{layout.first_level_dir(label)}; run the participant "
            "level first"
        )
    sidecar = dataset.load_metadata(label, task, contrasts[0], "z")
    volumes = list(sidecar.Parameters.get("NumberOfVolumes") or [])
    found_warnings = [str(item) for item in sidecar.Parameters.get("Warnings") or []]
    runs = []
    for index, bold in enumerate(sidecar.Runs):
        n_volumes = int(volumes[index]) if index < len(volumes) else None
        run, run_warnings = _read_run(dataset, bold, n_volumes)
        runs.append(run)
        found_warnings += run_warnings
    return Subject(label, contrasts, sidecar, runs, found_warnings)


def write_subject_report(
    glm_dir: str | os.PathLike | LAIONfMRIDataset,
    subject: str,
    task: str = "experiment",
    force: bool = False,
    *,
    output_dir: str | os.PathLike | None = None,
) -> Path:
    """Write the report of one subject's first level.

    Parameters
    ----------
    glm_dir : str, path-like or LAIONfMRIDataset
        The GLM derivative folder (``<data_dir>/derivatives/glm``), a URL such
        as ``s3://bucket/data/derivatives/glm``, or a dataset opened already.
    subject : str
        ``"01"`` or ``"sub-01"``.
    task : str
        Task of the first-level maps.
    force : bool
        Write the report even if it is newer than its inputs.
    output_dir : str or path-like, optional
        Local folder of the reports; by default ``<glm_dir>/reports`` (needed
        for a remote dataset, whose reports are always written anew).

    Returns
    -------
    Path
        ``<output_dir>/sub-<label>.html``.

    Raises
    ------
    NotFoundError
        If the subject has no z maps of ``task``.
    """
    dataset = open_dataset(glm_dir)
    label = layout.subject_label(subject)
    info = read_subject(dataset, label, task)
    path = reports_folder(dataset, output_dir) / report_path(f"sub-{label}").name
    if not force and is_fresh(path, dataset.last_modified(label)):
        return path
    write_text(_subject_html(dataset, info, task), path)
    return path


def _mask_voxels(dataset: LAIONfMRIDataset, label: str, task: str) -> int | None:
    try:
        mask = dataset.load_mask(label, task)
    except NotFoundError:
        return None
    return int((np.asanyarray(mask.dataobj) > 0).sum())


def _design_figure(dataset: LAIONfMRIDataset, label: str, task: str) -> Figure | None:
    try:
        png = dataset.load_design_matrix_image(label, task).read_bytes()
    except NotFoundError:
        return None
    return Figure(png_uri(png), f"design matrices of sub-{label}")


def _contrast_block(
    dataset: LAIONfMRIDataset, label: str, task: str, contrast: str
) -> _ContrastBlock:
    image = dataset.load_first_level_contrast(label, task, contrast, "z")
    sidecar = metadata(
        dataset, subject=label, task=task, contrast=contrast, stat_type="z"
    )
    uri = glass_brains().render(
        image,
        f"sub-{label} {contrast}: z, |z| > {PEAK_Z_THRESHOLD}",
        PEAK_Z_THRESHOLD,
    )
    return _ContrastBlock(
        name=contrast,
        description=contrast_description(contrast, sidecar),
        figure=Figure(uri, f"{contrast} z map of sub-{label}"),
        dof=sidecar.DegreesOfFreedom if sidecar else None,
        peaks=subject_peaks(image),
    )


def _subject_html(dataset: LAIONfMRIDataset, info: Subject, task: str) -> str:
    sidecar = info.sidecar
    label = info.label
    trs = sidecar.Parameters.get("RepetitionTime") or []
    summary = [
        ("Subject", f"sub-{label}"),
        ("Task", task),
        ("Runs", len(info.runs)),
        ("Volumes per run", ", ".join(str(r.n_volumes) for r in info.runs)),
        ("Repetition time", ", ".join(f"{float(tr):g} s" for tr in trs)),
        ("Conditions", ", ".join(sidecar.Conditions)),
        (
            "Baseline",
            "implicit (no baseline events)"
            if sidecar.ImplicitBaseline
            else "modelled (fixation blocks)",
        ),
        *model_rows(sidecar),
        ("Confounds", ", ".join(sidecar.Confounds) or "none"),
        ("Voxels in the brain mask", _mask_voxels(dataset, label, task)),
        ("Software", software_text(sidecar)),
    ]
    nav = [Link("index.html", "All reports"), Link("group.html", "Group report")]
    nav += [Link(f"#contrast-{c}", c) for c in info.contrasts]
    return get_template("subject.html.jinja").render(
        title=f"sub-{label} · first level",
        subtitle=(
            f"task-{task}: {len(info.runs)} run(s), {len(info.contrasts)} contrasts"
        ),
        nav=nav,
        warnings=info.warnings,
        summary=summary,
        runs=info.runs,
        high_motion_fd=HIGH_MOTION_FD_MM,
        mean_fd_limit=MEAN_FD_LIMIT_MM,
        high_motion_share_limit=HIGH_MOTION_SHARE_LIMIT,
        design=_design_figure(dataset, label, task),
        contrasts=[_contrast_block(dataset, label, task, c) for c in info.contrasts],
        threshold=PEAK_Z_THRESHOLD,
    )
