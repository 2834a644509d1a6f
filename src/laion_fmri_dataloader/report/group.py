"""The group report: maps, corrections, cluster tables and, if known, the truth."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.dataset import LAIONfMRIDataset
from laion_fmri_dataloader.errors import NotFoundError
from laion_fmri_dataloader.io.files import write_text
from laion_fmri_dataloader.report.clusters import (
    PEAK_Z_THRESHOLD,
    ClusterTable,
    written_clusters,
)
from laion_fmri_dataloader.report.figures import (
    Figure,
    GlassBrains,
    glass_brains,
    png_uri,
)
from laion_fmri_dataloader.report.model import (
    ContrastDescription,
    contrast_description,
    metadata,
    model_rows,
)
from laion_fmri_dataloader.report.paths import (
    is_fresh,
    open_dataset,
    report_path,
    reports_folder,
)
from laion_fmri_dataloader.report.templates import Link, format_number, get_template
from laion_fmri_dataloader.report.truth import TruthRow, newest_truth_file, truth_rows
from laion_fmri_dataloader.simulate.scoring import STRONG_EFFECT_SHARE

__all__ = [
    "NULL_CALIBRATION_NOTE",
    "GlanceRow",
    "glance_rows",
    "group_contrasts",
    "write_group_report",
]

#: What the group report says about the error rates of the corrections.
NULL_CALIBRATION_NOTE = (
    "FWE and FDR error rates were measured on simulated null data; see README."
)


@dataclass(frozen=True)
class GlanceRow:
    """One contrast at a glance: its peak |z| and what each correction keeps.

    Attributes
    ----------
    link : Link
        To the contrast's section of the group report.
    peak : float
        Largest |z| of the uncorrected map.
    corrections : list of (int, float or None)
        Per correction written for any contrast, the surviving voxels and the
        |z| threshold from the sidecar (None where this contrast has no map).
    """

    link: Link
    peak: float
    corrections: list[tuple[int | None, float | None]]


@dataclass(frozen=True)
class _Correction:
    name: str
    method: str
    alpha: float | None
    sides: str
    z_threshold: float | None
    t_threshold: float | None
    n_permutations: int | None
    exhaustive: bool | None
    surviving: int
    note: str | None
    clusters: ClusterTable | None
    cluster_file: str


@dataclass(frozen=True)
class _RoiFigure:
    """A region's held-out response profile, as the roi level drew it."""

    figure: Figure
    caption: str


@dataclass(frozen=True)
class _ContrastBlock:
    name: str
    description: ContrastDescription | None
    figures: list[Figure]
    corrections: list[_Correction]
    # None if the truth is unknown, empty if it has nothing for this contrast
    truth: list[TruthRow] | None


def group_contrasts(dataset: LAIONfMRIDataset) -> list[str]:
    """Contrasts with a group z map, standard contrasts first."""
    return [
        contrast
        for contrast in dataset.contrasts()
        if dataset.has_map(None, contrast=contrast, stat_type="z")
    ]


def _survivors(image: nib.Nifti1Image) -> int:
    return int(np.count_nonzero(np.asanyarray(image.dataobj)))


def _corrected_maps(
    dataset: LAIONfMRIDataset, contrast: str
) -> dict[str, nib.Nifti1Image]:
    # The corrections written (--corrections; TFCE and cluster extent only with
    # enough subjects), in the layout's order.
    return {
        correction: dataset.load_group_level_contrast(contrast, correction=correction)
        for correction in dataset.corrections(contrast)
    }


def glance_rows(dataset: LAIONfMRIDataset, page: str = "") -> list[GlanceRow]:
    """One row per group contrast; ``page`` is the file its link points into."""
    rows = []
    for contrast in group_contrasts(dataset):
        z = np.asanyarray(dataset.load_group_level_contrast(contrast, "z").dataobj)
        counts = []
        maps = _corrected_maps(dataset, contrast)
        for correction in dataset.corrections():
            if correction not in maps:
                counts.append((None, None))
                continue
            sidecar = metadata(dataset, contrast=contrast, correction=correction)
            info = sidecar.Correction if sidecar else None
            counts.append(
                (_survivors(maps[correction]), info.ZThreshold if info else None)
            )
        rows.append(
            GlanceRow(
                Link(f"{page}#contrast-{contrast}", contrast),
                float(np.abs(z).max()),
                counts,
            )
        )
    return rows


def _correction(
    dataset: LAIONfMRIDataset, contrast: str, correction: str, image: nib.Nifti1Image
) -> _Correction:
    sidecar = metadata(dataset, contrast=contrast, correction=correction)
    info = sidecar.Correction if sidecar else None
    what = f"{correction.upper()}-corrected"
    try:
        clusters = written_clusters(
            dataset.load_cluster_table(contrast, correction), what
        )
    except NotFoundError:
        clusters = None
    return _Correction(
        name=correction,
        method=info.Method if info else "unknown",
        alpha=info.Alpha if info else None,
        sides="two-sided" if (info is None or info.TwoSided) else "one-sided",
        z_threshold=info.ZThreshold if info else None,
        t_threshold=info.TThreshold if info else None,
        n_permutations=info.NPermutations if info else None,
        exhaustive=info.Exhaustive if info else None,
        surviving=_survivors(image),
        note=info.Note if info else "",
        clusters=clusters,
        cluster_file=layout.cluster_table(contrast, correction).name,
    )


def _contrast_block(
    dataset: LAIONfMRIDataset,
    contrast: str,
    task: str,
    truth_dir: Path | None,
    mask: np.ndarray,
    brains: GlassBrains,
) -> _ContrastBlock:
    sidecar = metadata(dataset, contrast=contrast, stat_type="z")
    z_image = dataset.load_group_level_contrast(contrast, "z")
    corrected = _corrected_maps(dataset, contrast)
    corrections = [
        _correction(dataset, contrast, name, image) for name, image in corrected.items()
    ]
    figures = [
        Figure(
            brains.render(
                z_image,
                f"{contrast}: uncorrected, |z| > {PEAK_Z_THRESHOLD}",
                PEAK_Z_THRESHOLD,
            ),
            f"{contrast} uncorrected group z map",
        )
    ]
    for row, image in zip(corrections, corrected.values(), strict=True):
        threshold = row.z_threshold
        label = (
            f"{contrast}: {row.name.upper()} corrected, |z| ≥ {threshold:.3g}"
            if threshold is not None
            else f"{contrast}: {row.name.upper()} corrected"
        )
        # Survivors have |z| >= the recorded threshold; drawing above the next
        # float below it shows exactly them.
        drawn = float(np.nextafter(threshold, 0.0)) if threshold else None
        figures.append(
            Figure(
                brains.render(image, label, drawn),
                f"{contrast} {row.name.upper()}-corrected group z map",
            )
        )
    truth = (
        truth_rows(truth_dir, contrast, task, corrected, mask)
        if truth_dir is not None
        else None
    )
    return _ContrastBlock(
        name=contrast,
        description=contrast_description(contrast, sidecar),
        figures=figures,
        corrections=corrections,
        truth=truth,
    )


def write_group_report(
    glm_dir: str | os.PathLike | LAIONfMRIDataset,
    task: str = "experiment",
    truth_dir: str | os.PathLike | None = None,
    force: bool = False,
    *,
    output_dir: str | os.PathLike | None = None,
) -> Path:
    """Write the group report: maps, corrections, cluster tables, truth.

    Parameters
    ----------
    glm_dir : str, path-like or LAIONfMRIDataset
        The GLM derivative folder (holds ``group_level``), a URL of one, or a
        dataset opened already.
    task : str
        Task of the analysis, for the titles and the truth files.
    truth_dir : str or path-like, optional
        ``<dataset>/derivatives/truth`` of a simulated dataset (a local
        folder); with it the report compares the corrected maps with the true
        effects.
    force : bool
        Write the report even if it is newer than its inputs.
    output_dir : str or path-like, optional
        Local folder of the reports; by default ``<glm_dir>/reports`` (needed
        for a remote dataset, whose reports are always written anew).

    Returns
    -------
    Path
        ``<output_dir>/group.html``.

    Raises
    ------
    NotFoundError
        If there are no group-level maps.
    """
    dataset = open_dataset(glm_dir)
    truth = Path(truth_dir) if truth_dir is not None else None
    contrasts = group_contrasts(dataset)
    if not contrasts:
        raise NotFoundError(
            f"no group-level z maps in {dataset.root}/{layout.GROUP_LEVEL_DIR}; run "
            "`laion-fmri-glm glm BIDS_DIR OUTPUT_DIR group` first"
        )
    path = reports_folder(dataset, output_dir) / report_path("group").name
    modified = dataset.last_modified()
    newest = None if modified is None else max(modified, newest_truth_file(truth))
    if not force and is_fresh(path, newest):
        return path
    write_text(_group_html(dataset, contrasts, task, truth), path)
    return path


def _roi_figures(dataset: LAIONfMRIDataset) -> list[_RoiFigure] | None:
    """The roi level's profile bar plots and reliability; None if it has not run."""
    table = dataset.load_group_roi_responses()
    if table is None:
        return None
    figures = []
    for (roi, hemi), rows in table.groupby(["roi", "hemi"], sort=False):
        png = dataset.load_roi_figure(roi, hemi)
        if png is None:
            continue
        caption = (
            f"{roi}-{hemi} ({rows['contrast'].iloc[0]}): split-half Dice "
            f"{format_number(rows['dice_mean'].iloc[0], 2)}, "
            f"{format_number(rows['n_voxels_mean'].iloc[0], 1)} voxels per subject"
        )
        figures.append(
            _RoiFigure(Figure(png_uri(png.read_bytes()), f"{roi} {hemi}"), caption)
        )
    return figures


def _group_html(
    dataset: LAIONfMRIDataset, contrasts: list[str], task: str, truth_dir: Path | None
) -> str:
    first = metadata(dataset, contrast=contrasts[0], stat_type="z")
    try:
        mask = np.asanyarray(dataset.load_mask().dataobj) > 0
    except NotFoundError:
        reference = dataset.load_group_level_contrast(contrasts[0], "z")
        mask = np.asanyarray(reference.dataobj) != 0
    subjects = (first.Subjects if first else None) or []
    parameters = first.Parameters if first else {}
    analysis = [
        ("Task", task),
        (f"Subjects ({len(subjects)})", ", ".join(subjects)),
        *(model_rows(first) if first else []),
        ("Degrees of freedom", first.DegreesOfFreedom if first else None),
        ("Voxels in the group mask", int(mask.sum())),
        ("Alpha (FDR q and FWE)", parameters.get("alpha")),
        ("FWE method requested", parameters.get("fwe")),
        ("Sign-flip permutations requested", parameters.get("n_perm")),
        ("Permutation seed", parameters.get("seed")),
        ("Test", "one-sided" if parameters.get("one_sided") else "two-sided"),
    ]
    truth_known = (
        truth_dir if truth_dir is not None and (truth_dir / "group").is_dir() else None
    )
    brains = glass_brains()
    blocks = [
        _contrast_block(dataset, contrast, task, truth_known, mask, brains)
        for contrast in contrasts
    ]
    nav = [Link("index.html", "All reports")]
    nav += [Link(f"#contrast-{c}", c) for c in contrasts]
    nav += [Link("#analysis", "Analysis")]
    return get_template("group.html.jinja").render(
        title="Group level",
        subtitle=(
            f"task-{task}: one-sample t test over {len(subjects)} subjects, "
            f"{len(contrasts)} contrasts"
        ),
        nav=nav,
        glance=glance_rows(dataset),
        corrections=dataset.corrections(),
        threshold=PEAK_Z_THRESHOLD,
        null_calibration_note=NULL_CALIBRATION_NOTE,
        truth_dir=truth_known,
        contrasts=blocks,
        strong_effect_share=STRONG_EFFECT_SHARE,
        rois=_roi_figures(dataset),
        analysis=analysis,
    )
