"""Bad input to the participant level: one clear line, exit code 2, nothing written.

Also the inputs that differ from the defaults but are fine: mapped trial types,
extra categories, sessions, user contrasts, NaN and constant voxels.
"""

from __future__ import annotations

import json
import re
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.cli import main
from laion_fmri_dataloader.sidecar import MapSidecar
from laion_fmri_dataloader.simulate import run_files

# The simulated run's files, relative to the dataset.
RUN = run_files(".", "01", 1)
BOLD = RUN.preproc_bold
MASK = RUN.brain_mask
CONFOUNDS = RUN.confounds
EVENTS = RUN.events


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from laion_fmri_dataloader.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("pristine")
    simulate_dataset(root, subjects=1, runs=1, resolution=8.0, n_volumes=60, seed=2)
    return root


@pytest.fixture
def dataset(pristine, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    return copy


def _run(dataset, *extra):
    output = dataset / "derivatives" / "glm"
    args = ["glm", str(dataset), str(output), "participant", "--scheduler", "none"]
    return main([*args, *extra])


def _edit_table(path, change):
    table = pd.read_csv(path, sep="\t", keep_default_na=False)
    change(table).to_csv(path, sep="\t", index=False)


def _events(dataset, change):
    _edit_table(dataset / EVENTS, change)


def _replace_image(path, change):
    image = nib.load(path)
    data, affine = change(np.asanyarray(image.dataobj), image.affine.copy())
    header = image.header.copy()
    header.set_data_shape(data.shape)
    nib.save(nib.Nifti1Image(data, affine, header), path)


def _shift_affine(data, affine):
    affine[:3, 3] += 4.0
    return data, affine


def _no_scene(table):
    return table[table.trial_type != "scene"]


def _rename_all(table):
    return table.assign(trial_type=table.trial_type.map(lambda t: f"{t}img"))


def _tr(dataset):
    sidecar = dataset / RUN.preproc_bold_json
    content = json.loads(sidecar.read_text())
    content["RepetitionTime"] = 2.5
    sidecar.write_text(json.dumps(content))


BAD_INPUTS = {
    "missing events": (
        lambda d: (d / EVENTS).unlink(),
        r"_bold\.nii\.gz: the run has no events file",
    ),
    "empty events": (
        lambda d: (d / EVENTS).write_text(""),
        r"events file .*_events\.tsv is empty",
    ),
    "events without rows": (
        lambda d: (d / EVENTS).write_text("onset\tduration\ttrial_type\n"),
        r"events file .*_events\.tsv has no events",
    ),
    "events without trial_type": (
        lambda d: _events(d, lambda t: t.drop(columns="trial_type")),
        r"events file .*_events\.tsv lacks column\(s\) trial_type",
    ),
    "events without onset": (
        lambda d: _events(d, lambda t: t.drop(columns="onset")),
        r"lacks column\(s\) onset",
    ),
    "unmapped trial types": (
        lambda d: _events(d, _rename_all),
        r"trial types baselineimg, faceimg, objectimg, sceneimg, none of which is "
        r"face, scene or object; map them with e\.g\. --condition",
    ),
    "category without events": (
        lambda d: _events(d, _no_scene),
        r"events file .*_events\.tsv has no 'scene' events, which contrast "
        r"sceneVsBaseline needs",
    ),
    "confounds missing a column": (
        lambda d: _edit_table(d / CONFOUNDS, lambda t: t.drop(columns="csf")),
        r"confounds file .*_desc-confounds_timeseries\.tsv has no column 'csf'; "
        r"nearest: csf_derivative1, ",
    ),
    "confounds with too few rows": (
        lambda d: _edit_table(d / CONFOUNDS, lambda t: t.iloc[:-1]),
        r"confounds file .* has 59 rows but the BOLD series has 60 volumes",
    ),
    "TR mismatch": (
        _tr,
        r"_bold\.nii\.gz: TR in the NIfTI header \(1\.9 s\) differs from "
        r"RepetitionTime in .*_bold\.json \(2\.5 s\)",
    ),
    "3D BOLD": (
        lambda d: _replace_image(d / BOLD, lambda data, a: (data[..., 0], a)),
        r"BOLD series .*_bold\.nii\.gz has shape \(\d+, \d+, \d+\); a 4D series",
    ),
    "mask on another grid": (
        lambda d: _replace_image(d / MASK, lambda data, a: (data[1:], a)),
        r"brain mask .*_mask\.nii\.gz \(shape .*\) is not on the grid of",
    ),
    "mask with another affine": (
        lambda d: _replace_image(d / MASK, _shift_affine),
        r"brain mask .* is not on the grid of",
    ),
    "truncated BOLD": (
        lambda d: (d / BOLD).write_bytes((d / BOLD).read_bytes()[:5000]),
        r"BOLD series .*_bold\.nii\.gz cannot be read .* corrupt or truncated",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line(dataset, case, capsys):
    damage, message = BAD_INPUTS[case]
    damage(dataset)
    assert _run(dataset) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("laion-fmri-glm: error: ")
    assert "\n" not in error
    assert "Traceback" not in error
    assert re.search(message, error), error
    subject_dir = dataset / "derivatives" / "glm" / "first_level" / "sub-01"
    assert not subject_dir.exists() or not any(subject_dir.iterdir())


def test_unknown_subject_lists_the_available_ones(dataset, capsys):
    assert _run(dataset, "--participant-label", "09") == 2
    error = capsys.readouterr().err
    assert "subject 'sub-09' not found" in error
    assert "Available: sub-01" in error


def test_nan_and_constant_voxels_are_reported_not_propagated(dataset):
    bold_path = dataset / BOLD
    mask = nib.load(dataset / MASK).get_fdata() > 0
    inside = np.argwhere(mask)

    def spoil(data, affine):
        data = data.astype(np.float32)
        x, y, z = inside[0]
        data[x, y, z, 5] = np.nan
        x, y, z = inside[1]
        data[x, y, z, :] = 700.0
        return data, affine

    _replace_image(bold_path, spoil)
    assert _run(dataset) == 0
    output = dataset / "derivatives" / "glm"
    for stat in layout.FIRST_LEVEL_STAT_TYPES:
        path = output / layout.first_level_map("01", "experiment", "faceVsScene", stat)
        assert np.isfinite(nib.load(path).get_fdata()).all()
    relative = layout.first_level_map("01", "experiment", "faceVsScene", "z")
    sidecar = MapSidecar.model_validate_json(
        (output / layout.sidecar_of(relative)).read_text()
    )
    assert any("2 voxels" in warning for warning in sidecar.Parameters["Warnings"])
    written_mask = nib.load(
        output / layout.first_level_mask("01", "experiment")
    ).get_fdata()
    assert written_mask.sum() == mask.sum() - 2


def test_condition_mapping_and_user_contrast(dataset):
    def split_faces(table):
        faces = table.trial_type == "face"
        table.loc[faces, "trial_type"] = ["adult", "child"] * (faces.sum() // 2) + [
            "adult"
        ] * (faces.sum() % 2)
        return table

    _events(dataset, split_faces)
    extra = (
        "--condition",
        "face=adult,child",
        "--contrast",
        "faceVsAll=face - 0.5*scene - 0.5*object",
    )
    assert _run(dataset, *extra) == 0
    output = dataset / "derivatives" / "glm"
    relative = layout.first_level_map("01", "experiment", "faceVsAll", "z")
    sidecar = MapSidecar.model_validate_json(
        (output / layout.sidecar_of(relative)).read_text()
    )
    info = sidecar.Contrasts["faceVsAll"]
    assert dict(zip(info.Conditions, info.Weights, strict=True))["scene"] == -0.5
    assert sidecar.Parameters["ConditionMap"] == {"face": ["adult", "child"]}


def test_sessions_extra_categories_and_task(tmp_path):
    from laion_fmri_dataloader.simulate import simulate_dataset

    simulate_dataset(
        tmp_path,
        subjects=1,
        runs=2,
        sessions=2,
        task="oloc",
        extra_categories=("body",),
        resolution=8.0,
        n_volumes=80,
    )
    assert _run(tmp_path, "--task", "oloc") == 0
    output = tmp_path / "derivatives" / "glm"
    relative = layout.first_level_map("01", "oloc", "faceVsScene", "z")
    sidecar = MapSidecar.model_validate_json(
        (output / layout.sidecar_of(relative)).read_text()
    )
    assert sidecar.ExtraConditions == ["body"]
    assert len(sidecar.Runs) == 4
    assert {"ses-01", "ses-02"} <= {
        part for run in sidecar.Runs for part in run.split("/")
    }
