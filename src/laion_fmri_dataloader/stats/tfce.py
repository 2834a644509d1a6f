"""Threshold-free cluster enhancement (TFCE) of a statistical map, on arrays.

TFCE (Smith & Nichols 2009) scores each voxel by the clusters it belongs to at
every height: for thresholds ``h_1 < h_2 < ... < h_S``,

    TFCE(v) = sum over k with stat(v) >= h_k of  extent_k(v) ** E * h_k ** H

where ``extent_k(v)`` is the number of voxels of the connected component of
``{stat >= h_k}`` that contains ``v``. This is nilearn's ``calculate_tfce``
(nilearn 0.14, ``nilearn/mass_univariate/_utils.py``), which follows fslmaths:

- the thresholds are ``numpy.linspace(0, max_stat, S + 1)[1:]``, so
  ``dh = max_stat / S`` and the top threshold is the map's maximum;
  ``max_stat`` is the map's largest ``|stat|`` two-sided, its largest ``stat``
  one-sided, computed for every map separately (every sign flip has its own dh);
- ``S = 100`` with ``dh="auto"`` (the default); with a number ``dh``,
  ``S = round(max_stat / dh)`` held within [10, 1000], so the step actually used
  is ``max_stat / S``, close to but not exactly ``dh``;
- the sum is **not** multiplied by dh (the paper's integral would be); with a
  per-map dh this changes the values, and so their permutation distribution,
  which is why it is kept as nilearn has it;
- two-sided, ``-stat`` is enhanced the same way with the same thresholds and its
  score is subtracted: TFCE has the sign of the statistic;
- components are formed with nilearn's connectivity, voxels that share a face (6),
  over the voxels of the mask (nilearn's maps are 0 outside the mask);
- a map with no value above 0 (one-sided) scores 0 everywhere.

How it is computed: not with ``S`` labellings of the volume, as nilearn does, but
with one union-find sweep over the voxels in decreasing order of their threshold
index (a counting sort, since the thresholds are known), as in the exact TFCE of
Chen, Weeda, Nichols and Goeman (eTFCE). A component's extent changes only when a
voxel joins it or two components merge, and between such events its members gain
``extent ** E * (h_j ** H + ... + h_k ** H)``, a difference of prefix sums, so
each event settles the levels since the last one in O(1). Each component keeps
the largest score of its members (what a permutation needs, the map's maximum),
and each voxel its score relative to its parent (what the observed map needs).
The result is nilearn's discretised sum, not the integral of eTFCE, for every
voxel; the cost is one pass over the supra-threshold voxels instead of S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np

from laion_fmri_dataloader.errors import InvalidParameterError

__all__ = ["TFCEParameters", "max_tfce", "tfce", "tfce_thresholds"]

# nilearn's and fslmaths' number of thresholds with dh="auto", and the bounds
# nilearn holds a number dh within.
_AUTO_STEPS = 100
_MIN_STEPS = 10
_MAX_STEPS = 1000


@dataclass(frozen=True)
class TFCEParameters:
    """Parameters of TFCE; the defaults are nilearn's and FSL's.

    Attributes
    ----------
    E : float, default=0.5
        Extent exponent, > 0.
    H : float, default=2.0
        Height exponent, > 0.
    dh : float or 'auto', default='auto'
        Threshold step: ``'auto'`` uses 100 steps from 0 to the map's maximum;
        a positive number uses ``round(max / dh)`` steps, held within [10, 1000]
        (see the module's notes).

    Raises
    ------
    InvalidParameterError
        If ``E`` or ``H`` is not a positive number or ``dh`` is neither ``'auto'``
        nor a positive number.
    """

    E: float = 0.5
    H: float = 2.0
    dh: float | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        for name in ("E", "H"):
            value = getattr(self, name)
            if not _is_positive_number(value):
                raise InvalidParameterError(
                    f"TFCE {name} must be a positive number; got {value!r}"
                )
            object.__setattr__(self, name, float(value))
        if self.dh != "auto":
            if not _is_positive_number(self.dh):
                raise InvalidParameterError(
                    f"TFCE dh must be 'auto' or a positive number; got {self.dh!r}"
                )
            object.__setattr__(self, "dh", float(self.dh))

    @property
    def _dh_code(self) -> float:
        # The compiled code takes dh as a number; 0 means 'auto'.
        return 0.0 if self.dh == "auto" else float(self.dh)


def _is_positive_number(value: object) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
        and value > 0
    )


def tfce_thresholds(
    max_stat: float, dh: float | Literal["auto"] = "auto"
) -> np.ndarray:
    """The heights ``h_1 .. h_S`` at which a map with maximum ``max_stat`` is cut.

    ``numpy.linspace(0, max_stat, S + 1)[1:]`` with ``S`` as described in the
    module's notes.

    Parameters
    ----------
    max_stat : float
        The map's largest ``|stat|`` (two-sided) or ``stat`` (one-sided), > 0.
    dh : float or 'auto', default='auto'
        As :class:`TFCEParameters`.

    Returns
    -------
    numpy.ndarray of float64, shape (S,)
        The thresholds; their step is the dh used.

    Raises
    ------
    InvalidParameterError
        If ``max_stat`` is not a positive finite number or ``dh`` is not allowed.

    Examples
    --------
    >>> tfce_thresholds(5.0)[:3].tolist(), tfce_thresholds(5.0).size
    ([0.05, 0.1, 0.15000000000000002], 100)
    >>> tfce_thresholds(5.0, dh=0.1).size, tfce_thresholds(5.0, dh=2.0).size
    (50, 10)
    """
    parameters = TFCEParameters(dh=dh)
    if not _is_positive_number(max_stat):
        raise InvalidParameterError(
            f"max_stat must be a positive finite number; got {max_stat!r}"
        )
    n_steps = _n_steps(float(max_stat), parameters._dh_code)
    heights = np.empty(_MAX_STEPS + 1)
    _fill_thresholds(float(max_stat), n_steps, heights)
    return heights[1 : n_steps + 1].copy()


def _check_inputs(stat, neighbours, parameters):
    stat = np.ascontiguousarray(stat, dtype=np.float64)
    neighbours = np.ascontiguousarray(neighbours, dtype=np.int32)
    if stat.ndim != 1 or neighbours.ndim != 2 or neighbours.shape[0] != stat.size:
        raise InvalidParameterError(
            "stat must be a vector with one value per row of neighbours; got shapes "
            f"{stat.shape} and {neighbours.shape}"
        )
    if not np.isfinite(stat).all():
        raise InvalidParameterError(
            "stat must be finite; TFCE cannot enhance NaN or infinite values"
        )
    if parameters is None:
        parameters = TFCEParameters()
    elif not isinstance(parameters, TFCEParameters):
        raise InvalidParameterError(
            f"parameters must be TFCEParameters; got {type(parameters).__name__}"
        )
    return stat, neighbours, parameters


def tfce(
    stat: np.ndarray,
    neighbours: np.ndarray,
    parameters: TFCEParameters | None = None,
    *,
    one_sided: bool = False,
) -> np.ndarray:
    """TFCE score of every voxel of a map, as nilearn's ``calculate_tfce``.

    Parameters
    ----------
    stat : numpy.ndarray, shape (n_voxels,)
        The map (t or z) over the voxels of a mask, finite.
    neighbours : numpy.ndarray of int32, shape (n_voxels, k)
        From :func:`~laion_fmri_dataloader.stats.clusters.voxel_neighbours`.
    parameters : TFCEParameters, optional
        E, H and dh; nilearn's defaults (0.5, 2, 'auto') if omitted.
    one_sided : bool, default=False
        If True, only positive values are enhanced; otherwise both signs, each
        scored with the sign of its statistic.

    Returns
    -------
    numpy.ndarray of float64, shape (n_voxels,)
        TFCE, with the sign of ``stat``; 0 where ``stat`` is below the first
        threshold (or negative, one-sided).

    Raises
    ------
    InvalidParameterError
        If the shapes do not match, ``stat`` is not finite or ``parameters`` is
        not a :class:`TFCEParameters`.

    Examples
    --------
    >>> from laion_fmri_dataloader.stats.clusters import voxel_neighbours
    >>> neighbours = voxel_neighbours(np.ones((4, 1, 1), dtype=bool))
    >>> tfce(np.array([1.0, 1.0, 0.0, -2.0]), neighbours).round(3).tolist()
    [24.282, 24.282, 0.0, -135.34]
    """
    stat, neighbours, parameters = _check_inputs(stat, neighbours, parameters)
    values = np.zeros(stat.size)
    workspace = _tfce_workspace(stat.size)
    _tfce_map(
        stat,
        neighbours,
        parameters.E,
        parameters.H,
        parameters._dh_code,
        not one_sided,
        values,
        True,
        *workspace,
    )
    return values


def max_tfce(
    stat: np.ndarray,
    neighbours: np.ndarray,
    parameters: TFCEParameters | None = None,
    *,
    one_sided: bool = False,
) -> float:
    """Largest ``|TFCE|`` of a map, the statistic of TFCE family-wise inference.

    Equals ``numpy.abs(tfce(...)).max()`` up to rounding (about 1e-15 relative),
    without computing every voxel's score. Parameters as :func:`tfce`.
    """
    stat, neighbours, parameters = _check_inputs(stat, neighbours, parameters)
    workspace = _tfce_workspace(stat.size)
    return float(
        _tfce_map(
            stat,
            neighbours,
            parameters.E,
            parameters.H,
            parameters._dh_code,
            not one_sided,
            np.zeros(0),
            False,
            *workspace,
        )
    )


def _tfce_workspace(n_voxels: int) -> tuple[np.ndarray, ...]:
    """Arrays the sweep reuses from map to map (``parent`` all -1 between uses)."""
    return (
        np.empty(_MAX_STEPS + 1),  # heights
        np.empty(_MAX_STEPS + 1),  # prefix sums of heights ** H
        np.empty(_MAX_STEPS + 2, dtype=np.int64),  # first position of each level
        np.empty(n_voxels, dtype=np.int32),  # level of each voxel
        np.empty(n_voxels, dtype=np.int32),  # voxels by decreasing level
        np.full(n_voxels, -1, dtype=np.int32),  # union-find parent, -1 = not yet in
        # Per root, side by side so that a root costs one cache line: size, score
        # gained by the whole component, largest score of a member, lowest level
        # already scored (integers held exactly in float64).
        np.empty((n_voxels, 4)),
        np.empty(n_voxels),  # score relative to the parent
    )


@numba.njit(cache=True, nogil=True)
def _n_steps(max_stat, dh):
    if dh <= 0.0:
        n_steps = _AUTO_STEPS
    else:
        # Python's round(), which nilearn uses, rounds halves to even, as rint.
        n_steps = int(np.rint(max_stat / dh))
    return min(max(n_steps, _MIN_STEPS), _MAX_STEPS)


@numba.njit(cache=True, nogil=True)
def _fill_thresholds(max_stat, n_steps, heights):
    # numpy.linspace(0, max_stat, n_steps + 1) to the bit: k * step, the last
    # one the maximum itself (and numpy's branch for a step that underflows).
    step = max_stat / n_steps
    for k in range(n_steps + 1):
        if step == 0.0:
            heights[k] = (k / n_steps) * max_stat
        else:
            heights[k] = k * step
    heights[n_steps] = max_stat


@numba.njit(cache=True, nogil=True)
def _find(parent, voxel):
    while parent[voxel] != voxel:
        parent[voxel] = parent[parent[voxel]]
        voxel = parent[voxel]
    return voxel


@numba.njit(cache=True, nogil=True)
def _find_keeping_offsets(parent, offset, voxel):
    # Path halving that keeps each voxel's score = its offsets up to the root plus
    # the root's gain (a root's offset is 0).
    while parent[voxel] != voxel:
        up = parent[voxel]
        offset[voxel] += offset[up]
        parent[voxel] = parent[up]
        voxel = parent[voxel]
    return voxel


# Columns of the per-root records.
_SIZE, _GAIN, _BEST, _PENDING = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True, inline="always")
def _settle(root, level, roots, prefix, E):
    # The component has had its size since level roots[root, _PENDING]: the levels
    # from there down to level + 1 are complete and score size ** E * h ** H each.
    pending = int(roots[root, _PENDING])
    if pending > level:
        size = roots[root, _SIZE]
        weight = math.sqrt(size) if E == 0.5 else size**E
        increment = weight * (prefix[pending] - prefix[level])
        roots[root, _GAIN] += increment
        roots[root, _BEST] += increment
        roots[root, _PENDING] = level


@numba.njit(cache=True, nogil=True)
def _tfce_side(
    stat,
    sign,
    neighbours,
    n_steps,
    E,
    values,
    want_values,
    heights,
    prefix,
    first,
    level,
    order,
    parent,
    roots,
    offset,
):
    """Score of ``sign * stat``: the largest one, and every voxel's if asked."""
    n_voxels = stat.size
    top = heights[n_steps]
    # Counting sort by threshold index: level = number of thresholds <= value.
    for k in range(n_steps + 2):
        first[k] = 0
    for voxel in range(n_voxels):
        value = sign * stat[voxel]
        k = 0
        if value >= heights[1]:
            k = min(int(value / top * n_steps), n_steps)
            while k < n_steps and heights[k + 1] <= value:
                k += 1
            while heights[k] > value:
                k -= 1
        level[voxel] = k
        first[k] += 1
    position = 0
    for k in range(n_steps, 0, -1):
        count = first[k]
        first[k] = position
        position += count
    n_active = position
    for voxel in range(n_voxels):
        k = level[voxel]
        if k > 0:
            order[first[k]] = voxel
            first[k] += 1
    n_neighbours = neighbours.shape[1]
    # After the fill, first[k] is where level k ends and level k - 1 begins.
    for k in range(n_steps, 0, -1):
        begin = 0 if k == n_steps else first[k + 1]
        for i in range(begin, first[k]):
            voxel = order[i]
            parent[voxel] = voxel
            roots[voxel, _SIZE] = 1.0
            roots[voxel, _GAIN] = 0.0
            roots[voxel, _BEST] = 0.0
            roots[voxel, _PENDING] = k
            if want_values:
                offset[voxel] = 0.0
            # The root of the voxel's component, followed through its unions.
            root = voxel
            for j in range(n_neighbours):
                other = neighbours[voxel, j]
                if other < 0 or parent[other] < 0:
                    continue
                if want_values:
                    other_root = _find_keeping_offsets(parent, offset, other)
                else:
                    other_root = _find(parent, other)
                if root == other_root:
                    continue
                _settle(root, k, roots, prefix, E)
                _settle(other_root, k, roots, prefix, E)
                if roots[root, _SIZE] < roots[other_root, _SIZE]:
                    root, other_root = other_root, root
                if want_values:
                    offset[other_root] = roots[other_root, _GAIN] - roots[root, _GAIN]
                parent[other_root] = root
                roots[root, _SIZE] += roots[other_root, _SIZE]
                roots[root, _BEST] = max(roots[root, _BEST], roots[other_root, _BEST])
    largest = 0.0
    # In voxel order: the parent and level arrays are read in sequence.
    for voxel in range(n_voxels):
        if level[voxel] > 0 and parent[voxel] == voxel:
            _settle(voxel, 0, roots, prefix, E)
            largest = max(largest, roots[voxel, _BEST])
    if want_values:
        # The largest score is taken from the voxels' own scores, so that it
        # equals the map's maximum to the bit.
        largest = 0.0
        for i in range(n_active):
            voxel = order[i]
            score = 0.0
            node = voxel
            while parent[node] != node:
                score += offset[node]
                node = parent[node]
            score += roots[node, _GAIN]
            values[voxel] = sign * score
            largest = max(largest, score)
    parent[:] = -1
    return largest


@numba.njit(cache=True, nogil=True)
def _tfce_map(
    stat,
    neighbours,
    E,
    H,
    dh,
    two_sided,
    values,
    want_values,
    heights,
    prefix,
    first,
    level,
    order,
    parent,
    roots,
    offset,
):
    """Largest ``|TFCE|`` of ``stat``; every voxel's into ``values`` if asked."""
    top = 0.0
    for voxel in range(stat.size):
        value = abs(stat[voxel]) if two_sided else stat[voxel]
        if value > top:
            top = value
    if top == 0.0:
        return 0.0
    if not np.isfinite(top):
        # An infinite t (a voxel whose flipped effects are all equal) has no
        # thresholds; it outranks every finite score.
        return np.inf
    n_steps = _n_steps(top, dh)
    _fill_thresholds(top, n_steps, heights)
    prefix[0] = 0.0
    for k in range(1, n_steps + 1):
        prefix[k] = prefix[k - 1] + heights[k] ** H
    largest = 0.0
    for sign in (1.0, -1.0):
        if sign < 0.0 and not two_sided:
            break
        side = _tfce_side(
            stat,
            sign,
            neighbours,
            n_steps,
            E,
            values,
            want_values,
            heights,
            prefix,
            first,
            level,
            order,
            parent,
            roots,
            offset,
        )
        largest = max(largest, side)
    return largest
