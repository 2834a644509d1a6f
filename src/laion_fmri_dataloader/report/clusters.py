"""Cluster tables as the reports show them.

A subject's peaks come from :func:`laion_fmri_dataloader.stats.inference.cluster_table`
on the z map; a corrected group map's from the ``_clusters.tsv`` the group
level wrote, read through :class:`~laion_fmri_dataloader.LAIONfMRIDataset`.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pandas as pd

from laion_fmri_dataloader.stats.inference import cluster_table

__all__ = [
    "MAX_CLUSTERS",
    "MAX_TABLE_ROWS",
    "PEAK_Z_THRESHOLD",
    "ClusterTable",
    "subject_peaks",
    "written_clusters",
]

#: |z| above which subject maps are drawn and peaks listed (p < 0.001, one-sided).
PEAK_Z_THRESHOLD = 3.1
#: Rows of a peak or cluster table shown; the full table is in the TSV.
MAX_TABLE_ROWS = 12
#: Clusters of a subject's map whose peaks are listed.
MAX_CLUSTERS = 8


@dataclass(frozen=True)
class ClusterTable:
    """The part of a cluster table a report shows.

    Attributes
    ----------
    what : str
        What the clusters are, e.g. ``"|z| > 3.1"`` or ``"FWE-corrected"``.
    n_clusters : int
        Clusters in the whole map.
    header : list of str
        Column names.
    rows : list of list
        The first :data:`MAX_TABLE_ROWS` rows; None for an empty cell.
    n_rows : int
        Rows of the whole table (peaks and sub-peaks).
    """

    what: str
    n_clusters: int
    header: list[str]
    rows: list[list[object]]
    n_rows: int


def _shown_table(table: pd.DataFrame, what: str, n_clusters: int) -> ClusterTable:
    """The first rows of a cluster table, empty cells as None."""
    rows = [
        [None if pd.isna(value) or value == "" else value for value in row]
        for row in table.head(MAX_TABLE_ROWS).itertuples(index=False)
    ]
    return ClusterTable(what, n_clusters, list(table.columns), rows, len(table))


def written_clusters(table: pd.DataFrame, what: str) -> ClusterTable:
    """A cluster table as the group level wrote it (sub-peaks have no size)."""
    n_clusters = int(table["Cluster Size (mm3)"].astype(str).ne("").sum())
    return _shown_table(table, what, n_clusters)


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


def subject_peaks(image: nib.Nifti1Image) -> ClusterTable | None:
    """Peaks of the strongest clusters of a subject's z map at |z| > 3.1.

    Returns
    -------
    ClusterTable or None
        None if no voxel is above :data:`PEAK_Z_THRESHOLD`.
    """
    data = np.asanyarray(image.dataobj).astype(np.float32)
    kept, n_clusters = _strongest_clusters(data, PEAK_Z_THRESHOLD, MAX_CLUSTERS)
    if n_clusters == 0:
        return None
    # nilearn's cost grows with the volume, so the table is made on the box
    # around the kept clusters (one empty voxel of margin), its affine shifted.
    inside = np.argwhere(kept != 0)
    low = np.maximum(inside.min(axis=0) - 1, 0)
    high = np.minimum(inside.max(axis=0) + 2, kept.shape)
    box = kept[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ low + image.affine[:3, 3]
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
    return _shown_table(table, what, n_clusters)
