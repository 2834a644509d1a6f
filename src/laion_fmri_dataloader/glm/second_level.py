"""Group level: the one-sample t test over subjects' effect maps, on arrays.

The model is nilearn's ``SecondLevelModel`` with an intercept-only design: ordinary
least squares on ``n_subjects`` observations per voxel, ``n_subjects - 1`` degrees of
freedom.  z comes from t through the exact t distribution in log space, so that it
does not saturate at large t (``norm.isf(t.sf(t))`` stops at z of about 38 once
``t.sf`` underflows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from laion_fmri_dataloader.errors import InputError

__all__ = ["OneSampleResult", "one_sample_t", "t_to_z"]


@dataclass(frozen=True)
class OneSampleResult:
    """The one-sample t test at every voxel.

    Attributes
    ----------
    effect : numpy.ndarray of float64, shape (n_voxels,)
        Mean effect over subjects, in the unit of the subjects' effect maps.
    t : numpy.ndarray of float64, shape (n_voxels,)
        t statistic of the mean against 0.
    z : numpy.ndarray of float64, shape (n_voxels,)
        Signed z with the same one-sided tail probability as ``t``.
    p : numpy.ndarray of float64, shape (n_voxels,)
        Two-sided p-value ``2 * sf(|t|)``, or ``sf(t)`` (mean > 0) when one-sided.
    dof : int
        Degrees of freedom, ``n_subjects - 1``.
    one_sided : bool
        Whether ``p`` is one-sided.
    zero_variance : numpy.ndarray of bool, shape (n_voxels,)
        Voxels where every subject has the same value (typically outside the brain);
        there ``t = z = 0`` and ``p = 1``.
    """

    effect: np.ndarray
    t: np.ndarray
    z: np.ndarray
    p: np.ndarray
    dof: int
    one_sided: bool
    zero_variance: np.ndarray

    @property
    def n_zero_variance(self) -> int:
        """Number of voxels with identical values in every subject."""
        return int(self.zero_variance.sum())


def _t_logsf(t_abs: np.ndarray, dof: int) -> np.ndarray:
    # log(sf) is -inf once sf underflows (t = 1e5 with 100 dof). Beyond t**2 = dof
    # use the exact series sf = I_x(a, 1/2) / 2, x = dof / (dof + t**2), a = dof / 2,
    # I_x(a, b) = x**a (1 - x)**b 2F1(a + b, 1; a + 1; x) / (a B(a, b)), in logs;
    # it converges fast for x <= 1/2 and agrees with scipy.stats.t.logsf to 1e-15
    # relative where that is finite.
    tail = t_abs >= math.sqrt(dof)
    log_sf = np.empty_like(t_abs)
    log_sf[~tail] = np.log(special.stdtr(dof, -t_abs[~tail]))
    if tail.any():
        t_tail = t_abs[tail]
        a = dof / 2.0
        # t**2 overflows beyond 1e154; x then rounds to 0 and log_x stays exact.
        with np.errstate(over="ignore"):
            x = dof / (dof + t_tail * t_tail)
            log_x = math.log(dof) - 2.0 * np.log(t_tail) - np.log1p(dof / t_tail**2)
        log_sf[tail] = (
            math.log(0.5)
            + a * log_x
            + 0.5 * np.log1p(-x)
            - math.log(a)
            - special.betaln(a, 0.5)
            + np.log(special.hyp2f1(a + 0.5, 1.0, a + 1.0, x))
        )
    return log_sf


def t_to_z(t: np.ndarray, dof: int) -> np.ndarray:
    """Convert t statistics to z with the same tail probability.

    Parameters
    ----------
    t : numpy.ndarray
        t statistics.
    dof : int
        Degrees of freedom of the t distribution.

    Returns
    -------
    numpy.ndarray of float64
        ``sign(t) * norm.isf(t.sf(|t|, dof))``, computed as
        ``-ndtri_exp(log sf)`` with the t tail in logs, so that it stays finite and
        accurate where ``t.sf`` underflows (nilearn clips p at 1e-300, z = 37).

    Examples
    --------
    >>> t_to_z(np.array([0.0, 2.0, -2.0]), 10).round(4).tolist()
    [0.0, 1.7904, -1.7904]
    >>> bool(t_to_z(np.array([1e40]), 10)[0] > 40)
    True
    """
    t = np.asarray(t, dtype=np.float64)
    magnitude = -special.ndtri_exp(_t_logsf(np.abs(t), dof))
    return np.copysign(magnitude, t)


def _check_effects(effects: np.ndarray) -> np.ndarray:
    effects = np.asarray(effects, dtype=np.float64)
    if effects.ndim != 2:
        raise InputError(
            "effects must be a 2-D array (n_subjects, n_voxels); "
            f"got shape {effects.shape}"
        )
    if effects.shape[0] < 2:
        raise InputError(
            f"a one-sample t test needs at least 2 subjects; got {effects.shape[0]}"
        )
    n_bad = int(np.size(effects) - np.count_nonzero(np.isfinite(effects)))
    if n_bad:
        raise InputError(
            f"effects contain {n_bad} NaN or infinite values; "
            "restrict the maps to voxels inside every subject's mask first"
        )
    return effects


def one_sample_t(effects: np.ndarray, *, one_sided: bool = False) -> OneSampleResult:
    """Test whether the mean effect over subjects differs from 0, voxel by voxel.

    Parameters
    ----------
    effects : numpy.ndarray, shape (n_subjects, n_voxels)
        One effect map per subject (first-level contrast estimates), flattened over
        the voxels of a common mask. Must be finite.
    one_sided : bool, default=False
        If True, ``p`` tests mean > 0; otherwise it is two-sided.

    Returns
    -------
    OneSampleResult
        Mean effect, t, z, p, degrees of freedom and the zero-variance voxels.

    Raises
    ------
    InputError
        If ``effects`` is not 2-D, has fewer than 2 subjects, or is not finite.

    Examples
    --------
    >>> result = one_sample_t(np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    >>> result.dof, round(float(result.t[0]), 4), float(result.p[1])
    (2, 3.4641, 1.0)
    """
    effects = _check_effects(effects)
    n_subjects = effects.shape[0]
    dof = n_subjects - 1
    mean = effects.mean(axis=0)
    # ptp == 0 is the exact test for identical values; a variance computed from
    # centred data can be a few ulps above 0 there and give a huge spurious t.
    zero_variance = np.ptp(effects, axis=0) == 0
    std_error = np.sqrt(effects.var(axis=0, ddof=1) / n_subjects)
    t = np.zeros_like(mean)
    varying = ~zero_variance
    t[varying] = mean[varying] / std_error[varying]
    # stdtr(dof, -t) is scipy.stats.t.sf(t, dof) without its argument handling.
    if one_sided:
        p = special.stdtr(dof, -t)
    else:
        p = np.minimum(2.0 * special.stdtr(dof, -np.abs(t)), 1.0)
    p[zero_variance] = 1.0
    return OneSampleResult(
        effect=mean,
        t=t,
        z=t_to_z(t, dof),
        p=p,
        dof=dof,
        one_sided=one_sided,
        zero_variance=zero_variance,
    )
