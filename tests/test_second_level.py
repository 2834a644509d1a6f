"""One-sample group t test against nilearn's SecondLevelModel and scipy."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from laion_fmri_dataloader.errors import InvalidParameterError
from laion_fmri_dataloader.simulate.data_gen import null_group_effects
from laion_fmri_dataloader.stats.second_level import one_sample_t

GRID = (6, 5, 4)


@pytest.fixture(scope="module")
def group_effects() -> np.ndarray:
    """Ten subjects' effect maps: noise plus an effect growing along x."""
    effect = np.linspace(-1.5, 1.5, GRID[0])[:, None, None] * np.ones(GRID)
    return effect.ravel() + null_group_effects(np.random.default_rng(7), 10, GRID)


@pytest.fixture(scope="module")
def nilearn_contrast(group_effects: np.ndarray) -> dict:
    """nilearn's intercept-only second-level model fitted on 4-D NIfTI maps."""
    from nilearn.glm.second_level import SecondLevelModel

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    maps = [
        nib.Nifti1Image(subject.reshape(GRID).astype(np.float64), affine)
        for subject in group_effects
    ]
    mask = nib.Nifti1Image(np.ones(GRID, dtype=np.uint8), affine)
    design = pd.DataFrame({"intercept": np.ones(len(maps))})
    model = SecondLevelModel(mask_img=mask).fit(maps, design_matrix=design)
    images = model.compute_contrast("intercept", output_type="all")
    return {name: image.get_fdata().ravel() for name, image in images.items()}


def test_agrees_with_nilearn_second_level(group_effects, nilearn_contrast):
    result = one_sample_t(group_effects)
    assert result.dof == group_effects.shape[0] - 1
    np.testing.assert_allclose(
        result.effect, nilearn_contrast["effect_size"], rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(result.t, nilearn_contrast["stat"], rtol=1e-8)
    assert np.max(np.abs(result.z - nilearn_contrast["z_score"])) < 1e-6
    # nilearn's p_value is the one-sided sf(t).
    one_sided = one_sample_t(group_effects, one_sided=True)
    np.testing.assert_allclose(one_sided.p, nilearn_contrast["p_value"], rtol=1e-8)
    np.testing.assert_array_equal(one_sided.z, result.z)


@pytest.mark.parametrize(
    ("one_sided", "alternative"), [(False, "two-sided"), (True, "greater")]
)
def test_agrees_with_scipy_ttest(group_effects, one_sided, alternative):
    result = one_sample_t(group_effects, one_sided=one_sided)
    reference = stats.ttest_1samp(group_effects, 0.0, axis=0, alternative=alternative)
    np.testing.assert_allclose(result.t, reference.statistic, rtol=1e-10)
    np.testing.assert_allclose(result.p, reference.pvalue, rtol=1e-9, atol=1e-300)


def test_zero_variance_voxels_are_null_and_reported():
    rng = np.random.default_rng(0)
    effects = rng.normal(size=(8, 5))
    effects[:, 1] = 0.0
    effects[:, 3] = 2.5
    result = one_sample_t(effects)
    assert result.n_zero_variance == 2
    np.testing.assert_array_equal(
        result.zero_variance, [False, True, False, True, False]
    )
    np.testing.assert_array_equal(result.t[[1, 3]], 0.0)
    np.testing.assert_array_equal(result.z[[1, 3]], 0.0)
    np.testing.assert_array_equal(result.p[[1, 3]], 1.0)
    assert np.all(np.isfinite(result.t))


def test_z_matches_scipy_and_keeps_growing_where_p_underflows():
    # 200 subjects so that t.sf underflows at t reachable in float64 (1e5).
    n_subjects = 200
    noise = np.random.default_rng(3).normal(size=(n_subjects, 1))
    # Means of 1e-3 to 1e6 standard errors, either sign: |t| from 1e-3 to 1e6.
    scale = np.concatenate([-np.logspace(-3, 6, 60), np.logspace(-3, 6, 60)])
    effects = noise - noise.mean() + scale * noise.std(ddof=1) / np.sqrt(n_subjects)
    result = one_sample_t(effects)
    order = np.argsort(result.t)
    assert np.all(np.diff(result.z[order]) > 0)
    assert np.all(np.isfinite(result.z))
    # Through |t|: isf of an sf near 1 loses the digits that matter.
    reference = np.sign(result.t) * stats.norm.isf(
        stats.t.sf(np.abs(result.t), result.dof)
    )
    finite = np.abs(reference) < 30
    assert np.max(np.abs(result.z - reference)[finite]) < 1e-9
    # Where nilearn's clipped p (1e-300) would stop z at 37.
    assert result.z.max() > 40


@pytest.mark.parametrize(
    ("effects", "message"),
    [
        (np.zeros(5), "must be a 2-D array"),
        (np.zeros((1, 5)), "at least 2 subjects; got 1"),
        (np.array([[1.0, np.nan], [2.0, 3.0]]), "1 NaN or infinite"),
    ],
)
def test_bad_effects_are_rejected(effects, message):
    with pytest.raises(InvalidParameterError, match=message):
        one_sample_t(effects)
