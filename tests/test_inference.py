"""Multiple-comparison correction: references, exactness and error rates.

The slow tests simulate many null groups and check that the corrections hold their
error rates; :func:`calibration_rates` gives the numbers quoted in the README::

    .venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); \
        import test_inference as t; print(t.calibration_rates())"
"""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from laion_fmri_dataloader.errors import InvalidParameterError
from laion_fmri_dataloader.simulate.data_gen import null_group_effects
from laion_fmri_dataloader.stats.inference import (
    bonferroni_mask,
    cluster_table,
    fdr_mask,
    fdr_threshold,
    flips_for_chunk,
    fwe_from_max_t,
    min_n_perm,
    min_subjects_for_permutation,
    n_chunks,
    permutation_count,
    prepare_sign_flip,
    sign_flip_chunk,
    sign_flip_max_t,
)
from laion_fmri_dataloader.stats.second_level import one_sample_t

ALPHA = 0.05


# ---------------------------------------------------------------- FDR, Bonferroni


@pytest.mark.parametrize("q", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fdr_matches_scipy_false_discovery_control(q, seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(size=900), rng.uniform(0, 1e-4, size=100)])
    rng.shuffle(p)
    expected = stats.false_discovery_control(p, method="bh") <= q
    mask = fdr_mask(p, q)
    np.testing.assert_array_equal(mask, expected)
    assert expected.any()
    assert fdr_threshold(p, q) == p[expected].max()


def test_fdr_without_discoveries_selects_nothing():
    p = np.array([0.2, 0.5, 0.04, 0.9])
    assert fdr_threshold(p, 0.05) == 0.0
    assert not fdr_mask(p, 0.05).any()


def test_fdr_with_only_discoveries_selects_everything():
    p = np.array([1e-5, 0.0, 0.01, 0.02])
    assert fdr_threshold(p, 0.05) == 0.02
    assert fdr_mask(p, 0.05).all()


def test_fdr_ties_are_all_in_or_all_out():
    # m = 10: k = 5 tied at 0.02 pass (0.02 <= 5 * 0.05 / 10 = 0.025).
    p = np.array([0.02] * 5 + [0.3] * 5)
    np.testing.assert_array_equal(fdr_mask(p, 0.05), [True] * 5 + [False] * 5)
    # k = 5 tied at 0.03 fail (0.03 > 0.025) and so do all tied values.
    p = np.array([0.03] * 5 + [0.3] * 5)
    assert not fdr_mask(p, 0.05).any()
    np.testing.assert_array_equal(
        fdr_mask(p, 0.05), stats.false_discovery_control(p) <= 0.05
    )


def test_fdr_keeps_the_shape_of_the_map():
    p = np.random.default_rng(3).uniform(0, 0.001, size=(4, 5, 6))
    assert fdr_mask(p, 0.05).shape == (4, 5, 6)


def test_bonferroni():
    p = np.array([0.001, 0.0125, 0.013, 0.5])
    mask, cutoff = bonferroni_mask(p, 0.05)
    assert cutoff == 0.05 / 4
    np.testing.assert_array_equal(mask, [True, True, False, False])


@pytest.mark.parametrize("q", [0.0, 1.0, 1.5, -0.1, "0.05", None])
def test_bad_q_is_rejected(q):
    with pytest.raises(InvalidParameterError, match=r"q must be a number in \(0, 1\)"):
        fdr_threshold(np.array([0.1]), q)


@pytest.mark.parametrize(
    ("p", "message"),
    [
        (np.array([0.1, np.nan]), "must lie in \\[0, 1\\]; got 1 outside"),
        (np.array([0.1, 1.2]), "e.g. 1.2"),
        (np.array([-0.1]), "got 1 outside"),
        (np.array([]), "empty"),
    ],
)
def test_bad_p_values_are_rejected(p, message):
    with pytest.raises(InvalidParameterError, match=message):
        fdr_mask(p)
    with pytest.raises(InvalidParameterError, match=message):
        bonferroni_mask(p)


# ------------------------------------------------------ permutation bookkeeping


@pytest.mark.parametrize(
    ("alpha", "one_sided"), [(0.05, False), (0.05, True), (0.01, False), (0.001, True)]
)
def test_min_subjects_for_permutation(alpha, one_sided):
    n = min_subjects_for_permutation(alpha, one_sided)
    identical = 1 if one_sided else 2
    assert identical / 2**n <= alpha < identical / 2 ** (n - 1)


def test_min_subjects_arithmetic_for_alpha_05():
    # 2**5 = 32 sign vectors; flipping all of them gives the same |t|, so the
    # smallest two-sided p is 2 / 32 = 1 / 16 > 0.05, and 2 / 64 = 0.031 with 6.
    assert min_subjects_for_permutation(0.05) == 6
    assert 2 / 2**5 == 0.0625
    assert min_subjects_for_permutation(0.05, one_sided=True) == 5


def test_min_n_perm():
    assert (min_n_perm(0.05), min_n_perm(0.01), min_n_perm(0.1)) == (200, 1000, 100)


def test_exhaustive_flips_are_every_sign_vector_once():
    n_subjects, chunk_size = 5, 7
    assert permutation_count(n_subjects, 100) == (32, True)
    chunks = [
        flips_for_chunk(n_subjects, k, chunk_size=chunk_size, n_perm=100)
        for k in range(n_chunks(n_subjects, 100, chunk_size))
    ]
    flips = np.concatenate(chunks)
    assert flips.shape == (32, 5)
    np.testing.assert_array_equal(flips[0], 1.0)
    np.testing.assert_array_equal(flips[-1], -1.0)
    assert len({tuple(row) for row in flips}) == 32


def test_random_flips_depend_only_on_seed_chunk_and_chunk_size():
    first = flips_for_chunk(20, 0, chunk_size=64, seed=3, n_perm=1000)
    np.testing.assert_array_equal(first[0], 1.0)
    assert first.shape == (64, 20)
    assert set(np.unique(first)) == {-1.0, 1.0}
    again = flips_for_chunk(20, 2, chunk_size=64, seed=3, n_perm=1000)
    np.testing.assert_array_equal(
        again, flips_for_chunk(20, 2, chunk_size=64, seed=3, n_perm=5000)
    )
    assert not np.array_equal(
        again, flips_for_chunk(20, 2, chunk_size=64, seed=4, n_perm=1000)
    )
    last = flips_for_chunk(20, 15, chunk_size=64, seed=3, n_perm=1000)
    assert last.shape == (1000 - 15 * 64, 20)
    with pytest.raises(InvalidParameterError, match="chunk indices 0 to 15"):
        flips_for_chunk(20, 16, chunk_size=64, seed=3, n_perm=1000)


# ----------------------------------------------------------- permutation test


def brute_force_max_t(effects: np.ndarray, one_sided: bool) -> np.ndarray:
    """Max t of every sign vector in the bit order of flips_for_chunk, float64."""
    n_subjects = effects.shape[0]
    maxima = []
    for bits in itertools.product([0, 1], repeat=n_subjects):
        signs = 1 - 2 * np.array(bits[::-1])
        t = stats.ttest_1samp(signs[:, None] * effects, 0.0, axis=0).statistic
        maxima.append(t.max() if one_sided else np.abs(t).max())
    return np.array(maxima)


@pytest.mark.parametrize("one_sided", [False, True])
def test_exhaustive_test_equals_brute_force_enumeration(one_sided):
    rng = np.random.default_rng(11)
    effects = rng.normal(size=(8, 40))
    effects[:, :4] += 1.5
    result = sign_flip_max_t(effects, n_perm=10000, one_sided=one_sided)
    assert result.exhaustive
    assert result.n_perm == 256
    expected_max = brute_force_max_t(effects, one_sided)
    np.testing.assert_allclose(result.max_t, expected_max, rtol=2e-5)
    # alpha * 256 = 12.8: the cutoff is the 13th largest maximum.
    expected_cutoff = np.sort(expected_max)[::-1][12]
    assert result.t_cutoff == pytest.approx(expected_cutoff, rel=2e-5)
    stat = result.t if one_sided else np.abs(result.t)
    expected_p = (expected_max[None, :] >= stat[:, None] * (1 - 1e-9)).mean(axis=1)
    np.testing.assert_array_equal(result.p_fwe, expected_p)
    np.testing.assert_array_equal(result.mask, stat > result.t_cutoff)
    # The data and (two-sided) its negation always reach the voxel's own |t|.
    assert result.p_fwe.min() >= (1 if one_sided else 2) / 256
    assert result.mask[:4].any()


def test_unflipped_data_is_the_first_permutation():
    effects = np.random.default_rng(5).normal(size=(20, 300))
    result = sign_flip_max_t(effects, n_perm=500, seed=9)
    assert not result.exhaustive
    assert result.max_t[0] == np.abs(one_sample_t(effects).t).max()
    assert result.p_fwe.min() >= 1 / 500


def test_results_do_not_depend_on_the_order_of_chunks():
    effects = np.random.default_rng(2).normal(size=(16, 700))
    n_perm, chunk_size, seed = 1000, 96, 21
    reference = sign_flip_max_t(
        effects, n_perm=n_perm, seed=seed, chunk_size=chunk_size
    )
    data = prepare_sign_flip(effects)
    total = n_chunks(16, n_perm, chunk_size)
    order = np.random.default_rng(0).permutation(total)
    # Two "workers", each handling an arbitrary subset of chunks in any order.
    computed = {}
    for worker in (order[::2], order[1::2]):
        for k in worker[::-1]:
            flips = flips_for_chunk(
                16, int(k), chunk_size=chunk_size, seed=seed, n_perm=n_perm
            )
            computed[int(k)] = sign_flip_chunk(data, flips)
    max_t = np.concatenate([computed[k] for k in range(total)])
    np.testing.assert_array_equal(max_t, reference.max_t)
    cutoff, p_fwe = fwe_from_max_t(data, max_t[::-1], alpha=ALPHA)
    assert cutoff == reference.t_cutoff
    np.testing.assert_array_equal(p_fwe, reference.p_fwe)


def test_monte_carlo_cutoff_agrees_with_nilearn_permuted_ols():
    from nilearn.mass_univariate import permuted_ols

    rng = np.random.default_rng(4)
    effects = null_group_effects(rng, 14, (8, 8, 6), fwhm=2.0)
    ours = sign_flip_max_t(effects, n_perm=5000, seed=1)
    nilearn_n_perm = 1000
    reference = permuted_ols(
        tested_vars=np.ones((14, 1)),
        target_vars=effects,
        model_intercept=False,
        n_perm=nilearn_n_perm,
        two_sided_test=True,
        random_state=0,
        n_jobs=1,
        output_type="dict",
        verbose=0,
    )
    np.testing.assert_allclose(ours.t, reference["t"][0], rtol=1e-8)
    h0 = reference["h0_max_t"][0]
    nilearn_cutoff = np.percentile(h0, 100 * (1 - ALPHA))
    # Each cutoff, read against the other's null distribution, must sit at its
    # 95th percentile within 4 Monte-Carlo standard errors of both samples.
    standard_error = np.sqrt(ALPHA * (1 - ALPHA) * (1 / nilearn_n_perm + 1 / 5000))
    assert abs(np.mean(ours.max_t <= nilearn_cutoff) - 0.95) < 4 * standard_error
    assert abs(np.mean(h0 <= ours.t_cutoff) - 0.95) < 4 * standard_error
    assert stats.ks_2samp(ours.max_t, h0).pvalue > 1e-3


@pytest.mark.parametrize("one_sided", [False, True])
def test_zero_variance_voxels_never_enter_the_maximum(one_sided):
    # Mostly negative effects, so that one-sided maxima are below 0 = t of the
    # constant voxels: they must still not count as evidence.
    effects = np.random.default_rng(8).normal(size=(12, 50)) - 3.0
    with_constant = np.concatenate([effects, np.full((12, 3), 4.0)], axis=1)
    with_constant[:, -1] = 0.0
    plain = sign_flip_max_t(effects, n_perm=400, one_sided=one_sided)
    padded = sign_flip_max_t(with_constant, n_perm=400, one_sided=one_sided)
    np.testing.assert_array_equal(padded.p_fwe[-3:], 1.0)
    np.testing.assert_array_equal(padded.p_fwe[:-3], plain.p_fwe)
    assert not padded.mask[-3:].any()


def test_too_few_permutations_cannot_reach_alpha():
    data = prepare_sign_flip(np.random.default_rng(0).normal(size=(12, 10)))
    with pytest.raises(
        InvalidParameterError, match=r"10 permutations cannot reach alpha=0\.05"
    ):
        fwe_from_max_t(data, np.arange(10.0), alpha=ALPHA)


def test_a_flip_to_zero_variance_gives_a_huge_not_nan_t():
    # |effect| = 1 in every subject: the two flips that align the signs have
    # variance 0 and t = inf in exact arithmetic; float32 sums leave it huge or inf.
    signs = np.array([1, -1, 1, 1, -1, 1, -1, 1], dtype=float)
    effects = np.column_stack([signs, np.random.default_rng(1).normal(size=8)])
    result = sign_flip_max_t(effects, n_perm=1000)
    assert not np.isnan(result.max_t).any()
    aligned = 0b1010010  # subjects 1, 4 and 6 flipped
    np.testing.assert_array_equal(
        np.argsort(result.max_t)[-2:], sorted([aligned, 255 - aligned])
    )
    assert result.max_t[aligned] > 1e3


def test_clear_signal_is_found_and_noise_is_not():
    rng = np.random.default_rng(12)
    grid = (10, 10, 10)
    effects = null_group_effects(rng, 12, grid, fwhm=2.0)
    signal = np.zeros(grid, dtype=bool)
    signal[3:6, 3:6, 3:6] = True
    effects[:, signal.ravel()] += 3.0
    result = sign_flip_max_t(effects, n_perm=1000)
    assert result.mask[signal.ravel()].mean() > 0.9
    assert not result.mask[~signal.ravel()].any()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"n_subjects": 20, "n_perm": 10},
            InvalidParameterError,
            "n_perm=10 is too small for alpha=0.05; use at least 200",
        ),
        (
            {"n_subjects": 5},
            InvalidParameterError,
            "5 subjects allow only 32 sign flips, so the smallest two-sided "
            "corrected p is 0.0625 > alpha=0.05; a sign-flip test needs at least 6",
        ),
        ({"n_subjects": 12, "alpha": 0.0}, InvalidParameterError, "alpha must be"),
        ({"n_subjects": 12, "seed": -1}, InvalidParameterError, "seed must be >= 0"),
        ({"n_subjects": 12, "chunk_size": 0}, InvalidParameterError, "chunk_size must"),
        ({"n_subjects": 12, "n_perm": 1.5}, InvalidParameterError, "n_perm must be an"),
    ],
)
def test_bad_permutation_arguments_are_rejected(kwargs, error, message):
    n_subjects = kwargs.pop("n_subjects")
    effects = np.random.default_rng(0).normal(size=(n_subjects, 10))
    with pytest.raises(error, match=message):
        sign_flip_max_t(effects, **kwargs)


def test_flips_of_the_wrong_width_are_rejected():
    data = prepare_sign_flip(np.random.default_rng(0).normal(size=(6, 10)))
    with pytest.raises(
        InvalidParameterError, match=r"shape \(n_rows, 6\) for 6 subjects"
    ):
        sign_flip_chunk(data, np.ones((4, 5)))


# ------------------------------------------------------------------ cluster table


def test_cluster_table_reports_peaks_and_sizes():
    z = np.zeros((20, 20, 20))
    z[3:6, 3:6, 3:6] = 4.0
    z[4, 4, 4] = 5.0
    z[12:16, 12:14, 10:12] = -3.5
    z[13, 12, 10] = -4.5
    affine = np.array(
        [[2.0, 0, 0, -20], [0, 2.0, 0, -30], [0, 0, 2.0, -10], [0, 0, 0, 1]]
    )
    table = cluster_table(nib.Nifti1Image(z, affine), 3.0)
    clusters = table[table["Cluster Size (mm3)"] != ""].set_index("Peak Stat")
    assert sorted(clusters.index) == [-4.5, 5.0]
    assert clusters.loc[5.0, "Cluster Size (voxels)"] == 27
    assert clusters.loc[5.0, "Cluster Size (mm3)"] == 27 * 8
    assert clusters.loc[-4.5, "Cluster Size (voxels)"] == 16
    np.testing.assert_array_equal(clusters.loc[5.0, ["X", "Y", "Z"]], [-12, -22, -2])
    one_sided = cluster_table(nib.Nifti1Image(z, affine), 3.0, two_sided=False)
    assert (one_sided["Peak Stat"] > 0).all()


def test_cluster_table_needs_a_3d_map():
    with pytest.raises(
        InvalidParameterError, match=r"3-D statistical map; got shape \(4, 4, 4, 2\)"
    ):
        cluster_table(nib.Nifti1Image(np.zeros((4, 4, 4, 2)), np.eye(4)), 3.0)


# ------------------------------------------------------------------ calibration

CALIBRATION_GRID = (20, 20, 20)
CALIBRATION_SUBJECTS = 12
CALIBRATION_FWHM = 2.0  # voxels


def family_wise_rates(n_groups: int = 1000, n_perm: int = 500) -> dict:
    """Any-false-positive counts and mean |t| cutoffs of permutation FWE and
    Bonferroni on null groups."""
    rng = np.random.default_rng(2024)
    fwe_hits = bonferroni_hits = 0
    fwe_cutoffs = []
    for group in range(n_groups):
        effects = null_group_effects(
            rng, CALIBRATION_SUBJECTS, CALIBRATION_GRID, CALIBRATION_FWHM
        )
        permutation = sign_flip_max_t(effects, n_perm=n_perm, seed=group)
        fwe_hits += permutation.mask.any()
        fwe_cutoffs.append(permutation.t_cutoff)
        bonferroni, p_cutoff = bonferroni_mask(one_sample_t(effects).p, ALPHA)
        bonferroni_hits += bonferroni.any()
    return {
        "n_groups": n_groups,
        "n_perm": n_perm,
        "fwe_hits": int(fwe_hits),
        "bonferroni_hits": int(bonferroni_hits),
        "fwe_mean_t_cutoff": float(np.mean(fwe_cutoffs)),
        "bonferroni_t_cutoff": float(
            stats.t.isf(p_cutoff / 2, CALIBRATION_SUBJECTS - 1)
        ),
    }


def false_discovery_proportions(n_groups: int = 500, q: float = 0.05) -> np.ndarray:
    """FDP of Benjamini-Hochberg on groups with a true effect in 1/8 of the voxels."""
    rng = np.random.default_rng(99)
    truth = np.zeros(CALIBRATION_GRID, dtype=bool)
    truth[:10, :10, :10] = True
    truth = truth.ravel()
    proportions = np.empty(n_groups)
    for group in range(n_groups):
        effects = null_group_effects(
            rng, CALIBRATION_SUBJECTS, CALIBRATION_GRID, CALIBRATION_FWHM
        )
        # A sharp-edged effect added after smoothing keeps null voxels exactly null.
        effects[:, truth] += 0.8
        discoveries = fdr_mask(one_sample_t(effects).p, q)
        proportions[group] = (discoveries & ~truth).sum() / max(discoveries.sum(), 1)
    return proportions


def calibration_rates() -> dict:
    """The measured error rates with exact 95% intervals, for the README."""
    rates = family_wise_rates()
    for name in ("fwe", "bonferroni"):
        test = stats.binomtest(rates[f"{name}_hits"], rates["n_groups"], ALPHA)
        interval = test.proportion_ci(confidence_level=0.95, method="exact")
        rates[f"{name}_rate"] = rates[f"{name}_hits"] / rates["n_groups"]
        rates[f"{name}_ci95"] = (interval.low, interval.high)
    fdp = false_discovery_proportions()
    rates["fdr_groups"] = fdp.size
    rates["fdr_mean_fdp"] = fdp.mean()
    rates["fdr_mean_fdp_se"] = fdp.std(ddof=1) / np.sqrt(fdp.size)
    return rates


@pytest.mark.slow
def test_permutation_fwe_holds_alpha_and_bonferroni_is_conservative():
    rates = family_wise_rates()
    n_groups = rates["n_groups"]
    fwe = stats.binomtest(rates["fwe_hits"], n_groups, ALPHA)
    low, high = fwe.proportion_ci(confidence_level=0.95, method="exact")
    assert low <= ALPHA <= high, rates
    bonferroni = stats.binomtest(rates["bonferroni_hits"], n_groups, ALPHA)
    assert bonferroni.proportion_ci(method="exact").low <= ALPHA, rates
    # Bonferroni ignores the spatial correlation, so its cutoff is the higher one.
    assert rates["bonferroni_t_cutoff"] >= rates["fwe_mean_t_cutoff"], rates


@pytest.mark.slow
def test_fdr_controls_the_false_discovery_proportion():
    q = 0.05
    proportions = false_discovery_proportions(q=q)
    standard_error = proportions.std(ddof=1) / np.sqrt(proportions.size)
    assert proportions.mean() <= q + 2 * standard_error, proportions.mean()
