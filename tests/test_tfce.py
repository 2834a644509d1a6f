"""TFCE: the statistic against nilearn, its permutation test, its error rate.

The slow test simulates null groups and checks that TFCE holds its family-wise
error rate; :func:`tfce_calibration` gives the numbers quoted in the README::

    .venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); \
        import test_tfce as t; print(t.tfce_calibration('gaussian'))"
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from scipy import ndimage, special, stats

from _group_data import (
    ALPHA,
    ball_mask,
    nilearn_reference,
    smooth_volumes,
)
from laion_fmri_dataloader._system import map_threads
from laion_fmri_dataloader.errors import InvalidParameterError
from laion_fmri_dataloader.stats.clusters import voxel_neighbours
from laion_fmri_dataloader.stats.inference import (
    Maxima,
    SpatialInference,
    flips_for_chunk,
    n_chunks,
    permutation_result,
    prepare_sign_flip,
    sign_flip_max_t,
    sign_flip_maxima,
)
from laion_fmri_dataloader.stats.second_level import one_sample_t
from laion_fmri_dataloader.stats.tfce import (
    TFCEParameters,
    max_tfce,
    tfce,
    tfce_thresholds,
)

# nilearn's structuring element for each of our connectivities.
RANK = {6: 1, 18: 2, 26: 3}
NILEARN_DEFAULTS = TFCEParameters()


def nilearn_tfce(volume, connectivity=6, parameters=NILEARN_DEFAULTS, one_sided=False):
    from nilearn.mass_univariate._utils import calculate_tfce

    with warnings.catch_warnings():
        # nilearn warns when it holds a number dh within [10, 1000] steps.
        warnings.simplefilter("ignore", UserWarning)
        return calculate_tfce(
            volume[..., np.newaxis],
            ndimage.generate_binary_structure(3, RANK[connectivity]),
            E=parameters.E,
            H=parameters.H,
            dh=parameters.dh,
            two_sided_test=not one_sided,
        )[..., 0]


def example_map(seed: int):
    """A smooth t-like volume (zero outside a mask with holes) and the mask."""
    rng = np.random.default_rng(seed)
    grid = (17, 19, 15)
    volume = 2.5 * smooth_volumes(rng, 1, grid, fwhm=3.0)[0]
    mask = ball_mask(grid, 8.5) & (rng.random(grid) > 0.03)
    return volume * mask, mask


# ---------------------------------------------------------------- the statistic


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("one_sided", [False, True])
@pytest.mark.parametrize(
    "parameters",
    [TFCEParameters(), TFCEParameters(E=1.0, H=1.5, dh=0.07), TFCEParameters(dh=2.0)],
    ids=["nilearn-defaults", "E1-H1.5-dh0.07", "dh2-held-at-10-steps"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_tfce_equals_nilearn_calculate_tfce(connectivity, one_sided, parameters, seed):
    volume, mask = example_map(seed)
    expected = nilearn_tfce(volume, connectivity, parameters, one_sided)
    ours = tfce(
        volume[mask],
        voxel_neighbours(mask, connectivity),
        parameters,
        one_sided=one_sided,
    )
    assert (expected[~mask] == 0).all()
    np.testing.assert_allclose(ours, expected[mask], rtol=1e-5, atol=0)
    # Far inside the tolerance: the same sum, in another order.
    assert np.abs(ours - expected[mask]).max() <= 1e-12 * np.abs(expected).max()
    assert (ours > 0).any() and (one_sided or (ours < 0).any())


@pytest.mark.parametrize("one_sided", [False, True])
def test_max_tfce_is_the_maximum_of_the_map(one_sided):
    volume, mask = example_map(2)
    neighbours = voxel_neighbours(mask)
    scores = tfce(volume[mask], neighbours, one_sided=one_sided)
    top = max_tfce(volume[mask], neighbours, one_sided=one_sided)
    assert top == pytest.approx(np.abs(scores).max(), rel=1e-14)


@pytest.mark.parametrize("dh", ["auto", 0.1, 0.013, 3.0])
def test_thresholds_are_numpys_linspace_as_in_nilearn(dh):
    from nilearn.mass_univariate._utils import _return_score_threshs

    rng = np.random.default_rng(5)
    for top in np.concatenate([rng.uniform(0.5, 12.0, 200), [1.0, 3.0, 7.25]]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            expected = _return_score_threshs(np.array([top, -0.5]), dh, True)
        np.testing.assert_array_equal(tfce_thresholds(top, dh), expected)


def test_dh_auto_is_a_hundredth_of_the_maximum():
    heights = tfce_thresholds(6.0)
    assert heights.size == 100
    assert heights[-1] == 6.0
    np.testing.assert_allclose(np.diff(heights), 0.06, rtol=1e-12)


def test_a_map_without_values_above_zero_scores_zero():
    neighbours = voxel_neighbours(np.ones((3, 3, 3), dtype=bool))
    assert not tfce(np.zeros(27), neighbours).any()
    negative = -np.linspace(0.5, 3.0, 27)
    assert not tfce(negative, neighbours, one_sided=True).any()
    assert (tfce(negative, neighbours) < 0).all()
    assert max_tfce(negative, neighbours, one_sided=True) == 0.0


def test_components_do_not_connect_across_the_mask():
    # Two bars of equal height, apart in the volume: each scores its own extent.
    mask = np.zeros((7, 1, 1), dtype=bool)
    mask[[0, 1, 2, 4, 5, 6]] = True
    scores = tfce(np.full(6, 2.0), voxel_neighbours(mask))
    heights = tfce_thresholds(2.0)
    np.testing.assert_allclose(scores, np.sqrt(3) * (heights**2).sum(), rtol=1e-14)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"E": 0}, r"TFCE E must be a positive number; got 0"),
        ({"H": -2.0}, r"TFCE H must be a positive number; got -2.0"),
        ({"E": float("nan")}, r"TFCE E must be a positive number; got nan"),
        ({"H": True}, r"TFCE H must be a positive number; got True"),
        ({"dh": 0.0}, r"TFCE dh must be 'auto' or a positive number; got 0.0"),
        ({"dh": "fine"}, r"TFCE dh must be 'auto' or a positive number; got 'fine'"),
    ],
)
def test_bad_tfce_parameters_are_rejected(kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        TFCEParameters(**kwargs)


def test_bad_maps_are_rejected():
    neighbours = voxel_neighbours(np.ones((2, 2, 2), dtype=bool))
    with pytest.raises(InvalidParameterError, match="one value per row"):
        tfce(np.zeros(7), neighbours)
    with pytest.raises(InvalidParameterError, match="must be finite"):
        tfce(np.array([1.0, np.nan, 0, 0, 0, 0, 0, 0]), neighbours)
    with pytest.raises(InvalidParameterError, match="TFCEParameters"):
        tfce(np.zeros(8), neighbours, {"E": 0.5})


# ------------------------------------------------------- the permutation test


def test_replayed_flips_are_nilearns():
    reference = nilearn_reference()
    # float32 max |t| against nilearn's float64: the same flips, to 1e-6.
    np.testing.assert_allclose(
        reference["ours"].max_t[1:], reference["h0_max_t"], rtol=1e-5
    )


def test_tfce_null_and_map_equal_nilearns_on_the_same_flips():
    reference = nilearn_reference()
    ours = reference["ours"]
    np.testing.assert_allclose(ours.t, reference["t"], rtol=1e-10)
    np.testing.assert_allclose(ours.tfce.tfce, reference["tfce"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(
        ours.tfce.max_tfce[1:], reference["h0_max_tfce"], rtol=1e-5, atol=0
    )
    assert ours.tfce.max_tfce[0] == np.abs(ours.tfce.tfce).max()


def test_tfce_survivors_equal_nilearn_non_parametric_inference_on_the_same_flips():
    reference = nilearn_reference()
    ours = reference["ours"].tfce
    # nilearn counts the unflipped data among its permutations too, so the
    # corrected p-values are the same numbers.
    nilearn_p = 10 ** -reference["logp_max_tfce"]
    np.testing.assert_allclose(ours.p_fwe, nilearn_p, rtol=1e-9)
    np.testing.assert_array_equal(ours.mask, nilearn_p <= ALPHA + 1e-12)
    assert 5 < ours.mask.sum() < ours.mask.size / 2
    surviving = np.abs(ours.tfce[ours.mask])
    assert surviving.min() > ours.cutoff >= np.abs(ours.tfce[~ours.mask]).max()


def test_tfce_survivors_agree_with_nilearn_within_monte_carlo_error():
    # Our own random flips, not nilearn's: the cutoffs are two estimates of one
    # quantile and the survivors differ only where p is within Monte-Carlo error.
    reference = nilearn_reference()
    spatial = SpatialInference.from_mask(reference["mask"], cluster_threshold=None)
    ours = sign_flip_max_t(reference["effects"], n_perm=2000, seed=4, spatial=spatial)
    nilearn_null = np.sort(reference["h0_max_tfce"])
    n = nilearn_null.size
    low, high = stats.binom.ppf([0.005, 0.995], n, 1 - ALPHA).astype(int)
    assert nilearn_null[low - 1] <= ours.tfce.cutoff <= nilearn_null[min(high, n - 1)]
    nilearn_p = 10 ** -reference["logp_max_tfce"]
    error = 4 * np.sqrt(ALPHA * (1 - ALPHA) * (1 / n + 1 / 2000))
    differ = ours.tfce.mask != (nilearn_p <= ALPHA)
    assert (np.abs(nilearn_p[differ] - ALPHA) < error).all()


@pytest.mark.parametrize("one_sided", [False, True])
def test_exhaustive_tfce_equals_nilearn_on_every_sign_vector(one_sided):
    # 6 subjects: all 64 sign vectors, each map enhanced by nilearn itself.
    rng = np.random.default_rng(8)
    grid = (10, 10, 10)
    mask = ball_mask(grid, 4.6)
    volumes = smooth_volumes(rng, 6, grid, fwhm=2.0)
    volumes[:, 3:6, 3:7, 4:7] += 1.2
    effects = volumes[:, mask]
    spatial = SpatialInference.from_mask(mask, cluster_threshold=None)
    result = sign_flip_max_t(effects, n_perm=1000, one_sided=one_sided, spatial=spatial)
    assert result.exhaustive and result.n_perm == 64
    flips = np.concatenate(
        [flips_for_chunk(6, k, chunk_size=16, n_perm=1000) for k in range(4)]
    )
    expected = []
    for flip in flips:
        volume = np.zeros(grid)
        volume[mask] = one_sample_t(effects * flip[:, np.newaxis]).t
        scores = nilearn_tfce(volume, one_sided=one_sided)
        expected.append(scores.max() if one_sided else np.abs(scores).max())
    np.testing.assert_allclose(result.tfce.max_tfce, expected, rtol=1e-5, atol=0)
    observed = result.tfce.tfce if one_sided else np.abs(result.tfce.tfce)
    p_brute = (np.array(expected)[:, np.newaxis] >= observed * (1 - 1e-12)).mean(0)
    np.testing.assert_array_equal(result.tfce.p_fwe, p_brute)
    assert result.tfce.mask.any()


def test_chunks_and_batches_do_not_change_a_flips_maxima():
    reference = nilearn_reference()
    data = prepare_sign_flip(
        reference["effects"], SpatialInference.from_mask(reference["mask"])
    )
    flips = flips_for_chunk(10, 1, chunk_size=21, n_perm=500)
    whole = sign_flip_maxima(data, flips)
    for sizes in ([1] * 21, [3, 5, 13], [8, 8, 5], [20, 1]):
        edges = np.cumsum([0, *sizes])
        parts = Maxima.concatenate(
            [sign_flip_maxima(data, flips[a:b]) for a, b in itertools.pairwise(edges)]
        )
        for name in ("t", "tfce", "cluster"):
            np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name))


def test_one_pass_equals_chunks_in_any_order_and_keeps_max_t():
    reference = nilearn_reference()
    effects, mask = reference["effects"], reference["mask"]
    spatial = SpatialInference.from_mask(mask)
    expected = sign_flip_max_t(
        effects, n_perm=600, seed=2, chunk_size=64, spatial=spatial
    )
    plain = sign_flip_max_t(effects, n_perm=600, seed=2, chunk_size=64)
    np.testing.assert_array_equal(expected.max_t, plain.max_t)
    np.testing.assert_array_equal(expected.p_fwe, plain.p_fwe)
    data = prepare_sign_flip(effects, spatial)
    total = n_chunks(10, 600, 64)
    computed = {}
    for k in reversed(range(total)):
        flips = flips_for_chunk(10, k, chunk_size=64, seed=2, n_perm=600)
        computed[k] = sign_flip_maxima(data, flips)
    again = permutation_result(
        data,
        Maxima.concatenate([computed[k] for k in range(total)]),
        exhaustive=False,
        seed=2,
        chunk_size=64,
        alpha=ALPHA,
        one_sided=False,
    )
    np.testing.assert_array_equal(again.tfce.max_tfce, expected.tfce.max_tfce)
    np.testing.assert_array_equal(again.tfce.p_fwe, expected.tfce.p_fwe)
    np.testing.assert_array_equal(again.cluster.max_size, expected.cluster.max_size)
    assert again.tfce.cutoff == expected.tfce.cutoff


def test_spatial_inference_must_fit_the_effects():
    spatial = SpatialInference.from_mask(np.ones((3, 3, 3), dtype=bool))
    with pytest.raises(InvalidParameterError, match="neighbour table has 27 voxels"):
        sign_flip_max_t(np.ones((8, 26)) + np.arange(26), spatial=spatial)
    with pytest.raises(InvalidParameterError, match="tfce parameters, a cluster"):
        SpatialInference.from_mask(
            np.ones((3, 3, 3), dtype=bool), tfce=None, cluster_threshold=None
        )


# ------------------------------------------------------------------ calibration

CALIBRATION_GRID = (20, 20, 20)
CALIBRATION_RADIUS = 8.0  # voxels: a ball of 2,176 voxels with its boundary
CALIBRATION_SUBJECTS = 12
CALIBRATION_FWHM = 2.0  # voxels


def null_effects(rng: np.random.Generator, noise: str, mask: np.ndarray) -> np.ndarray:
    """Null group effects inside ``mask``: smooth Gaussian noise, or the same field
    with Student-t (3 df) marginals (heavy tails, still symmetric about 0)."""
    volumes = smooth_volumes(
        rng, CALIBRATION_SUBJECTS, CALIBRATION_GRID, CALIBRATION_FWHM
    )
    effects = volumes[:, mask]
    if noise == "student-t3":
        effects = special.stdtrit(3, special.ndtr(effects))
    return effects


def tfce_calibration(noise: str, n_groups: int = 500, n_perm: int = 200) -> dict:
    """Groups with any TFCE (and max |t|) survivor among null groups."""
    mask = ball_mask(CALIBRATION_GRID, CALIBRATION_RADIUS)
    spatial = SpatialInference.from_mask(mask, cluster_threshold=None)

    def any_survivor(group: int) -> tuple[bool, bool]:
        rng = np.random.default_rng([2026, group, noise == "gaussian"])
        result = sign_flip_max_t(
            null_effects(rng, noise, mask), n_perm=n_perm, seed=group, spatial=spatial
        )
        return bool(result.tfce.mask.any()), bool(result.mask.any())

    hits = np.array(map_threads(any_survivor, range(n_groups)))
    return {
        "noise": noise,
        "n_groups": n_groups,
        "n_perm": n_perm,
        "tfce_hits": int(hits[:, 0].sum()),
        "fwe_hits": int(hits[:, 1].sum()),
    }


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["gaussian", "student-t3"])
def test_tfce_holds_the_family_wise_error_rate(noise):
    rates = tfce_calibration(noise)
    low, high = stats.binom.ppf([0.025, 0.975], rates["n_groups"], ALPHA)
    assert low <= rates["tfce_hits"] <= high, rates
    assert low <= rates["fwe_hits"] <= high, rates
