"""Group data for the TFCE and cluster tests, and nilearn's results on them.

nilearn's ``permuted_ols`` draws its sign flips from a ``RandomState`` and has no
option to be given them; :func:`nilearn_sign_flips` replays its draws, so that our
chunk functions can run on exactly the flips nilearn used.  The replay is checked
against nilearn's own max |t| of every flip (``h0_max_t``) before anything else is
compared, so a change in nilearn's drawing fails loudly instead of silently.
"""

from __future__ import annotations

import functools
import warnings

import nibabel as nib
import numpy as np
import pandas as pd

from laion_fmri_dataloader.simulate.data_gen import null_group_effects
from laion_fmri_dataloader.stats.inference import (
    Maxima,
    PermutationResult,
    SpatialInference,
    permutation_result,
    prepare_sign_flip,
    sign_flip_maxima,
)

#: The reference group: 10 subjects on a 14^3 grid, two blobs of opposite sign.
GRID = (14, 14, 14)
N_SUBJECTS = 10
NILEARN_N_PERM = 200
CLUSTER_THRESHOLD = 0.001
ALPHA = 0.05


def ball_mask(grid: tuple[int, int, int], radius: float) -> np.ndarray:
    """Voxels within ``radius`` of the grid's centre: a mask with a boundary."""
    offsets = np.indices(grid) - (np.array(grid)[:, None, None, None] - 1) / 2
    return (offsets**2).sum(axis=0) <= radius**2


def smooth_volumes(
    rng: np.random.Generator, n_subjects: int, grid: tuple[int, int, int], fwhm: float
) -> np.ndarray:
    """:func:`null_group_effects` as volumes, (n_subjects, *grid)."""
    return null_group_effects(rng, n_subjects, grid, fwhm=fwhm).reshape(
        n_subjects, *grid
    )


def reference_group() -> tuple[np.ndarray, np.ndarray]:
    """Subjects' volumes (n, *GRID) and the mask: noise, a positive and a negative
    blob, and holes in the mask so that clusters meet its boundary."""
    rng = np.random.default_rng(3)
    mask = np.zeros(GRID, dtype=bool)
    mask[1:-1, 1:-1, 1:-1] = True
    mask &= rng.random(GRID) > 0.05
    signal = np.zeros(GRID)
    signal[3:7, 3:8, 4:8] = 1.0
    signal[9:12, 8:12, 2:5] = -0.9
    volumes = smooth_volumes(rng, N_SUBJECTS, GRID, fwhm=2.4) + signal
    return volumes * mask, mask


def nilearn_sign_flips(n_subjects: int, n_perm: int, random_state: int) -> np.ndarray:
    """The sign flips of ``permuted_ols(..., random_state, n_jobs=1)``, in order.

    nilearn seeds its one job with ``RandomState(random_state).randint(1,
    int32 max - 1)`` and, per permutation, multiplies the data in place by new
    random signs, so permutation ``k`` flips by the product of the first ``k``
    draws.
    """
    seed = np.random.RandomState(random_state).randint(1, np.iinfo(np.int32).max - 1)
    draws = np.random.RandomState(seed)
    signs = np.ones(n_subjects)
    flips = np.empty((n_perm, n_subjects), dtype=np.float32)
    for k in range(n_perm):
        signs = signs * (draws.randint(2, size=(n_subjects, 1)) * 2 - 1)[:, 0]
        flips[k] = signs
    return flips


def ours_on_flips(
    effects: np.ndarray,
    spatial: SpatialInference,
    flips: np.ndarray,
    *,
    one_sided: bool = False,
) -> PermutationResult:
    """Our test on the unflipped data followed by the given flips."""
    data = prepare_sign_flip(effects, spatial)
    identity = np.ones((1, effects.shape[0]), dtype=np.float32)
    maxima = Maxima.concatenate(
        [
            sign_flip_maxima(data, identity, one_sided=one_sided),
            sign_flip_maxima(data, flips, one_sided=one_sided),
        ]
    )
    return permutation_result(
        data,
        maxima,
        exhaustive=False,
        seed=0,
        chunk_size=len(maxima),
        alpha=ALPHA,
        one_sided=one_sided,
    )


@functools.cache
def nilearn_reference() -> dict:
    """nilearn's TFCE and cluster inference on :func:`reference_group`, and ours on
    the same flips.

    Returns a dict with ``mask``, ``effects`` (n, n_voxels), nilearn's
    ``non_parametric_inference`` outputs as arrays on the mask (``t``, ``tfce``,
    ``logp_max_tfce``, ``size``, ``logp_max_size``), nilearn's ``permuted_ols``
    null maxima (``h0_max_t``, ``h0_max_tfce``, ``h0_max_size``) and ``ours``.
    """
    from nilearn.glm.second_level import non_parametric_inference
    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_ols

    volumes, mask = reference_group()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    images = [nib.Nifti1Image(volume, affine) for volume in volumes]
    mask_image = nib.Nifti1Image(mask.astype(np.uint8), affine)
    options = {
        "n_perm": NILEARN_N_PERM,
        "two_sided_test": True,
        "random_state": 0,
        "n_jobs": 1,
        "threshold": CLUSTER_THRESHOLD,
        "tfce": True,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = non_parametric_inference(
            images,
            design_matrix=pd.DataFrame({"intercept": np.ones(N_SUBJECTS)}),
            mask=mask_image,
            **options,
        )
        effects = volumes[:, mask]
        null = permuted_ols(
            np.ones((N_SUBJECTS, 1)),
            effects,
            model_intercept=False,
            masker=NiftiMasker(mask_img=mask_image).fit(),
            output_type="dict",
            verbose=0,
            **options,
        )
    reference = {
        key: np.asarray(outputs[key].get_fdata())[mask]
        for key in ("t", "tfce", "logp_max_tfce", "size", "logp_max_size")
    }
    reference.update(
        {key: null[key][0] for key in ("h0_max_t", "h0_max_tfce", "h0_max_size")}
    )
    spatial = SpatialInference.from_mask(mask, cluster_threshold=CLUSTER_THRESHOLD)
    flips = nilearn_sign_flips(N_SUBJECTS, NILEARN_N_PERM, random_state=0)
    reference.update(
        mask=mask,
        effects=effects,
        ours=ours_on_flips(effects, spatial, flips),
    )
    return reference
