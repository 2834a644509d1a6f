"""The design matrix computed without nilearn equals nilearn's."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from laion_fmri_dataloader.stats.design import (
    ModelSettings,
    _fast_design,
    make_design,
    nilearn_design,
)

CONFOUND_NAMES = ["trans_x", "rot_z", "global_signal"]


def _nilearn_design(events, confounds, n_volumes, repetition_time, settings):
    frame_times = np.arange(n_volumes) * repetition_time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nilearn_design(events, confounds, frame_times, settings)


def _events(rng, run_seconds, kind):
    """Blocks, short events, zero durations, duplicates, an event near the end."""
    if kind == "blocks":
        onsets = np.arange(10.0, run_seconds - 30, 16.0)
        durations = np.full(onsets.size, 12.0)
    elif kind == "events":
        onsets = np.sort(rng.uniform(0, run_seconds - 2, 40))
        durations = rng.uniform(0.2, 3.0, 40)
    else:
        onsets = np.sort(rng.uniform(0, run_seconds - 0.5, 30))
        durations = np.where(rng.random(30) < 0.3, 0.0, rng.uniform(0.5, 4.0, 30))
        onsets[5] = onsets[4]  # a duplicate onset of another condition
        onsets[-1] = run_seconds - 0.01
    trial_types = np.resize(["face", "scene", "object", "baseline"], onsets.size)
    if kind == "mixed":
        # the very same event twice: nilearn sums their amplitudes
        onsets = np.append(onsets, onsets[7])
        durations = np.append(durations, durations[7])
        trial_types = np.append(trial_types, trial_types[7])
    return pd.DataFrame(
        {"onset": onsets, "duration": durations, "trial_type": trial_types}
    )


@pytest.mark.parametrize("hrf_model", ["spm", "glover"])
@pytest.mark.parametrize(
    ("n_volumes", "repetition_time", "kind"),
    [
        (300, 1.9, "blocks"),
        (160, 2.0, "events"),
        (97, 0.8, "mixed"),
        (40, 2.5, "events"),
        (500, 0.5, "mixed"),
    ],
)
def test_fast_design_equals_nilearn(hrf_model, n_volumes, repetition_time, kind):
    rng = np.random.default_rng(n_volumes)
    events = _events(rng, n_volumes * repetition_time, kind)
    confounds = pd.DataFrame(
        rng.normal(size=(n_volumes, len(CONFOUND_NAMES))), columns=CONFOUND_NAMES
    )
    settings = ModelSettings(hrf_model=hrf_model)
    frame_times = np.arange(n_volumes) * repetition_time
    ours = _fast_design(events, confounds, frame_times, settings)
    theirs = _nilearn_design(events, confounds, n_volumes, repetition_time, settings)
    assert ours is not None, "the fast path should take this design"
    assert list(ours.columns) == list(theirs.columns)
    np.testing.assert_array_equal(ours.index, theirs.index)
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("settings", "case"),
    [
        (ModelSettings(drift_model="polynomial"), "another drift model"),
        (ModelSettings(hrf_model="spm + derivative"), "another HRF"),
        (ModelSettings(high_pass=0.4), "high-pass above Nyquist"),
        (ModelSettings(), "a confound copied: rank deficient"),
    ],
)
def test_other_models_are_left_to_nilearn(settings, case):
    rng = np.random.default_rng(0)
    n_volumes, repetition_time = 120, 2.0
    events = _events(rng, n_volumes * repetition_time, "events")
    confounds = pd.DataFrame(
        rng.normal(size=(n_volumes, len(CONFOUND_NAMES))), columns=CONFOUND_NAMES
    )
    if case.startswith("a confound copied"):
        confounds["rot_z"] = confounds["trans_x"]
    frame_times = np.arange(n_volumes) * repetition_time
    assert _fast_design(events, confounds, frame_times, settings) is None, case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = make_design(events, confounds, n_volumes, repetition_time, settings)
    theirs = _nilearn_design(events, confounds, n_volumes, repetition_time, settings)
    pd.testing.assert_frame_equal(ours, theirs)
