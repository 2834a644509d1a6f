"""Fast AR(1) first-level GLM on arrays, numerically equal to nilearn's.

The model is nilearn's ``FirstLevelModel(noise_model="ar1", signal_scaling=0)``:
the data are scaled to percent signal change, an OLS fit gives residuals whose
lag-1 autocorrelation (Yule-Walker) is truncated to bins of width ``1 / n_bins``,
and every bin is refit after whitening with its coefficient
(``y_w[0] = y[0]``, ``y_w[t] = y[t] - rho * y[t - 1]``; nilearn leaves the
first scan as it is).  Contrasts get nilearn's effect, variance and t; z comes
from the exact t distribution without saturating.

Speed comes from never forming residuals or whitened data.  For a bin with
coefficient ``rho`` everything the refit needs is a quadratic form in the data
of one voxel:

* ``X_w' y_w = X'y - rho (L'X + LX)'y + rho^2 (X'y - x_last y_last)``
* ``|y_w|^2 = y'y - 2 rho y'Ly + rho^2 (y'y - y_last^2)``

where ``L`` is the lag operator.  The OLS residual autocorrelation follows
from the same quantities.  So one pass over the data, in voxel chunks, with a
single float64 matrix product per chunk, leaves about ``2 p`` numbers per
voxel (for ``p`` regressors), and the per-bin refits only touch ``p x p``
matrices.  The identities are exact; float64 keeps the cancellation in
``|y_w|^2 - beta' X_w' y_w`` far below the float32 precision of the data.
Chunks run on threads with single-threaded BLAS, which puts the cores to work
on the element-wise steps too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
from scipy import special

from laion_fmri_dataloader._system import map_threads, usable_cpus
from laion_fmri_dataloader.errors import InvalidParameterError

__all__ = [
    "RUN_COMBINATIONS",
    "ContrastResult",
    "RunCombination",
    "ar1_coefficients",
    "combine_runs",
    "fit_ar1_contrasts",
    "fixed_effects",
    "mean_scale",
    "t_to_z",
]

# nilearn's floors: a contrast variance below _TINY_VARIANCE is raised to it
# before dividing (nilearn.glm.contrasts.DEF_TINY) and fixed effects floor run
# variances at _TINY_RUN_VARIANCE (_compute_fixed_effects_params).
_TINY_VARIANCE = 1e-50
_TINY_RUN_VARIANCE = 1e-16

# Below this fraction of the sum of squares left unexplained, the noise is not
# estimable (the data lie in the span of the design up to rounding) and t
# would be a ratio of rounding errors.
_PERFECT_FIT = 1e-10

# scipy's t survival function keeps full relative precision down to here;
# further out the log is taken from a series (see _log_t_tail).
_MIN_DIRECT_SF = 1e-260

_DEFAULT_CHUNK = 1024

#: How a subject's runs combine: ``mean`` weighs every run equally, as
#: nilearn's ``FirstLevelModel`` does with several runs; ``precision`` weighs
#: each run by the inverse of its variance (FSL-style fixed effects).
RunCombination = Literal["mean", "precision"]
RUN_COMBINATIONS: tuple[RunCombination, ...] = ("mean", "precision")


@dataclass(frozen=True, eq=False)
class ContrastResult:
    """Statistics of one t contrast over voxels.

    Attributes
    ----------
    effect : numpy.ndarray of shape (n_voxels,)
        Contrast of the parameter estimates, in percent signal change when the
        data were mean-scaled.
    variance : numpy.ndarray of shape (n_voxels,)
        Variance of ``effect``; ``inf`` where ``degenerate`` (zero precision,
        so that inverse-variance weighting ignores the voxel).
    t : numpy.ndarray of shape (n_voxels,)
        t statistic; 0 where ``degenerate``.
    z : numpy.ndarray of shape (n_voxels,)
        z score with the same one-sided p-value as ``t``; 0 where ``degenerate``.
    dof : float
        Degrees of freedom of ``t``.
    degenerate : numpy.ndarray of shape (n_voxels,), bool
        Voxels without a usable estimate: a non-finite value, a time series
        constant in time, or data the design explains exactly.  Every voxel
        is degenerate for a contrast the design cannot estimate.
    """

    effect: np.ndarray
    variance: np.ndarray
    t: np.ndarray
    z: np.ndarray
    dof: float
    degenerate: np.ndarray


@dataclass(frozen=True, eq=False)
class _VoxelStats:
    """Per-voxel quadratic forms of one pass over the data."""

    xty: np.ndarray  # (n_voxels, p): X'y
    lag_xty: np.ndarray  # (n_voxels, p): (L'X + LX)'y
    sum_sq: np.ndarray  # y'y
    lag_sum_sq: np.ndarray  # y'Ly
    last: np.ndarray  # y[-1]
    rho: np.ndarray  # nilearn's Yule-Walker AR(1) coefficient of OLS residuals
    degenerate: np.ndarray


def mean_scale(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale time series to percent signal change, as nilearn does.

    Equal to ``nilearn.glm.first_level.mean_scaling`` (what ``FirstLevelModel``
    applies with ``signal_scaling=0``), without its warning: every mean below
    1, zero and negative ones included, is replaced by 1, so such voxels come
    out as ``100 * (data - 1)`` rather than in percent of their mean.

    Parameters
    ----------
    data : numpy.ndarray of shape (n_scans, n_voxels)
        Time series, one column per voxel.

    Returns
    -------
    scaled : numpy.ndarray of shape (n_scans, n_voxels)
        ``100 * (data / mean - 1)``, in the dtype of ``data``.
    mean : numpy.ndarray of shape (n_voxels,)
        The mean over time, floored at 1.

    Examples
    --------
    >>> scaled, mean = mean_scale(np.array([[990.0, 0.5], [1010.0, 0.5]]))
    >>> scaled
    array([[ -1., -50.],
           [  1., -50.]])
    >>> mean
    array([1000.,    1.])
    """
    data = _check_data(data)
    mean = np.maximum(data.mean(axis=0), 1)
    return 100 * (data / mean - 1), mean


def ar1_coefficients(
    data: np.ndarray,
    design: np.ndarray,
    *,
    scale: bool = True,
    n_threads: int | None = None,
) -> np.ndarray:
    """Lag-1 autocorrelation of OLS residuals, as nilearn estimates it.

    This is the Yule-Walker coefficient of ``run_glm(noise_model="ar1")``
    before binning: residuals minus their grand mean (one number over all
    voxels and scans), lag-1 sum over ``n - 1`` divided by lag-0 sum over
    ``n``.

    Parameters
    ----------
    data : numpy.ndarray of shape (n_scans, n_voxels)
        Time series, one column per voxel.
    design : numpy.ndarray of shape (n_scans, n_regressors)
        Design matrix.
    scale : bool, default=True
        Scale ``data`` to percent signal change first (see :func:`mean_scale`).
    n_threads : int or None, default=None
        Threads to use; ``None`` uses every CPU this process may run on.

    Returns
    -------
    rho : numpy.ndarray of shape (n_voxels,)
        AR(1) coefficient per voxel; 0 for degenerate voxels (see
        :class:`ContrastResult`).
    """
    data = _check_data(data)
    design = _check_design(design, data.shape[0])
    stats = _voxel_stats(data, design, scale, _check_threads(n_threads))
    return stats.rho


def fit_ar1_contrasts(
    data: np.ndarray,
    design: np.ndarray,
    contrasts: Mapping[str, np.ndarray],
    *,
    n_bins: int = 100,
    scale: bool = True,
    dtype: type[np.floating] = np.float32,
    n_threads: int | None = None,
) -> dict[str, ContrastResult]:
    """Fit nilearn's AR(1) GLM to one run and compute t contrasts.

    Equal, up to rounding, to ``FirstLevelModel(noise_model="ar1",
    signal_scaling=0)`` fit on the same design and masked data followed by
    ``compute_contrast`` with ``output_type="all"``, except that degenerate
    voxels and contrasts the design cannot estimate are reported (see
    :class:`ContrastResult`) instead of given arbitrary values, and that z does
    not saturate at ``|z|`` near 37.

    Parameters
    ----------
    data : numpy.ndarray of shape (n_scans, n_voxels)
        Time series, one column per voxel (float32 is read without a copy).
    design : numpy.ndarray of shape (n_scans, n_regressors)
        Design matrix, for example ``design_matrix.to_numpy()``.
    contrasts : mapping of str to numpy.ndarray of shape (n_regressors,)
        Contrast weights over the design columns, by contrast name.
    n_bins : int, default=100
        AR coefficients are truncated toward zero to multiples of
        ``1 / n_bins`` (nilearn's ``bins``).
    scale : bool, default=True
        Scale ``data`` to percent signal change first (see :func:`mean_scale`).
    dtype : numpy float type, default=numpy.float32
        Type of the returned maps; computations run in float64.
    n_threads : int or None, default=None
        Threads to use; ``None`` uses every CPU this process may run on.  BLAS
        is held to one thread per worker while the fit runs.

    Returns
    -------
    results : dict of str to ContrastResult
        One result per contrast, in the order of ``contrasts``.

    Raises
    ------
    InvalidParameterError
        If the shapes of ``data``, ``design`` and ``contrasts`` do not match,
        the design is not finite, or ``n_bins`` or ``dtype`` is invalid.
    """
    data = _check_data(data)
    design = _check_design(design, data.shape[0])
    n_scans, n_regressors = design.shape
    weights = _check_contrasts(contrasts, n_regressors)
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise InvalidParameterError(
            f"n_bins must be a positive integer; got {n_bins!r}"
        )
    dtype = _check_dtype(dtype)
    n_threads = _check_threads(n_threads)

    stats = _voxel_stats(data, design, scale, n_threads)
    effect, variance, perfect_fit = _ar1_refit(
        stats, design, weights, n_bins, n_threads
    )

    dof = float(n_scans - _design_rank(design))
    degenerate = stats.degenerate | perfect_fit
    estimable = _estimable(weights, design)
    results = map_threads(
        lambda index: _contrast_result(
            effect[:, index],
            variance[:, index],
            dof,
            degenerate | ~estimable[index],
            dtype,
        ),
        range(len(weights)),
        n_threads,
    )
    return dict(zip(contrasts, results, strict=True))


def combine_runs(
    results: Sequence[ContrastResult], combination: RunCombination = "mean"
) -> ContrastResult:
    """Combine the runs of one contrast.

    ``"mean"`` is what ``nilearn.glm.first_level.FirstLevelModel`` computes
    for several runs (``compute_contrast`` calls
    ``compute_fixed_effect_contrast``, which adds the runs' ``Contrast``
    objects and multiplies the sum by ``1 / n``): the effect is the mean of
    the runs' effects, the variance the sum of their variances divided by
    ``n ** 2``, the degrees of freedom the sum of theirs, and t the effect
    over the square root of the variance (floored at 1e-50).  nilearn leaves
    out a run whose contrast vector is null; here a run in which the contrast
    cannot be estimated at all (every voxel degenerate) is left out, and
    ``n`` counts the runs kept.  A voxel degenerate in any run kept is
    degenerate: an equal-weight mean over fewer runs would give that voxel
    other runs and degrees of freedom than its neighbours.

    ``"precision"`` is :func:`fixed_effects`.

    Parameters
    ----------
    results : sequence of ContrastResult
        The same contrast in each run, over the same voxels.
    combination : {'mean', 'precision'}, default='mean'
        Equal weights (nilearn's ``FirstLevelModel``) or inverse-variance
        weights.

    Returns
    -------
    combined : ContrastResult
        The subject's statistics, in the dtype of the first run's effect.

    Raises
    ------
    InvalidParameterError
        If ``results`` is empty, the runs have different numbers of voxels,
        or ``combination`` is not one of :data:`RUN_COMBINATIONS`.
    """
    if combination not in RUN_COMBINATIONS:
        raise InvalidParameterError(
            f"combination must be one of {list(RUN_COMBINATIONS)}; got {combination!r}"
        )
    _check_runs(results)
    if combination == "precision":
        return fixed_effects(results)
    dtype = results[0].effect.dtype.type
    kept = [result for result in results if not result.degenerate.all()]
    if not kept:
        return results[0]
    n_runs = len(kept)
    degenerate = np.logical_or.reduce([result.degenerate for result in kept])
    effect = np.zeros(results[0].effect.shape)
    variance = np.zeros(results[0].effect.shape)
    for result in kept:
        effect += np.where(degenerate, 0.0, result.effect.astype(np.float64))
        variance += np.where(degenerate, 0.0, result.variance.astype(np.float64))
    dof = float(sum(result.dof for result in kept))
    return _contrast_result(
        effect / n_runs, variance / n_runs**2, dof, degenerate, dtype
    )


def fixed_effects(results: Sequence[ContrastResult]) -> ContrastResult:
    """Combine runs of one contrast by inverse-variance weighting.

    Equal to ``nilearn.glm.contrasts.compute_fixed_effects(...,
    precision_weighted=True, dofs=[r.dof for r in results])``: run variances
    are floored at 1e-16, the effect is the precision-weighted mean, the
    variance the inverse of the summed precisions, t their ratio with the
    summed degrees of freedom.  Degenerate runs of a voxel carry no weight;
    a voxel is degenerate only if it is in every run.

    Parameters
    ----------
    results : sequence of ContrastResult
        The same contrast in each run, over the same voxels.

    Returns
    -------
    combined : ContrastResult
        Fixed-effects statistics, in the dtype of the first run's effect.

    Raises
    ------
    InvalidParameterError
        If ``results`` is empty or the runs have different numbers of voxels.
    """
    _check_runs(results)
    precision_sum = np.zeros(results[0].effect.shape)
    weighted_effect = np.zeros(results[0].effect.shape)
    for result in results:
        precision = np.where(
            result.degenerate,
            0.0,
            1 / np.maximum(result.variance.astype(np.float64), _TINY_RUN_VARIANCE),
        )
        precision_sum += precision
        weighted_effect += precision * np.where(result.degenerate, 0.0, result.effect)
    degenerate = precision_sum == 0
    with np.errstate(divide="ignore"):
        variance = 1 / precision_sum
    effect = np.divide(
        weighted_effect, precision_sum, out=np.zeros_like(variance), where=~degenerate
    )
    dof = float(sum(result.dof for result in results))
    return _contrast_result(
        effect, variance, dof, degenerate, results[0].effect.dtype.type
    )


def _check_runs(results: Sequence[ContrastResult]) -> None:
    if len(results) == 0:
        raise InvalidParameterError("combining runs needs at least one run; got none")
    n_voxels = {result.effect.shape for result in results}
    if len(n_voxels) != 1:
        raise InvalidParameterError(
            f"all runs must have the same voxels; got shapes {sorted(n_voxels)}"
        )


def t_to_z(t: np.ndarray, dof: float) -> np.ndarray:
    """Convert t statistics to z scores with the same tail probability.

    ``z = Phi^-1(F_dof(t))`` computed from the logarithm of the tail
    probability, so that z keeps growing where the p-value underflows
    (nilearn clips p at 1e-300, hence ``|z| <= 37``).

    Parameters
    ----------
    t : numpy.ndarray
        t statistics.
    dof : float
        Degrees of freedom, positive.

    Returns
    -------
    z : numpy.ndarray
        z scores, float64, the shape of ``t``.

    Raises
    ------
    InvalidParameterError
        If ``dof`` is not positive.

    Examples
    --------
    >>> t_to_z(np.array([0.0, 2.0, -200.0]), 300.0).round(3)
    array([  0.   ,   1.992, -38.321])
    """
    if not dof > 0:
        raise InvalidParameterError(f"dof must be positive; got {dof!r}")
    t = np.asarray(t, dtype=np.float64)
    magnitude = np.abs(t)
    sf = special.stdtr(dof, -magnitude)
    with np.errstate(divide="ignore"):
        log_sf = np.log(sf)
    far = sf < _MIN_DIRECT_SF
    if far.any():
        log_sf[far] = _log_t_tail(magnitude[far], dof)
    return np.copysign(-special.ndtri_exp(log_sf), t)


def _log_t_tail(magnitude: np.ndarray, dof: float) -> np.ndarray:
    """Log of the t survival function far in the tail.

    ``sf(t) = I_x(a, 1/2) / 2`` with ``x = dof / (dof + t^2)`` and
    ``a = dof / 2``, and ``I_x(a, b) = x^a (1 - x)^b / (a B(a, b))
    2F1(a + b, 1; a + 1; x)``, whose series has positive terms shrinking by at
    least ``x`` each; everything but that series is taken in logs.
    """
    a = dof / 2
    # In logs, because t^2 overflows long before the tail probability does.
    log_x = np.log(dof) - np.logaddexp(np.log(dof), 2 * np.log(magnitude))
    x = np.exp(log_x)
    term = np.ones_like(x)
    series = np.ones_like(x)
    k = 0
    while (term > np.finfo(np.float64).eps * series).any():
        term = term * (a + k + 0.5) / (a + k + 1) * x
        series += term
        k += 1
    return (
        np.log(0.5)
        + a * log_x
        + 0.5 * np.log1p(-x)
        - np.log(a)
        - special.betaln(a, 0.5)
        + np.log(series)
    )


def _contrast_result(
    effect: np.ndarray,
    variance: np.ndarray,
    dof: float,
    degenerate: np.ndarray,
    dtype: type[np.floating],
) -> ContrastResult:
    t = np.where(
        degenerate, 0.0, effect / np.sqrt(np.maximum(variance, _TINY_VARIANCE))
    )
    return ContrastResult(
        effect=np.where(degenerate, 0.0, effect).astype(dtype),
        variance=np.where(degenerate, np.inf, variance).astype(dtype),
        t=t.astype(dtype),
        z=t_to_z(t, dof).astype(dtype),
        dof=dof,
        degenerate=degenerate,
    )


def _voxel_stats(
    data: np.ndarray, design: np.ndarray, scale: bool, n_threads: int
) -> _VoxelStats:
    """One pass over the data: quadratic forms and OLS residual AR(1)."""
    n_scans, n_regressors = design.shape
    n_voxels = data.shape[1]
    lagged = np.zeros_like(design)
    lagged[:-1] += design[1:]
    lagged[1:] += design[:-1]
    basis = np.hstack([design, lagged, np.ones((n_scans, 1))])
    ols_pinv = scipy.linalg.pinv(design)
    ols_cov = ols_pinv @ ols_pinv.T
    lag_gram = design[1:].T @ design[:-1]

    # The mean is taken over the whole array, not per chunk: numpy's float32
    # summation order depends on the array's shape, and matching nilearn's
    # scaled values bit for bit keeps AR coefficients in the same bins.
    scale_mean = np.maximum(data.mean(axis=0), 1) if scale else None
    xty = np.empty((n_voxels, n_regressors))
    lag_xty = np.empty((n_voxels, n_regressors))
    sums = np.empty((7, n_voxels))
    degenerate = np.empty(n_voxels, dtype=bool)

    def process(start: int) -> None:
        stop = min(start + _DEFAULT_CHUNK, n_voxels)
        chunk = data[:, start:stop]
        if scale:
            with np.errstate(invalid="ignore"):
                chunk = 100 * (chunk / scale_mean[start:stop] - 1)
        chunk = np.array(chunk, dtype=np.float64, order="C")
        bad = ~np.isfinite(chunk).all(axis=0) | (chunk == chunk[0]).all(axis=0)
        chunk[:, bad] = 0
        products = chunk.T @ basis
        xty_chunk = products[:, :n_regressors]
        lag_chunk = products[:, n_regressors:-1]
        sum_sq = np.einsum("tv,tv->v", chunk, chunk)
        lag_sum_sq = np.einsum("tv,tv->v", chunk[1:], chunk[:-1])
        beta = xty_chunk @ ols_cov
        residual_sq = sum_sq - np.einsum("vp,vp->v", xty_chunk, beta)
        bad |= residual_sq <= _PERFECT_FIT * sum_sq
        xty[start:stop] = xty_chunk
        lag_xty[start:stop] = lag_chunk
        sums[0, start:stop] = sum_sq
        sums[1, start:stop] = lag_sum_sq
        sums[2, start:stop] = chunk[-1]
        sums[3, start:stop] = residual_sq
        sums[4, start:stop] = (
            lag_sum_sq
            - np.einsum("vp,vp->v", beta, lag_chunk)
            + np.einsum("vp,vp->v", beta @ lag_gram, beta)
        )
        sums[5, start:stop] = products[:, -1] - beta @ design.sum(axis=0)
        sums[6, start:stop] = (
            chunk[0] - beta @ design[0] + chunk[-1] - beta @ design[-1]
        )
        degenerate[start:stop] = bad

    map_threads(process, range(0, n_voxels, _DEFAULT_CHUNK), n_threads)

    sum_sq, lag_sum_sq, last, residual_sq, residual_lag, residual_sum, ends = sums
    residual_sum[degenerate] = 0
    # nilearn centres residuals on their grand mean over every voxel and scan
    # (_yule_walker: x - x.mean()); degenerate voxels are left out of it.
    n_used = max(int((~degenerate).sum()), 1)
    grand_mean = residual_sum.sum() / (n_scans * n_used)
    lag0 = residual_sq - 2 * grand_mean * residual_sum + n_scans * grand_mean**2
    lag1 = (
        residual_lag
        - grand_mean * (2 * residual_sum - ends)
        + (n_scans - 1) * grand_mean**2
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = (lag1 / ((n_scans - 1) * n_scans)) / (lag0 / (n_scans * n_scans))
    rho[degenerate] = 0
    return _VoxelStats(
        xty=xty,
        lag_xty=lag_xty,
        sum_sq=sum_sq,
        lag_sum_sq=lag_sum_sq,
        last=last,
        rho=rho,
        degenerate=degenerate,
    )


def _ar1_refit(
    stats: _VoxelStats,
    design: np.ndarray,
    weights: np.ndarray,
    n_bins: int,
    n_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whitened refit per AR bin.

    Returns effect and variance per voxel and contrast, and the voxels whose
    whitened data the design explains exactly.
    """
    n_scans, n_regressors = design.shape
    # nilearn's binning, kept literally: truncation toward zero, then k / bins.
    bin_index = (stats.rho * n_bins).astype(int)
    order = np.argsort(bin_index, kind="stable")
    sorted_bins = bin_index[order]
    edges = np.flatnonzero(np.diff(sorted_bins)) + 1
    effect = np.empty((stats.rho.size, len(weights)))
    variance = np.empty((stats.rho.size, len(weights)))
    perfect_fit = np.empty(stats.rho.size, dtype=bool)

    def refit(voxels: np.ndarray) -> None:
        rho = bin_index[voxels[0]] * 1.0 / n_bins
        whitened = design.copy()
        whitened[1:] = whitened[1:] - rho * design[:-1]
        whitened_pinv = scipy.linalg.pinv(whitened)
        cov = whitened_pinv @ whitened_pinv.T

        xty = stats.xty[voxels]
        xty_head = xty - stats.last[voxels, None] * design[-1]
        whitened_xty = xty - rho * stats.lag_xty[voxels] + rho**2 * xty_head
        sum_sq = stats.sum_sq[voxels]
        whitened_sum_sq = (
            sum_sq
            - 2 * rho * stats.lag_sum_sq[voxels]
            + rho**2 * (sum_sq - stats.last[voxels] ** 2)
        )
        beta = whitened_xty @ cov
        residual_sq = whitened_sum_sq - np.einsum("vp,vp->v", whitened_xty, beta)
        # nilearn divides by the number of columns, not the rank.
        dispersion = residual_sq / (n_scans - n_regressors)
        perfect_fit[voxels] = residual_sq <= _PERFECT_FIT * whitened_sum_sq
        effect[voxels] = beta @ weights.T
        contrast_cov = np.einsum("kp,pq,kq->k", weights, cov, weights)
        variance[voxels] = dispersion[:, None] * contrast_cov

    # bins write disjoint voxels
    bins = [voxels for voxels in np.split(order, edges) if voxels.size]
    map_threads(refit, bins, n_threads)
    return effect, variance, perfect_fit


def _estimable(weights: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Whether each contrast lies in the row space of the design.

    A contrast that does not (one weighting a regressor that is zero in this
    run, say) has no estimate; nilearn reports effect 0 with variance 0,
    which inverse-variance weighting would take for a perfect measurement.
    """
    projector = scipy.linalg.pinv(design) @ design
    outside = weights - weights @ projector
    return np.linalg.norm(outside, axis=1) <= 1e-8 * np.linalg.norm(weights, axis=1)


def _design_rank(design: np.ndarray) -> int:
    # nilearn's tolerance (OLSModel.initialize), for the same degrees of freedom.
    tolerance = np.abs(design).sum() * np.finfo(np.float64).eps
    return int(np.linalg.matrix_rank(design, tolerance))


def _check_data(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.floating):
        raise InvalidParameterError(
            "data must be a 2-D float array (n_scans, n_voxels); "
            f"got shape {data.shape} and dtype {data.dtype}"
        )
    return data


def _check_design(design: np.ndarray, n_scans: int) -> np.ndarray:
    design = np.asarray(design, dtype=np.float64)
    if design.ndim != 2 or design.shape[0] != n_scans:
        raise InvalidParameterError(
            f"design must have shape ({n_scans}, n_regressors) to match the data; "
            f"got {design.shape}"
        )
    if design.shape[1] >= n_scans:
        raise InvalidParameterError(
            f"design must have fewer columns than scans; got {design.shape}"
        )
    if not np.isfinite(design).all():
        raise InvalidParameterError("design must be finite; got NaN or infinite values")
    return design


def _check_contrasts(
    contrasts: Mapping[str, np.ndarray], n_regressors: int
) -> np.ndarray:
    if len(contrasts) == 0:
        raise InvalidParameterError(
            "contrasts must name at least one contrast; got none"
        )
    weights = []
    for name, vector in contrasts.items():
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (n_regressors,):
            raise InvalidParameterError(
                f"contrast {name!r} must have one weight per design column, "
                f"shape ({n_regressors},); got {vector.shape}"
            )
        weights.append(vector)
    return np.array(weights)


def _check_dtype(dtype: type[np.floating]) -> type[np.floating]:
    allowed = (np.float32, np.float64)
    if np.dtype(dtype) not in [np.dtype(kind) for kind in allowed]:
        raise InvalidParameterError(
            f"dtype must be one of ['float32', 'float64']; got {np.dtype(dtype)}"
        )
    return np.dtype(dtype).type


def _check_threads(n_threads: int | None) -> int:
    if n_threads is None:
        return usable_cpus()
    if n_threads < 1:
        raise InvalidParameterError(f"n_threads must be at least 1; got {n_threads}")
    return int(n_threads)
