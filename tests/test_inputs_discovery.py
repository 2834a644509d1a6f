"""Discovery on a dataset of LAION-fMRI's size, entity rules, and Dask logs."""

from __future__ import annotations

import json
import logging
import time

import pytest

from laion_fmri_dataloader.errors import InputError
from laion_fmri_dataloader.inputs.bids import find_runs, subject_folders
from laion_fmri_dataloader.inputs.entities import (
    applicable_files,
    group_variants,
    identity,
)
from laion_fmri_dataloader.pipeline.levels import select_subjects
from laion_fmri_dataloader.pipeline.participant import FirstLevelConfig

N_SUBJECTS, N_SESSIONS, N_RUNS = 5, 34, 4
SPACE = "space-MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def large_tree(tmp_path_factory):
    """5 subjects x 34 sessions x 4 runs of empty files, as the tools name them.

    The raw dataset pads run indices (run-01), fMRIPrep 20.2 does not (run-1);
    fMRIPrep wrote two spaces and a res-2 variant of the MNI series.
    """
    root = tmp_path_factory.mktemp("large")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "large", "BIDSVersion": "1.9.0"})
    )
    (root / "task-oloc_bold.json").write_text(json.dumps({"RepetitionTime": 1.5}))
    prep = root / "derivatives" / "fmriprep"
    for s in range(1, N_SUBJECTS + 1):
        for x in range(1, N_SESSIONS + 1):
            raw = root / f"sub-{s:02d}" / f"ses-{x:02d}" / "func"
            der = prep / f"sub-{s:02d}" / f"ses-{x:02d}" / "func"
            raw.mkdir(parents=True)
            der.mkdir(parents=True)
            for r in range(1, N_RUNS + 1):
                stem = f"sub-{s:02d}_ses-{x:02d}_task-oloc"
                for suffix in ("bold.nii.gz", "bold.json", "events.tsv"):
                    (raw / f"{stem}_run-{r:02d}_{suffix}").touch()
                for space in (SPACE, f"{SPACE}_res-2", "space-T1w"):
                    for suffix in (
                        "desc-preproc_bold.nii.gz",
                        "desc-preproc_bold.json",
                        "desc-brain_mask.nii.gz",
                    ):
                        (der / f"{stem}_run-{r}_{space}_{suffix}").touch()
                (der / f"{stem}_run-{r}_desc-confounds_timeseries.tsv").touch()
    return root


def test_five_subjects_by_34_sessions_are_indexed_in_seconds(large_tree):
    config = FirstLevelConfig(
        bids_dir=large_tree, output_dir=large_tree / "derivatives/glm", task="oloc"
    )
    start = time.perf_counter()
    subjects = select_subjects(config, None)
    runs = {
        subject: find_runs(
            large_tree,
            config.fmriprep,
            subject,
            "oloc",
            selection={"res": "2"},
        )
        for subject in subjects
    }
    seconds = time.perf_counter() - start
    assert subjects == [f"{s:02d}" for s in range(1, N_SUBJECTS + 1)]
    assert all(len(found) == N_SESSIONS * N_RUNS for found in runs.values())
    first = runs["01"][0]
    assert first.events.name == "sub-01_ses-01_task-oloc_run-01_events.tsv"
    assert "_res-2_desc-preproc_bold" in first.bold.name
    assert "_res-2_desc-brain_mask" in first.mask.name
    assert [p.name for p in first.sidecars] == [
        "task-oloc_bold.json",
        "sub-01_ses-01_task-oloc_run-01_bold.json",
        "sub-01_ses-01_task-oloc_run-1_space-MNI152NLin2009cAsym_res-2_desc-"
        "preproc_bold.json",
    ]
    # 680 runs of 17,000 files; pybids 0.22 took 22-49 s to index this tree.
    assert seconds < 5, seconds


def test_identity_matches_run_indices_as_numbers():
    assert identity({"sub": "01", "run": "01", "res": "2"}) == identity(
        {"sub": "01", "run": "1", "den": "91k"}
    )
    assert identity({"sub": "01", "acq": "01"}) != identity({"sub": "01", "acq": "1"})


def test_variants_are_grouped_by_run(tmp_path):
    names = [
        "sub-01_task-x_run-1_space-M_desc-preproc_bold.nii.gz",
        "sub-01_task-x_run-1_space-M_res-2_desc-preproc_bold.nii.gz",
        "sub-01_task-x_run-2_space-M_res-2_desc-preproc_bold.nii.gz",
    ]
    paths = [tmp_path / name for name in names]
    assert [len(v) for v in group_variants(paths, {}).values()] == [2, 1]
    chosen = group_variants(paths, {"res": "2"})
    assert sorted(p.name for files in chosen.values() for p in files) == names[1:]


def test_inheritance_merges_top_down_and_refuses_ambiguity(tmp_path):
    func = tmp_path / "sub-01" / "func"
    func.mkdir(parents=True)
    for name in (
        "task-x_bold.json",
        "sub-01/sub-01_task-x_bold.json",
        "sub-01/func/sub-01_task-x_run-01_bold.json",
        "sub-01/func/sub-01_task-y_bold.json",
        "sub-01/func/sub-01_task-x_run-02_bold.json",
    ):
        (tmp_path / name).touch()
    levels = [func, func.parent, tmp_path]
    data = {"sub": "01", "task": "x", "run": "1"}
    found = applicable_files(data, levels, "bold", (".json",))
    assert [p.name for p in found] == [
        "task-x_bold.json",
        "sub-01_task-x_bold.json",
        "sub-01_task-x_run-01_bold.json",
    ]
    (func / "sub-01_task-x_acq-a_bold.json").touch()
    (func / "sub-01_task-x_run-01_bold.json").unlink()
    (func / "sub-01_task-x_run-1_bold.json").touch()
    data = {"sub": "01", "task": "x", "acq": "a", "run": "1"}
    with pytest.raises(InputError, match="both apply to the same run"):
        applicable_files(data, levels, "bold", (".json",))


def test_subject_folders_tell_subjects_from_look_alikes(tmp_path):
    for name in ("sub-01", "sub-02.bak", "sub-02_old"):
        (tmp_path / name).mkdir()
    (tmp_path / "sub-01.html").touch()
    (tmp_path / "sub-03.tar").touch()
    found = subject_folders(tmp_path)
    assert found.labels == ["01"]
    assert found.others == ["sub-02.bak", "sub-02_old", "sub-03.tar"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dask_worker_log_lines_reach_the_client_log(tmp_path, caplog, capfd):
    from laion_fmri_dataloader.cli import main
    from laion_fmri_dataloader.simulate import simulate_dataset

    simulate_dataset(tmp_path, subjects=2, runs=1, resolution=8.0, n_volumes=50)
    args = [
        "glm",
        str(tmp_path),
        str(tmp_path / "derivatives" / "glm"),
        "participant",
        "--scheduler",
        "local",
        "--workers",
        "1",
    ]
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        assert main(args) == 0
    messages = [record.getMessage() for record in caplog.records]
    for subject in ("sub-01", "sub-02"):
        lines = [m for m in messages if m.startswith(f"{subject}: 1 run, 50 volumes")]
        assert len(lines) == 1, messages
        assert any(m.startswith(f"{subject}: frames at 0") for m in messages)
    # logged once, on the client: the worker does not print them as well
    assert "1 run, 50 volumes" not in capfd.readouterr().err
