"""A run killed at any of its writes, then rerun, leaves an uninterrupted run's bytes.

Each trial starts from a complete output folder made with other parameters,
kills a run with SIGKILL just before its Nth write is renamed into place
(``LAION_FMRI_TEST_KILL_AT_WRITE``), then reruns it twice from that state:
with the killed run's parameters and with the earlier ones.  Either rerun must
give, byte for byte and file for file (hidden files included: no temporaries
left), the folder of an uninterrupted run with its parameters.  At the first
level the killed run adds smoothing (the case where new maps sat beside old
sidecars and the rerun said "complete"); at the group level it leaves a
subject out (a t map of three subjects under a sidecar listing four).

The suite kills at the first three writes, every eighth after them and the last
two (the manifest written before the outputs, maps, the figure, sidecars, the
manifest written after them); with ``LAION_FMRI_TEST_EVERY_WRITE=1`` in the
environment it kills at every write (the README gives the counts of such runs).
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from _faults import (
    differences,
    glm,
    group_args,
    participant_args,
    run_forked,
    simulate,
    snapshot,
)
from laion_fmri_dataloader.cli import main

pytestmark = pytest.mark.slow

ONE_SUBJECT = ("--participant-label", "01")
SMOOTHED = ("--smoothing-fwhm", "6")
THREE_SUBJECTS = ("--participant-label", "01", "02", "03")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """A dataset and its uninterrupted output folders, saved by name."""
    dataset = simulate(tmp_path_factory.mktemp("kills") / "data")
    saved = tmp_path_factory.mktemp("kill-references")
    # (name, the saved folder to start from, the command)
    runs = [
        ("plain", None, participant_args(dataset, *ONE_SUBJECT)),
        ("smoothed", None, participant_args(dataset, *ONE_SUBJECT, *SMOOTHED)),
        ("first levels", None, participant_args(dataset)),
        ("group", "first levels", group_args(dataset)),
        ("group of three", "first levels", group_args(dataset, *THREE_SUBJECTS)),
    ]
    for name, start, argv in runs:
        shutil.rmtree(glm(dataset), ignore_errors=True)
        if start is not None:
            _restore(dataset, saved / start)
        assert main(argv) == 0
        shutil.copytree(glm(dataset), saved / name)
    shutil.rmtree(glm(dataset))
    return dataset, saved


def _restore(dataset, folder):
    shutil.rmtree(glm(dataset), ignore_errors=True)
    shutil.copytree(folder, glm(dataset))


def _kill_points(n_writes):
    if os.environ.get("LAION_FMRI_TEST_EVERY_WRITE"):
        return list(range(1, n_writes + 1))
    return sorted({1, 2, 3, *range(8, n_writes - 1, 8), n_writes - 1, n_writes})


def _kill_at_writes(outputs, tmp_path, start, killed, reruns, n_writes):
    """Kill ``killed`` at its writes; return the failures of the reruns.

    ``n_writes`` is checked: a kill there stops the run, one after it does not.
    """
    dataset, saved = outputs
    expected = {name: snapshot(saved / name) for name, _ in reruns}
    failures = []
    _restore(dataset, saved / start)
    assert run_forked(killed, str(n_writes + 1)) == 0, "more writes than expected"
    for kill_at in _kill_points(n_writes):
        _restore(dataset, saved / start)
        code = run_forked(killed, str(kill_at))
        assert code == -signal.SIGKILL, f"kill at write {kill_at}: exit {code}"
        state = tmp_path / "killed"
        shutil.rmtree(state, ignore_errors=True)
        shutil.copytree(glm(dataset), state)
        for name, argv in reruns:
            _restore(dataset, state)
            assert main(argv) == 0, f"kill at write {kill_at}, rerun {name}"
            wrong = differences(snapshot(glm(dataset)), expected[name])
            if wrong:
                failures.append((kill_at, name, wrong[:3]))
    return failures


def _n_files(folder):
    return sum(path.is_file() for path in folder.iterdir())


def test_first_level_killed_at_its_writes(outputs, tmp_path):
    dataset, saved = outputs
    failures = _kill_at_writes(
        outputs,
        tmp_path,
        start="plain",
        killed=participant_args(dataset, *ONE_SUBJECT, *SMOOTHED),
        reruns=[
            ("smoothed", participant_args(dataset, *ONE_SUBJECT, *SMOOTHED)),
            ("plain", participant_args(dataset, *ONE_SUBJECT)),
        ],
        # dataset_description.json, then the subject's files (maps, mask,
        # sidecars, figure; the manifest twice).
        n_writes=1 + _n_files(saved / "plain" / "first_level" / "sub-01") + 1,
    )
    assert not failures, failures


def test_group_level_killed_at_its_writes(outputs, tmp_path):
    dataset, saved = outputs
    failures = _kill_at_writes(
        outputs,
        tmp_path,
        start="group",
        killed=group_args(dataset, *THREE_SUBJECTS),
        reruns=[
            ("group of three", group_args(dataset, *THREE_SUBJECTS)),
            ("group", group_args(dataset)),
        ],
        # maps, sidecars, cluster tables, the mask; the manifest twice
        n_writes=_n_files(saved / "group" / "group_level") + 1,
    )
    assert not failures, failures
