"""Cluster-extent inference: clusters, their permutation test, its error rate.

The slow test simulates null groups and checks that cluster extent holds its
family-wise error rate; :func:`cluster_calibration` gives the numbers quoted in the
README::

    .venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); \
        import test_cluster_inference as t; print(t.cluster_calibration('gaussian'))"
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats

from _group_data import (
    ALPHA,
    CLUSTER_THRESHOLD,
    ball_mask,
    nilearn_reference,
    smooth_volumes,
)
from laion_fmri_dataloader._system import map_threads
from laion_fmri_dataloader.errors import InvalidParameterError
from laion_fmri_dataloader.stats.clusters import (
    cluster_forming_threshold,
    label_clusters,
    max_cluster_size,
    voxel_neighbours,
)
from laion_fmri_dataloader.stats.inference import (
    SpatialInference,
    flips_for_chunk,
    sign_flip_max_t,
)
from laion_fmri_dataloader.stats.second_level import one_sample_t
from test_tfce import CALIBRATION_GRID, CALIBRATION_RADIUS, null_effects

RANK = {6: 1, 18: 2, 26: 3}


def example_map(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grid = (15, 13, 14)
    mask = ball_mask(grid, 7.0) & (rng.random(grid) > 0.05)
    volume = 2.0 * smooth_volumes(rng, 1, grid, fwhm=2.5)[0]
    return volume * mask, mask


def partition(labels: np.ndarray) -> set[frozenset[int]]:
    """The clusters as sets of voxel indices, whatever their numbering."""
    return {
        frozenset(np.flatnonzero(labels == label).tolist())
        for label in np.unique(labels[labels > 0])
    }


# ------------------------------------------------------------------ clusters


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clusters_equal_scipy_ndimage_label(connectivity, seed):
    volume, mask = example_map(seed)
    structure = ndimage.generate_binary_structure(3, RANK[connectivity])
    clusters = label_clusters(
        volume[mask], voxel_neighbours(mask, connectivity), threshold=1.0
    )
    positive, _ = ndimage.label(volume > 1.0, structure)
    negative, _ = ndimage.label(volume < -1.0, structure)
    signs = clusters.signs[clusters.labels]
    assert partition(np.where(signs > 0, clusters.labels, 0)) == partition(
        positive[mask]
    )
    assert partition(np.where(signs < 0, clusters.labels, 0)) == partition(
        negative[mask]
    )
    np.testing.assert_array_equal(np.bincount(clusters.labels)[1:], clusters.sizes[1:])
    assert clusters.n_clusters > 3
    # Positive clusters first, in the order of their first voxel.
    first = [np.flatnonzero(clusters.labels == k)[0] for k in (1, 2)]
    assert clusters.signs[1] == 1 and first[0] < first[1]


@pytest.mark.parametrize("one_sided", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_max_cluster_size_equals_nilearns_cluster_measures(one_sided, seed):
    from nilearn.mass_univariate._utils import calculate_cluster_measures

    volume, mask = example_map(seed)
    expected, _ = calculate_cluster_measures(
        volume[..., np.newaxis],
        1.2,
        ndimage.generate_binary_structure(3, 1),
        two_sided_test=not one_sided,
    )
    ours = max_cluster_size(
        volume[mask], voxel_neighbours(mask), 1.2, one_sided=one_sided
    )
    assert ours == expected[0] > 1


@pytest.mark.parametrize("one_sided", [False, True])
@pytest.mark.parametrize("p", [0.001, 0.01, 0.05])
@pytest.mark.parametrize("n_subjects", [6, 12, 30])
def test_cluster_forming_threshold_is_nilearns(one_sided, p, n_subjects):
    from nilearn.mass_univariate.permuted_least_squares import (
        _compute_t_stat_threshold,
    )

    expected = _compute_t_stat_threshold(
        p, not one_sided, np.ones((n_subjects, 1)), None
    )
    ours = cluster_forming_threshold(p, n_subjects - 1, one_sided=one_sided)
    assert ours == expected


def test_a_map_below_the_threshold_has_no_cluster():
    neighbours = voxel_neighbours(np.ones((3, 3, 3), dtype=bool))
    clusters = label_clusters(np.full(27, 2.0), neighbours, threshold=2.0)
    assert clusters.n_clusters == 0 and not clusters.labels.any()
    assert max_cluster_size(np.full(27, -2.5), neighbours, 2.0, one_sided=True) == 0
    assert max_cluster_size(np.full(27, -2.5), neighbours, 2.0) == 27


@pytest.mark.parametrize("p", [0, 1, 1.5, -0.01, "0.001", None, float("nan")])
def test_bad_cluster_thresholds_are_rejected(p):
    with pytest.raises(InvalidParameterError, match=r"in \(0, 1\)"):
        cluster_forming_threshold(p, 11)
    if p is not None:
        with pytest.raises(InvalidParameterError, match=r"in \(0, 1\)"):
            SpatialInference.from_mask(
                np.ones((2, 2, 2), dtype=bool), cluster_threshold=p
            )


def test_bad_connectivity_and_masks_are_rejected():
    with pytest.raises(
        InvalidParameterError, match=r"connectivity must be one of \[6, 18, 26\]; got 8"
    ):
        voxel_neighbours(np.ones((2, 2, 2), dtype=bool), 8)
    with pytest.raises(InvalidParameterError, match="3-D array"):
        voxel_neighbours(np.ones((2, 2), dtype=bool))
    with pytest.raises(InvalidParameterError, match=">= 0"):
        label_clusters(np.zeros(8), voxel_neighbours(np.ones((2, 2, 2), bool)), -1.0)


# ------------------------------------------------------- the permutation test


def test_cluster_null_and_sizes_equal_nilearns_on_the_same_flips():
    reference = nilearn_reference()
    ours = reference["ours"].cluster
    np.testing.assert_array_equal(ours.max_size[1:], reference["h0_max_size"])
    np.testing.assert_array_equal(ours.clusters.voxel_sizes, reference["size"])
    assert ours.max_size[0] == ours.clusters.sizes.max()
    assert ours.forming_t == cluster_forming_threshold(CLUSTER_THRESHOLD, 9)


def test_cluster_survivors_equal_nilearn_non_parametric_inference_on_the_same_flips():
    reference = nilearn_reference()
    ours = reference["ours"].cluster
    null = np.asarray(reference["h0_max_size"])
    # nilearn's cluster p is #{null >= size} / n_perm without the unflipped data,
    # ours (1 + #{null >= size}) / (n_perm + 1), as its voxel and TFCE p: the
    # survivors are the same unless a cluster sits between the two cutoffs.
    exceeding = (null[:, np.newaxis] >= ours.clusters.sizes[1:]).sum(axis=0)
    n = null.size
    between = ((exceeding + 1) / (n + 1) > ALPHA) & (exceeding / n <= ALPHA)
    assert not between.any()
    nilearn_p = 10 ** -reference["logp_max_size"]
    np.testing.assert_array_equal(ours.mask, nilearn_p <= ALPHA + 1e-12)
    np.testing.assert_allclose(
        ours.p_fwe[ours.clusters.labels > 0],
        ((exceeding + 1) / (n + 1))[ours.clusters.labels[ours.clusters.labels > 0] - 1],
    )
    assert 10 < ours.mask.sum() < ours.mask.size / 2
    assert (ours.clusters.voxel_sizes[ours.mask] > ours.cutoff).all()
    assert (ours.clusters.voxel_sizes[~ours.mask] <= ours.cutoff).all()


@pytest.mark.parametrize("one_sided", [False, True])
def test_exhaustive_cluster_extent_equals_nilearn_on_every_sign_vector(one_sided):
    from nilearn.mass_univariate._utils import calculate_cluster_measures

    rng = np.random.default_rng(9)
    grid = (10, 10, 10)
    mask = ball_mask(grid, 4.6)
    volumes = smooth_volumes(rng, 7, grid, fwhm=2.0)
    volumes[:, 2:6, 3:7, 3:7] += 1.5
    effects = volumes[:, mask]
    spatial = SpatialInference.from_mask(mask, tfce=None, cluster_threshold=0.01)
    result = sign_flip_max_t(effects, n_perm=1000, one_sided=one_sided, spatial=spatial)
    assert result.exhaustive and result.n_perm == 128
    threshold = cluster_forming_threshold(0.01, 6, one_sided=one_sided)
    structure = ndimage.generate_binary_structure(3, 1)
    flips = flips_for_chunk(7, 0, chunk_size=128, n_perm=1000)
    expected = []
    for flip in flips:
        volume = np.zeros(grid)
        volume[mask] = one_sample_t(effects * flip[:, np.newaxis]).t
        size, _ = calculate_cluster_measures(
            volume[..., np.newaxis], threshold, structure, two_sided_test=not one_sided
        )
        expected.append(size[0])
    np.testing.assert_array_equal(result.cluster.max_size, expected)
    sizes = result.cluster.clusters.voxel_sizes
    p_brute = (np.array(expected)[:, np.newaxis] >= sizes).mean(axis=0)
    np.testing.assert_array_equal(result.cluster.p_fwe, p_brute)
    assert result.cluster.mask.any()


def test_cluster_survivors_agree_with_nilearn_within_monte_carlo_error():
    reference = nilearn_reference()
    spatial = SpatialInference.from_mask(
        reference["mask"], tfce=None, cluster_threshold=CLUSTER_THRESHOLD
    )
    ours = sign_flip_max_t(reference["effects"], n_perm=4000, seed=5, spatial=spatial)
    nilearn_p = 10 ** -reference["logp_max_size"]
    error = 4 * np.sqrt(ALPHA * (1 - ALPHA) * (1 / 200 + 1 / 4000))
    differ = ours.cluster.mask != (nilearn_p <= ALPHA)
    assert (np.abs(nilearn_p[differ] - ALPHA) < error).all()
    assert ours.cluster.mask.sum() > 10


# ------------------------------------------------------------------ calibration


def cluster_calibration(
    noise: str, n_groups: int = 500, n_perm: int = 200, forming_p: float = 0.05
) -> dict:
    """Groups with any cluster-extent survivor among null groups, and the test's
    exact level on them.

    Cluster sizes are integers: when many permutations tie at the cutoff, the
    test rejects with probability ``#{k : max_size[k] > cutoff} / n_perm`` given
    the data (its conditional level), which is below alpha. ``exact_level`` is
    that probability averaged over the groups: the rate the share of groups with
    a survivor must match.
    """
    mask = ball_mask(CALIBRATION_GRID, CALIBRATION_RADIUS)
    spatial = SpatialInference.from_mask(mask, tfce=None, cluster_threshold=forming_p)

    def test(group: int) -> tuple[bool, float, int]:
        rng = np.random.default_rng([2027, group, noise == "gaussian"])
        result = sign_flip_max_t(
            null_effects(rng, noise, mask), n_perm=n_perm, seed=group, spatial=spatial
        ).cluster
        level = float(np.mean(result.max_size > result.cutoff))
        return bool(result.mask.any()), level, result.cutoff

    outcomes = map_threads(test, range(n_groups))
    return {
        "noise": noise,
        "forming_p": forming_p,
        "n_groups": n_groups,
        "n_perm": n_perm,
        "cluster_hits": sum(hit for hit, _, _ in outcomes),
        "exact_level": float(np.mean([level for _, level, _ in outcomes])),
        "mean_cutoff_voxels": float(np.mean([cutoff for _, _, cutoff in outcomes])),
    }


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["gaussian", "student-t3"])
def test_cluster_extent_holds_the_family_wise_error_rate(noise):
    # At p < 0.05 the largest null clusters have tens of voxels, few ties: the
    # test is at alpha itself.
    rates = cluster_calibration(noise, forming_p=0.05)
    low, high = stats.binom.ppf([0.025, 0.975], rates["n_groups"], ALPHA)
    assert low <= rates["cluster_hits"] <= high, rates
    assert 0.045 <= rates["exact_level"] <= ALPHA, rates


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["gaussian", "student-t3"])
def test_cluster_extent_at_p001_is_exactly_as_conservative_as_its_ties(noise):
    # At the default p < 0.001 the largest clusters of this small volume have a
    # few voxels, and ties at the cutoff put the exact level below alpha; the
    # share of groups with a survivor must be that level, no lower.
    rates = cluster_calibration(noise, forming_p=0.001)
    assert 0.01 < rates["exact_level"] <= ALPHA, rates
    low, high = stats.binom.ppf([0.025, 0.975], rates["n_groups"], rates["exact_level"])
    assert low <= rates["cluster_hits"] <= high, rates


@pytest.mark.parametrize("one_sided", [False, True])
def test_screened_cluster_maxima_equal_the_full_maps(one_sided):
    # Cluster extent alone finds its voxels from the float32 sums of max |t|;
    # with TFCE it reads the full float64 maps. The maxima must be the same.
    reference = nilearn_reference()
    effects, mask = reference["effects"], reference["mask"]
    # Forming thresholds from loose to strict, so that many voxels sit near them.
    for forming_p in (0.2, 0.01, 0.001):
        alone = SpatialInference.from_mask(mask, tfce=None, cluster_threshold=forming_p)
        both = SpatialInference.from_mask(mask, cluster_threshold=forming_p)
        options = {"n_perm": 300, "seed": 3, "one_sided": one_sided}
        screened = sign_flip_max_t(effects, spatial=alone, **options)
        full = sign_flip_max_t(effects, spatial=both, **options)
        np.testing.assert_array_equal(screened.cluster.max_size, full.cluster.max_size)
        np.testing.assert_array_equal(screened.max_t, full.max_t)
        assert screened.cluster.max_size.max() > 0
