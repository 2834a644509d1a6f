"""Clusters of a statistical map on the voxels of a mask, on arrays.

Group maps are vectors over the voxels of a mask (``volume[mask]``, C order).
Clusters need the voxels' neighbours, which :func:`voxel_neighbours` turns into
a table once per mask: row ``i`` lists the vector indices of the voxels that touch
voxel ``i``. Voxels outside the mask are never neighbours, as in nilearn, whose
maps are 0 outside the mask.

Cluster-extent inference (nilearn's ``permuted_ols(threshold=...)``,
``non_parametric_inference(threshold=...)``):

- :func:`cluster_forming_threshold` turns the cluster-forming p-value into a t
  threshold with the test's degrees of freedom, as nilearn does;
- a cluster is a connected set of voxels with ``t > threshold`` (or, two-sided,
  a separate one of voxels with ``t < -threshold``);
- :func:`label_clusters` labels the clusters of the observed map,
  :func:`max_cluster_size` gives the largest cluster of a map, the statistic
  whose permutation distribution corrects for the family-wise error.

The connected components come from a union-find over the supra-threshold voxels
only (compiled with numba): under the null hypothesis at p < 0.001 they are about
one voxel in a thousand, so a map of 230,000 voxels costs a scan and a few
hundred unions, where labelling the whole volume (scipy.ndimage, cc3d) touches
every voxel of the bounding grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
from scipy import stats

from laion_fmri_dataloader.errors import InvalidParameterError

__all__ = [
    "CONNECTIVITIES",
    "Clusters",
    "Connectivity",
    "cluster_forming_threshold",
    "label_clusters",
    "max_cluster_size",
    "voxel_neighbours",
]

#: Voxels that touch: sharing a face (6, nilearn's and FSL's default for TFCE and
#: clusters), a face or an edge (18), or a face, an edge or a corner (26).
Connectivity = Literal[6, 18, 26]
CONNECTIVITIES: tuple[int, ...] = (6, 18, 26)

# Squared length of the longest offset of each connectivity: faces are at
# distance 1, edges sqrt(2), corners sqrt(3).
_SQUARED_REACH = {6: 1, 18: 2, 26: 3}


def voxel_neighbours(mask: np.ndarray, connectivity: Connectivity = 6) -> np.ndarray:
    """Neighbour table of the voxels of a 3-D mask.

    Parameters
    ----------
    mask : numpy.ndarray of bool, shape (X, Y, Z)
        The voxels of the maps; map vectors are ``volume[mask]`` (C order).
    connectivity : {6, 18, 26}, default=6
        Which voxels touch: 6 share a face (nilearn's
        ``generate_binary_structure(3, 1)``), 18 a face or an edge, 26 also a
        corner.

    Returns
    -------
    numpy.ndarray of int32, shape (n_voxels, connectivity)
        Row ``i``: vector indices of the neighbours of voxel ``i`` inside the mask,
        ``-1`` where the neighbour is outside the mask or the grid.

    Raises
    ------
    InvalidParameterError
        If ``mask`` is not 3-D or ``connectivity`` is not 6, 18 or 26.

    Examples
    --------
    >>> voxel_neighbours(np.ones((3, 1, 1), dtype=bool)).tolist()
    [[-1, -1, -1, -1, -1, 1], [0, -1, -1, -1, -1, 2], [1, -1, -1, -1, -1, -1]]
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise InvalidParameterError(f"mask must be a 3-D array; got shape {mask.shape}")
    if connectivity not in CONNECTIVITIES:
        raise InvalidParameterError(
            f"connectivity must be one of {list(CONNECTIVITIES)}; got {connectivity!r}"
        )
    index = np.full(np.add(mask.shape, 2), -1, dtype=np.int32)
    inner = index[1:-1, 1:-1, 1:-1]
    inner[mask] = np.arange(int(mask.sum()), dtype=np.int32)
    reach = _SQUARED_REACH[connectivity]
    offsets = [
        offset
        for offset in np.ndindex(3, 3, 3)
        if 0 < sum((o - 1) ** 2 for o in offset) <= reach
    ]
    # Faces first, then edges, then corners: the 6 nearest lead every row.
    offsets.sort(key=lambda o: sum((c - 1) ** 2 for c in o))
    shape = mask.shape
    return np.stack(
        [
            index[
                ox : ox + shape[0],
                oy : oy + shape[1],
                oz : oz + shape[2],
            ][mask]
            for ox, oy, oz in offsets
        ],
        axis=1,
    )


def cluster_forming_threshold(p: float, dof: int, *, one_sided: bool = False) -> float:
    """t threshold of a cluster-forming p-value, as nilearn computes it.

    ``t.isf(p / 2, dof)`` two-sided (voxels with ``|t| >`` it form clusters),
    ``t.isf(p, dof)`` one-sided; nilearn's ``permuted_ols`` uses the residual
    degrees of freedom, ``n_subjects - 1`` for a one-sample test.

    Parameters
    ----------
    p : float
        Uncorrected voxel-wise p-value, in (0, 1); 0.001 is the usual choice
        (Eklund et al. 2016 found 0.01 gives invalid cluster inference with
        parametric methods; permutation keeps any threshold valid).
    dof : int
        Degrees of freedom of the t statistic.
    one_sided : bool, default=False
        Whether only positive clusters are formed.

    Returns
    -------
    float
        The t threshold.

    Raises
    ------
    InvalidParameterError
        If ``p`` is not in (0, 1) or ``dof`` is not a positive integer.

    Examples
    --------
    >>> round(cluster_forming_threshold(0.001, 11), 3)
    4.437
    """
    if not (isinstance(p, (int, float, np.floating)) and 0.0 < p < 1.0):
        raise InvalidParameterError(
            f"cluster-forming threshold must be a p-value in (0, 1); got {p!r}"
        )
    if isinstance(dof, bool) or not isinstance(dof, (int, np.integer)) or dof < 1:
        raise InvalidParameterError(f"dof must be a positive integer; got {dof!r}")
    tail = p if one_sided else p / 2
    return float(stats.t.isf(tail, dof))


@dataclass(frozen=True)
class Clusters:
    """Clusters of a thresholded map.

    Attributes
    ----------
    labels : numpy.ndarray of int32, shape (n_voxels,)
        0 outside clusters; positive clusters are ``1..n_positive`` in the order
        of their first voxel, negative ones follow.
    sizes : numpy.ndarray of int64, shape (n_clusters + 1,)
        Voxels per label; ``sizes[0]`` is 0.
    signs : numpy.ndarray of int8, shape (n_clusters + 1,)
        +1 or -1 per label; ``signs[0]`` is 0.
    threshold : float
        The cluster-forming threshold on the statistic.
    """

    labels: np.ndarray
    sizes: np.ndarray
    signs: np.ndarray
    threshold: float

    @property
    def n_clusters(self) -> int:
        """Number of clusters."""
        return self.sizes.size - 1

    @property
    def voxel_sizes(self) -> np.ndarray:
        """Size of each voxel's cluster, 0 outside clusters (int64, n_voxels)."""
        return self.sizes[self.labels]


def _check_map(stat: np.ndarray, neighbours: np.ndarray) -> tuple:
    stat = np.ascontiguousarray(stat, dtype=np.float64)
    neighbours = np.ascontiguousarray(neighbours, dtype=np.int32)
    if stat.ndim != 1 or neighbours.ndim != 2 or neighbours.shape[0] != stat.size:
        raise InvalidParameterError(
            "stat must be a vector with one value per row of neighbours; got shapes "
            f"{stat.shape} and {neighbours.shape}"
        )
    return stat, neighbours


def _check_threshold(threshold: float) -> float:
    if not (isinstance(threshold, (int, float, np.floating)) and threshold >= 0):
        raise InvalidParameterError(
            f"cluster-forming threshold must be a number >= 0; got {threshold!r}"
        )
    return float(threshold)


def label_clusters(
    stat: np.ndarray,
    neighbours: np.ndarray,
    threshold: float,
    *,
    one_sided: bool = False,
) -> Clusters:
    """Clusters of ``stat > threshold`` (and of ``stat < -threshold`` if two-sided).

    Parameters
    ----------
    stat : numpy.ndarray, shape (n_voxels,)
        The map, e.g. t, over the voxels of a mask.
    neighbours : numpy.ndarray of int32, shape (n_voxels, k)
        From :func:`voxel_neighbours`.
    threshold : float
        Cluster-forming threshold on ``stat``, >= 0 (strict: a voxel at the
        threshold is out, as in nilearn).
    one_sided : bool, default=False
        If True, only positive clusters.

    Returns
    -------
    Clusters
        Labels, sizes and signs.

    Raises
    ------
    InvalidParameterError
        If the shapes do not match or ``threshold`` is negative.
    """
    stat, neighbours = _check_map(stat, neighbours)
    threshold = _check_threshold(threshold)
    n_voxels = stat.size
    parent = np.full(n_voxels, -1, dtype=np.int32)
    size = np.zeros(n_voxels, dtype=np.int64)
    members = np.empty(n_voxels, dtype=np.int32)
    labels = np.zeros(n_voxels, dtype=np.int32)
    sizes = [np.zeros(1, dtype=np.int64)]
    signs = [np.zeros(1, dtype=np.int8)]
    n_labels = 0
    for sign in (1.0,) if one_sided else (1.0, -1.0):
        count = _components(stat, neighbours, threshold, sign, parent, size, members)
        side_sizes = _relabel(members[:count], parent, size, labels, n_labels)
        _reset(parent, members[:count])
        n_labels += side_sizes.size
        sizes.append(side_sizes)
        signs.append(np.full(side_sizes.size, int(sign), dtype=np.int8))
    return Clusters(
        labels=labels,
        sizes=np.concatenate(sizes),
        signs=np.concatenate(signs),
        threshold=threshold,
    )


def max_cluster_size(
    stat: np.ndarray,
    neighbours: np.ndarray,
    threshold: float,
    *,
    one_sided: bool = False,
) -> int:
    """Size of the largest cluster of ``stat``, in voxels (0 if there is none).

    The statistic of cluster-extent inference: nilearn's
    ``calculate_cluster_measures`` max size, here without labelling the volume.
    Parameters as :func:`label_clusters`.

    Examples
    --------
    >>> neighbours = voxel_neighbours(np.ones((5, 1, 1), dtype=bool))
    >>> max_cluster_size(np.array([3.0, 3.0, 0.0, -3.0, 1.0]), neighbours, 2.0)
    2
    """
    stat, neighbours = _check_map(stat, neighbours)
    threshold = _check_threshold(threshold)
    workspace = _cluster_workspace(stat.size)
    return int(_max_size(stat, neighbours, threshold, not one_sided, *workspace))


def _cluster_workspace(n_voxels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrays the union-find reuses from map to map (parent all -1 between uses)."""
    return (
        np.full(n_voxels, -1, dtype=np.int32),
        np.zeros(n_voxels, dtype=np.int64),
        np.empty(n_voxels, dtype=np.int32),
    )


@numba.njit(cache=True, nogil=True)
def _find(parent, voxel):
    # Path halving: every visited voxel skips to its grandparent.
    while parent[voxel] != voxel:
        parent[voxel] = parent[parent[voxel]]
        voxel = parent[voxel]
    return voxel


@numba.njit(cache=True, nogil=True)
def _components(stat, neighbours, threshold, sign, parent, size, members):
    """Union-find of the voxels with ``sign * stat > threshold``.

    ``parent`` must be -1 everywhere on entry; the members (in voxel order) are
    written to ``members`` and their number returned. Roots hold the sizes.
    """
    count = 0
    for voxel in range(stat.size):
        if sign * stat[voxel] > threshold:
            parent[voxel] = voxel
            size[voxel] = 1
            members[count] = voxel
            count += 1
    _unite(count, neighbours, parent, size, members)
    return count


@numba.njit(cache=True, nogil=True)
def _components_of(stat, voxels, neighbours, threshold, sign, parent, size, members):
    """:func:`_components` among ``voxels`` only (the others must be below it)."""
    count = 0
    for voxel in voxels:
        if sign * stat[voxel] > threshold:
            parent[voxel] = voxel
            size[voxel] = 1
            members[count] = voxel
            count += 1
    _unite(count, neighbours, parent, size, members)
    return count


@numba.njit(cache=True, nogil=True)
def _unite(count, neighbours, parent, size, members):
    # Union by size of the first ``count`` members with their active neighbours.
    n_neighbours = neighbours.shape[1]
    for i in range(count):
        voxel = members[i]
        for j in range(n_neighbours):
            other = neighbours[voxel, j]
            if other < 0 or parent[other] < 0:
                continue
            root = _find(parent, voxel)
            other_root = _find(parent, other)
            if root == other_root:
                continue
            if size[root] < size[other_root]:
                root, other_root = other_root, root
            parent[other_root] = root
            size[root] += size[other_root]


@numba.njit(cache=True, nogil=True)
def _reset(parent, members):
    for voxel in members:
        parent[voxel] = -1


@numba.njit(cache=True, nogil=True)
def _relabel(members, parent, size, labels, first_label):
    """Number the components of ``members`` from ``first_label + 1``; their sizes."""
    sizes = np.empty(members.size, dtype=np.int64)
    n_labels = 0
    for voxel in members:
        root = _find(parent, voxel)
        if labels[root] == 0:
            labels[root] = first_label + n_labels + 1
            sizes[n_labels] = size[root]
            n_labels += 1
        labels[voxel] = labels[root]
    return sizes[:n_labels]


@numba.njit(cache=True, nogil=True)
def _max_size(stat, neighbours, threshold, two_sided, parent, size, members):
    """Largest cluster of ``stat > threshold`` (and ``< -threshold``); resets parent."""
    largest = 0
    for sign in (1.0, -1.0):
        if sign < 0 and not two_sided:
            break
        count = _components(stat, neighbours, threshold, sign, parent, size, members)
        for i in range(count):
            voxel = members[i]
            if parent[voxel] == voxel and size[voxel] > largest:
                largest = size[voxel]
        _reset(parent, members[:count])
    return largest


@numba.njit(cache=True, nogil=True)
def _max_size_of(stat, voxels, neighbours, threshold, two_sided, parent, size, members):
    """:func:`_max_size` when every voxel beyond the threshold is in ``voxels``."""
    largest = 0
    for sign in (1.0, -1.0):
        if sign < 0 and not two_sided:
            break
        count = _components_of(
            stat, voxels, neighbours, threshold, sign, parent, size, members
        )
        for i in range(count):
            voxel = members[i]
            if parent[voxel] == voxel and size[voxel] > largest:
                largest = size[voxel]
        _reset(parent, members[:count])
    return largest
