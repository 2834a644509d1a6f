"""Functional ROIs by the group-constrained subject-specific method, on arrays.

The group-constrained subject-specific (GSS) method (Fedorenko et al. 2010,
NeuroImage 104:1177; Julian et al. 2012, NeuroImage 60:2357) in four steps:

1. **Parcels** (:func:`make_parcels`).  Every subject's first-level z map of
   the defining contrast is thresholded at ``p < p_threshold`` (one-sided, in
   the contrast's direction); the binary maps are averaged over subjects (the
   overlap map: the share of subjects with a supra-threshold voxel there),
   smoothed by a Gaussian of ``smoothing_fwhm`` mm, and split by a watershed
   of the negated smoothed map, restricted to voxels where it reaches
   ``min_overlap`` (scikit-image's ``segmentation.watershed`` with 26-connected
   neighbours and markers at the regional maxima, as spm_ss's
   ``spm_ss_watershed`` grows basins from the highest voxel down).  Parcels are cut
   at the midline (MNI x = 0; voxels at x = 0 belong to neither side), because
   every region here carries a hemisphere; a parcel is kept when at least
   ``min_subject_fraction`` of the subjects have a supra-threshold voxel in it
   and it holds at least ``min_voxels`` voxels.
2. **Subject fROIs** (:func:`select_froi`).  Inside a parcel, the subject's
   voxels with the largest z in the contrast's direction (a top percentage or
   count, or those above a z threshold).
3. **Reliability** (:func:`dice`): the Dice coefficient of the fROIs defined
   from the odd and from the even runs.
4. **Response profiles without circularity** (:func:`held_out_responses`): the
   mean effect of every condition over an fROI defined from one half of the
   runs, measured in the other half, and the average of the two directions.

Defaults (set by the caller; every parameter is explicit here): p < 0.001,
8 mm FWHM (spm_ss's and funROI's default smoothing), ``min_overlap`` 0.1 (the
default ``overlap_thr_vox`` of both), ``min_subject_fraction`` 0.6 (Julian et
al. 2012; spm_ss reports ROIs at 0.5 by default).  spm_ss and funROI build a
subject's binary map from the localizer masks of its cross-validation
partitions (a voxel counts when it is supra-threshold in more than half of
them); here it is the subject's all-runs map, as Julian et al. did.

Effects are in the first level's unit, percent signal change per unit
regressor, so a profile is in percent signal change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage, stats

from laion_fmri_dataloader.errors import InvalidParameterError
from laion_fmri_dataloader.rois import RoiSize

__all__ = [
    "HeldOutResponses",
    "Parcel",
    "ParcelSet",
    "dice",
    "held_out_responses",
    "make_parcels",
    "peak_voxel",
    "select_froi",
    "smooth_volume",
    "subject_coverage",
    "voxel_coordinates",
    "watershed_parcels",
    "z_threshold",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def z_threshold(p_threshold: float) -> float:
    """One-sided z above which ``p < p_threshold`` (standard normal).

    Examples
    --------
    >>> round(z_threshold(0.001), 4)
    3.0902
    """
    if not 0.0 < p_threshold < 1.0:
        raise InvalidParameterError(
            f"the p threshold must be in (0, 1); got {p_threshold!r}"
        )
    return float(stats.norm.isf(p_threshold))


def voxel_coordinates(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of every voxel, shape ``(*shape, 3)``."""
    grid = np.indices(tuple(shape), dtype=np.float64)
    ijk = np.moveaxis(grid, 0, -1)
    affine = np.asarray(affine, dtype=np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def smooth_volume(
    volume: np.ndarray, fwhm_mm: float, voxel_size_mm: Sequence[float]
) -> np.ndarray:
    """Gaussian smoothing of a 3D array by ``fwhm_mm``, zero outside the grid.

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
        Values to smooth (NaN counts as 0).
    fwhm_mm : float
        Full width at half maximum, mm; 0 returns a copy.
    voxel_size_mm : sequence of 3 float
        Voxel size along each axis, mm.
    """
    if fwhm_mm < 0:
        raise InvalidParameterError(f"smoothing FWHM must be >= 0 mm; got {fwhm_mm}")
    values = np.nan_to_num(np.asarray(volume, dtype=np.float64))
    if fwhm_mm == 0:
        return values
    sigma = [fwhm_mm * _FWHM_TO_SIGMA / size for size in voxel_size_mm]
    # zero padding, as spm_smooth convolves the volume with nothing beyond it
    return ndimage.gaussian_filter(values, sigma, mode="constant", cval=0.0)


def watershed_parcels(
    smoothed: np.ndarray, mask: np.ndarray, min_overlap: float
) -> np.ndarray:
    """Watershed basins of ``-smoothed`` where ``smoothed >= min_overlap``.

    Returns an int32 label array, 0 outside the thresholded region; basins are
    numbered from 1 in scikit-image's order.  Every voxel of the region joins
    a basin: spm_ss leaves the voxels where basins meet unlabelled, a line one
    voxel wide, which scikit-image's ``watershed_line`` would draw too, but it
    does not finish with 26-connected neighbours (scikit-image 0.26).
    """
    from skimage.morphology import local_minima
    from skimage.segmentation import watershed

    region = np.asarray(mask, dtype=bool) & (smoothed >= min_overlap)
    if not region.any():
        return np.zeros(smoothed.shape, dtype=np.int32)
    # markers: the regional maxima (plateaus included), 26-connected like the
    # flooding itself
    full = np.ones((3,) * smoothed.ndim, dtype=bool)
    maxima = local_minima(-smoothed, connectivity=smoothed.ndim) & region
    markers = ndimage.label(maxima, structure=full)[0]
    labels = watershed(
        -smoothed, markers=markers, mask=region, connectivity=smoothed.ndim
    )
    return labels.astype(np.int32)


def subject_coverage(binary_maps: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Share of subjects with at least one supra-threshold voxel in each parcel.

    Parameters
    ----------
    binary_maps : ndarray of bool, shape (n_subjects, X, Y, Z)
    labels : ndarray of int, shape (X, Y, Z)
        Parcels 1..K (0 is no parcel).

    Returns
    -------
    ndarray, shape (K + 1,)
        Entry k is the share for parcel k (entry 0 is unused).
    """
    n_labels = int(labels.max()) + 1
    flat = labels.ravel()
    counts = np.stack(
        [np.bincount(flat[m.ravel()], minlength=n_labels) for m in binary_maps]
    )
    return (counts > 0).mean(axis=0)


def peak_voxel(values: np.ndarray, region: np.ndarray) -> tuple[int, int, int]:
    """Index of the largest value inside ``region`` (first in C order on ties)."""
    masked = np.where(region, values, -np.inf)
    return tuple(int(i) for i in np.unravel_index(np.argmax(masked), values.shape))


@dataclass(frozen=True)
class Parcel:
    """One parcel of a :class:`ParcelSet`.

    Attributes
    ----------
    label : int
        Its value in :attr:`ParcelSet.labels`.
    hemi : {'L', 'R'}
        Side of the midline.
    n_voxels : int
        Size in voxels.
    coverage : float
        Share of subjects with a supra-threshold voxel in it.
    peak_ijk : tuple of int
        Voxel of the smoothed overlap map's maximum in the parcel.
    peak_mm : tuple of float
        Its world coordinate (mm).
    peak_overlap : float
        The smoothed overlap there.
    """

    label: int
    hemi: Literal["L", "R"]
    n_voxels: int
    coverage: float
    peak_ijk: tuple[int, int, int]
    peak_mm: tuple[float, float, float]
    peak_overlap: float


@dataclass
class ParcelSet:
    """Parcels of one defining contrast and the maps they came from.

    Attributes
    ----------
    labels : ndarray of int32, shape (X, Y, Z)
        Kept parcels 1..K (renumbered in order of decreasing peak overlap),
        0 elsewhere.
    overlap : ndarray, shape (X, Y, Z)
        Share of subjects whose voxel is supra-threshold.
    smoothed : ndarray, shape (X, Y, Z)
        The overlap map after smoothing.
    parcels : list of Parcel
        The kept parcels, ``parcels[k - 1].label == k``.
    rejected : list of Parcel
        Watershed basins that failed the subject or size rule (their labels
        are not in :attr:`labels`).
    z_cut : float
        The z threshold used (in the contrast's direction).
    """

    labels: np.ndarray
    overlap: np.ndarray
    smoothed: np.ndarray
    parcels: list[Parcel] = field(default_factory=list)
    rejected: list[Parcel] = field(default_factory=list)
    z_cut: float = float("nan")


def make_parcels(
    z_maps: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    p_threshold: float,
    direction: Literal[1, -1],
    smoothing_fwhm: float,
    min_overlap: float,
    min_subject_fraction: float,
    min_voxels: int,
) -> ParcelSet:
    """Group-constrained parcels from the subjects' z maps of one contrast.

    Parameters
    ----------
    z_maps : ndarray, shape (n_subjects, X, Y, Z)
        First-level z maps on one grid (NaN or 0 where a subject has no data).
    mask : ndarray of bool, shape (X, Y, Z)
        Voxels that may belong to a parcel (the group mask).
    affine : ndarray, shape (4, 4)
        Voxel to MNI mm.
    p_threshold : float
        Voxel threshold of each subject's map, one-sided, uncorrected.
    direction : {1, -1}
        1 thresholds ``z > z_cut``, -1 ``z < -z_cut``.
    smoothing_fwhm : float
        FWHM of the Gaussian applied to the overlap map, mm.
    min_overlap : float
        Smallest smoothed overlap (share of subjects) a parcel voxel may have.
    min_subject_fraction : float
        Smallest share of subjects with a supra-threshold voxel in a kept parcel.
    min_voxels : int
        Smallest kept parcel, voxels.

    Returns
    -------
    ParcelSet
    """
    z_maps = np.asarray(z_maps)
    mask = np.asarray(mask, dtype=bool)
    if z_maps.ndim != 4 or z_maps.shape[1:] != mask.shape:
        raise InvalidParameterError(
            f"z_maps must have shape (n_subjects, *{mask.shape}); got {z_maps.shape}"
        )
    if z_maps.shape[0] < 1:
        raise InvalidParameterError("make_parcels needs at least one subject")
    for name, value in (
        ("min_overlap", min_overlap),
        ("min_subject_fraction", min_subject_fraction),
    ):
        if not 0.0 <= value <= 1.0:
            raise InvalidParameterError(f"{name} must be in [0, 1]; got {value!r}")
    if direction not in (1, -1):
        raise InvalidParameterError(f"direction must be 1 or -1; got {direction!r}")
    z_cut = z_threshold(p_threshold)
    with np.errstate(invalid="ignore"):
        binary = (np.nan_to_num(z_maps * direction) > z_cut) & mask
    overlap = binary.mean(axis=0)
    voxel_size = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    smoothed = smooth_volume(overlap, smoothing_fwhm, voxel_size)
    basins = watershed_parcels(smoothed, mask, min_overlap)
    x_mm = voxel_coordinates(mask.shape, affine)[..., 0]
    # one label per (basin, side): left halves keep the label, right halves
    # are offset, so the two sides of a midline basin become two parcels
    offset = int(basins.max())
    split = np.where(basins > 0, basins + offset * (x_mm > 0), 0)
    split[(basins > 0) & (x_mm == 0)] = 0
    coverage = subject_coverage(binary, split)
    sizes = np.bincount(split.ravel(), minlength=coverage.size)
    found = []
    for label in np.flatnonzero(sizes[1:]) + 1:
        region = split == label
        ijk = peak_voxel(smoothed, region)
        peak_mm = tuple(float(v) for v in np.asarray(affine)[:3] @ (*ijk, 1.0))
        found.append(
            Parcel(
                label=int(label),
                hemi="L" if peak_mm[0] < 0 else "R",
                n_voxels=int(sizes[label]),
                coverage=float(coverage[label]),
                peak_ijk=ijk,
                peak_mm=peak_mm,
                peak_overlap=float(smoothed[ijk]),
            )
        )
    # an exact comparison of shares computed as counts / n
    n_subjects = z_maps.shape[0]
    needed = math.ceil(min_subject_fraction * n_subjects - 1e-9)
    kept = [
        p
        for p in found
        if round(p.coverage * n_subjects) >= needed and p.n_voxels >= min_voxels
    ]
    rejected = [p for p in found if p not in kept]
    kept.sort(key=lambda p: (-p.peak_overlap, p.peak_ijk))
    labels = np.zeros(mask.shape, dtype=np.int32)
    renumbered = []
    for new_label, parcel in enumerate(kept, start=1):
        labels[split == parcel.label] = new_label
        renumbered.append(
            Parcel(
                new_label,
                parcel.hemi,
                parcel.n_voxels,
                parcel.coverage,
                parcel.peak_ijk,
                parcel.peak_mm,
                parcel.peak_overlap,
            )
        )
    return ParcelSet(labels, overlap, smoothed, renumbered, rejected, z_cut)


def select_froi(
    z_values: np.ndarray, size: RoiSize, direction: Literal[1, -1] = 1
) -> np.ndarray:
    """A subject's fROI inside one parcel: which of the parcel's voxels it holds.

    Parameters
    ----------
    z_values : ndarray, shape (n_voxels,)
        The subject's z in the parcel's voxels; NaN where it has no data (such
        voxels are never selected and do not count towards a percentage).
    size : RoiSize
        Top percentage (count rounded down, at least one voxel), top count,
        or z threshold.
    direction : {1, -1}
        Rank by ``z`` (1) or by ``-z`` (-1).

    Returns
    -------
    ndarray of bool, shape (n_voxels,)
        Ties at the cut are broken by voxel order (the first ones win), so a
        count rule gives exactly that many voxels.

    Examples
    --------
    >>> from laion_fmri_dataloader.rois import RoiSize
    >>> select_froi(np.array([1.0, 5.0, 3.0, np.nan]), RoiSize("count", 2)).tolist()
    [False, True, True, False]
    """
    signed = np.asarray(z_values, dtype=np.float64) * direction
    valid = np.isfinite(signed)
    chosen = np.zeros(signed.shape, dtype=bool)
    if size.kind == "z":
        chosen[valid] = signed[valid] > size.value
        return chosen
    n_valid = int(valid.sum())
    if n_valid == 0:
        return chosen
    if size.kind == "percent":
        n_chosen = max(1, math.floor(size.value / 100.0 * n_valid + 1e-9))
    else:
        n_chosen = min(int(size.value), n_valid)
    candidates = np.flatnonzero(valid)
    order = np.argsort(-signed[candidates], kind="stable")
    chosen[candidates[order[:n_chosen]]] = True
    return chosen


def dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice coefficient ``2|A & B| / (|A| + |B|)``; NaN when both are empty.

    Examples
    --------
    >>> dice(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool))
    0.5
    """
    first = np.asarray(first, dtype=bool)
    second = np.asarray(second, dtype=bool)
    total = int(first.sum()) + int(second.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int((first & second).sum()) / total


@dataclass(frozen=True)
class HeldOutResponses:
    """Mean effects measured where the fROI was not defined.

    Attributes
    ----------
    odd_froi : ndarray, shape (n_conditions,)
        Even-run effects averaged over the fROI defined from the odd runs.
    even_froi : ndarray, shape (n_conditions,)
        Odd-run effects averaged over the fROI defined from the even runs.
    mean : ndarray, shape (n_conditions,)
        Average of the two (the one available if an fROI is empty).
    """

    odd_froi: np.ndarray
    even_froi: np.ndarray
    mean: np.ndarray


def held_out_responses(
    odd_froi: np.ndarray,
    even_froi: np.ndarray,
    odd_effects: np.ndarray,
    even_effects: np.ndarray,
) -> HeldOutResponses:
    """Response profile of an fROI without circularity.

    Parameters
    ----------
    odd_froi, even_froi : ndarray of bool, shape (n_voxels,)
        fROIs defined from the odd and from the even runs.
    odd_effects, even_effects : ndarray, shape (n_conditions, n_voxels)
        Each condition's effect (percent signal change) estimated from the odd
        and from the even runs, in the same voxels.

    Returns
    -------
    HeldOutResponses
        NaN for a direction whose fROI is empty.
    """
    odd_froi = np.asarray(odd_froi, dtype=bool)
    even_froi = np.asarray(even_froi, dtype=bool)
    odd_effects = np.atleast_2d(np.asarray(odd_effects, dtype=np.float64))
    even_effects = np.atleast_2d(np.asarray(even_effects, dtype=np.float64))
    if not (
        odd_effects.shape == even_effects.shape
        and odd_effects.shape[1] == odd_froi.size == even_froi.size
    ):
        raise InvalidParameterError(
            "fROIs must have one entry per voxel and the effects the shape "
            f"(n_conditions, n_voxels); got {odd_froi.shape}, {even_froi.shape}, "
            f"{odd_effects.shape}, {even_effects.shape}"
        )
    n_conditions = odd_effects.shape[0]

    def _mean(effects, froi):
        if not froi.any():
            return np.full(n_conditions, np.nan)
        return np.nanmean(effects[:, froi], axis=1)

    measured_in_even = _mean(even_effects, odd_froi)
    measured_in_odd = _mean(odd_effects, even_froi)
    mean = _nan_average(np.stack([measured_in_even, measured_in_odd]))
    return HeldOutResponses(measured_in_even, measured_in_odd, mean)


def _nan_average(rows: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN; NaN where a column has no number."""
    finite = np.isfinite(rows)
    counts = finite.sum(axis=0)
    sums = np.where(finite, rows, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
