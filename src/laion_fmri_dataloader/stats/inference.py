"""Multiple-comparison correction of group maps, on arrays.

Three corrections of the voxel-wise one-sample t test
(:func:`laion_fmri_dataloader.stats.second_level.one_sample_t`):

- false discovery rate by Benjamini-Hochberg (:func:`fdr_threshold`,
  :func:`fdr_mask`);
- family-wise error by Bonferroni (:func:`bonferroni_mask`), the conservative
  alternative;
- family-wise error by sign-flip permutation of the max statistic
  (:func:`sign_flip_max_t`; Nichols & Holmes 2002, nilearn's ``permuted_ols``):
  of ``|t|`` (voxel-wise), and, from the same flips, of TFCE
  (:mod:`laion_fmri_dataloader.stats.tfce`) and of the cluster size above a
  cluster-forming threshold (:mod:`laion_fmri_dataloader.stats.clusters`) when a
  :class:`SpatialInference` says so.

Conventions shared by all of them: a voxel survives when its p-value is ``<=`` the
cutoff (``p_fwe <= alpha``, ``p <= fdr_threshold``, ``p <= alpha / m``), and ``m`` is
the number of p-values passed in, so pass only the voxels inside the group mask.

The permutation test is split into chunks of sign flips so that workers can compute
chunks anywhere and in any order: the flips of chunk ``k`` depend only on
``(seed, k, chunk_size)`` (:func:`flips_for_chunk`), a worker turns them into the
maximum statistics of each permutation (:func:`sign_flip_maxima`; max |t| alone:
:func:`sign_flip_chunk`), and the client puts the maxima in chunk order
(:meth:`Maxima.concatenate`) and reduces them (:func:`permutation_result`). Every
permutation's maxima depend only on its flips, never on the chunk it is computed
in, so the result is the same bit for bit whatever the number of workers.
:func:`sign_flip_max_t` does all of it in one process.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import nibabel as nib
import numba
import numpy as np
import pandas as pd

from laion_fmri_dataloader._system import map_threads
from laion_fmri_dataloader.errors import InvalidParameterError
from laion_fmri_dataloader.stats.clusters import (
    Clusters,
    Connectivity,
    _cluster_workspace,
    _max_size,
    _max_size_of,
    cluster_forming_threshold,
    label_clusters,
    voxel_neighbours,
)
from laion_fmri_dataloader.stats.second_level import one_sample_t
from laion_fmri_dataloader.stats.tfce import (
    TFCEParameters,
    _tfce_map,
    _tfce_workspace,
    tfce,
    tfce_thresholds,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ClusterResult",
    "Maxima",
    "PermutationResult",
    "SignFlipData",
    "SpatialInference",
    "TFCEResult",
    "bonferroni_mask",
    "check_permutation_test",
    "cluster_table",
    "fdr_mask",
    "fdr_threshold",
    "flips_for_chunk",
    "fwe_from_max_t",
    "min_n_perm",
    "min_subjects_for_permutation",
    "n_chunks",
    "permutation_count",
    "permutation_result",
    "prepare_sign_flip",
    "sign_flip_chunk",
    "sign_flip_max_t",
    "sign_flip_maxima",
]

#: Sign flips per chunk: one (chunk_size x n_subjects) matrix product per voxel block.
#: Part of the definition of the random flips, so changing it changes the results.
DEFAULT_CHUNK_SIZE = 256

# Voxels per matrix product: 256 x 4096 float32 sums (4 MiB) stay in cache for the
# max/min passes that follow; measured fastest among 4096..65536 on 230k voxels.
_VOXEL_BLOCK = 4096

# TFCE as nilearn and FSL compute it (E = 0.5, H = 2, dh = max / 100).
_NILEARN_TFCE = TFCEParameters()

# Sign flips whose t maps are made together for TFCE and clusters: the normalised
# effects are read once per batch; 8 maps of 230k voxels are 15 MB.
_FLIP_BATCH = 8

# Monte-Carlo tests lose little power once alpha * n_perm is about 10 (Marriott 1979,
# "Barnard's Monte Carlo tests: how many simulations?").
_MIN_EXCEEDANCES = 10


def _check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, (int, float, np.floating)) and 0.0 < value < 1.0):
        raise InvalidParameterError(f"{name} must be a number in (0, 1); got {value!r}")
    return float(value)


def _check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidParameterError(f"{name} must be an integer; got {value!r}")
    if value < minimum:
        raise InvalidParameterError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def _check_p_values(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        raise InvalidParameterError("p-values are empty; there is nothing to correct")
    outside = ~((p >= 0.0) & (p <= 1.0))
    if outside.any():
        raise InvalidParameterError(
            f"p-values must lie in [0, 1]; got {int(outside.sum())} outside "
            f"(NaN included), e.g. {float(p[outside].flat[0])}"
        )
    return p


def fdr_threshold(p: np.ndarray, q: float = 0.05) -> float:
    """Benjamini-Hochberg cutoff on p-values.

    Parameters
    ----------
    p : numpy.ndarray
        p-values of the ``m = p.size`` tests (any shape), in [0, 1].
    q : float, default=0.05
        False discovery rate to control, in (0, 1).

    Returns
    -------
    float
        The largest ``p_(k)`` with ``p_(k) <= k q / m`` (``p_(k)`` the k-th smallest);
        the discoveries are exactly the tests with ``p <= cutoff``. ``0.0`` when
        there is no discovery: no p-value is then 0 (a 0 would be a discovery), so
        ``p <= 0.0`` still selects nothing, and the value stays valid JSON.

    Raises
    ------
    InvalidParameterError
        If ``q`` is not in (0, 1).
    InvalidParameterError
        If ``p`` is empty or has values outside [0, 1] or NaN.

    Examples
    --------
    >>> fdr_threshold(np.array([0.001, 0.02, 0.03, 0.5]), q=0.05)
    0.03
    >>> fdr_threshold(np.array([0.2, 0.5]), q=0.05)
    0.0
    """
    q = _check_fraction("q", q)
    sorted_p = np.sort(_check_p_values(p), axis=None)
    m = sorted_p.size
    below = np.flatnonzero(sorted_p <= q * np.arange(1, m + 1) / m)
    if below.size == 0:
        return 0.0
    return float(sorted_p[below[-1]])


def fdr_mask(p: np.ndarray, q: float = 0.05) -> np.ndarray:
    """Discoveries of the Benjamini-Hochberg procedure.

    Parameters
    ----------
    p : numpy.ndarray
        p-values of the tests (any shape), in [0, 1].
    q : float, default=0.05
        False discovery rate to control, in (0, 1).

    Returns
    -------
    numpy.ndarray of bool, same shape as ``p``
        ``p <= fdr_threshold(p, q)``, all False when there is no discovery.

    Raises
    ------
    InvalidParameterError
        If ``q`` is not in (0, 1).
    InvalidParameterError
        If ``p`` is empty or has values outside [0, 1] or NaN.
    """
    p = _check_p_values(p)
    return p <= fdr_threshold(p, q)


def bonferroni_mask(p: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, float]:
    """Family-wise error control by Bonferroni.

    Parameters
    ----------
    p : numpy.ndarray
        p-values of the ``m = p.size`` tests (any shape), in [0, 1].
    alpha : float, default=0.05
        Family-wise error rate, in (0, 1).

    Returns
    -------
    mask : numpy.ndarray of bool, same shape as ``p``
        ``p <= alpha / m``.
    p_cutoff : float
        ``alpha / m``.

    Raises
    ------
    InvalidParameterError
        If ``alpha`` is not in (0, 1).
    InvalidParameterError
        If ``p`` is empty or has values outside [0, 1] or NaN.

    Examples
    --------
    >>> mask, cutoff = bonferroni_mask(np.array([0.001, 0.02, 0.5, 0.9]), alpha=0.05)
    >>> mask.tolist(), cutoff
    ([True, False, False, False], 0.0125)
    """
    alpha = _check_fraction("alpha", alpha)
    p = _check_p_values(p)
    p_cutoff = alpha / p.size
    return p <= p_cutoff, p_cutoff


def min_subjects_for_permutation(alpha: float = 0.05, one_sided: bool = False) -> int:
    """Smallest number of subjects with which a sign-flip test can reach ``alpha``.

    ``N`` subjects have ``2**N`` sign vectors, the unflipped data among them, so the
    smallest corrected p-value is ``1 / 2**N`` one-sided. Two-sided it is
    ``2 / 2**N``: flipping every sign gives the same ``|t|`` as the data. For
    ``alpha = 0.05`` two-sided, 5 subjects give ``2 / 32 = 0.0625 > 0.05`` and 6
    give ``2 / 64 = 0.03125``, so 6; one-sided, 5 give ``1 / 32 = 0.03125``.

    Parameters
    ----------
    alpha : float, default=0.05
        Family-wise error rate, in (0, 1).
    one_sided : bool, default=False
        Whether the test is one-sided.

    Returns
    -------
    int
        The smallest ``N`` with ``(1 if one_sided else 2) / 2**N <= alpha``.

    Raises
    ------
    InvalidParameterError
        If ``alpha`` is not in (0, 1).

    Examples
    --------
    >>> min_subjects_for_permutation(0.05), min_subjects_for_permutation(0.05, True)
    (6, 5)
    """
    alpha = _check_fraction("alpha", alpha)
    identical = 1 if one_sided else 2
    n_subjects = 1
    while identical / 2**n_subjects > alpha:
        n_subjects += 1
    return n_subjects


def min_n_perm(alpha: float = 0.05) -> int:
    """Smallest number of random sign flips accepted for ``alpha``.

    A permutation test that counts the unflipped data as one of its ``n_perm``
    permutations keeps its error rate for any ``n_perm >= 1 / alpha``; what a small
    ``n_perm`` costs is power and reproducibility, because the cutoff becomes a
    random order statistic. Monte-Carlo tests lose little power once about 10
    permutation maxima lie beyond the cutoff (Marriott 1979), hence
    ``ceil(10 / alpha)``: 200 for 0.05. Use 10000 (the default) for published
    maps: the Monte-Carlo standard error of a corrected p of 0.05 is then 0.002.

    Parameters
    ----------
    alpha : float, default=0.05
        Family-wise error rate, in (0, 1).

    Returns
    -------
    int
        ``ceil(10 / alpha)``.

    Raises
    ------
    InvalidParameterError
        If ``alpha`` is not in (0, 1).

    Examples
    --------
    >>> min_n_perm(0.05), min_n_perm(0.01)
    (200, 1000)
    """
    alpha = _check_fraction("alpha", alpha)
    # The tolerance keeps 10 / 0.05 = 200.00000000000003-style rounding from adding 1.
    return math.ceil(_MIN_EXCEEDANCES / alpha - 1e-9)


def permutation_count(n_subjects: int, n_perm: int) -> tuple[int, bool]:
    """Number of sign flips a test will use, and whether it enumerates them all.

    Parameters
    ----------
    n_subjects : int
        Number of subjects.
    n_perm : int
        Number of permutations requested, the unflipped data included.

    Returns
    -------
    n_used : int
        ``2**n_subjects`` if that is at most ``n_perm`` (exhaustive), else ``n_perm``.
    exhaustive : bool
        Whether every sign vector is used exactly once.

    Examples
    --------
    >>> permutation_count(8, 10000), permutation_count(20, 10000)
    ((256, True), (10000, False))
    """
    n_subjects = _check_positive_int("n_subjects", n_subjects)
    n_perm = _check_positive_int("n_perm", n_perm)
    if 2**n_subjects <= n_perm:
        return 2**n_subjects, True
    return n_perm, False


def n_chunks(n_subjects: int, n_perm: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Number of chunks of sign flips a test is split into.

    Parameters
    ----------
    n_subjects : int
        Number of subjects.
    n_perm : int
        Number of permutations requested, the unflipped data included.
    chunk_size : int, default=DEFAULT_CHUNK_SIZE
        Sign flips per chunk.

    Returns
    -------
    int
        ``ceil(n_used / chunk_size)`` with ``n_used`` from :func:`permutation_count`.
    """
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    n_used, _ = permutation_count(n_subjects, n_perm)
    return -(-n_used // chunk_size)


def flips_for_chunk(
    n_subjects: int,
    chunk_index: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    seed: int = 0,
    n_perm: int = 10000,
) -> np.ndarray:
    """Sign flips of one chunk, reproducible wherever and whenever it is computed.

    Permutation ``j`` of the test is row ``j - chunk_index * chunk_size`` of chunk
    ``j // chunk_size``. Permutation 0 is always the unflipped data.

    - Exhaustive (``2**n_subjects <= n_perm``): permutation ``j`` flips subject
      ``i`` when bit ``i`` of ``j`` is set, so the ``2**n_subjects`` permutations
      are every sign vector once.
    - Random: chunk ``k`` draws ``chunk_size`` rows of independent fair signs from
      ``numpy.random.default_rng([seed, k])`` (the last chunk keeps the first rows
      it needs), so its flips depend only on ``(seed, k, chunk_size)``.

    Parameters
    ----------
    n_subjects : int
        Number of subjects.
    chunk_index : int
        Which chunk, from 0 to ``n_chunks(n_subjects, n_perm, chunk_size) - 1``.
    chunk_size : int, default=DEFAULT_CHUNK_SIZE
        Sign flips per chunk.
    seed : int, default=0
        Non-negative seed of the random flips.
    n_perm : int, default=10000
        Number of permutations requested, the unflipped data included.

    Returns
    -------
    numpy.ndarray of float32, shape (n_rows, n_subjects)
        +1 or -1; ``n_rows`` is ``chunk_size`` except in the last chunk.

    Raises
    ------
    InvalidParameterError
        If an argument is not a valid integer or ``chunk_index`` is out of range.

    Examples
    --------
    >>> flips_for_chunk(2, 0, chunk_size=3, n_perm=100).tolist()
    [[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]]
    """
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    seed = _check_positive_int("seed", seed, minimum=0)
    chunk_index = _check_positive_int("chunk_index", chunk_index, minimum=0)
    n_used, exhaustive = permutation_count(n_subjects, n_perm)
    total_chunks = n_chunks(n_subjects, n_perm, chunk_size)
    if chunk_index >= total_chunks:
        raise InvalidParameterError(
            f"chunk_index={chunk_index} is out of range; {n_used} permutations in "
            f"chunks of {chunk_size} give chunk indices 0 to {total_chunks - 1}"
        )
    start = chunk_index * chunk_size
    n_rows = min(chunk_size, n_used - start)
    if exhaustive:
        indices = np.arange(start, start + n_rows, dtype=np.int64)
        flipped = (indices[:, np.newaxis] >> np.arange(n_subjects)) & 1
    else:
        rng = np.random.default_rng([seed, chunk_index])
        flipped = rng.integers(0, 2, size=(chunk_size, n_subjects))[:n_rows]
        if chunk_index == 0:
            flipped[0] = 0
    return (1 - 2 * flipped).astype(np.float32)


@dataclass(frozen=True)
class SpatialInference:
    """The spatial statistics a sign-flip test computes beside max |t|.

    Attributes
    ----------
    neighbours : numpy.ndarray of int32, shape (n_voxels, connectivity)
        Neighbour table of the voxels the effects are given on
        (:func:`~laion_fmri_dataloader.stats.clusters.voxel_neighbours`).
    connectivity : {6, 18, 26}
        Which voxels touch, for TFCE and clusters alike.
    tfce : TFCEParameters or None
        TFCE's E, H and dh; None computes no TFCE.
    cluster_threshold : float or None
        Cluster-forming threshold as an uncorrected p-value, turned into a t
        threshold with the subjects' degrees of freedom (nilearn's
        ``threshold=``); None computes no cluster extent.

    Raises
    ------
    InvalidParameterError
        If ``cluster_threshold`` is not in (0, 1), ``tfce`` is not a
        :class:`~laion_fmri_dataloader.stats.tfce.TFCEParameters`, or both are
        None.
    """

    neighbours: np.ndarray
    connectivity: int = 6
    tfce: TFCEParameters | None = _NILEARN_TFCE
    cluster_threshold: float | None = 0.001

    def __post_init__(self) -> None:
        if self.tfce is None and self.cluster_threshold is None:
            raise InvalidParameterError(
                "SpatialInference needs tfce parameters, a cluster threshold or both"
            )
        if self.tfce is not None and not isinstance(self.tfce, TFCEParameters):
            raise InvalidParameterError(
                f"tfce must be TFCEParameters or None; got {type(self.tfce).__name__}"
            )
        if self.cluster_threshold is not None:
            object.__setattr__(
                self,
                "cluster_threshold",
                _check_fraction("cluster_threshold", self.cluster_threshold),
            )

    @classmethod
    def from_mask(
        cls,
        mask: np.ndarray,
        *,
        connectivity: Connectivity = 6,
        tfce: TFCEParameters | None = _NILEARN_TFCE,
        cluster_threshold: float | None = 0.001,
    ) -> SpatialInference:
        """The spatial statistics of maps given as ``volume[mask]``.

        Parameters
        ----------
        mask : numpy.ndarray of bool, shape (X, Y, Z)
            The group mask.
        connectivity : {6, 18, 26}, default=6
            nilearn's default is 6 (voxels sharing a face).
        tfce : TFCEParameters or None, default=TFCEParameters()
            As the attribute.
        cluster_threshold : float or None, default=0.001
            As the attribute.

        Returns
        -------
        SpatialInference
        """
        return cls(
            neighbours=voxel_neighbours(mask, connectivity),
            connectivity=connectivity,
            tfce=tfce,
            cluster_threshold=cluster_threshold,
        )

    def forming_threshold(self, n_subjects: int, one_sided: bool) -> float | None:
        """t threshold of the clusters for ``n_subjects`` (None without clusters)."""
        if self.cluster_threshold is None:
            return None
        return cluster_forming_threshold(
            self.cluster_threshold, n_subjects - 1, one_sided=one_sided
        )


@dataclass(frozen=True)
class SignFlipData:
    """Group data prepared once for every chunk of a sign-flip test.

    Attributes
    ----------
    normalized : numpy.ndarray of float32, shape (n_subjects, n_voxels)
        Effects divided by the root of their sum of squares over subjects, per
        voxel; zero at zero-variance voxels, which thereby never enter a maximum.
    t : numpy.ndarray of float64, shape (n_voxels,)
        Observed t map, exactly as :func:`one_sample_t` computes it.
    zero_variance : numpy.ndarray of bool, shape (n_voxels,)
        Voxels with the same value in every subject (t = 0, p_fwe = 1).
    spatial : SpatialInference or None
        TFCE and cluster extent to compute from the same flips, if any.
    normalized64 : numpy.ndarray of float64, shape (n_subjects, n_voxels) or None
        ``normalized`` in float64, with ``spatial``: TFCE thresholds each map at
        100 heights, and float32 t maps would cross some of them where nilearn's
        float64 maps do not.
    """

    normalized: np.ndarray
    t: np.ndarray
    zero_variance: np.ndarray
    spatial: SpatialInference | None = None
    normalized64: np.ndarray | None = None

    @property
    def n_subjects(self) -> int:
        """Number of subjects."""
        return self.normalized.shape[0]


def prepare_sign_flip(
    effects: np.ndarray, spatial: SpatialInference | None = None
) -> SignFlipData:
    """Normalise group effects for :func:`sign_flip_chunk`.

    A sign flip changes the sum ``s`` of a voxel's effects but not their sum of
    squares ``SS``, and the one-sample t is ``r sqrt(n - 1) / sqrt(n - r**2)`` with
    ``r = s / sqrt(SS)``: increasing in ``r`` on ``(-sqrt(n), sqrt(n))``. So the
    largest t of a permutation belongs to the largest ``r``, and ``r`` for every
    permutation and voxel is one matrix product with the effects scaled by
    ``1 / sqrt(SS)``.

    Parameters
    ----------
    effects : numpy.ndarray, shape (n_subjects, n_voxels)
        One effect map per subject, finite.
    spatial : SpatialInference, optional
        TFCE and cluster extent to compute too; its neighbour table must have one
        row per voxel.

    Returns
    -------
    SignFlipData
        The scaled effects (float32, and float64 with ``spatial``) and the
        observed t map.

    Raises
    ------
    InvalidParameterError
        If ``effects`` is not 2-D, has fewer than 2 subjects, or is not finite, or
        ``spatial`` does not fit its voxels.
    """
    observed = one_sample_t(effects)
    effects = np.asarray(effects, dtype=np.float64)
    root_ss = np.sqrt(np.einsum("ij,ij->j", effects, effects))
    scale = np.zeros_like(root_ss)
    varying = ~observed.zero_variance
    scale[varying] = 1.0 / root_ss[varying]
    # Multiplying straight into float32 spares a float64 copy of the group data.
    normalized = np.multiply(
        effects,
        scale,
        out=np.empty(effects.shape, dtype=np.float32),
        casting="same_kind",
    )
    normalized64 = None
    if spatial is not None:
        if not isinstance(spatial, SpatialInference):
            raise InvalidParameterError(
                f"spatial must be a SpatialInference; got {type(spatial).__name__}"
            )
        if spatial.neighbours.shape[0] != effects.shape[1]:
            raise InvalidParameterError(
                f"the neighbour table has {spatial.neighbours.shape[0]} voxels and "
                f"the effects {effects.shape[1]}; build it from the mask the "
                "effects were taken from"
            )
        normalized64 = np.ascontiguousarray(effects * scale)
    return SignFlipData(
        normalized=normalized,
        t=observed.t,
        zero_variance=observed.zero_variance,
        spatial=spatial,
        normalized64=normalized64,
    )


def _t_from_normalized_sum(r: np.ndarray, n_subjects: int) -> np.ndarray:
    # r**2 reaches n only when the flipped effects all have one sign and one size
    # (zero variance): t is then infinite. float32 sums leave r**2 a hair below n
    # (t huge but finite) or push it past n, where infinity replaces NaN.
    room = n_subjects - r * r
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * math.sqrt(n_subjects - 1) / np.sqrt(room)
    return np.where(room > 0, t, np.copysign(np.inf, r))


def sign_flip_chunk(
    data: SignFlipData, flips: np.ndarray, *, one_sided: bool = False
) -> np.ndarray:
    """Maximum t of each sign flip of a chunk: the unit of work of a worker.

    One float32 ``flips @ normalized`` product per block of voxels, then the largest
    normalised sum per row (largest absolute sum if two-sided), converted to t once
    per row. Memory: ``n_rows x 4096`` float32 sums, whatever the number of voxels.
    Rows that flip every sign or none get the exact float64 extremes of ``data.t``,
    so that the unflipped data's maximum equals the observed maximum bit for bit.

    Parameters
    ----------
    data : SignFlipData
        Output of :func:`prepare_sign_flip`.
    flips : numpy.ndarray, shape (n_rows, n_subjects)
        +1 / -1 signs, e.g. from :func:`flips_for_chunk`.
    one_sided : bool, default=False
        If True, the maximum of t; otherwise the maximum of ``|t|``.

    Returns
    -------
    numpy.ndarray of float64, shape (n_rows,)
        The maximum statistic of each permutation.

    Raises
    ------
    InvalidParameterError
        If ``flips`` does not have one column per subject.
    """
    return _max_t_and_candidates(data, flips, one_sided=one_sided)[0]


def _max_t_and_candidates(
    data: SignFlipData,
    flips: np.ndarray,
    *,
    one_sided: bool,
    screen: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Max t of each flip, and the (row, voxel) pairs whose float32 normalised sum
    is beyond ``screen`` (beyond ``-screen`` too, two-sided) if it is given."""
    flips = np.asarray(flips, dtype=np.float32)
    n_subjects = data.n_subjects
    if flips.ndim != 2 or flips.shape[1] != n_subjects:
        raise InvalidParameterError(
            f"flips must have shape (n_rows, {n_subjects}) for {n_subjects} "
            f"subjects; got {flips.shape}"
        )
    best = np.full(flips.shape[0], -np.inf, dtype=np.float32)
    rows, voxels = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for start in range(0, data.normalized.shape[1], _VOXEL_BLOCK):
        sums = flips @ data.normalized[:, start : start + _VOXEL_BLOCK]
        if screen is None:
            np.maximum(best, sums.max(axis=1), out=best)
            if not one_sided:
                np.maximum(best, -sums.min(axis=1), out=best)
        else:
            # One pass for the maxima (exact in any order) and the candidates.
            row, voxel = _extremes_and_candidates(
                sums, np.float32(screen), not one_sided, best
            )
            rows.append(row)
            voxels.append(voxel + start)
    max_t = _t_from_normalized_sum(best.astype(np.float64), n_subjects)
    unflipped = (flips == 1).all(axis=1)
    all_flipped = (flips == -1).all(axis=1)
    if one_sided:
        max_t[unflipped] = data.t.max()
        max_t[all_flipped] = -data.t.min()
    else:
        max_t[unflipped | all_flipped] = np.abs(data.t).max()
    return max_t, np.concatenate(rows), np.concatenate(voxels)


@dataclass(frozen=True)
class Maxima:
    """The maximum statistics of some permutations, in permutation order.

    Attributes
    ----------
    t : numpy.ndarray of float64, shape (n_rows,)
        Max ``|t|`` (two-sided) or max t (one-sided), as :func:`sign_flip_chunk`.
    tfce : numpy.ndarray of float64, shape (n_rows,) or None
        Max ``|TFCE|`` (two-sided) or max TFCE, if computed.
    cluster : numpy.ndarray of int64, shape (n_rows,) or None
        Size of the largest cluster in voxels, if computed.
    """

    t: np.ndarray
    tfce: np.ndarray | None = None
    cluster: np.ndarray | None = None

    def __len__(self) -> int:
        return self.t.size

    @classmethod
    def concatenate(cls, parts: list[Maxima]) -> Maxima:
        """The maxima of consecutive chunks, in the order given."""
        return cls(
            t=np.concatenate([part.t for part in parts]),
            tfce=None
            if parts[0].tfce is None
            else np.concatenate([part.tfce for part in parts]),
            cluster=None
            if parts[0].cluster is None
            else np.concatenate([part.cluster for part in parts]),
        )


def sign_flip_maxima(
    data: SignFlipData, flips: np.ndarray, *, one_sided: bool = False
) -> Maxima:
    """Every maximum statistic of each sign flip of a chunk: a worker's unit of work.

    Max ``|t|`` as :func:`sign_flip_chunk`; with ``data.spatial``, also max
    ``|TFCE|`` and the largest cluster, from float64 t maps of the same flips, in
    batches of 8 flips whose t maps are made together (a fixed order of summation
    over subjects per voxel, so a flip's maps do not depend on its batch). Cluster
    extent without TFCE needs t only where it may pass the cluster-forming
    threshold: the float32 sums of max |t| pick those voxels (with a margin above
    their rounding error) and only they get float64 t, summed in the same order,
    so the largest clusters are the same as from the full maps. Rows that flip
    every sign or none use the observed t map itself, so that the unflipped data's
    maxima equal the observed map's to the bit. Memory: ``8 x n_voxels`` float64
    maps and the sweep's arrays, whatever the number of flips.

    Parameters
    ----------
    data : SignFlipData
        Output of :func:`prepare_sign_flip`.
    flips : numpy.ndarray, shape (n_rows, n_subjects)
        +1 / -1 signs, e.g. from :func:`flips_for_chunk`.
    one_sided : bool, default=False
        If True, maxima of t, TFCE of positive values and positive clusters only.

    Returns
    -------
    Maxima
        The maxima of each row of ``flips``.

    Raises
    ------
    InvalidParameterError
        If ``flips`` does not have one column per subject.
    """
    spatial = data.spatial
    if spatial is None:
        return Maxima(t=sign_flip_chunk(data, flips, one_sided=one_sided))
    n_subjects = data.n_subjects
    forming = spatial.forming_threshold(n_subjects, one_sided)
    if spatial.tfce is None:
        # Cluster extent alone: the float32 sums of max |t| find the voxels that
        # may be beyond the threshold, and only those get exact float64 t.
        max_t, rows, voxels = _max_t_and_candidates(
            data, flips, one_sided=one_sided, screen=_screen(forming, n_subjects)
        )
        order = np.argsort(rows, kind="stable")
        bounds = np.searchsorted(rows[order], np.arange(len(max_t) + 1))
        max_cluster = np.zeros(len(max_t), dtype=np.int64)
        _screened_cluster_maxima(
            data.normalized64,
            np.ascontiguousarray(flips, dtype=np.float64),
            data.t,
            spatial.neighbours,
            voxels[order],
            bounds,
            forming,
            not one_sided,
            max_cluster,
            _cluster_workspace(data.t.size),
        )
        return Maxima(t=max_t, cluster=max_cluster)
    max_t = sign_flip_chunk(data, flips, one_sided=one_sided)
    flips = np.ascontiguousarray(flips, dtype=np.float64)
    n_rows = flips.shape[0]
    max_tfce = np.zeros(n_rows)
    max_cluster = np.zeros(n_rows, dtype=np.int64)
    parameters = spatial.tfce
    _spatial_maxima(
        data.normalized64,
        flips,
        data.t,
        spatial.neighbours,
        parameters.E,
        parameters.H,
        parameters._dh_code,
        forming is not None,
        0.0 if forming is None else forming,
        not one_sided,
        max_tfce,
        max_cluster,
        _tfce_workspace(data.t.size),
        _cluster_workspace(data.t.size),
    )
    return Maxima(
        t=max_t,
        tfce=max_tfce,
        cluster=None if forming is None else max_cluster,
    )


@numba.njit(cache=True, nogil=True)
def _extremes_and_candidates(sums, screen, two_sided, best):
    """Raise ``best`` to each row's max (max |.| two-sided) of ``sums``; return
    the (row, column) pairs beyond ``screen``."""
    n_rows, n_columns = sums.shape
    count = 0
    for row in range(n_rows):
        top = best[row]
        for column in range(n_columns):
            value = sums[row, column]
            if two_sided:
                value = abs(value)
            if value > top:
                top = value
            if value > screen:
                count += 1
        best[row] = top
    rows = np.empty(count, dtype=np.int64)
    columns = np.empty(count, dtype=np.int64)
    count = 0
    for row in range(n_rows):
        for column in range(n_columns):
            value = sums[row, column]
            if (abs(value) if two_sided else value) > screen:
                rows[count] = row
                columns[count] = column
                count += 1
    return rows, columns


def _screen(forming: float, n_subjects: int) -> float:
    """A normalised sum below which no voxel's t can pass ``forming``, in float32.

    ``t > forming`` exactly when ``r > forming sqrt(n) / sqrt(n - 1 + forming**2)``;
    the float32 sums err by at most ``(n + 1) sqrt(n)`` units of 2**-24 (the
    rounding of the normalised effects and of a sum of ``n`` terms whose absolute
    values add up to at most ``sqrt(n)``), taken four times over.
    """
    threshold = forming * math.sqrt(n_subjects / (n_subjects - 1 + forming**2))
    return threshold - 4 * (n_subjects + 1) * math.sqrt(n_subjects) * 2.0**-24


@numba.njit(cache=True, nogil=True)
def _screened_cluster_maxima(
    normalized,
    flips,
    observed_t,
    neighbours,
    candidates,
    bounds,
    forming,
    two_sided,
    max_cluster,
    cluster_work,
):
    """Largest cluster of each flip from its candidate voxels (rows' segments of
    ``candidates`` between ``bounds``), into ``max_cluster``."""
    n_subjects = normalized.shape[0]
    dof_root = np.sqrt(n_subjects - 1.0)
    parent, size, members = cluster_work
    n_voxels = observed_t.size
    t = np.zeros(n_voxels)
    for row in range(flips.shape[0]):
        n_positive = 0
        for subject in range(n_subjects):
            if flips[row, subject] > 0:
                n_positive += 1
        segment = candidates[bounds[row] : bounds[row + 1]]
        for voxel in segment:
            if n_positive == n_subjects:
                t[voxel] = observed_t[voxel]
            elif n_positive == 0:
                t[voxel] = -observed_t[voxel]
            else:
                # The subjects summed in the order of the full maps' _add_scaled.
                r = 0.0
                for subject in range(n_subjects):
                    r += flips[row, subject] * normalized[subject, voxel]
                t[voxel] = r * dof_root / np.sqrt(max(n_subjects - r * r, 0.0))
        max_cluster[row] = _max_size_of(
            t, segment, neighbours, forming, two_sided, parent, size, members
        )
        for voxel in segment:
            t[voxel] = 0.0


@numba.njit(cache=True, nogil=True)
def _add_scaled(out, scale, values):
    # out += scale * values on 1-D slices, which the compiler vectorises (the
    # same loop on 2-D indices was not, at 5 ms per 235k-voxel map).
    for i in range(out.size):
        out[i] += scale * values[i]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _t_from_sums(sums, n_subjects, dof_root):
    # t = r sqrt(n - 1) / sqrt(n - r**2) in place, as _t_from_normalized_sum: where
    # r**2 reaches n, r / 0 is the infinity of the sign of r (numpy's division,
    # without a branch that would keep the loop from being vectorised).
    for i in range(sums.size):
        r = sums[i]
        sums[i] = r * dof_root / np.sqrt(max(n_subjects - r * r, 0.0))


@numba.njit(cache=True, nogil=True)
def _spatial_maxima(
    normalized,
    flips,
    observed_t,
    neighbours,
    E,
    H,
    dh,
    with_clusters,
    forming,
    two_sided,
    max_tfce,
    max_cluster,
    tfce_work,
    cluster_work,
):
    """Max |TFCE| and largest cluster of each flip, into the two output arrays."""
    n_subjects, n_voxels = normalized.shape
    n_rows = flips.shape[0]
    batch = max(min(_FLIP_BATCH, n_rows), 1)
    maps = np.empty((batch, n_voxels))
    scratch = np.empty(n_voxels)
    dof_root = np.sqrt(n_subjects - 1.0)
    for start in range(0, n_rows, batch):
        rows = min(batch, n_rows - start)
        # r = flips @ normalized per voxel block, the subjects always summed in
        # the same order so that a flip's map is the same in any batch.
        for block in range(0, n_voxels, _VOXEL_BLOCK):
            stop = min(block + _VOXEL_BLOCK, n_voxels)
            for b in range(rows):
                out = maps[b, block:stop]
                out[:] = 0.0
                for subject in range(n_subjects):
                    _add_scaled(
                        out, flips[start + b, subject], normalized[subject, block:stop]
                    )
        for b in range(rows):
            row = start + b
            n_positive = 0
            for subject in range(n_subjects):
                if flips[row, subject] > 0:
                    n_positive += 1
            t = maps[b]
            identity = n_positive == n_subjects or n_positive == 0
            if n_positive == n_subjects:
                t[:] = observed_t
            elif n_positive == 0:
                t[:] = -observed_t
            else:
                _t_from_sums(t, n_subjects, dof_root)
            max_tfce[row] = _tfce_map(
                t, neighbours, E, H, dh, two_sided, scratch, identity, *tfce_work
            )
            if with_clusters:
                max_cluster[row] = _max_size(
                    t, neighbours, forming, two_sided, *cluster_work
                )


def fwe_from_max_t(
    data: SignFlipData,
    max_t: np.ndarray,
    *,
    alpha: float = 0.05,
    one_sided: bool = False,
) -> tuple[float, np.ndarray]:
    """FWE cutoff and corrected p-values from the permutation distribution of max t.

    With ``P = max_t.size`` permutations (the unflipped data among them):

    - ``p_fwe = #{k : max_t[k] >= stat} / P`` with ``stat = |t|`` (two-sided) or
      ``t`` (one-sided). This is nilearn's ``permuted_ols``
      ``(1 + #{random maxima >= stat}) / (1 + n_perm)`` with ``n_perm = P - 1``
      random flips, the unflipped data being the ``1``.
    - ``t_cutoff`` is the ``(c + 1)``-th largest maximum, ``c`` the largest count
      with ``c / P <= alpha``: ``stat > t_cutoff`` exactly where
      ``p_fwe <= alpha``. For ``P = 10000`` and ``alpha = 0.05`` it is the 501st
      largest maximum; nilearn users take ``np.percentile(h0_max_t, 95)``, the same
      quantile up to Monte-Carlo error.

    Parameters
    ----------
    data : SignFlipData
        Output of :func:`prepare_sign_flip`: the observed t map and the
        zero-variance voxels.
    max_t : numpy.ndarray, shape (n_perm,)
        Maximum statistic of each permutation, from :func:`sign_flip_chunk`, in any
        order.
    alpha : float, default=0.05
        Family-wise error rate, in (0, 1).
    one_sided : bool, default=False
        Whether ``max_t`` holds maxima of t rather than of ``|t|``.

    Returns
    -------
    t_cutoff : float
        Voxels with ``stat > t_cutoff`` survive.
    p_fwe : numpy.ndarray of float64, shape (n_voxels,)
        Corrected p-values, in ``[1 / P, 1]``; 1 at zero-variance voxels.

    Raises
    ------
    InvalidParameterError
        If ``alpha`` is not in (0, 1).
    InvalidParameterError
        If ``max_t`` has fewer than ``1 / alpha`` values, so nothing can survive.
    """
    stat = data.t if one_sided else np.abs(data.t)
    t_cutoff, p_fwe = _max_statistic_fwe(stat, max_t, alpha)
    p_fwe[data.zero_variance] = 1.0
    return t_cutoff, p_fwe


def _max_statistic_fwe(
    stat: np.ndarray, maxima: np.ndarray, alpha: float
) -> tuple[float, np.ndarray]:
    """Cutoff and corrected p of ``stat`` from the permutation maxima (any order)."""
    alpha = _check_fraction("alpha", alpha)
    maxima = np.sort(np.asarray(maxima, dtype=np.float64).ravel())
    n_perm = maxima.size
    # Count with the same float comparison that p_fwe <= alpha will make.
    allowed = math.floor(alpha * n_perm)
    while (allowed + 1) / n_perm <= alpha:
        allowed += 1
    while allowed > 0 and allowed / n_perm > alpha:
        allowed -= 1
    if allowed == 0:
        raise InvalidParameterError(
            f"{n_perm} permutations cannot reach alpha={alpha} (smallest corrected "
            f"p is 1/{n_perm}); use at least {min_n_perm(alpha)}"
        )
    cutoff = float(maxima[n_perm - 1 - allowed])
    at_or_above = n_perm - np.searchsorted(maxima, stat, side="left")
    return cutoff, at_or_above / n_perm


@dataclass(frozen=True)
class TFCEResult:
    """Family-wise error of TFCE by the permutation distribution of its maximum.

    Attributes
    ----------
    tfce : numpy.ndarray of float64, shape (n_voxels,)
        TFCE of the observed t map, with the sign of t.
    max_tfce : numpy.ndarray of float64, shape (n_perm,)
        Max ``|TFCE|`` (max TFCE one-sided) of each permutation, in permutation
        order; ``max_tfce[0]`` is the unflipped data's.
    cutoff : float
        Voxels with ``|tfce| > cutoff`` survive (``tfce >`` one-sided), exactly
        those with ``p_fwe <= alpha``: the critical max TFCE.
    p_fwe : numpy.ndarray of float64, shape (n_voxels,)
        ``#{k : max_tfce[k] >= |tfce|} / n_perm``; 1 where TFCE is 0.
    parameters : TFCEParameters
        E, H and the dh rule.
    dh : float
        Threshold step of the observed map (each permutation has its own).
    connectivity : int
        Which voxels touch (6: faces).
    alpha : float
        Family-wise error rate of ``cutoff``.
    """

    tfce: np.ndarray
    max_tfce: np.ndarray
    cutoff: float
    p_fwe: np.ndarray
    parameters: TFCEParameters
    dh: float
    connectivity: int
    alpha: float

    @property
    def mask(self) -> np.ndarray:
        """Surviving voxels, ``p_fwe <= alpha``."""
        return self.p_fwe <= self.alpha


@dataclass(frozen=True)
class ClusterResult:
    """Family-wise error of cluster extent by the distribution of the largest cluster.

    Attributes
    ----------
    clusters : Clusters
        Clusters of the observed t map above ``forming_t`` (and below
        ``-forming_t`` two-sided).
    max_size : numpy.ndarray of int64, shape (n_perm,)
        Largest cluster of each permutation in voxels, in permutation order.
    cutoff : int
        Clusters of more than ``cutoff`` voxels survive, exactly the voxels with
        ``p_fwe <= alpha``: the critical max cluster size.
    p_fwe : numpy.ndarray of float64, shape (n_voxels,)
        ``#{k : max_size[k] >= size of the voxel's cluster} / n_perm``; 1 outside
        clusters.
    forming_p : float
        Cluster-forming threshold as an uncorrected p-value.
    forming_t : float
        The same as a t threshold with ``n_subjects - 1`` degrees of freedom.
    connectivity : int
        Which voxels touch (6: faces).
    alpha : float
        Family-wise error rate of ``cutoff``.
    """

    clusters: Clusters
    max_size: np.ndarray
    cutoff: int
    p_fwe: np.ndarray
    forming_p: float
    forming_t: float
    connectivity: int
    alpha: float

    @property
    def mask(self) -> np.ndarray:
        """Surviving voxels, ``p_fwe <= alpha``."""
        return self.p_fwe <= self.alpha


@dataclass(frozen=True)
class PermutationResult:
    """Sign-flip permutation test of the max statistic (family-wise error).

    Attributes
    ----------
    t : numpy.ndarray of float64, shape (n_voxels,)
        Observed t map (as :func:`one_sample_t`).
    max_t : numpy.ndarray of float64, shape (n_perm,)
        Maximum of ``|t|`` (two-sided) or t (one-sided) over voxels for each
        permutation, in permutation order; ``max_t[0]`` is the unflipped data.
    t_cutoff : float
        Voxels with ``|t| > t_cutoff`` (``t >`` if one-sided) survive, exactly those
        with ``p_fwe <= alpha``.
    p_fwe : numpy.ndarray of float64, shape (n_voxels,)
        Corrected p-values ``#{k : max_t[k] >= |t|} / n_perm``; 1 at zero-variance
        voxels.
    n_perm : int
        Number of permutations used, the unflipped data included.
    exhaustive : bool
        Whether all ``2**n_subjects`` sign vectors were used.
    seed : int
        Seed of the random flips (unused when exhaustive).
    chunk_size : int
        Flips per chunk, part of the definition of the random flips.
    alpha : float
        Family-wise error rate of ``t_cutoff``.
    one_sided : bool
        Whether the test is one-sided (mean > 0).
    tfce : TFCEResult or None
        TFCE from the same flips, when asked for.
    cluster : ClusterResult or None
        Cluster extent from the same flips, when asked for.
    """

    t: np.ndarray
    max_t: np.ndarray
    t_cutoff: float
    p_fwe: np.ndarray
    n_perm: int
    exhaustive: bool
    seed: int
    chunk_size: int
    alpha: float
    one_sided: bool
    tfce: TFCEResult | None = None
    cluster: ClusterResult | None = None

    @property
    def mask(self) -> np.ndarray:
        """Surviving voxels, ``p_fwe <= alpha``."""
        return self.p_fwe <= self.alpha


def check_permutation_test(
    n_subjects: int,
    *,
    n_perm: int,
    alpha: float,
    one_sided: bool,
    seed: int,
    chunk_size: int,
) -> tuple[int, bool]:
    """Check the arguments of a sign-flip test; return ``(n_used, exhaustive)``.

    Raises
    ------
    InvalidParameterError
        If the subjects are too few to reach ``alpha`` (see
        :func:`min_subjects_for_permutation`) or ``n_perm`` is below
        :func:`min_n_perm` for a random (not exhaustive) test.
    InvalidParameterError
        If ``alpha``, ``n_perm``, ``seed`` or ``chunk_size`` is not allowed.
    """
    alpha = _check_fraction("alpha", alpha)
    _check_positive_int("seed", seed, minimum=0)
    _check_positive_int("chunk_size", chunk_size)
    n_used, exhaustive = permutation_count(n_subjects, n_perm)
    sidedness = "one-sided" if one_sided else "two-sided"
    if exhaustive and n_subjects < min_subjects_for_permutation(alpha, one_sided):
        smallest_p = (1 if one_sided else 2) / n_used
        raise InvalidParameterError(
            f"{n_subjects} subjects allow only {n_used} sign flips, so the smallest "
            f"{sidedness} corrected p is {smallest_p:g} > alpha={alpha}; a sign-flip "
            f"test needs at least {min_subjects_for_permutation(alpha, one_sided)} "
            "subjects (use Bonferroni instead)"
        )
    if not exhaustive and n_used < min_n_perm(alpha):
        raise InvalidParameterError(
            f"n_perm={n_used} is too small for alpha={alpha}; "
            f"use at least {min_n_perm(alpha)}"
        )
    return n_used, exhaustive


def sign_flip_max_t(
    effects: np.ndarray,
    *,
    n_perm: int = 10000,
    alpha: float = 0.05,
    one_sided: bool = False,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    spatial: SpatialInference | None = None,
) -> PermutationResult:
    """Family-wise error correction by sign-flip permutation of the max statistic.

    Under the null hypothesis of a symmetric distribution of effects around 0,
    flipping the signs of whole subject maps leaves the data's distribution
    unchanged; the maximum t over voxels under random flips gives the distribution
    of the maximum under the null (Nichols & Holmes 2002). The unflipped data counts
    as one of the ``n_perm`` permutations, which keeps the test exact. When
    ``2**n_subjects <= n_perm`` all sign vectors are enumerated instead.

    With ``spatial``, the same flips also give the distributions of the maximum
    TFCE and of the largest cluster, whose corrected p-values are computed alike
    (nilearn's ``permuted_ols(tfce=True, threshold=...)``); max |t| is unchanged.

    Parameters
    ----------
    effects : numpy.ndarray, shape (n_subjects, n_voxels)
        One effect map per subject, finite, restricted to the group mask.
    n_perm : int, default=10000
        Permutations, the unflipped data included; at least :func:`min_n_perm`
        unless the test is exhaustive.
    alpha : float, default=0.05
        Family-wise error rate of the reported cutoff, in (0, 1).
    one_sided : bool, default=False
        If True, test mean > 0 with the max of t; otherwise the max of ``|t|``.
    seed : int, default=0
        Non-negative seed of the random flips.
    chunk_size : int, default=DEFAULT_CHUNK_SIZE
        Flips per chunk; results depend on it (see :func:`flips_for_chunk`).
    spatial : SpatialInference, optional
        TFCE and cluster extent to compute from the same flips.

    Returns
    -------
    PermutationResult
        The max distribution, cutoff and corrected p-values (and ``tfce``,
        ``cluster`` with ``spatial``).

    Raises
    ------
    InvalidParameterError
        If ``effects`` is unusable, the subjects are too few to reach ``alpha``
        (see :func:`min_subjects_for_permutation`) or ``n_perm`` is below
        :func:`min_n_perm`.
    InvalidParameterError
        If ``alpha``, ``n_perm``, ``seed``, ``chunk_size`` or ``spatial`` is not
        allowed.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> effects = rng.normal(size=(8, 50))
    >>> effects[:, :5] += 3.0
    >>> result = sign_flip_max_t(effects, n_perm=1000)
    >>> result.exhaustive, result.n_perm, np.flatnonzero(result.mask).tolist()
    (True, 256, [0, 1, 2, 4])
    """
    data = prepare_sign_flip(effects, spatial)
    n_subjects = data.n_subjects
    n_used, exhaustive = check_permutation_test(
        n_subjects,
        n_perm=n_perm,
        alpha=alpha,
        one_sided=one_sided,
        seed=seed,
        chunk_size=chunk_size,
    )

    def run_chunk(chunk_index: int) -> Maxima:
        flips = flips_for_chunk(
            n_subjects, chunk_index, chunk_size=chunk_size, seed=seed, n_perm=n_used
        )
        return sign_flip_maxima(data, flips, one_sided=one_sided)

    # One chunk per core, each with a single-threaded BLAS: the products are too
    # small for OpenBLAS threads, which on a busy machine ran 5x slower than one
    # thread. Chunks are computed the same way whichever thread runs them (the
    # compiled TFCE and cluster code releases the GIL).
    total_chunks = n_chunks(n_subjects, n_used, chunk_size)
    maxima = Maxima.concatenate(map_threads(run_chunk, range(total_chunks)))
    return permutation_result(
        data,
        maxima,
        exhaustive=exhaustive,
        seed=seed,
        chunk_size=chunk_size,
        alpha=alpha,
        one_sided=one_sided,
    )


def permutation_result(
    data: SignFlipData,
    maxima: Maxima | np.ndarray,
    *,
    exhaustive: bool,
    seed: int,
    chunk_size: int,
    alpha: float,
    one_sided: bool,
) -> PermutationResult:
    """Reduce the maxima of every permutation (in chunk order) to the result.

    ``maxima`` is a :class:`Maxima`, or the array of max t alone. The observed
    TFCE map and clusters are computed here, on the client, once.
    """
    if not isinstance(maxima, Maxima):
        maxima = Maxima(t=np.asarray(maxima, dtype=np.float64))
    t_cutoff, p_fwe = fwe_from_max_t(data, maxima.t, alpha=alpha, one_sided=one_sided)
    spatial = data.spatial
    tfce_result = cluster_result = None
    if spatial is not None and maxima.tfce is not None:
        parameters = spatial.tfce
        observed = tfce(data.t, spatial.neighbours, parameters, one_sided=one_sided)
        statistic = observed if one_sided else np.abs(observed)
        cutoff, p_tfce = _max_statistic_fwe(statistic, maxima.tfce, alpha)
        top = float(data.t.max() if one_sided else np.abs(data.t).max())
        tfce_result = TFCEResult(
            tfce=observed,
            max_tfce=maxima.tfce,
            cutoff=cutoff,
            p_fwe=p_tfce,
            parameters=parameters,
            dh=float(tfce_thresholds(top, parameters.dh)[0]) if top > 0 else 0.0,
            connectivity=spatial.connectivity,
            alpha=alpha,
        )
    if spatial is not None and maxima.cluster is not None:
        forming = spatial.forming_threshold(data.n_subjects, one_sided)
        clusters = label_clusters(
            data.t, spatial.neighbours, forming, one_sided=one_sided
        )
        cutoff, p_cluster = _max_statistic_fwe(
            clusters.voxel_sizes, maxima.cluster, alpha
        )
        cluster_result = ClusterResult(
            clusters=clusters,
            max_size=maxima.cluster,
            cutoff=int(cutoff),
            p_fwe=p_cluster,
            forming_p=spatial.cluster_threshold,
            forming_t=forming,
            connectivity=spatial.connectivity,
            alpha=alpha,
        )
    return PermutationResult(
        t=data.t,
        max_t=maxima.t,
        t_cutoff=t_cutoff,
        p_fwe=p_fwe,
        n_perm=len(maxima),
        exhaustive=exhaustive,
        seed=seed,
        chunk_size=chunk_size,
        alpha=alpha,
        one_sided=one_sided,
        tfce=tfce_result,
        cluster=cluster_result,
    )


def cluster_table(
    stat_img: nib.Nifti1Image,
    stat_threshold: float,
    *,
    two_sided: bool = True,
    min_distance: float = 8.0,
    cluster_threshold: int = 0,
) -> pd.DataFrame:
    """Clusters and peaks of a thresholded statistical map.

    A thin layer over :func:`nilearn.reporting.get_clusters_table` that adds the
    cluster size in voxels beside nilearn's size in mm3.

    Parameters
    ----------
    stat_img : nibabel.Nifti1Image
        3-D z (or t) map in a space with an affine in mm (e.g. MNI).
    stat_threshold : float
        Voxels with a statistic beyond it (``|stat| >`` if two-sided) form clusters.
    two_sided : bool, default=True
        Whether negative clusters (``stat < -stat_threshold``) are listed too.
    min_distance : float, default=8.0
        Minimum distance between sub-peaks of a cluster, in mm.
    cluster_threshold : int, default=0
        Clusters smaller than this many voxels are left out.

    Returns
    -------
    pandas.DataFrame
        nilearn's columns ``Cluster ID``, ``X``, ``Y``, ``Z`` (peak coordinates,
        mm), ``Peak Stat``, ``Cluster Size (mm3)``, plus ``Cluster Size (voxels)``;
        sub-peak rows have empty sizes, as in nilearn.

    Raises
    ------
    InvalidParameterError
        If ``stat_img`` is not a 3-D image.
    """
    # nilearn.reporting imports matplotlib; only pay for it when tables are made.
    from nilearn.reporting import get_clusters_table

    if len(stat_img.shape) != 3:
        raise InvalidParameterError(
            f"cluster_table needs a 3-D statistical map; got shape {stat_img.shape}"
        )
    with warnings.catch_warnings():
        # An empty side of a two-sided map is an ordinary outcome, not a warning.
        warnings.filterwarnings(
            "ignore", message="No clusters found", category=UserWarning
        )
        table = get_clusters_table(
            stat_img,
            stat_threshold,
            cluster_threshold=cluster_threshold,
            two_sided=two_sided,
            min_distance=min_distance,
        )
    voxel_volume = abs(float(np.linalg.det(stat_img.affine[:3, :3])))
    size_mm3 = pd.to_numeric(table["Cluster Size (mm3)"], errors="coerce")
    table["Cluster Size (voxels)"] = (
        (size_mm3 / voxel_volume).round().astype("Int64").astype(object)
    )
    table.loc[size_mm3.isna(), "Cluster Size (voxels)"] = ""
    return table
