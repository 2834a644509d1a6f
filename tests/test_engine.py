"""The array-level AR(1) GLM against nilearn's run_glm, FirstLevelModel and scipy."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.contrasts import (
    Contrast,
    compute_contrast,
    compute_fixed_effect_contrast,
    compute_fixed_effects,
)
from nilearn.glm.first_level import (
    FirstLevelModel,
    mean_scaling,
    run_glm,
)
from scipy import special, stats

from laion_fmri_dataloader.contrasts import STANDARD_CONTRASTS
from laion_fmri_dataloader.errors import InvalidParameterError
from laion_fmri_dataloader.simulate.data_gen import (
    ar1_series,
    block_design,
    standard_contrast_vectors,
    voxels_as_nifti,
)
from laion_fmri_dataloader.stats.engine import (
    ContrastResult,
    _log_t_tail,
    ar1_coefficients,
    combine_runs,
    fit_ar1_contrasts,
    fixed_effects,
    mean_scale,
    t_to_z,
)

TR = 1.5
N_SCANS = 160
N_VOXELS = 1500


def _contrasts(design: pd.DataFrame) -> dict[str, np.ndarray]:
    return standard_contrast_vectors(list(design.columns))


@pytest.fixture(scope="module")
def run() -> tuple[pd.DataFrame, np.ndarray]:
    """Blocks of the four conditions, AR(1) noise, task effects, drift."""
    design = block_design(N_SCANS, TR, seed=0)
    return design, ar1_series(design, N_VOXELS, seed=1)


@pytest.fixture(scope="module")
def nilearn_run(run) -> dict[str, dict[str, np.ndarray]]:
    """nilearn's run_glm and compute_contrast on the same array."""
    design, data = run
    scaled, _ = mean_scaling(data)
    labels, results = run_glm(scaled, design.to_numpy(), noise_model="ar1", bins=100)
    reference = {"labels": labels}
    for name, vector in _contrasts(design).items():
        contrast = compute_contrast(labels, results, vector)
        reference[name] = {
            "z": contrast.z_score(),
            "t": contrast.stat(),
            "effect": contrast.effect_size(),
            "variance": contrast.effect_variance(),
            "dof": contrast.dof,
        }
    return reference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_contrasts_match_nilearn_run_glm(run, nilearn_run, dtype):
    design, data = run
    ours = fit_ar1_contrasts(data, design.to_numpy(), _contrasts(design), dtype=dtype)
    # float32 maps are rounded once at the end; in float64 the agreement is
    # that of two float64 computations of the same estimator.
    rtol, z_tolerance = (1e-6, 1e-3) if dtype is np.float32 else (1e-9, 1e-6)
    for name in STANDARD_CONTRASTS:
        reference, result = nilearn_run[name], ours[name]
        assert result.z.dtype == dtype
        assert np.max(np.abs(result.z - reference["z"])) < z_tolerance
        for stat in ("effect", "variance", "t"):
            scale = np.max(np.abs(reference[stat]))
            error = np.max(np.abs(getattr(result, stat) - reference[stat]))
            assert error < rtol * scale, (name, stat, error / scale)
        assert result.dof == reference["dof"] == N_SCANS - design.shape[1]
        assert not result.degenerate.any()


def test_ar1_coefficients_fall_in_nilearns_bins(run, nilearn_run):
    design, data = run
    rho = ar1_coefficients(data, design.to_numpy())
    binned = (rho * 100).astype(int) / 100
    np.testing.assert_array_equal(binned, nilearn_run["labels"].astype(float))
    assert 0.1 < np.median(rho) < 0.4


def test_matches_first_level_model_on_nifti(run):
    design, data = run
    img, mask = voxels_as_nifti(data[:, : 8 * 6 * 5])
    model = FirstLevelModel(
        t_r=TR, noise_model="ar1", mask_img=mask, minimize_memory=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(img, design_matrices=[design])
    masked = model.masker_.transform(img)
    ours = fit_ar1_contrasts(
        masked, design.to_numpy(), _contrasts(design), dtype=np.float64
    )
    for name, vector in _contrasts(design).items():
        maps = model.compute_contrast(vector, output_type="all")
        for stat, key in (
            ("z", "z_score"),
            ("t", "stat"),
            ("effect", "effect_size"),
            ("variance", "effect_variance"),
        ):
            reference = model.masker_.transform(maps[key]).ravel()
            np.testing.assert_allclose(
                getattr(ours[name], stat),
                reference,
                rtol=1e-5,
                atol=1e-5 * np.abs(reference).max(),
            )


def test_mean_scale_equals_nilearn():
    rng = np.random.default_rng(2)
    data = rng.normal(1000, 10, (40, 6)).astype(np.float32)
    data[:, 1] -= data[:, 1].mean()
    data[:, 2] = rng.normal(0.3, 0.1, 40)
    data[:, 3] -= 2000
    reference, reference_mean = mean_scaling(data.copy())
    scaled, mean = mean_scale(data)
    np.testing.assert_array_equal(scaled, reference)
    np.testing.assert_array_equal(mean, reference_mean)
    assert scaled.dtype == np.float32


def _nifti(maps: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(maps.reshape(-1, 1, 1).astype(np.float32), np.eye(4))


def test_fixed_effects_match_nilearn():
    runs = []
    for seed in range(3):
        design = block_design(N_SCANS, TR, seed=10 + seed)
        data = ar1_series(design, 300, seed=20 + seed)
        runs.append(
            fit_ar1_contrasts(data, design.to_numpy(), _contrasts(design))[
                "faceVsScene"
            ]
        )
    combined = fixed_effects(runs)
    mask = nib.Nifti1Image(np.ones((300, 1, 1), dtype=np.int8), np.eye(4))
    effect, variance, t, z = compute_fixed_effects(
        [_nifti(result.effect) for result in runs],
        [_nifti(result.variance) for result in runs],
        mask=mask,
        precision_weighted=True,
        dofs=[result.dof for result in runs],
    )
    assert combined.dof == sum(result.dof for result in runs)
    for ours, reference in (
        (combined.effect, effect),
        (combined.variance, variance),
        (combined.t, t),
        (combined.z, z),
    ):
        np.testing.assert_allclose(
            ours, reference.get_fdata().ravel(), rtol=1e-5, atol=1e-6
        )
    assert not combined.degenerate.any()


def test_mean_combination_is_nilearns_first_level_model():
    """Equal weights as FirstLevelModel.compute_contrast: nilearn's own summation."""
    runs, labels, results, vectors = [], [], [], []
    for seed in range(3):
        design = block_design(N_SCANS, TR, seed=30 + seed)
        data = ar1_series(design, 300, seed=40 + seed)
        vector = _contrasts(design)["faceVsScene"]
        runs.append(fit_ar1_contrasts(data, design.to_numpy(), {"c": vector})["c"])
        label, result = run_glm(
            mean_scaling(data)[0], design.to_numpy(), noise_model="ar1"
        )
        labels.append(label)
        results.append(result)
        vectors.append(vector)
    reference = compute_fixed_effect_contrast(labels, results, vectors)
    combined = combine_runs(runs, "mean")
    assert combined.dof == reference.dof == sum(r.dof for r in runs)
    np.testing.assert_allclose(combined.effect, reference.effect, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        combined.variance, reference.variance, rtol=1e-4, atol=1e-9
    )
    np.testing.assert_allclose(combined.t, reference.stat(), rtol=1e-4, atol=1e-4)
    assert np.max(np.abs(combined.z - reference.z_score())) < 1e-3
    # the facts this rests on: mean of effects, sum of variances / n^2
    np.testing.assert_allclose(
        combined.effect, np.mean([r.effect for r in runs], axis=0), rtol=1e-6
    )
    np.testing.assert_allclose(
        combined.variance, np.sum([r.variance for r in runs], axis=0) / 9, rtol=1e-6
    )
    added = Contrast(np.ones(2), np.ones(2), dof=10) + Contrast(
        np.full(2, 3.0), np.full(2, 2.0), dof=20
    )
    halved = added * 0.5
    assert (halved.effect.tolist(), halved.variance.tolist(), halved.dof) == (
        [2.0, 2.0],
        [0.75, 0.75],
        30.0,
    )


def test_mean_combination_leaves_out_what_cannot_be_averaged():
    def result(effect, variance, degenerate, dof=100.0):
        effect, variance = np.array(effect), np.array(variance)
        t = np.where(degenerate, 0.0, effect / np.sqrt(variance))
        return ContrastResult(
            effect, variance, t, t_to_z(t, dof), dof, np.array(degenerate)
        )

    runs = [
        result([1.0, 5.0, 0.0], [1.0, 1.0, np.inf], [False, False, True]),
        result([3.0, 1.0, 2.0], [2.0, 3.0, 4.0], [False, False, False]),
        # a run in which the contrast cannot be estimated at all is left out
        result([0.0, 0.0, 0.0], [np.inf] * 3, [True, True, True], dof=50.0),
    ]
    combined = combine_runs(runs, "mean")
    np.testing.assert_allclose(combined.effect, [2.0, 3.0, 0.0])
    np.testing.assert_allclose(combined.variance, [0.75, 1.0, np.inf])
    np.testing.assert_array_equal(combined.degenerate, [False, False, True])
    assert combined.dof == 200
    precision = combine_runs(runs, "precision")
    assert precision.effect[0] == pytest.approx((1 / 1 + 3 / 2) / (1 + 1 / 2))
    with pytest.raises(InvalidParameterError, match=r"one of \['mean', 'precision'\]"):
        combine_runs(runs, "median")


def test_fixed_effects_skip_degenerate_runs():
    def result(effect, variance, degenerate):
        effect, variance = np.array(effect), np.array(variance)
        t = effect / np.sqrt(variance)
        return ContrastResult(
            effect, variance, t, t_to_z(t, 100.0), 100.0, np.array(degenerate)
        )

    runs = [
        result([1.0, 0.0, 0.0], [1.0, np.inf, np.inf], [False, True, True]),
        result([3.0, 2.0, 0.0], [1.0, 4.0, np.inf], [False, False, True]),
    ]
    combined = fixed_effects(runs)
    np.testing.assert_allclose(combined.effect, [2.0, 2.0, 0.0])
    np.testing.assert_allclose(combined.variance, [0.5, 4.0, np.inf])
    np.testing.assert_allclose(combined.t, [2 / np.sqrt(0.5), 1.0, 0.0])
    np.testing.assert_array_equal(combined.degenerate, [False, False, True])
    assert combined.z[2] == 0 and np.isfinite(combined.z).all()
    assert combined.dof == 200


@pytest.mark.parametrize("dof", [3.0, 30.0, 300.0, 3000.0])
def test_t_to_z_agrees_with_scipy_where_scipy_is_exact(dof):
    t = np.linspace(-8, 8, 161)
    reference = np.where(
        t > 0,
        stats.norm.isf(stats.t.sf(t, dof)),
        stats.norm.ppf(stats.t.cdf(t, dof)),
    )
    np.testing.assert_allclose(t_to_z(t, dof), reference, rtol=1e-10, atol=1e-12)


def test_t_to_z_does_not_saturate():
    t = np.array([50.0, 200.0, 1e4])
    z = t_to_z(t, 300.0)
    assert np.isfinite(z).all()
    assert z[0] < z[1] < z[2]
    assert z[1] > 38  # nilearn clips p at 1e-300, z = 37.0
    np.testing.assert_array_equal(t_to_z(-t, 300.0), -z)
    # where t^2 overflows: sf(t) ~ 1 / (pi t) for one degree of freedom
    huge = t_to_z(np.array([1e300]), 1.0)[0]
    np.testing.assert_allclose(
        huge, -special.ndtri_exp(-np.log(np.pi) - np.log(1e300)), rtol=1e-12
    )
    # scipy's own log survival function is still finite at t = 50
    np.testing.assert_allclose(
        z[0], -special.ndtri_exp(stats.t.logsf(50.0, 300.0)), rtol=1e-12
    )


@pytest.mark.parametrize(("t", "dof"), [(30.0, 300.0), (50.0, 300.0), (12.0, 8.0)])
def test_tail_series_equals_direct_survival_function(t, dof):
    direct = np.log(special.stdtr(dof, -t))
    np.testing.assert_allclose(_log_t_tail(np.array([t]), dof), direct, rtol=1e-12)


def test_degenerate_voxels_are_reported_not_nan(run):
    design, data = run
    design_array = design.to_numpy()
    data = data[:, :200].copy()
    data[:, 3] = 1000.0
    data[5, 4] = np.nan
    data[7, 5] = np.inf
    data[:, 6] = 1000 + 5 * design_array[:, list(design.columns).index("face")]
    bad = [3, 4, 5, 6]
    results = fit_ar1_contrasts(data, design_array, _contrasts(design))
    good = np.setdiff1d(np.arange(200), bad)
    # Same memory layout as ``data``, so that float32 means are summed alike.
    alone = fit_ar1_contrasts(
        np.ascontiguousarray(data[:, good]), design_array, _contrasts(design)
    )
    for name, result in results.items():
        assert np.flatnonzero(result.degenerate).tolist() == bad
        for stat in ("effect", "t", "z"):
            values = getattr(result, stat)
            assert np.isfinite(values).all()
            assert (values[bad] == 0).all()
            np.testing.assert_allclose(
                values[good], getattr(alone[name], stat), rtol=1e-5, atol=1e-5
            )
        assert np.isinf(result.variance[bad]).all()
        assert np.isfinite(result.variance[good]).all()


def test_contrast_on_an_empty_regressor_is_degenerate(run):
    design, data = run
    design = design.copy()
    design["object"] = 0.0
    data = data[:, :300]
    contrasts = _contrasts(design)
    results = fit_ar1_contrasts(data, design.to_numpy(), contrasts)
    assert results["objectVsBaseline"].degenerate.all()
    assert (results["objectVsBaseline"].z == 0).all()
    assert np.isinf(results["sceneVsObject"].variance).all()
    scaled, _ = mean_scaling(data)
    labels, fits = run_glm(scaled, design.to_numpy())
    reference = compute_contrast(labels, fits, contrasts["faceVsScene"]).z_score()
    assert not results["faceVsScene"].degenerate.any()
    assert np.max(np.abs(results["faceVsScene"].z - reference)) < 1e-3
    assert results["faceVsScene"].dof == N_SCANS - design.shape[1] + 1


def test_threads_do_not_change_results(run):
    design, data = run
    one = fit_ar1_contrasts(data, design.to_numpy(), _contrasts(design), n_threads=1)
    two = fit_ar1_contrasts(data, design.to_numpy(), _contrasts(design), n_threads=2)
    for name in STANDARD_CONTRASTS:
        np.testing.assert_array_equal(one[name].z, two[name].z)


def test_null_data_give_standard_normal_z():
    design = block_design(N_SCANS, TR, seed=3)
    rng = np.random.default_rng(4)
    n_voxels = 4000
    rho = rng.uniform(0.0, 0.5, n_voxels)
    noise = rng.standard_normal((N_SCANS, n_voxels))
    for scan in range(1, N_SCANS):
        noise[scan] += rho * noise[scan - 1]
    data = (1000 + 10 * noise).astype(np.float32)
    z = fit_ar1_contrasts(data, design.to_numpy(), _contrasts(design))[
        "faceVsBaseline"
    ].z
    assert abs(z.mean()) < 0.1
    # Not exactly 1: like nilearn, the AR(1) coefficient of OLS residuals is
    # not corrected for the bias the 25 smooth regressors give it, which makes
    # a 160-scan run somewhat liberal (about 1.1 on white noise).
    assert 0.95 < z.std() < 1.3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": np.zeros(N_SCANS)}, "data must be a 2-D float array"),
        ({"data": np.zeros((N_SCANS, 3), dtype=int)}, "data must be a 2-D float"),
        ({"design": np.zeros((N_SCANS - 1, 4))}, r"design must have shape \(160"),
        ({"design": np.full((N_SCANS, 4), np.nan)}, "design must be finite"),
        ({"contrasts": {"c": np.ones(3)}}, "contrast 'c' must have one weight"),
        ({"contrasts": {}}, "contrasts must name at least one"),
        ({"n_bins": 0}, "n_bins must be a positive integer; got 0"),
        ({"dtype": np.int32}, r"dtype must be one of \['float32', 'float64'\]"),
        ({"n_threads": 0}, "n_threads must be at least 1; got 0"),
    ],
)
def test_bad_arguments_are_named(change, message):
    rng = np.random.default_rng(5)
    arguments = {
        "data": rng.standard_normal((N_SCANS, 3)),
        "design": rng.standard_normal((N_SCANS, 4)),
        "contrasts": {"c": np.ones(4)},
    }
    arguments.update(change)
    with pytest.raises(InvalidParameterError, match=message):
        fit_ar1_contrasts(**arguments)


def test_t_to_z_rejects_non_positive_dof():
    with pytest.raises(ValueError, match="dof must be positive; got 0"):
        t_to_z(np.zeros(2), 0)


def test_fixed_effects_rejects_mismatched_runs():
    def result(n_voxels):
        zeros = np.zeros(n_voxels)
        return ContrastResult(zeros, zeros + 1, zeros, zeros, 10.0, zeros > 0)

    with pytest.raises(InvalidParameterError, match="same voxels"):
        fixed_effects([result(3), result(4)])
    with pytest.raises(InvalidParameterError, match="at least one run"):
        fixed_effects([])
