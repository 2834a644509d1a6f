"""Group level: the one-sample t test over subjects' effect maps, on arrays.

The model is nilearn's ``SecondLevelModel`` with an intercept-only design: ordinary
least squares on ``n_subjects`` observations per voxel, ``n_subjects - 1`` degrees of
freedom.  z comes from t through the exact t distribution in log space, as at the
first level (:func:`laion_fmri_dataloader.stats.engine.t_to_z`), so that it does not
saturate at large t (nilearn clips p at 1e-300, z = 37).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from laion_fmri_dataloader.errors import InvalidParameterError
from laion_fmri_dataloader.stats.engine import t_to_z

__all__ = ["OneSampleResult", "one_sample_t"]


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


def _check_effects(effects: np.ndarray) -> np.ndarray:
    effects = np.asarray(effects, dtype=np.float64)
    if effects.ndim != 2:
        raise InvalidParameterError(
            "effects must be a 2-D array (n_subjects, n_voxels); "
            f"got shape {effects.shape}"
        )
    if effects.shape[0] < 2:
        raise InvalidParameterError(
            f"a one-sample t test needs at least 2 subjects; got {effects.shape[0]}"
        )
    n_bad = int(np.size(effects) - np.count_nonzero(np.isfinite(effects)))
    if n_bad:
        raise InvalidParameterError(
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
    InvalidParameterError
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
