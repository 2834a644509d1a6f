"""Layouts real BIDS + fMRIPrep datasets have: each works or is one clear line.

Every case starts from a small simulated dataset and rewrites it the way a real
tool writes it (zero-padded raw runs, fMRIPrep 20.2's unpadded ones, events
higher up the tree, ``res-`` variants, old fMRIPrep names, ...).
"""

from __future__ import annotations

import json
import logging
import re
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.cli import main
from laion_fmri_dataloader.inputs.bids import find_runs
from laion_fmri_dataloader.sidecar import MapSidecar

SPACE = "space-MNI152NLin2009cAsym"
RUN = "sub-01_task-experiment_run-1"
FUNC = "sub-01/func"
PREP = "derivatives/fmriprep/sub-01/func"
BOLD = f"{PREP}/{RUN}_{SPACE}_desc-preproc_bold.nii.gz"
BOLD_JSON = f"{PREP}/{RUN}_{SPACE}_desc-preproc_bold.json"
MASK = f"{PREP}/{RUN}_{SPACE}_desc-brain_mask.nii.gz"
CONFOUNDS = f"{PREP}/{RUN}_desc-confounds_timeseries.tsv"
EVENTS = f"{FUNC}/{RUN}_events.tsv"
RAW_JSON = f"{FUNC}/{RUN}_bold.json"
ROOT_JSON = "task-experiment_bold.json"
N_VOLUMES = 60


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from laion_fmri_dataloader.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("pristine")
    simulate_dataset(
        root, subjects=1, runs=1, resolution=8.0, n_volumes=N_VOLUMES, seed=4
    )
    return root


@pytest.fixture
def dataset(pristine, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    return copy


def _output(dataset):
    return dataset / "derivatives" / "glm"


def _run(dataset, *extra, output=None):
    output = _output(dataset) if output is None else output
    args = ["glm", str(dataset), str(output), "participant", "--scheduler", "none"]
    return main([*args, *extra])


def _sidecar(dataset, contrast="faceVsScene", stat="z"):
    relative = layout.first_level_map("01", "experiment", contrast, stat)
    text = (_output(dataset) / layout.sidecar_of(relative)).read_text()
    return MapSidecar.model_validate_json(text)


def _z(dataset, contrast="faceVsScene"):
    relative = layout.first_level_map("01", "experiment", contrast, "z")
    return nib.load(_output(dataset) / relative).get_fdata()


def _one_line_error(capsys, pattern):
    error = capsys.readouterr().err.strip()
    assert error.startswith("laion-fmri-glm: error: "), error
    assert "\n" not in error and "Traceback" not in error, error
    assert re.search(pattern, error), error
    return error


def _nothing_written(dataset):
    subject_dir = _output(dataset) / "first_level" / "sub-01"
    return not subject_dir.exists() or not any(subject_dir.iterdir())


def _rename_all(folder, old, new):
    for path in list(folder.rglob(f"*{old}*")):
        path.rename(path.with_name(path.name.replace(old, new)))


def _edit_json(path, change):
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def _edit_table(path, change):
    table = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    change(table).to_csv(path, sep="\t", index=False)


# Run indices -----------------------------------------------------------------


def test_zero_padded_raw_runs_match_fmriprep_unpadded_runs(dataset):
    # fMRIPrep 20.2 (pybids < 0.15) writes run-1 for the raw dataset's run-01.
    _rename_all(dataset / "sub-01", "_run-1_", "_run-01_")
    runs = find_runs(dataset, dataset / "derivatives/fmriprep", "01", "experiment")
    assert [run.events.name for run in runs] == [
        "sub-01_task-experiment_run-01_events.tsv"
    ]
    assert runs[0].sidecars[-2].name == "sub-01_task-experiment_run-01_bold.json"
    assert _run(dataset) == 0
    assert len(_sidecar(dataset).Runs) == 1


# The inheritance principle ---------------------------------------------------


@pytest.mark.parametrize(
    "where",
    ["dataset root", "subject folder", "without the run entity"],
)
def test_events_found_by_the_inheritance_principle(dataset, where):
    target = {
        "dataset root": "task-experiment_events.tsv",
        "subject folder": "sub-01/sub-01_task-experiment_events.tsv",
        "without the run entity": f"{FUNC}/sub-01_task-experiment_events.tsv",
    }[where]
    (dataset / EVENTS).rename(dataset / target)
    runs = find_runs(dataset, dataset / "derivatives/fmriprep", "01", "experiment")
    assert runs[0].events == dataset / target
    assert _run(dataset) == 0


def test_events_lacking_acquisition_entities_apply(dataset):
    # A multiband acquisition: the BOLD has acq- and dir-, its events do not.
    _rename_all(dataset / "sub-01", "_run-1_bold", "_acq-mb4_dir-AP_run-1_bold")
    _rename_all(dataset / PREP, "_run-1_", "_acq-mb4_dir-AP_run-1_")
    runs = find_runs(dataset, dataset / "derivatives/fmriprep", "01", "experiment")
    assert runs[0].events == dataset / EVENTS
    assert runs[0].name == "acq-mb4 dir-AP run-1"
    assert _run(dataset) == 0


def test_the_deepest_events_file_applies(dataset):
    # A root file that would fail (no face events) is overridden by the run's.
    root = pd.read_csv(dataset / EVENTS, sep="\t")
    root.assign(trial_type="fixation").to_csv(
        dataset / "task-experiment_events.tsv", sep="\t", index=False
    )
    assert _run(dataset) == 0


def test_the_run_own_events_file_wins_within_its_folder(dataset):
    partial = dataset / FUNC / "sub-01_task-experiment_events.tsv"
    shutil.copy(dataset / EVENTS, partial)
    runs = find_runs(dataset, dataset / "derivatives/fmriprep", "01", "experiment")
    assert runs[0].events == dataset / EVENTS


def test_two_partial_events_files_at_one_level_are_refused(dataset, capsys):
    _rename_all(dataset / "sub-01", "_run-1_bold", "_acq-mb4_run-1_bold")
    _rename_all(dataset / PREP, "_run-1_", "_acq-mb4_run-1_")
    (dataset / EVENTS).rename(dataset / FUNC / "sub-01_task-experiment_events.tsv")
    shutil.copy(
        dataset / FUNC / "sub-01_task-experiment_events.tsv",
        dataset / FUNC / "sub-01_task-experiment_acq-mb4_events.tsv",
    )
    assert _run(dataset) == 2
    _one_line_error(
        capsys,
        r"sub-01_task-experiment_acq-mb4_events\.tsv and "
        r"sub-01_task-experiment_events\.tsv both apply to the same run "
        r".* remove or rename one",
    )
    assert _nothing_written(dataset)


def test_repetition_time_inherited_from_the_raw_sidecars(dataset, caplog):
    # fMRIPrep's sidecar lacks it; the raw dataset's root sidecar has it.
    _edit_json(dataset / BOLD_JSON, lambda c: c.pop("RepetitionTime"))
    _edit_json(dataset / RAW_JSON, lambda c: c.pop("RepetitionTime"))
    with caplog.at_level(logging.WARNING, logger="laion_fmri"):
        assert _run(dataset) == 0
    assert "NIfTI header" not in caplog.text
    assert _sidecar(dataset).Parameters["RepetitionTime"] == [1.9]


# Variants of a run -----------------------------------------------------------


def _add_variant(dataset, entity):
    """A second resolution (or density) of the run, as fMRIPrep writes it."""
    for path in (dataset / PREP).glob(f"*{SPACE}_desc-*"):
        shutil.copy(path, path.with_name(path.name.replace(SPACE, f"{SPACE}_{entity}")))


def test_variants_of_a_run_need_a_choice(dataset, capsys):
    _add_variant(dataset, "res-2")
    assert _run(dataset) == 2
    _one_line_error(
        capsys,
        r"_desc-preproc_bold\.nii\.gz has 2 variants \(none, res-2\) that are the "
        r"same run; choose one with --res, --den or --bold-filter",
    )
    assert _nothing_written(dataset)


def test_res_chooses_the_variant_and_fits_it_once(dataset):
    _add_variant(dataset, "res-2")
    assert _run(dataset, "--res", "2") == 0
    runs = _sidecar(dataset).Runs
    assert len(runs) == 1 and "_res-2_desc-preproc_bold" in runs[0]
    assert _sidecar(dataset).Parameters["Selection"] == {"res": "2"}


def test_bold_filter_chooses_any_entity(dataset):
    _add_variant(dataset, "den-91k")
    assert _run(dataset, "--bold-filter", "den=91k") == 0
    assert "_den-91k_" in _sidecar(dataset).Runs[0]


def test_optimally_combined_echo_is_used_over_per_echo_series(dataset):
    for echo in (1, 2):
        for path in (dataset / PREP).glob(f"*_run-1_{SPACE}_desc-*"):
            name = path.name.replace("_run-1_", f"_run-1_echo-{echo}_")
            shutil.copy(path, path.with_name(name))
    runs = find_runs(dataset, dataset / "derivatives/fmriprep", "01", "experiment")
    assert [run.bold for run in runs] == [dataset / BOLD]
    chosen = find_runs(
        dataset,
        dataset / "derivatives/fmriprep",
        "01",
        "experiment",
        selection={"echo": "2"},
    )
    assert "_echo-2_" in chosen[0].bold.name
    assert "_echo-2_" in chosen[0].mask.name


# Folders that are not subjects -----------------------------------------------


def test_entries_that_are_not_subjects_are_skipped_with_one_warning(dataset, caplog):
    prep = dataset / "derivatives" / "fmriprep"
    shutil.copytree(prep / "sub-01", prep / "sub-02.bak")
    (prep / "sub-02_old").mkdir()
    (prep / "sub-03.zip").write_bytes(b"PK")
    (prep / "sub-01.html").write_text("<html></html>")  # fMRIPrep's report
    (dataset / "sub-01_notes.txt").write_text("notes")
    with caplog.at_level(logging.WARNING, logger="laion_fmri"):
        assert _run(dataset) == 0
    warnings = [r.getMessage() for r in caplog.records if "not subject" in r.message]
    assert len(warnings) == 1, warnings
    for name in ("sub-02.bak", "sub-02_old", "sub-03.zip", "sub-01_notes.txt"):
        assert name in warnings[0]
    assert "sub-01.html" not in warnings[0]


def test_subject_without_usable_files_is_never_skipped_silently(dataset, caplog):
    # sub-02 has raw events but no fMRIPrep outputs; sub-03 only an anat folder.
    shutil.copytree(dataset / "sub-01", dataset / "sub-02")
    _rename_all(dataset / "sub-02", "sub-01", "sub-02")
    (dataset / "derivatives/fmriprep/sub-03/anat").mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        assert _run(dataset) == 2
    assert "sub-02 failed: subject 'sub-02' not found" in caplog.text
    assert re.search(r"left out sub-03: no file of task-experiment", caplog.text)
    assert "1 done" in caplog.text


# OUTPUT_DIR ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["BIDS_DIR", "fMRIPrep folder", "raw dataset"])
def test_output_dir_into_the_inputs_is_refused(dataset, where, capsys, tmp_path):
    if where == "BIDS_DIR":
        output, message = dataset, r"OUTPUT_DIR .* is the BIDS dataset \(BIDS_DIR\)"
    elif where == "fMRIPrep folder":
        output = dataset / "derivatives" / "fmriprep"
        message = r"is fMRIPrep's folder \(--fmriprep-dir\)"
    else:
        output = tmp_path / "another"
        output.mkdir()
        shutil.copy(dataset / "dataset_description.json", output)
        message = r"holds a raw dataset"
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*")}
    assert _run(dataset, output=output) == 2
    _one_line_error(capsys, message)
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*")} == before


# Repetition time -------------------------------------------------------------


def _no_sidecar_tr(dataset):
    for path in (dataset / BOLD_JSON, dataset / RAW_JSON, dataset / ROOT_JSON):
        _edit_json(path, lambda c: c.pop("RepetitionTime"))


def _set_header_tr(dataset, value, unit):
    image = nib.load(dataset / BOLD)
    header = image.header.copy()
    zooms = header.get_zooms()
    header.set_zooms((*zooms[:3], value))
    header.set_xyzt_units("mm", unit)
    nib.save(
        nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, header),
        dataset / BOLD,
    )


@pytest.mark.parametrize(("value", "unit"), [(1.9, "sec"), (1900.0, "msec")])
def test_repetition_time_from_the_header_with_a_warning(dataset, value, unit, caplog):
    _no_sidecar_tr(dataset)
    _set_header_tr(dataset, value, unit)
    with caplog.at_level(logging.WARNING, logger="laion_fmri"):
        assert _run(dataset) == 0
    assert f"TR 1.9 s taken from the NIfTI header (pixdim[4] in {unit})" in caplog.text
    sidecar = _sidecar(dataset)
    assert sidecar.Parameters["RepetitionTime"] == [pytest.approx(1.9)]
    assert any("NIfTI header" in w for w in sidecar.Parameters["Warnings"])


def test_no_repetition_time_anywhere_is_one_line(dataset, capsys):
    _no_sidecar_tr(dataset)
    _set_header_tr(dataset, 0.0, "sec")
    assert _run(dataset) == 2
    _one_line_error(capsys, r"no RepetitionTime .* give --repetition-time")


def test_repetition_time_option_overrides_a_disagreement(dataset, caplog):
    _edit_json(dataset / BOLD_JSON, lambda c: c.update(RepetitionTime=2.5))
    with caplog.at_level(logging.WARNING, logger="laion_fmri"):
        assert _run(dataset, "--repetition-time", "1.9") == 0
    assert "--repetition-time 1.9 s used instead of 2.5 s" in caplog.text
    assert _sidecar(dataset).Parameters["RepetitionTime"] == [1.9]


# Events ----------------------------------------------------------------------


def test_events_with_na_and_whitespace_are_modelled(dataset, caplog):
    def damage(table):
        extra = pd.DataFrame(
            {
                "onset": ["100.0", "n/a"],
                "duration": ["n/a", "16.0"],
                "trial_type": ["face", "scene"],
            }
        )
        table = pd.concat([table, extra], ignore_index=True)
        table["trial_type"] = table["trial_type"].map(lambda t: f"{t}  ")
        return table

    _edit_table(dataset / EVENTS, damage)
    with caplog.at_level(logging.WARNING, logger="laion_fmri"):
        assert _run(dataset) == 0
    assert "1 row with duration n/a modelled as impulses" in caplog.text
    assert "1 row with onset or trial_type n/a left out" in caplog.text
    assert _sidecar(dataset).ExtraConditions == []


@pytest.mark.parametrize("name", ["constant", "drift_1", "csf"])
def test_trial_type_named_like_a_design_column_is_refused(dataset, name, capsys):
    def rename(table):
        table.loc[table.trial_type == "baseline", "trial_type"] = name
        return table

    _edit_table(dataset / EVENTS, rename)
    assert _run(dataset) == 2
    _one_line_error(
        capsys,
        rf"trial type '{name}' has the name of a column of the design .* "
        rf"--condition NEWNAME={name}",
    )
    assert _nothing_written(dataset)
    assert _run(dataset, "--condition", f"fixation={name}") == 0


def test_duplicated_and_glob_confounds(dataset):
    rng = np.random.default_rng(0)

    def add_compcor(table):
        for k in range(10):
            table[f"a_comp_cor_{k:02d}"] = rng.normal(size=len(table)).astype(str)
        return table

    _edit_table(dataset / CONFOUNDS, add_compcor)
    confounds = ["trans_x", "trans_x", "rot_?", "a_comp_cor_0[0-5]"]
    assert _run(dataset, "--confounds", *confounds) == 0
    sidecar = _sidecar(dataset)
    assert sidecar.Confounds == ["trans_x", "rot_?", "a_comp_cor_0[0-5]"]
    from laion_fmri_dataloader.inputs.bids import read_confounds

    table = read_confounds(dataset / CONFOUNDS, confounds, N_VOLUMES).table
    assert list(table.columns) == [
        "trans_x",
        "rot_x",
        "rot_y",
        "rot_z",
        *(f"a_comp_cor_{k:02d}" for k in range(6)),
    ]


def test_unknown_confound_lists_the_nearest_once(dataset, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        assert _run(dataset, "--confounds", "trans_x", "white_mater") == 2
    error = _one_line_error(
        capsys,
        r"has no column 'white_mater'; nearest: white_matter, "
        r"white_matter_power2, .*choose others with --confounds$",
    )
    assert error.count("nearest") == 1 and len(error) < 400
    assert "white_mater" not in caplog.text  # printed once, by the command line


# Non-steady-state volumes and slice timing ----------------------------------


def _flag_non_steady_state(dataset, volumes):
    def add(table):
        for k, volume in enumerate(volumes):
            column = np.zeros(len(table), dtype=int)
            column[volume] = 1
            table[f"non_steady_state_outlier_{k:02d}"] = column.astype(str)
        return table

    _edit_table(dataset / CONFOUNDS, add)


def _nilearn_z(dataset, *, slice_time_ref=0.0, sample_mask=None):
    """nilearn's FirstLevelModel on the same run, as the pipeline is set up."""
    from nilearn.glm.first_level import FirstLevelModel

    from laion_fmri_dataloader.contrasts import STANDARD_CONTRASTS, contrast_vector
    from laion_fmri_dataloader.inputs.bids import DEFAULT_CONFOUNDS

    mask = nib.load(_output(dataset) / layout.first_level_mask("01", "experiment"))
    model = FirstLevelModel(
        t_r=1.9,
        slice_time_ref=slice_time_ref,
        hrf_model="spm",
        drift_model="cosine",
        high_pass=0.01,
        noise_model="ar1",
        signal_scaling=0,
        mask_img=mask,
        minimize_memory=True,
    )
    confounds = pd.read_csv(dataset / CONFOUNDS, sep="\t", na_values="n/a")[
        list(DEFAULT_CONFOUNDS)
    ].bfill()
    model.fit(
        nib.load(dataset / BOLD),
        events=pd.read_csv(dataset / EVENTS, sep="\t"),
        confounds=confounds,
        sample_masks=sample_mask,
    )
    columns = list(model.design_matrices_[0].columns)
    vector = contrast_vector(STANDARD_CONTRASTS["faceVsScene"], columns)
    z = model.compute_contrast(vector, stat_type="t", output_type="z_score")
    return z.get_fdata(), mask.get_fdata() > 0


def test_non_steady_state_volumes_are_dropped_as_nilearn_does(dataset, caplog):
    _flag_non_steady_state(dataset, [0, 1])
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        assert _run(dataset) == 0
    assert re.search(
        r"run-1: 2 volumes dropped \(non_steady_state_outlier columns\): 0, 1",
        caplog.text,
    )
    parameters = _sidecar(dataset).Parameters
    assert parameters["DroppedVolumes"] == [[0, 1]]
    theirs, inside = _nilearn_z(dataset, sample_mask=np.arange(2, N_VOLUMES))
    difference = np.abs(_z(dataset)[inside] - theirs[inside])
    assert difference.max() < 1e-3, difference.max()


def test_dummy_scans_replace_the_non_steady_state_columns(dataset):
    _flag_non_steady_state(dataset, [0])
    assert _run(dataset, "--dummy-scans", "3") == 0
    parameters = _sidecar(dataset).Parameters
    assert parameters["DroppedVolumes"] == [[0, 1, 2]]
    assert parameters["DroppedVolumesReason"] == "--dummy-scans"


def test_start_time_sets_slice_time_ref_as_nilearn_does(dataset, caplog):
    # fMRIPrep >= 21.0 corrected slice timing to the middle of the TR.
    _edit_json(dataset / BOLD_JSON, lambda c: c.update(StartTime=0.95))
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        assert _run(dataset) == 0
    assert "frames at 0.5 of the TR (slice_time_ref)" in caplog.text
    assert _sidecar(dataset).Parameters["SliceTimeRef"] == [0.5]
    theirs, inside = _nilearn_z(dataset, slice_time_ref=0.5)
    difference = np.abs(_z(dataset)[inside] - theirs[inside])
    assert difference.max() < 1e-3, difference.max()
    at_zero, _ = _nilearn_z(dataset, slice_time_ref=0.0)
    assert np.abs(_z(dataset)[inside] - at_zero[inside]).max() > 1e-2


def test_slice_timing_without_start_time_warns(dataset, caplog):
    # fMRIPrep before 21.0 wrote neither StartTime nor SliceTimingCorrected.
    _edit_json(
        dataset / BOLD_JSON,
        lambda c: [c.pop("StartTime"), c.pop("SliceTimingCorrected")],
    )
    with caplog.at_level(logging.WARNING, logger="laion_fmri"):
        assert _run(dataset) == 0
    assert "give --slice-time-ref 0.5 if slice timing was corrected" in caplog.text
    assert _run(dataset, "--slice-time-ref", "0.5", "--force") == 0
    assert _sidecar(dataset).Parameters["SliceTimeRef"] == [0.5]


def test_start_time_outside_the_tr_is_one_line(dataset, capsys):
    _edit_json(dataset / BOLD_JSON, lambda c: c.update(StartTime=2.0))
    assert _run(dataset) == 2
    _one_line_error(capsys, r"StartTime must be a number of seconds in \[0, TR")


# Old fMRIPrep ----------------------------------------------------------------


def test_fmriprep_before_1_2_names_are_refused(dataset, capsys):
    prep = dataset / PREP
    (prep / f"{RUN}_desc-confounds_timeseries.tsv").rename(
        prep / f"{RUN}_bold_confounds.tsv"
    )
    (prep / f"{RUN}_{SPACE}_desc-preproc_bold.nii.gz").rename(
        prep / f"{RUN}_bold_{SPACE}_preproc.nii.gz"
    )
    assert _run(dataset) == 2
    _one_line_error(
        capsys,
        r"_bold_(confounds\.tsv|space-MNI152NLin2009cAsym_preproc\.nii\.gz) is named "
        r"as fMRIPrep before 1\.2 .* supported are fMRIPrep 1\.2 and later",
    )


def test_fmriprep_before_1_2_confound_columns_are_refused(dataset, capsys):
    old = {"trans_x": "X", "rot_x": "RotX", "global_signal": "GlobalSignal"}
    _edit_table(dataset / CONFOUNDS, lambda t: t.rename(columns=old))
    assert _run(dataset) == 2
    _one_line_error(
        capsys,
        r"_desc-confounds_timeseries\.tsv has the column names of fMRIPrep before "
        r"1\.2 \(X, RotX, GlobalSignal\); supported are fMRIPrep 1\.2 and later",
    )


def test_confounds_regressors_of_fmriprep_1_2_to_20_1_are_read(dataset):
    (dataset / CONFOUNDS).rename(
        dataset / CONFOUNDS.replace("_timeseries.tsv", "_regressors.tsv")
    )
    assert _run(dataset) == 0


# Files -----------------------------------------------------------------------


def test_uncompressed_bold_and_mask_give_the_same_maps(dataset, pristine, tmp_path):
    for relative in (BOLD, MASK):
        image = nib.load(dataset / relative)
        nib.save(image, dataset / relative.replace(".nii.gz", ".nii"))
        (dataset / relative).unlink()
    assert _run(dataset) == 0
    reference = tmp_path / "reference"
    shutil.copytree(pristine, reference)
    assert _run(reference) == 0
    np.testing.assert_array_equal(_z(dataset), _z(reference))


def test_voxels_nan_or_zero_in_some_volumes_are_counted(dataset, caplog):
    inside = np.argwhere(nib.load(dataset / MASK).get_fdata() > 0)
    image = nib.load(dataset / BOLD)
    data = np.asanyarray(image.dataobj).astype(np.float32)
    for k in range(3):
        x, y, z = inside[k]
        data[x, y, z, 10 + k] = 0.0
    x, y, z = inside[3]
    data[x, y, z, 20] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine, image.header), dataset / BOLD)
    with caplog.at_level(logging.WARNING, logger="laion_fmri"):
        assert _run(dataset) == 0
    assert re.search(
        r"sub-01: run-1 \(sub-01_task-experiment_run-1_.*_bold\.nii\.gz\): 4 voxels "
        r"of the brain mask are NaN or zero in some volumes \(0 in every volume\)",
        caplog.text,
    )


def test_a_single_subject_error_is_printed_once(dataset, capsys, caplog):
    (dataset / EVENTS).unlink()
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        assert _run(dataset) == 2
    error = _one_line_error(capsys, r"the run has no events file")
    assert "no events file" not in caplog.text
    assert error.count("no events file") == 1
