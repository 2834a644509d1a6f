"""GSS parcels, subject fROIs, Dice and held-out profiles with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage, stats

from laion_fmri_dataloader.errors import InvalidLabelError, InvalidParameterError
from laion_fmri_dataloader.rois import (
    CANONICAL_ROIS,
    RoiSize,
    name_parcels,
    parse_roi_contrast,
    parse_roi_size,
)
from laion_fmri_dataloader.stats.froi import (
    dice,
    held_out_responses,
    make_parcels,
    select_froi,
    smooth_volume,
    voxel_coordinates,
    watershed_parcels,
    z_threshold,
)

SHAPE = (40, 30, 20)
VOXEL = 2.0
# x runs from -39 to +39 mm: no voxel sits on the midline
AFFINE = np.array(
    [
        [VOXEL, 0, 0, -39.0],
        [0, VOXEL, 0, -100.0],
        [0, 0, VOXEL, -30.0],
        [0, 0, 0, 1],
    ]
)
COORDS = voxel_coordinates(SHAPE, AFFINE)
MASK = np.ones(SHAPE, dtype=bool)


def _ball(centre, radius):
    return np.linalg.norm(COORDS - np.asarray(centre, dtype=float), axis=-1) <= radius


def _subjects(blobs, n_subjects=10, seed=0, jitter=1.5):
    """z maps: 5 inside each blob a subject has, N(0, 1) noise below 3.09 elsewhere."""
    rng = np.random.default_rng(seed)
    maps = np.clip(rng.normal(0.0, 1.0, (n_subjects, *SHAPE)), -3.0, 3.0)
    for centre, radius, members, sign in blobs:
        for subject in members:
            shifted = np.asarray(centre) + rng.normal(0.0, jitter, 3)
            maps[subject][_ball(shifted, radius)] = 5.0 * sign
    return maps


def _parcels(z_maps, **overrides):
    options = {
        "p_threshold": 0.001,
        "direction": 1,
        "smoothing_fwhm": 6.0,
        "min_overlap": 0.1,
        "min_subject_fraction": 0.6,
        "min_voxels": 0,
    }
    options.update(overrides)
    return make_parcels(z_maps, MASK, AFFINE, **options)


def test_z_threshold_is_the_normal_quantile():
    for p in (0.05, 0.001, 1e-4):
        assert z_threshold(p) == pytest.approx(stats.norm.isf(p), abs=1e-12)
    with pytest.raises(InvalidParameterError, match="in \\(0, 1\\)"):
        z_threshold(0.0)


def test_smoothing_keeps_mass_and_has_the_asked_width():
    volume = np.zeros(SHAPE)
    volume[20, 15, 10] = 1.0
    smoothed = smooth_volume(volume, 8.0, (VOXEL, VOXEL, VOXEL))
    assert smoothed.sum() == pytest.approx(1.0, abs=1e-6)
    profile = smoothed[:, 15, 10] / smoothed[20, 15, 10]
    # half maximum at 4 mm = 2 voxels from the peak
    assert profile[22] == pytest.approx(0.5, abs=0.02)


def test_parcels_keep_regions_shared_by_60_percent_of_subjects():
    shared = ((30.0, -60.0, -10.0), 6.0, range(8), 1)  # 8 of 10 subjects
    rare = ((-30.0, -60.0, -10.0), 6.0, range(5), 1)  # 5 of 10 subjects
    result = _parcels(_subjects([shared, rare]))
    assert [p.hemi for p in result.parcels] == ["R"]
    parcel = result.parcels[0]
    assert parcel.coverage == pytest.approx(0.8)
    assert math.dist(parcel.peak_mm, shared[0]) < 4.0
    region = result.labels == parcel.label
    assert region[_ball(shared[0], 2.0)].all()
    assert [round(p.coverage, 2) for p in result.rejected] == [0.5]
    # the 50 % parcel survives a 50 % rule
    assert len(_parcels(_subjects([shared, rare]), min_subject_fraction=0.5).parcels)


def test_watershed_splits_two_peaks_of_one_blob():
    # two regions 16 mm apart whose overlaps touch after smoothing
    first = ((20.0, -60.0, -10.0), 6.0, range(10), 1)
    second = ((20.0, -44.0, -10.0), 6.0, range(10), 1)
    result = _parcels(_subjects([first, second], jitter=0.0))
    peaks = sorted(p.peak_mm[1] for p in result.parcels)
    assert len(peaks) == 2
    assert peaks[0] == pytest.approx(-60.0, abs=3.0)
    assert peaks[1] == pytest.approx(-44.0, abs=3.0)


def test_a_midline_region_is_cut_into_left_and_right_parcels():
    middle = ((1.0, -80.0, 0.0), 9.0, range(10), 1)
    result = _parcels(_subjects([middle], jitter=0.0))
    assert sorted(p.hemi for p in result.parcels) == ["L", "R"]
    for parcel in result.parcels:
        x = COORDS[..., 0][result.labels == parcel.label]
        assert (x < 0).all() if parcel.hemi == "L" else (x > 0).all()


def test_direction_minus_one_finds_negative_regions_only():
    positive = ((30.0, -60.0, -10.0), 6.0, range(10), 1)
    negative = ((-30.0, -60.0, -10.0), 6.0, range(10), -1)
    z_maps = _subjects([positive, negative])
    assert [p.hemi for p in _parcels(z_maps, direction=-1).parcels] == ["L"]
    assert [p.hemi for p in _parcels(z_maps, direction=1).parcels] == ["R"]


def test_noise_alone_makes_no_parcel():
    rng = np.random.default_rng(3)
    z_maps = rng.normal(0.0, 1.0, (10, *SHAPE))
    result = _parcels(z_maps)
    assert result.parcels == []
    assert result.overlap.max() <= 0.3


def test_min_voxels_drops_small_parcels():
    small = ((30.0, -60.0, -10.0), 3.0, range(10), 1)
    z_maps = _subjects([small], jitter=0.0)
    size = _parcels(z_maps).parcels[0].n_voxels
    assert _parcels(z_maps, min_voxels=size + 1).parcels == []


def test_bad_shapes_and_fractions_are_refused():
    with pytest.raises(InvalidParameterError, match="shape"):
        make_parcels(
            np.zeros((2, 3, 3, 3)),
            MASK,
            AFFINE,
            p_threshold=0.001,
            direction=1,
            smoothing_fwhm=0,
            min_overlap=0.1,
            min_subject_fraction=0.6,
            min_voxels=0,
        )
    with pytest.raises(InvalidParameterError, match="min_subject_fraction"):
        _parcels(np.zeros((2, *SHAPE)), min_subject_fraction=60)


def _greedy_watershed(smoothed, region):
    """The sorted-voxel watershed described by spm_ss (an independent reference).

    Voxels are visited from the highest value down; one without a labelled
    26-neighbour starts a basin, one whose labelled neighbours agree joins it,
    and one between basins stays 0.
    """
    labels = np.zeros(smoothed.shape, dtype=np.int32)
    padded = np.pad(labels, 1)
    order = np.argsort(-smoothed[region], kind="stable")
    voxels = np.argwhere(region)[order]
    next_label = 1
    for i, j, k in voxels:
        neighbours = padded[i : i + 3, j : j + 3, k : k + 3]
        found = np.unique(neighbours[neighbours > 0])
        if found.size == 0:
            padded[i + 1, j + 1, k + 1] = next_label
            next_label += 1
        elif found.size == 1:
            padded[i + 1, j + 1, k + 1] = found[0]
    return padded[1:-1, 1:-1, 1:-1]


def test_watershed_agrees_with_the_spm_ss_rule_on_a_smooth_field():
    rng = np.random.default_rng(7)
    field = ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.5)
    field = (field - field.min()) / (field.max() - field.min())
    region = field >= 0.45
    ours = watershed_parcels(field, MASK, 0.45)
    reference = _greedy_watershed(field, region)
    assert ours.max() == reference.max()
    # the reference leaves a line between basins; ours assigns it
    assert (region & (ours == 0)).sum() == 0
    labelled = reference > 0
    # basins matched by their peak voxel
    mapping = {
        int(
            reference[
                tuple(np.argwhere(ours == label)[np.argmax(field[ours == label])])
            ]
        ): label
        for label in range(1, ours.max() + 1)
    }
    same = np.vectorize(lambda r: mapping.get(int(r), -1))(reference[labelled])
    agreement = (same == ours[labelled]).mean()
    # measured 0.963: the two floodings part ways only where basins meet
    assert agreement > 0.95
    # spm_ss's rule leaves 18 % of this region between basins (lines thicken
    # as they go down); here those voxels join the basin that floods them first
    assert 0.1 < (region & (reference == 0)).mean() / region.mean() < 0.3


def test_select_froi_rules():
    z = np.array([1.0, 4.0, 2.0, 3.0, np.nan, 0.5, 6.0, 5.0, -1.0, 2.5, 3.5])
    top = select_froi(z, RoiSize("percent", 30.0))
    # 10 voxels with data, 30 % of them: 3, the largest z
    assert np.flatnonzero(top).tolist() == [1, 6, 7]
    assert select_froi(z, RoiSize("percent", 1.0)).sum() == 1
    assert select_froi(z, RoiSize("count", 50)).sum() == 10
    assert np.flatnonzero(select_froi(z, RoiSize("z", 3.0))).tolist() == [1, 6, 7, 10]
    assert np.flatnonzero(select_froi(z, RoiSize("count", 1), -1)).tolist() == [8]
    assert not select_froi(np.full(4, np.nan), RoiSize("percent", 10)).any()


def test_dice():
    a = np.array([1, 1, 1, 0, 0], dtype=bool)
    b = np.array([0, 1, 1, 1, 0], dtype=bool)
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(a, a) == 1.0
    assert math.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))


def test_held_out_responses_measure_each_half_in_the_other():
    odd_froi = np.array([1, 1, 0, 0], dtype=bool)
    even_froi = np.array([0, 1, 1, 0], dtype=bool)
    odd_effects = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    even_effects = np.array([[10.0, 20.0, 30.0, 40.0], [2.0, 2.0, 0.0, 0.0]])
    result = held_out_responses(odd_froi, even_froi, odd_effects, even_effects)
    assert result.odd_froi.tolist() == [15.0, 2.0]  # even runs, voxels 0-1
    assert result.even_froi.tolist() == [2.5, 0.5]  # odd runs, voxels 1-2
    assert result.mean.tolist() == [8.75, 1.25]
    empty = held_out_responses(np.zeros(4, bool), even_froi, odd_effects, even_effects)
    assert np.isnan(empty.odd_froi).all()
    assert empty.mean.tolist() == [2.5, 0.5]


def test_parse_roi_size():
    assert parse_roi_size("10%") == RoiSize("percent", 10.0)
    assert parse_roi_size("100%") == RoiSize("percent", 100.0)
    assert parse_roi_size("50") == RoiSize("count", 50.0)
    assert parse_roi_size("z>3.1") == RoiSize("z", 3.1)
    assert parse_roi_size(" z > 2 ").describe() == "voxels with z > 2"
    for bad in ("0%", "150%", "-5%", "0", "-3", "2.5", "ten", "z<3"):
        with pytest.raises(InvalidParameterError, match="--roi-size"):
            parse_roi_size(bad)


def test_parse_roi_contrast():
    parsed = parse_roi_contrast("face=-objectVsFace")
    assert (parsed.category, parsed.contrast, parsed.direction) == (
        "face",
        "objectVsFace",
        -1,
    )
    for bad in ("face", "=faceVsObject", "face=", "fa ce=faceVsObject"):
        with pytest.raises(InvalidLabelError):
            parse_roi_contrast(bad)


def test_naming_by_nearest_entry_of_the_category():
    ffa = next(e for e in CANONICAL_ROIS if e.name == "FFA").centre("R")
    pfs = next(e for e in CANONICAL_ROIS if e.name == "pFs").centre("R")
    # FFA and pFs are close, but a face parcel can only be called FFA
    assert name_parcels("face", [pfs], ["R"])[0][0] == "FFA"
    assert name_parcels("object", [ffa], ["R"])[0][0] == "pFs"
    # two parcels near one entry: the nearer gets the name, the other a number
    near, nearer = (ffa[0] + 6, ffa[1], ffa[2]), (ffa[0] + 1, ffa[1], ffa[2])
    assert [n for n, _ in name_parcels("face", [near, nearer], ["R", "R"])] == [
        "face1",
        "FFA",
    ]
    # beyond the radius, and a left-only region asked on the right
    assert name_parcels("face", [(0.0, 0.0, 60.0)], ["R"])[0] == ("face1", None)
    vwfa_left = next(e for e in CANONICAL_ROIS if e.name == "VWFA").centre("L")
    assert name_parcels("character", [vwfa_left], ["L"])[0][0] == "VWFA"
    mirrored = (-vwfa_left[0], *vwfa_left[1:])
    assert name_parcels("character", [mirrored], ["R"])[0][0] == "character1"
    # a category without entries numbers every parcel
    assert name_parcels("tool", [ffa, pfs], ["R", "R"]) == [
        ("tool1", None),
        ("tool2", None),
    ]


def test_every_canonical_entry_has_a_reference_and_a_centre():
    names = [entry.name for entry in CANONICAL_ROIS]
    assert len(set(names)) == len(names)
    for entry in CANONICAL_ROIS:
        assert entry.reference and "(" in entry.reference
        centres = [entry.centre(h) for h in ("L", "R")]
        assert any(c is not None for c in centres)
        for hemi, centre in zip(("L", "R"), centres, strict=True):
            if centre is not None:
                assert (centre[0] < 0) == (hemi == "L")
