"""fROIs on the demo's simulated dataset, scored on the simulator's truth."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from laion_fmri_dataloader.demo import demo_simulation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_froi import ours


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    from conftest import _simulate_and_fit

    return _simulate_and_fit(
        tmp_path_factory.mktemp("froi-demo"),
        levels=("participant", "group"),
        **demo_simulation().to_dict(),
    )


@pytest.mark.slow
def test_frois_find_the_true_regions_and_their_profiles(demo_dataset):
    record = ours(demo_dataset)
    # measured on the demo's data (8 subjects, 4 mm, 2 runs): every FFA, PPA
    # and LO fROI of both hemispheres found, 0.99-1.00 of their voxels inside
    # the true region, peaks within 7.7 mm of the true centre (inside the 7 mm
    # plateau of full response, on a 4 mm grid)
    for roi in ("FFA", "PPA", "LO"):
        scores = record["scores"][roi]
        assert scores["n"] == 16, roi
        assert scores["inside_mean"] >= 0.95, (roi, scores)
        assert scores["inside_min"] >= 0.75, (roi, scores)
        assert scores["peak_mm_max"] <= 10.0, (roi, scores)
    # held-out differences match the true ones within 15 % (measured: 1-3 %)
    for key, profile in record["profile"].items():
        assert profile["true"] > 0.5, key
        assert profile["measured"] == pytest.approx(profile["true"], rel=0.15), key
    # split-half Dice of a 10 % fROI with one run per half (measured 0.35-0.39)
    for roi, value in record["dice"].items():
        assert 0.2 < value <= 1.0, roi
