"""HTML reports of the GLM derivatives: one per subject, one for the group, an index.

The reports are what a scientist opens first: per subject the design matrices,
every contrast's z map as a glass brain with its table of peaks, the model,
the runs used and warnings (head motion, voxels left out); for the group the
uncorrected, FDR- and FWE-corrected maps, their cluster tables and the
thresholds from the sidecars and, on simulated data, what the corrected maps
found against the known truth.

Each report is one self-contained HTML file: images are embedded as base64 PNG
data URIs and the style sheet is inline, so a report opens offline and can be
mailed.  They are written to ``<glm_dir>/reports/``: ``index.html``,
``group.html`` and ``sub-<label>.html``.  A report newer than every file it
is made from is not made again.

Examples
--------
>>> report_path("sub-01")
PurePosixPath('reports/sub-01.html')
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import threading
import urllib.parse
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pandas as pd

from laion_fmri_dataloader import layout
from laion_fmri_dataloader._version import __version__
from laion_fmri_dataloader.contrasts import order_contrast_names
from laion_fmri_dataloader.errors import NotFoundError
from laion_fmri_dataloader.io.files import write_text
from laion_fmri_dataloader.layout import parse_bids_name
from laion_fmri_dataloader.sidecar import MapSidecar

__all__ = [
    "HEADLESS_CHROMIUM_FLAGS",
    "HIGH_MOTION_FD_MM",
    "HIGH_MOTION_SHARE_LIMIT",
    "MAX_CLUSTERS",
    "MAX_TABLE_ROWS",
    "MEAN_FD_LIMIT_MM",
    "NULL_CALIBRATION_NOTE",
    "PEAK_Z_THRESHOLD",
    "REPORTS_DIR",
    "STRONG_EFFECT_SHARE",
    "MotionSummary",
    "TruthComparison",
    "compare_with_truth",
    "motion_summary",
    "report_path",
    "write_group_report",
    "write_index",
    "write_reports",
    "write_subject_report",
]

log = logging.getLogger("laion_fmri")

#: Flags to open a report in headless Chromium offline, as root, with a fresh
#: ``--user-data-dir``: without the networking flags Chromium tries to reach
#: Google's hosts at start-up.
HEADLESS_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
#: Folder of the reports below the GLM derivative root.
REPORTS_DIR = PurePosixPath("reports")
#: |z| above which subject maps are drawn and peaks listed (p < 0.001, one-sided).
PEAK_Z_THRESHOLD = 3.1
#: Framewise displacement (Power et al., 2012) above which a volume counts as
#: high motion, mm; the usual scrubbing criterion.
HIGH_MOTION_FD_MM = 0.5
#: Mean framewise displacement of a run above which the report warns, mm
#: (the stringent criterion of Parkes et al., 2018).
MEAN_FD_LIMIT_MM = 0.25
#: Share of high-motion volumes above which the report warns (Parkes et al.).
HIGH_MOTION_SHARE_LIMIT = 0.2
#: Rows of a peak or cluster table shown; the full table is in the TSV.
MAX_TABLE_ROWS = 12
#: Clusters of a subject's map whose peaks are listed.
MAX_CLUSTERS = 8
#: What the group report says about the error rates of the corrections.
NULL_CALIBRATION_NOTE = (
    "FWE and FDR error rates were measured on simulated null data; see README."
)

_DPI = 80
_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,
sans-serif;margin:0;color:#1d2330;background:#f6f7f9;line-height:1.45}
header{background:#1d3557;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:1.45em}header p{margin:4px 0 0;opacity:.85}
header a{color:#cfe3ff}
main{max-width:1180px;margin:0 auto;padding:8px 28px 40px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;
padding:6px 20px 16px;margin:18px 0}
h2{font-size:1.2em;border-bottom:1px solid #dde1e7;padding-bottom:4px}
h3{font-size:1.05em;margin:18px 0 4px}
table{border-collapse:collapse;margin:8px 0;font-size:.88em}
th,td{border:1px solid #d5d9e0;padding:3px 9px;text-align:left;
vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.warn{background:#fff4e0;border-left:4px solid #e69500;padding:6px 12px}
.ok{background:#e9f7ef;border-left:4px solid #2e9d5b;padding:6px 12px}
.note{color:#4a5568;font-size:.9em}
code{background:#eef1f5;padding:1px 4px;border-radius:3px}
nav a{margin-right:14px}
"""


def report_path(name: str) -> PurePosixPath:
    """Path of a report, relative to the GLM derivative root.

    Report names are built here rather than in :mod:`layout`, because reports
    are for people, not derivatives the loader reads.

    Parameters
    ----------
    name : str
        ``"index"``, ``"group"`` or ``"sub-<label>"``.
    """
    if name.startswith("sub-"):
        name = f"sub-{layout.subject_label(name)}"
    else:
        layout.validate_choice(name, ("index", "group"), "report name")
    return REPORTS_DIR / f"{name}.html"


# ---------------------------------------------------------------------------
# HTML helpers


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}"
    return str(value)


class _Markup(str):
    """HTML that a table shows as it is (built from escaped parts)."""


def _table(
    header: Sequence[str], rows: Iterable[Sequence[object]], numeric: bool = True
) -> str:
    head = "".join(f"<th>{_text(name)}</th>" for name in header)
    body = []
    for row in rows:
        cells = []
        for value in row:
            is_number = isinstance(value, (int, float, np.number)) and not isinstance(
                value, bool
            )
            css = ' class="num"' if numeric and is_number else ""
            shown = value if isinstance(value, _Markup) else _text(_number(value))
            cells.append(f"<td{css}>{shown}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _key_values(pairs: Iterable[tuple[str, object]]) -> str:
    rows = "".join(
        f"<tr><th>{_text(key)}</th><td>{_text(_number(value))}</td></tr>"
        for key, value in pairs
    )
    return f"<table>{rows}</table>"


def _image(uri: str, alt: str) -> str:
    return f'<img src="{_text(uri)}" alt="{_text(alt)}">'


def _page(title: str, subtitle: str, nav: str, sections: Sequence[str]) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_text(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body><header><h1>{_text(title)}</h1><p>{_text(subtitle)}</p>"
        f"<nav>{nav}</nav></header>\n<main>\n"
        + "\n".join(sections)
        + f'\n<p class="note">laion-fmri-dataloader {_text(__version__)}</p>'
        "</main></body></html>\n"
    )


def _section(title: str, body: str, anchor: str | None = None) -> str:
    anchor_attr = f' id="{_text(anchor)}"' if anchor else ""
    return f"<section{anchor_attr}><h2>{_text(title)}</h2>{body}</section>"


def _link(href: str, label: str) -> str:
    return f'<a href="{_text(href)}">{_text(label)}</a>'


def _warnings_box(items: Sequence[str]) -> str:
    if not items:
        return '<p class="ok">No warnings.</p>'
    listed = "".join(f"<li>{_text(item)}</li>" for item in items)
    return f'<div class="warn"><ul>{listed}</ul></div>'


def _png_uri(payload: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(payload).decode("ascii")


# ---------------------------------------------------------------------------
# Figures


def _figure_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    return _png_uri(buffer.getvalue())


class _GlassBrains:
    """Glass brains (left, top, right views) of signed z maps, on one outline.

    nilearn draws the brain outline from hundreds of patches per view, which
    is most of a figure's cost; a report draws many maps, so the outline is
    drawn once and each map is added, saved and taken off again (the PNG is
    the same as a figure of its own).
    """

    def __init__(self) -> None:
        # A Figure made without pyplot needs no GUI backend and is freed with
        # its last reference, so reports can be written from any thread.
        from matplotlib.figure import Figure
        from nilearn import plotting

        self.figure = Figure(figsize=(9.0, 2.9))
        self.display = plotting.plot_glass_brain(
            None,
            display_mode="lzr",
            plot_abs=False,
            colorbar=False,
            figure=self.figure,
            axes=(0.0, 0.0, 0.9, 0.9),
        )
        self._axes = [view.ax for view in self.display.axes.values()]

    def render(
        self, image: nib.Nifti1Image, title: str, threshold: float | None
    ) -> str:
        """PNG data URI of ``image`` drawn where ``|z| > threshold``.

        Parameters
        ----------
        image : nibabel.Nifti1Image
            The z map.
        title : str
            Figure title.
        threshold : float or None
            |z| at or below which nothing is drawn; None draws every non-zero
            voxel.
        """
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        data = np.asanyarray(image.dataobj)
        peak = float(np.nanmax(np.abs(data))) if data.size else 0.0
        cut = threshold or 0.0
        shown = peak > cut
        vmax = float(np.ceil(max(peak, cut + 1.0)))
        before = [set(axes.get_children()) for axes in self._axes]
        added = [
            self.figure.suptitle(
                title if shown else f"{title}: nothing above threshold",
                x=0.02,
                y=0.98,
                ha="left",
                fontsize=11,
            )
        ]
        if shown:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.display.add_overlay(
                    image,
                    threshold=threshold or 1e-6,
                    cmap=_Z_COLOURMAP,
                    vmin=-vmax,
                    vmax=vmax,
                )
            # matplotlib's own colour bar costs a tenth of nilearn's; the grey
            # band marks the |z| range that is not drawn.
            bar_axes = self.figure.add_axes((0.92, 0.1, 0.018, 0.75))
            bar = self.figure.colorbar(
                ScalarMappable(Normalize(-vmax, vmax), _Z_COLOURMAP), cax=bar_axes
            )
            if cut:
                bar_axes.axhspan(-cut, cut, color="#d9d9d9")
            ticks = sorted({-vmax, vmax, *((-cut, cut) if cut else (0.0,))})
            bar.set_ticks(ticks, labels=[f"{tick:.3g}" for tick in ticks])
            bar.ax.tick_params(labelsize=8)
            bar_axes.set_title("z", fontsize=9)
            added.append(bar_axes)
        uri = _figure_uri(self.figure)
        for axes, artists in zip(self._axes, before, strict=True):
            for artist in set(axes.get_children()) - artists:
                artist.remove()
        for artist in added:
            artist.remove()
        return uri


_Z_COLOURMAP = "RdBu_r"
_PER_THREAD = threading.local()


def _glass_brains() -> _GlassBrains:
    """This thread's glass-brain figure, so the outline is drawn once per thread."""
    if not hasattr(_PER_THREAD, "glass_brains"):
        _PER_THREAD.glass_brains = _GlassBrains()
    return _PER_THREAD.glass_brains


#: Colours of the truth overlay, by label value 1, 2, 3, 4.
_OVERLAY_COLOURS = {
    "hit": "#1a9850",
    "miss (strong true effect)": "#2c7bb6",
    "miss (weak tail)": "#abd9e9",
    "false positive or wrong sign": "#d7191c",
}


def _truth_overlay_uri(
    labels: np.ndarray, affine: np.ndarray, title: str, cut_coords: Sequence[float]
) -> str:
    """Axial slices of hits, misses and false positives on the MNI template."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from nilearn import plotting

    figure = Figure(figsize=(9.5, 2.4))
    label_image = nib.Nifti1Image(labels.astype(np.int16), affine)
    colours = list(_OVERLAY_COLOURS.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plotting.plot_roi(
            label_image,
            bg_img=_template(),
            display_mode="z",
            cut_coords=list(cut_coords),
            cmap=ListedColormap(colours),
            vmin=0.5,
            vmax=len(colours) + 0.5,
            alpha=0.9,
            figure=figure,
            axes=(0.0, 0.1, 1.0, 0.8),
            colorbar=False,
            draw_cross=False,
            black_bg=False,
            annotate=True,
        )
    figure.suptitle(title, x=0.01, y=0.99, ha="left", fontsize=11)
    handles = [
        Patch(facecolor=colour, label=name) for name, colour in _OVERLAY_COLOURS.items()
    ]
    figure.legend(
        handles=handles,
        loc="lower center",
        ncol=len(handles),
        frameon=False,
        fontsize=9,
        bbox_to_anchor=(0.5, 0.0),
    )
    return _figure_uri(figure)


_TEMPLATE: list[nib.Nifti1Image] = []


def _template() -> nib.Nifti1Image:
    """The MNI152 template shipped with nilearn (loaded once per process)."""
    if not _TEMPLATE:
        from nilearn import datasets

        _TEMPLATE.append(datasets.load_mni152_template(resolution=2))
    return _TEMPLATE[0]


# ---------------------------------------------------------------------------
# Motion


@dataclass(frozen=True)
class MotionSummary:
    """Head motion of one run from fMRIPrep's framewise displacement.

    Attributes
    ----------
    n_volumes : int
        Volumes in the confounds file.
    mean_fd, max_fd : float
        Mean and largest framewise displacement, mm (the first volume, which
        has none, left out).
    high_motion_share : float
        Share of volumes with a displacement above :data:`HIGH_MOTION_FD_MM`.
    """

    n_volumes: int
    mean_fd: float
    max_fd: float
    high_motion_share: float

    @property
    def warnings(self) -> list[str]:
        """Reasons, in words, to look at this run twice."""
        found = []
        if self.mean_fd > MEAN_FD_LIMIT_MM:
            found.append(
                f"mean framewise displacement {self.mean_fd:.2f} mm exceeds "
                f"{MEAN_FD_LIMIT_MM} mm"
            )
        if self.high_motion_share > HIGH_MOTION_SHARE_LIMIT:
            found.append(
                f"{100 * self.high_motion_share:.0f}% of volumes move more than "
                f"{HIGH_MOTION_FD_MM} mm (limit {100 * HIGH_MOTION_SHARE_LIMIT:.0f}%)"
            )
        return found


def motion_summary(confounds: Path) -> MotionSummary | None:
    """Summarise the ``framewise_displacement`` column of an fMRIPrep confounds file.

    Parameters
    ----------
    confounds : Path
        A ``*_desc-confounds_timeseries.tsv`` file.

    Returns
    -------
    MotionSummary or None
        None if the file cannot be read or has no usable column, so that a
        report never fails on it.
    """
    try:
        table = pd.read_csv(confounds, sep="\t", na_values=["n/a"])
        displacement = pd.to_numeric(table["framewise_displacement"], errors="coerce")
    except (OSError, KeyError, ValueError, pd.errors.ParserError):
        return None
    values = displacement.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    return MotionSummary(
        n_volumes=int(values.size),
        mean_fd=float(finite.mean()),
        max_fd=float(finite.max()),
        high_motion_share=float((finite > HIGH_MOTION_FD_MM).sum() / values.size),
    )


# Entities that tell the outputs of one run apart, not the run itself.
_OUTPUT_ENTITIES = ("space", "res", "den", "desc", "suffix", "extension")


def _confounds_of(bold: Path) -> Path | None:
    """The fMRIPrep confounds file beside a preprocessed BOLD series, if any."""
    run = {
        key: value
        for key, value in parse_bids_name(bold.name).items()
        if key not in _OUTPUT_ENTITIES
    }
    if not bold.parent.is_dir():
        return None
    for candidate in sorted(bold.parent.glob("*_desc-confounds_*.tsv")):
        entities = parse_bids_name(candidate.name)
        same_run = {
            key: value for key, value in entities.items() if key not in _OUTPUT_ENTITIES
        }
        if same_run == run and entities["suffix"] in ("timeseries", "regressors"):
            return candidate
    return None


# ---------------------------------------------------------------------------
# Subjects


@dataclass
class _RunInfo:
    bold: Path
    n_volumes: int | None
    confounds: Path | None
    motion: MotionSummary | None


@dataclass
class _Subject:
    label: str
    contrasts: list[str]
    sidecar: MapSidecar
    runs: list[_RunInfo]
    warnings: list[str]
    inputs: list[Path]


def _subjects(root: Path, task: str) -> list[str]:
    folder = root / layout.FIRST_LEVEL_DIR
    labels = []
    for path in sorted(folder.glob("sub-*")):
        pattern = f"{path.name}_task-{task}_contrast-*_stat-z.nii.gz"
        if path.is_dir() and any(path.glob(pattern)):
            labels.append(path.name[len("sub-") :])
    return labels


def _bids_roots(root: Path) -> list[Path]:
    """Where the BIDS dataset of a GLM folder may be, most likely first.

    Sidecars name runs relative to the BIDS root: the source dataset of
    ``dataset_description.json`` if it is a local folder, else the dataset
    that holds ``derivatives/glm``.
    """
    roots = []
    try:
        description = json.loads((root / "dataset_description.json").read_text())
        for source in description.get("SourceDatasets", []):
            url = urllib.parse.urlparse(str(source.get("URL", "")))
            if url.scheme == "file":
                roots.append(Path(urllib.parse.unquote(url.path)))
            elif not url.scheme and url.path:
                roots.append((root / urllib.parse.unquote(url.path)).resolve())
    except (OSError, ValueError, AttributeError):
        pass
    roots.append(root.parent.parent)
    return roots


def _run_path(name: str, roots: Sequence[Path]) -> Path:
    path = Path(name)
    if path.is_absolute():
        return path
    for candidate in (folder / path for folder in roots):
        if candidate.parent.is_dir():
            return candidate
    return roots[-1] / path


def _read_subject(root: Path, label: str, task: str) -> _Subject:
    folder = root / layout.first_level_dir(label)
    names = [layout.parse_name(path.name) for path in folder.glob("*_stat-z.nii.gz")]
    contrasts = order_contrast_names(
        n["contrast"]
        for n in names
        if n.get("task") == task and "contrast" in n and "split" not in n
    )
    if not contrasts:
        raise NotFoundError(
            f"sub-{label} has no task-{task} z maps in {folder}; run the "
            "participant level first"
        )
    sidecar_path = root / layout.sidecar_of(
        layout.first_level_map(label, task, contrasts[0], "z")
    )
    sidecar = MapSidecar.model_validate_json(sidecar_path.read_text())
    volumes = list(sidecar.Parameters.get("NumberOfVolumes") or [])
    runs = []
    found_warnings = [str(item) for item in sidecar.Parameters.get("Warnings") or []]
    roots = _bids_roots(root)
    for index, bold_name in enumerate(sidecar.Runs):
        bold = _run_path(bold_name, roots)
        confounds = _confounds_of(bold)
        motion = motion_summary(confounds) if confounds else None
        n_volumes = int(volumes[index]) if index < len(volumes) else None
        runs.append(_RunInfo(bold, n_volumes, confounds, motion))
        run_name = _run_name(bold)
        if motion is None:
            found_warnings.append(
                f"{run_name}: no framewise displacement found (confounds file "
                f"{confounds or 'beside ' + str(bold)} missing or without the "
                "column), head motion not checked"
            )
        else:
            found_warnings += [f"{run_name}: {text}" for text in motion.warnings]
    return _Subject(
        label=label,
        contrasts=contrasts,
        sidecar=sidecar,
        runs=runs,
        warnings=found_warnings,
        inputs=[path for path in folder.iterdir() if path.is_file()],
    )


def _run_name(bold: Path) -> str:
    entities = parse_bids_name(bold.name)
    parts = [f"{key}-{entities[key]}" for key in ("ses", "run") if key in entities]
    return " ".join(parts) or bold.name


def _is_fresh(report: Path, inputs: Iterable[Path]) -> bool:
    if not report.is_file():
        return False
    made = report.stat().st_mtime_ns
    return all(path.stat().st_mtime_ns < made for path in inputs if path.exists())


def _strongest_clusters(
    data: np.ndarray, threshold: float, keep: int
) -> tuple[np.ndarray, int]:
    """Keep the ``keep`` clusters of ``|data| > threshold`` with the highest peaks.

    nilearn's cluster table costs a pass over the volume per cluster, and a
    single subject's map can hold hundreds of small clusters at z > 3.1; the
    table lists the strongest, so only they are kept.  Clusters are face-
    connected and signed, as in :func:`nilearn.reporting.get_clusters_table`.

    Returns
    -------
    kept : numpy.ndarray
        ``data`` with every other cluster set to 0.
    n_clusters : int
        Clusters in the whole map.
    """
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, 1)
    clusters = []
    for sign in (1.0, -1.0):
        labels, count = ndimage.label(sign * data > threshold, structure)
        if count:
            peaks = ndimage.maximum(sign * data, labels, np.arange(1, count + 1))
            clusters += [(peak, labels, index + 1) for index, peak in enumerate(peaks)]
    kept = np.zeros_like(data)
    strongest = sorted(clusters, key=lambda cluster: -cluster[0])[:keep]
    for _, labels, index in strongest:
        inside = labels == index
        kept[inside] = data[inside]
    return kept, len(clusters)


def _peaks_table(image: nib.Nifti1Image) -> str:
    from laion_fmri_dataloader.stats.inference import cluster_table

    data = np.asanyarray(image.dataobj).astype(np.float32)
    kept, n_clusters = _strongest_clusters(data, PEAK_Z_THRESHOLD, MAX_CLUSTERS)
    if n_clusters == 0:
        return f'<p class="note">No voxel with |z| &gt; {PEAK_Z_THRESHOLD}.</p>'
    # nilearn's cost grows with the volume, so the table is made on the box
    # around the kept clusters (one empty voxel of margin), its affine shifted.
    inside = np.argwhere(kept != 0)
    low = np.maximum(inside.min(axis=0) - 1, 0)
    high = np.minimum(inside.max(axis=0) + 2, kept.shape)
    box = kept[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ low + image.affine[:3, 3]
    with warnings.catch_warnings():
        # nilearn warns when one sign has no cluster; the table shows it.
        warnings.simplefilter("ignore")
        table = cluster_table(
            nib.Nifti1Image(box, affine), PEAK_Z_THRESHOLD, two_sided=True
        )
    listed = min(n_clusters, MAX_CLUSTERS)
    what = (
        f"|z| > {PEAK_Z_THRESHOLD}; the {listed} of {n_clusters} clusters "
        "with the highest peaks are listed"
        if n_clusters > listed
        else f"|z| > {PEAK_Z_THRESHOLD}"
    )
    return _cluster_html(table, what, n_clusters)


def _cluster_html(table: pd.DataFrame, what: str, n_clusters: int) -> str:
    if table.empty or n_clusters == 0:
        return f'<p class="note">No cluster ({_text(what)}).</p>'
    shown = table.head(MAX_TABLE_ROWS)
    rows = [
        [None if pd.isna(value) or value == "" else value for value in row]
        for row in shown.itertuples(index=False)
    ]
    more = (
        f" The first {MAX_TABLE_ROWS} of {len(table)} rows are shown."
        if len(table) > MAX_TABLE_ROWS
        else ""
    )
    return (
        f'<p class="note">{n_clusters} cluster{"s" if n_clusters != 1 else ""} '
        f"({_text(what)}); peaks in MNI mm, sub-peaks (rows without a size) at "
        f"least 8 mm apart.{_text(more)}</p>" + _table(list(table.columns), rows)
    )


def _contrast_description(name: str, sidecar: MapSidecar | None) -> str:
    info = sidecar.Contrasts.get(name) if sidecar else None
    if info is None:
        return ""
    weights = ", ".join(
        f"{condition} {weight:+g}"
        for condition, weight in zip(info.Conditions, info.Weights, strict=False)
        if weight
    )
    return (
        f"<p>{_text(info.Description)} "
        f'<span class="note">(weights: {_text(weights)})</span></p>'
    )


def _model_rows(sidecar: MapSidecar) -> list[tuple[str, object]]:
    model = sidecar.Model
    return [
        ("Model", model.Type),
        ("HRF", model.HRF),
        ("Drift model", f"{model.DriftModel}, high-pass {model.HighPassFilter:g} Hz"),
        ("Noise model", model.NoiseModel),
        ("Signal scaling", model.SignalScaling),
        (
            "Smoothing",
            f"{model.SmoothingFWHM:g} mm FWHM" if model.SmoothingFWHM else "none",
        ),
    ]


def write_subject_report(
    glm_dir: str | Path, subject: str, task: str = "experiment", force: bool = False
) -> Path:
    """Write the report of one subject's first level.

    Parameters
    ----------
    glm_dir : str or Path
        The GLM derivative folder (``<data_dir>/derivatives/glm``).
    subject : str
        ``"01"`` or ``"sub-01"``.
    task : str
        Task of the first-level maps.
    force : bool
        Write the report even if it is newer than its inputs.

    Returns
    -------
    Path
        ``<glm_dir>/reports/sub-<label>.html``.

    Raises
    ------
    NotFoundError
        If the subject has no z maps of ``task``.
    """
    root = Path(glm_dir)
    label = layout.subject_label(subject)
    info = _read_subject(root, label, task)
    path = root / report_path(f"sub-{label}")
    if not force and _is_fresh(path, info.inputs):
        return path
    write_text(_subject_html(root, info, task), path)
    return path


def _software_text(sidecar) -> str:
    """This package (and its container) and the libraries, with versions."""
    ours = sidecar.Software
    parts = [f"{ours.Name} {ours.Version}"] if ours else []
    if ours and ours.Container:
        parts[0] += f" (container {ours.Container})"
    parts += [f"{name} {version}" for name, version in sidecar.Dependencies.items()]
    return ", ".join(parts)


def _subject_html(root: Path, info: _Subject, task: str) -> str:
    sidecar = info.sidecar
    label = info.label
    trs = sidecar.Parameters.get("RepetitionTime") or []
    mask_path = root / layout.first_level_mask(label, task)
    n_voxels = (
        int((np.asanyarray(nib.load(mask_path).dataobj) > 0).sum())
        if mask_path.is_file()
        else None
    )
    summary = _key_values(
        [
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
            *_model_rows(sidecar),
            ("Confounds", ", ".join(sidecar.Confounds) or "none"),
            ("Voxels in the brain mask", n_voxels),
            ("Software", _software_text(sidecar)),
        ]
    )
    run_rows = [
        [
            _run_name(run.bold),
            run.bold.name,
            run.n_volumes,
            run.motion.mean_fd if run.motion else None,
            run.motion.max_fd if run.motion else None,
            round(100 * run.motion.high_motion_share, 1) if run.motion else None,
        ]
        for run in info.runs
    ]
    runs = _table(
        [
            "Run",
            "Preprocessed BOLD",
            "Volumes",
            "Mean FD (mm)",
            "Max FD (mm)",
            f"% volumes FD > {HIGH_MOTION_FD_MM} mm",
        ],
        run_rows,
    )
    design = root / layout.design_matrix_png(label, task)
    design_html = (
        _image(_png_uri(design.read_bytes()), f"design matrices of sub-{label}")
        if design.is_file()
        else '<p class="warn">The design-matrix figure is missing.</p>'
    )
    maps = []
    brains = _glass_brains()
    for contrast in info.contrasts:
        image = nib.load(root / layout.first_level_map(label, task, contrast, "z"))
        contrast_sidecar = _sidecar(
            root / layout.sidecar_of(layout.first_level_map(label, task, contrast, "z"))
        )
        dof = contrast_sidecar.DegreesOfFreedom if contrast_sidecar else None
        maps.append(
            f'<div id="contrast-{_text(contrast)}">'
            + f"<h3>{_text(contrast)}</h3>"
            + _contrast_description(contrast, contrast_sidecar)
            + _image(
                brains.render(
                    image,
                    f"sub-{label} {contrast}: z, |z| > {PEAK_Z_THRESHOLD}",
                    PEAK_Z_THRESHOLD,
                ),
                f"{contrast} z map of sub-{label}",
            )
            + f'<p class="note">z map thresholded at |z| &gt; {PEAK_Z_THRESHOLD} '
            f"(uncorrected), degrees of freedom {_text(_number(dof))}.</p>"
            + _peaks_table(image)
            + "</div>"
        )
    nav = " ".join(
        [_link("index.html", "All reports"), _link("group.html", "Group report")]
        + [_link(f"#contrast-{c}", c) for c in info.contrasts]
    )
    return _page(
        f"sub-{label} · first level",
        f"task-{task}: {len(info.runs)} run(s), {len(info.contrasts)} contrasts",
        nav,
        [
            _section("Warnings", _warnings_box(info.warnings)),
            _section("Model and data", summary),
            _section(
                "Runs used",
                runs + '<p class="note">FD: framewise displacement from the fMRIPrep '
                "confounds (Power et al., 2012). A run is flagged when its mean FD "
                f"exceeds {MEAN_FD_LIMIT_MM} mm or more than "
                f"{100 * HIGH_MOTION_SHARE_LIMIT:.0f}% of its volumes exceed "
                f"{HIGH_MOTION_FD_MM} mm.</p>",
            ),
            _section("Design matrices", design_html),
            _section("Contrasts (z maps)", "".join(maps)),
        ],
    )


def _sidecar(path: Path) -> MapSidecar | None:
    if not path.is_file():
        return None
    return MapSidecar.model_validate_json(path.read_text())


# ---------------------------------------------------------------------------
# Truth


@dataclass(frozen=True)
class TruthComparison:
    """Voxels a corrected map found, against the true effect's support.

    Attributes
    ----------
    n_true : int
        Voxels of the group mask with a non-zero true effect.
    n_strong : int
        True voxels whose effect is at least :data:`STRONG_EFFECT_SHARE` of
        the largest |true effect|; the cores of the regions, where a test has
        power, as opposed to their weak tails.
    hits : int
        True voxels found with the sign of the true effect.
    strong_hits : int
        Strong true voxels found with the right sign.
    misses : int
        True voxels not found.
    false_positives : int
        Voxels found where the true effect is zero.
    sign_errors : int
        True voxels found with the wrong sign.
    """

    n_true: int
    n_strong: int
    hits: int
    strong_hits: int
    misses: int
    false_positives: int
    sign_errors: int

    @property
    def n_found(self) -> int:
        """Voxels that survive the correction."""
        return self.hits + self.false_positives + self.sign_errors

    @property
    def sensitivity(self) -> float:
        """Share of true voxels found with the right sign (nan if none is true)."""
        return self.hits / self.n_true if self.n_true else float("nan")

    @property
    def strong_sensitivity(self) -> float:
        """Share of strong true voxels found with the right sign."""
        return self.strong_hits / self.n_strong if self.n_strong else float("nan")

    @property
    def false_discovery_proportion(self) -> float:
        """Share of found voxels that are false positives or of the wrong sign."""
        wrong = self.false_positives + self.sign_errors
        return wrong / self.n_found if self.n_found else 0.0


#: Share of the peak |true effect| from which a true voxel counts as strong.
STRONG_EFFECT_SHARE = 0.5


def compare_with_truth(
    corrected: np.ndarray, true_effect: np.ndarray, mask: np.ndarray
) -> tuple[TruthComparison, np.ndarray]:
    """Compare a corrected z map with the true effect, voxel by voxel.

    Parameters
    ----------
    corrected : numpy.ndarray
        Corrected z map: non-zero where a voxel survives.
    true_effect : numpy.ndarray
        True effect on the same grid; non-zero where there is one.
    mask : numpy.ndarray of bool
        Voxels that were tested (the group mask).

    Returns
    -------
    comparison : TruthComparison
        The counts.
    labels : numpy.ndarray of int
        1 hit, 2 miss of a strong true effect, 3 miss in a weak tail, 4 false
        positive or wrong sign, 0 elsewhere.

    Examples
    --------
    >>> found = np.array([2.0, 0.0, 0.0, 3.0, -4.0])
    >>> truth = np.array([1.0, 1.0, 0.2, 0.0, 0.5])
    >>> comparison, labels = compare_with_truth(found, truth, np.ones(5, bool))
    >>> comparison.hits, comparison.misses, comparison.false_positives
    (1, 2, 1)
    >>> comparison.n_strong, comparison.strong_hits, comparison.sign_errors
    (3, 1, 1)
    >>> labels.tolist()
    [1, 2, 3, 4, 4]
    """
    if corrected.shape != true_effect.shape or corrected.shape != mask.shape:
        raise ValueError(
            f"corrected map {corrected.shape}, truth {true_effect.shape} and mask "
            f"{mask.shape} must have one shape"
        )
    mask = mask.astype(bool)
    found = (corrected != 0) & mask
    true = (true_effect != 0) & mask
    peak = float(np.abs(true_effect[true]).max()) if true.any() else 0.0
    strong = true & (np.abs(true_effect) >= STRONG_EFFECT_SHARE * peak)
    right_sign = np.sign(corrected) == np.sign(true_effect)
    hit = found & true & right_sign
    sign_error = found & true & ~right_sign
    miss = true & ~found
    false_positive = found & ~true
    labels = np.zeros(corrected.shape, dtype=np.int16)
    labels[hit] = 1
    labels[miss & strong] = 2
    labels[miss & ~strong] = 3
    labels[false_positive | sign_error] = 4
    comparison = TruthComparison(
        n_true=int(true.sum()),
        n_strong=int(strong.sum()),
        hits=int(hit.sum()),
        strong_hits=int((hit & strong).sum()),
        misses=int(miss.sum()),
        false_positives=int(false_positive.sum()),
        sign_errors=int(sign_error.sum()),
    )
    return comparison, labels


def _truth_effect(
    truth_dir: Path, contrast: str, task: str, reference: nib.Nifti1Image
) -> np.ndarray | None:
    """The group's true effect on the grid of ``reference``, or None if unknown."""
    from laion_fmri_dataloader.simulate import load_truth

    # load_truth takes the simulated dataset, whose truth is derivatives/truth.
    try:
        effect, _ = load_truth(truth_dir.parent.parent, "group", contrast, task=task)
    except NotFoundError:
        return None
    if effect.shape[:3] != reference.shape[:3] or not np.allclose(
        effect.affine, reference.affine, atol=1e-3
    ):
        from nilearn.image import resample_to_img

        effect = resample_to_img(
            effect,
            reference,
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )
    return np.asanyarray(effect.dataobj).astype(np.float64)


def _cut_coords(labels: np.ndarray, affine: np.ndarray, count: int = 6) -> list[float]:
    """Axial slices (mm) with the most hits, strong misses and false positives.

    Weak tails are left out of the choice: they cover much of the brain and
    would pull the slices away from where the test succeeds or fails.
    """
    telling = np.isin(labels, (1, 2, 4))
    if not telling.any():
        telling = labels > 0
    per_slice = telling.sum(axis=(0, 1))
    chosen: list[int] = []
    for index in np.argsort(-per_slice, kind="stable"):
        if per_slice[index] == 0 or len(chosen) == count:
            break
        if all(abs(int(index) - other) >= 2 for other in chosen):
            chosen.append(int(index))
    if not chosen:
        chosen = [labels.shape[2] // 2]
    return [float(affine[2, 2] * k + affine[2, 3]) for k in sorted(chosen)]


def _truth_section(
    root: Path, truth_dir: Path, contrast: str, task: str, mask: np.ndarray
) -> str:
    reference = nib.load(root / layout.group_map(contrast, correction="fwe"))
    effect = _truth_effect(truth_dir, contrast, task, reference)
    if effect is None:
        return '<p class="note">No ground truth for this contrast.</p>'
    rows = []
    figures = []
    for correction in layout.CORRECTIONS:
        image = nib.load(root / layout.group_map(contrast, correction=correction))
        corrected = np.asanyarray(image.dataobj).astype(np.float64)
        comparison, labels = compare_with_truth(corrected, effect, mask)
        rows.append(
            [
                correction.upper(),
                comparison.n_true,
                comparison.n_found,
                comparison.hits,
                comparison.misses,
                comparison.false_positives,
                comparison.sign_errors,
                comparison.n_strong,
                comparison.strong_hits,
                round(100 * comparison.strong_sensitivity, 1),
                round(100 * comparison.false_discovery_proportion, 1),
            ]
        )
        figures.append(
            _image(
                _truth_overlay_uri(
                    labels,
                    image.affine,
                    f"{contrast} {correction.upper()}: found vs true",
                    _cut_coords(labels, image.affine),
                ),
                f"{contrast} {correction} map against the truth",
            )
        )
    table = _table(
        [
            "Map",
            "True voxels",
            "Found",
            "Hits",
            "Misses",
            "False positives",
            "Wrong sign",
            "Strong true voxels",
            "Strong hits",
            "Strong found %",
            "False discovery proportion %",
        ],
        rows,
    )
    return (
        "<h4>Recovered versus true effect (simulated data)</h4>"
        '<p class="note">True voxels: non-zero true effect in any subject, inside '
        "the group mask. A hit is a true voxel found with the true sign; a false "
        "positive is a voxel found where the true effect is zero. Strong true "
        "voxels have at least "
        f"{100 * STRONG_EFFECT_SHARE:.0f}% of the largest true effect: the cores "
        "of the regions; their weak tails, and regions that move between "
        "subjects, are expected misses.</p>" + table + "".join(figures)
    )


# ---------------------------------------------------------------------------
# Group


def _survivors(image: nib.Nifti1Image) -> int:
    return int(np.count_nonzero(np.asanyarray(image.dataobj)))


def _correction_rows(root: Path, contrast: str) -> list[list[object]]:
    rows = []
    for correction in layout.CORRECTIONS:
        relative = layout.group_map(contrast, correction=correction)
        sidecar = _sidecar(root / layout.sidecar_of(relative))
        info = sidecar.Correction if sidecar else None
        rows.append(
            [
                correction.upper(),
                info.Method if info else "unknown",
                info.Alpha if info else None,
                "two-sided" if (info is None or info.TwoSided) else "one-sided",
                info.ZThreshold if info else None,
                info.TThreshold if info else None,
                info.NPermutations if info else None,
                info.Exhaustive if info else None,
                _survivors(nib.load(root / relative)),
                info.Note if info else "",
            ]
        )
    return rows


def _group_contrasts(root: Path) -> list[str]:
    folder = root / layout.GROUP_LEVEL_DIR
    names = [layout.parse_name(path.name) for path in folder.glob("*_stat-z.nii.gz")]
    return order_contrast_names(n["contrast"] for n in names if "contrast" in n)


def _group_inputs(root: Path, truth_dir: Path | None) -> list[Path]:
    paths = [p for p in (root / layout.GROUP_LEVEL_DIR).iterdir() if p.is_file()]
    if truth_dir is not None and truth_dir.is_dir():
        paths += list((truth_dir / "group").glob("*"))
    return paths


def write_group_report(
    glm_dir: str | Path,
    task: str = "experiment",
    truth_dir: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write the group report: maps, corrections, cluster tables, truth.

    Parameters
    ----------
    glm_dir : str or Path
        The GLM derivative folder (holds ``group_level``).
    task : str
        Task of the analysis, for the titles and the truth files.
    truth_dir : str or Path, optional
        ``<dataset>/derivatives/truth`` of a simulated dataset; with it the
        report compares the corrected maps with the true effects.
    force : bool
        Write the report even if it is newer than its inputs.

    Returns
    -------
    Path
        ``<glm_dir>/reports/group.html``.

    Raises
    ------
    NotFoundError
        If there are no group-level maps.
    """
    root = Path(glm_dir)
    truth = Path(truth_dir) if truth_dir is not None else None
    contrasts = _group_contrasts(root)
    if not contrasts:
        raise NotFoundError(
            f"no group-level z maps in {root / layout.GROUP_LEVEL_DIR}; run "
            "`laion-fmri-glm glm BIDS_DIR OUTPUT_DIR group` first"
        )
    path = root / report_path("group")
    if not force and _is_fresh(path, _group_inputs(root, truth)):
        return path
    write_text(_group_html(root, contrasts, task, truth), path)
    return path


def _group_html(
    root: Path, contrasts: list[str], task: str, truth_dir: Path | None
) -> str:
    first = _sidecar(root / layout.sidecar_of(layout.group_map(contrasts[0], "z")))
    mask_path = root / layout.group_mask()
    mask_image = nib.load(mask_path) if mask_path.is_file() else None
    reference = nib.load(root / layout.group_map(contrasts[0], "z"))
    mask = (
        np.asanyarray(mask_image.dataobj) > 0
        if mask_image is not None
        else np.asanyarray(reference.dataobj) != 0
    )
    subjects = (first.Subjects if first else None) or []
    parameters = first.Parameters if first else {}
    summary = _key_values(
        [
            ("Task", task),
            (f"Subjects ({len(subjects)})", ", ".join(subjects)),
            *(_model_rows(first) if first else []),
            ("Degrees of freedom", first.DegreesOfFreedom if first else None),
            ("Voxels in the group mask", int(mask.sum())),
            ("Alpha (FDR q and FWE)", parameters.get("alpha")),
            ("FWE method requested", parameters.get("fwe")),
            ("Sign-flip permutations requested", parameters.get("n_perm")),
            ("Permutation seed", parameters.get("seed")),
            ("Test", "one-sided" if parameters.get("one_sided") else "two-sided"),
        ]
    )
    truth_known = truth_dir is not None and (truth_dir / "group").is_dir()
    brains = _glass_brains()
    blocks = [
        _group_contrast_html(root, contrast, task, truth_dir, mask, brains)
        for contrast in contrasts
    ]
    nav = " ".join(
        [_link("index.html", "All reports")]
        + [_link(f"#contrast-{c}", c) for c in contrasts]
        + [_link("#analysis", "Analysis")]
    )
    calibration = (
        "<p>Maps: the uncorrected z map at |z| &gt; "
        f"{PEAK_Z_THRESHOLD} (p &lt; 0.001 one-sided, for orientation only), "
        "the FDR-corrected map (Benjamini-Hochberg) and the FWE-corrected map "
        "(sign-flip permutation of the maximum |t|, or Bonferroni when the "
        "subjects are too few); a corrected map is the z map, zero where a voxel "
        "does not survive. Thresholds come from the maps' JSON sidecars.</p>"
        f'<p class="note">{_text(NULL_CALIBRATION_NOTE)}</p>'
    )
    if truth_known:
        calibration += (
            '<p class="note">Ground truth found in '
            f"<code>{_text(truth_dir)}</code>: each contrast below compares "
            "the corrected maps with the true effect.</p>"
        )
    return _page(
        "Group level",
        f"task-{task}: one-sample t test over {len(subjects)} subjects, "
        f"{len(contrasts)} contrasts",
        nav,
        [
            _section("Results at a glance", _group_summary(root) + calibration),
            *blocks,
            *_roi_sections(root),
            _section("Analysis", summary, anchor="analysis"),
        ],
    )


def _roi_sections(root: Path) -> list[str]:
    """The roi level's profile bar plots and reliability, if it has run."""
    table_path = root / layout.group_roi_responses()
    if not table_path.is_file():
        return []
    table = pd.read_csv(table_path, sep="\t", na_values="n/a")
    figures = []
    for (roi, hemi), rows in table.groupby(["roi", "hemi"], sort=False):
        png = root / layout.group_roi_figure(roi, hemi)
        if png.is_file():
            figures.append(
                f"<figure>{_image(_png_uri(png.read_bytes()), f'{roi} {hemi}')}"
                f"<figcaption>{_text(roi)}-{_text(hemi)} "
                f"({_text(rows['contrast'].iloc[0])}): split-half Dice "
                f"{_number(rows['dice_mean'].iloc[0], 2)}, "
                f"{_number(rows['n_voxels_mean'].iloc[0], 1)} voxels per subject"
                "</figcaption></figure>"
            )
    note = (
        "<p>Group-constrained subject-specific fROIs: each bar is the mean over "
        "subjects of the percent signal change measured in the half of the runs "
        "that did not define the fROI (odd-run fROI in even runs and the reverse, "
        "averaged); error bars are the SEM, dots the subjects. Dice compares the "
        "fROIs defined from the odd and from the even runs.</p>"
    )
    return [_section("Functional ROIs", note + "".join(figures), anchor="rois")]


def _group_contrast_html(
    root: Path,
    contrast: str,
    task: str,
    truth_dir: Path | None,
    mask: np.ndarray,
    brains: _GlassBrains,
) -> str:
    sidecar = _sidecar(root / layout.sidecar_of(layout.group_map(contrast, "z")))
    z_image = nib.load(root / layout.group_map(contrast, "z"))
    corrections = _correction_rows(root, contrast)
    images = [
        _image(
            brains.render(
                z_image,
                f"{contrast}: uncorrected, |z| > {PEAK_Z_THRESHOLD}",
                PEAK_Z_THRESHOLD,
            ),
            f"{contrast} uncorrected group z map",
        )
    ]
    for row, correction in zip(corrections, layout.CORRECTIONS, strict=True):
        threshold = row[4]
        image = nib.load(root / layout.group_map(contrast, correction=correction))
        label = (
            f"{contrast}: {correction.upper()} corrected, |z| ≥ {threshold:.3g}"
            if threshold is not None
            else f"{contrast}: {correction.upper()} corrected"
        )
        # Survivors have |z| >= the recorded threshold; drawing above the next
        # float below it shows exactly them.
        drawn = float(np.nextafter(threshold, 0.0)) if threshold else None
        images.append(
            _image(
                brains.render(image, label, drawn),
                f"{contrast} {correction.upper()}-corrected group z map",
            )
        )
    correction_table = _table(
        [
            "Correction",
            "Method",
            "Alpha",
            "Sides",
            "z threshold",
            "t threshold",
            "Permutations",
            "Exhaustive",
            "Voxels surviving",
            "Note",
        ],
        corrections,
    )
    clusters = []
    for correction in layout.CORRECTIONS:
        tsv = root / layout.cluster_table(contrast, correction)
        heading = f"<h4>Clusters, {correction.upper()}-corrected</h4>"
        if tsv.is_file():
            table = pd.read_csv(tsv, sep="\t", keep_default_na=False)
            n_clusters = int(table["Cluster Size (mm3)"].astype(str).ne("").sum())
            clusters.append(
                heading
                + _cluster_html(table, f"{correction.upper()}-corrected", n_clusters)
                + f'<p class="note">Full table: <code>{_text(tsv.name)}</code></p>'
            )
        else:
            clusters.append(heading + '<p class="note">No cluster table.</p>')
    truth_html = (
        _truth_section(root, truth_dir, contrast, task, mask)
        if truth_dir is not None and (truth_dir / "group").is_dir()
        else ""
    )
    return _section(
        contrast,
        _contrast_description(contrast, sidecar)
        + "".join(images)
        + correction_table
        + "".join(clusters)
        + truth_html,
        anchor=f"contrast-{contrast}",
    )


# ---------------------------------------------------------------------------
# Index and entry point


def _group_summary(root: Path, page: str = "") -> str:
    """One line per contrast: peak |z| and the voxels each correction keeps.

    ``page`` is the file the contrast links point into ("" for this page).
    """
    rows = []
    for contrast in _group_contrasts(root):
        z = np.asanyarray(nib.load(root / layout.group_map(contrast, "z")).dataobj)
        row: list[object] = [
            _Markup(_link(f"{page}#contrast-{contrast}", contrast)),
            float(np.abs(z).max()),
        ]
        for correction in layout.CORRECTIONS:
            relative = layout.group_map(contrast, correction=correction)
            sidecar = _sidecar(root / layout.sidecar_of(relative))
            info = sidecar.Correction if sidecar else None
            row += [
                _survivors(nib.load(root / relative)),
                info.ZThreshold if info else None,
            ]
        rows.append(row)
    return _table(
        [
            "Contrast",
            "Peak |z|",
            "FDR voxels",
            "FDR |z| threshold",
            "FWE voxels",
            "FWE |z| threshold",
        ],
        rows,
    )


def write_index(
    glm_dir: str | Path, task: str = "experiment", group: bool = True
) -> Path:
    """Write ``reports/index.html``: links to every report, one line per subject.

    Parameters
    ----------
    glm_dir : str or Path
        The GLM derivative folder.
    task : str
        Task of the first-level maps.
    group : bool
        Whether a group report exists to link to.

    Returns
    -------
    Path
        ``<glm_dir>/reports/index.html``.
    """
    root = Path(glm_dir)
    rows = []
    for label in _subjects(root, task):
        info = _read_subject(root, label, task)
        motions = [run.motion for run in info.runs if run.motion]
        rows.append(
            [
                _Markup(_link(f"sub-{label}.html", f"sub-{label}")),
                len(info.runs),
                max((motion.mean_fd for motion in motions), default=None),
                len(info.warnings),
                "; ".join(info.warnings) or "none",
            ]
        )
    subjects = (
        _table(
            ["Subject", "Runs", "Worst run's mean FD (mm)", "Warnings", "Details"],
            rows,
        )
        if rows
        else '<p class="note">No first-level outputs yet.</p>'
    )
    group_html = (
        f"<p>{_link('group.html', 'Group report')}: uncorrected, FDR- and "
        "FWE-corrected maps, cluster tables and, on simulated data, the "
        "comparison with the truth.</p>" + _group_summary(root, "group.html")
        if group
        else '<p class="note">No group level yet (run <code>laion-fmri-glm glm '
        "BIDS_DIR OUTPUT_DIR group</code>).</p>"
    )
    path = root / report_path("index")
    write_text(
        _page(
            "GLM reports",
            f"task-{task}, {root}",
            "",
            [_section("Group", group_html), _section("Subjects", subjects)],
        ),
        path,
    )
    return path


def write_reports(
    glm_dir: str | Path,
    truth_dir: str | Path | None = None,
    task: str = "experiment",
    force: bool = False,
) -> list[Path]:
    """Write every report of a GLM derivative folder and the index.

    Parameters
    ----------
    glm_dir : str or Path
        The GLM derivative folder (``<data_dir>/derivatives/glm``).
    truth_dir : str or Path, optional
        Ground truth of a simulated dataset; by default
        ``<data_dir>/derivatives/truth`` when it exists.
    task : str
        Task of the analysis.
    force : bool
        Rewrite reports that are newer than their inputs.

    Returns
    -------
    list of Path
        The subject reports, the group report (if there is a group level) and
        the index, last.
    """
    root = Path(glm_dir)
    layout.validate_label(task, "task")
    if truth_dir is None and (root.parent / "truth" / "group").is_dir():
        truth_dir = root.parent / "truth"
    written = []
    subjects = _subjects(root, task)
    for index, label in enumerate(subjects, start=1):
        log.info("report: sub-%s (%d of %d)", label, index, len(subjects))
        written.append(write_subject_report(root, label, task, force=force))
    group = (
        bool(_group_contrasts(root))
        if (root / layout.GROUP_LEVEL_DIR).is_dir()
        else False
    )
    if group:
        log.info("report: group level")
        written.append(write_group_report(root, task, truth_dir, force=force))
    written.append(write_index(root, task, group=group))
    log.info("reports written to %s", written[-1].parent)
    return written
