"""Outputs other tools read: sidecar shape, headers, dataset_description, pybids."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from laion_fmri_dataloader import PYBIDS_CONFIG, LAIONfMRIDataset, layout, sidecar
from laion_fmri_dataloader.cli import main
from laion_fmri_dataloader.pipeline.participant import write_dataset_description
from laion_fmri_dataloader.sidecar import DatasetDescription, MapSidecar

#: The metadata example of the LAION-fMRI documentation (GLM data page), verbatim.
SEED_EXAMPLE = {
    "AnalysisLevel": "first_level",
    "Model": {
        "Type": "GLM",
        "HRF": "spm",
        "DriftModel": "cosine",
        "HighPassFilter": 0.01,
        "NoiseModel": "ar1",
    },
    "Contrasts": {
        "faceVsBaseline": {
            "Description": "Face stimuli versus baseline",
            "Weights": [1, 0, 0, -1],
        },
        "faceVsScene": {
            "Description": "Face stimuli versus scene stimuli",
            "Weights": [1, -1, 0, 0],
        },
    },
    "Software": {
        "Name": "Nilearn",
        "Version": "0.10.0",
        "Container": "nilearn/nilearn:0.10.0",
    },
    "Confounds": [
        "trans_x",
        "trans_y",
        "trans_z",
        "rot_x",
        "rot_y",
        "rot_z",
        "global_signal",
        "csf",
        "white_matter",
    ],
}
SEED_KEYS = list(SEED_EXAMPLE)


def _glm(dataset):
    return dataset / "derivatives" / "glm"


def _json(dataset, relative):
    return json.loads((_glm(dataset) / layout.sidecar_of(relative)).read_text())


def test_seed_example_loads_as_it_is():
    loaded = MapSidecar.model_validate(SEED_EXAMPLE)
    assert loaded.Software.Container == "nilearn/nilearn:0.10.0"
    assert loaded.Contrasts["faceVsScene"].Weights == [1, -1, 0, 0]
    dumped = loaded.model_dump(exclude_unset=True)
    assert dumped == SEED_EXAMPLE


def _assert_seed_shape(data, level):
    """The documented keys first, in the documented order and shape."""
    assert list(data)[: len(SEED_KEYS)] == SEED_KEYS
    assert data["AnalysisLevel"] == level
    assert list(data["Model"])[:5] == list(SEED_EXAMPLE["Model"])
    for info in data["Contrasts"].values():
        assert {"Description", "Weights"} <= set(info)
    assert list(data["Software"]) == ["Name", "Version", "Container"]
    assert data["Software"]["Name"] == "laion-fmri-dataloader"
    assert isinstance(data["Confounds"], list)
    assert set(data["Dependencies"]) >= {"nilearn", "nibabel", "numpy", "scipy"}


def test_pipeline_sidecars_follow_the_seed_example(group_dataset):
    first = _json(
        group_dataset, layout.first_level_map("01", "experiment", "faceVsScene", "z")
    )
    _assert_seed_shape(first, "first_level")
    assert first["Contrasts"]["faceVsScene"]["Weights"] == [1.0, -1.0, 0.0, 0.0]
    assert first["Model"]["RunCombination"] == "mean"
    assert first["Confounds"] == SEED_EXAMPLE["Confounds"]
    # bold, mask, confounds, events and the sidecars that apply by inheritance:
    # the raw root and run sidecars, then fMRIPrep's
    assert len(first["InputFiles"]) == 2 * 7
    assert all(not entry["Path"].startswith("/") for entry in first["InputFiles"])
    for stat in ("t", "z", "p"):
        group = _json(group_dataset, layout.group_map("faceVsScene", stat))
        _assert_seed_shape(group, "group_level")
        assert group["Model"]["RunCombination"] == "mean"
    metadata = LAIONfMRIDataset(group_dataset).load_metadata(
        "sub-01", contrast="faceVsScene", stat_type="effect"
    )
    assert metadata.AnalysisLevel == "first_level"
    assert metadata.Software.Name == "laion-fmri-dataloader"
    assert list(metadata.model_dump())[: len(SEED_KEYS)] == SEED_KEYS


def test_container_is_recorded_only_inside_one(monkeypatch, tmp_path):
    for variable in (*sidecar._APPTAINER_VARIABLES, sidecar.CONTAINER_VARIABLE):
        monkeypatch.delenv(variable, raising=False)
    absent = {name: tmp_path / "absent" for name in sidecar._CONTAINER_MARKERS}
    monkeypatch.setattr(sidecar, "_CONTAINER_MARKERS", absent)
    assert sidecar.software().Container is None
    monkeypatch.setenv("APPTAINER_NAME", "laion-fmri-glm_0.4.sif")
    assert sidecar.software().Container == "laion-fmri-glm_0.4.sif"
    assert sidecar.container() == ("apptainer", "laion-fmri-glm_0.4.sif")
    monkeypatch.delenv("APPTAINER_NAME")
    marker = tmp_path / ".dockerenv"
    marker.touch()
    monkeypatch.setattr(sidecar, "_CONTAINER_MARKERS", {"docker": marker})
    assert sidecar.software().Container == "docker"
    monkeypatch.setenv(sidecar.CONTAINER_VARIABLE, "org/laion-fmri-glm:0.4")
    assert sidecar.software().Container == "org/laion-fmri-glm:0.4"


def test_sidecars_of_earlier_versions_load_in_todays_shape():
    earlier = {
        "AnalysisLevel": "first",
        "Software": [
            {"Name": "laion-fmri-dataloader", "Version": "0.1.0"},
            {"Name": "nilearn", "Version": "0.11.0"},
        ],
        "Correction": {"Method": "fdr", "Alpha": 0.05, "ZThreshold": 3.2},
    }
    loaded = MapSidecar.model_validate(earlier)
    assert loaded.AnalysisLevel == "first_level"
    assert loaded.Software.Version == "0.1.0"
    assert loaded.Dependencies == {"nilearn": "0.11.0"}


def test_masks_have_the_header_codes_of_the_maps(group_dataset):
    glm = _glm(group_dataset)
    pairs = [
        (
            layout.first_level_mask("01", "experiment"),
            layout.first_level_map("01", "experiment", "faceVsScene", "z"),
        ),
        (layout.group_mask(), layout.group_map("faceVsScene", "z")),
    ]
    bold = next((group_dataset / "derivatives" / "fmriprep").rglob("*_bold.nii.gz"))
    bold_header = nib.load(bold).header
    for mask_path, map_path in pairs:
        mask, statmap = (
            nib.load(glm / mask_path).header,
            nib.load(glm / map_path).header,
        )
        for key in ("qform_code", "sform_code"):
            assert int(mask[key]) == int(statmap[key]) == int(bold_header[key]), key
        assert mask.get_xyzt_units() == statmap.get_xyzt_units() == ("mm", "sec")
        np.testing.assert_allclose(mask.get_sform(), statmap.get_sform())
        assert set(np.unique(nib.load(glm / mask_path).get_fdata())) <= {0.0, 1.0}


def test_source_dataset_is_relative_never_absolute(group_dataset, tmp_path):
    description = DatasetDescription.model_validate_json(
        (_glm(group_dataset) / "dataset_description.json").read_text()
    )
    assert description.SourceDatasets == [{"URL": "../.."}]
    assert description.local_source(_glm(group_dataset)) == group_dataset.resolve()
    elsewhere = tmp_path / "outputs" / "glm"
    elsewhere.mkdir(parents=True)
    write_dataset_description(elsewhere, group_dataset)
    text = (elsewhere / "dataset_description.json").read_text()
    url = json.loads(text)["SourceDatasets"][0]["URL"]
    assert not url.startswith("/") and str(tmp_path) not in text
    assert (elsewhere / url).resolve() == group_dataset.resolve()
    write_dataset_description(elsewhere, group_dataset, source_dataset="")
    assert (
        json.loads((elsewhere / "dataset_description.json").read_text())[
            "SourceDatasets"
        ]
        == []
    )


def _group_copy(group_dataset, tmp_path, effects=None):
    copy = tmp_path / "copy"
    shutil.copytree(group_dataset, copy)
    shutil.rmtree(_glm(copy) / "group_level")
    if effects is not None:
        rng = np.random.default_rng(effects)
        for path in (_glm(copy) / "first_level").rglob("*_stat-effect.nii.gz"):
            image = nib.load(path)
            noise = rng.standard_normal(image.shape).astype(np.float32)
            nib.save(nib.Nifti1Image(noise, image.affine, image.header), path)
    return copy


def _run_group(dataset, *extra):
    args = ["glm", str(dataset), str(_glm(dataset)), "group", "--scheduler", "none"]
    assert main([*args, "--no-reports", *extra]) == 0


def test_p_sidecar_says_whether_two_sided(group_dataset, tmp_path):
    two_sided = _json(group_dataset, layout.group_map("faceVsScene", "p"))
    assert two_sided["TwoSided"] is True
    copy = _group_copy(group_dataset, tmp_path)
    _run_group(copy, "--one-sided")
    assert _json(copy, layout.group_map("faceVsScene", "p"))["TwoSided"] is False


def test_critical_values_recorded_even_when_nothing_survives(group_dataset, tmp_path):
    """Noise effect maps: FDR and Bonferroni find nothing, yet state their cutoff."""
    copy = _group_copy(group_dataset, tmp_path, effects=1)
    _run_group(copy, "--fwe", "bonferroni")
    n_voxels = int(nib.load(_glm(copy) / layout.group_mask()).get_fdata().sum())
    dof = 5
    for correction in ("fdr", "fwe"):
        info = MapSidecar.model_validate(
            _json(copy, layout.group_map("faceVsScene", correction=correction))
        ).Correction
        corrected = nib.load(
            _glm(copy) / layout.group_map("faceVsScene", correction=correction)
        ).get_fdata()
        assert not corrected.any() and info.SmallestSurvivingZ is None
        # no discovery: both cut at alpha / m (FDR's first step, Bonferroni)
        assert info.PThreshold == pytest.approx(0.05 / n_voxels)
        assert info.TThreshold == pytest.approx(stats.t.isf(0.025 / n_voxels, dof))
        assert info.ZThreshold == pytest.approx(stats.norm.isf(0.025 / n_voxels))


def test_critical_values_of_surviving_maps(group_dataset):
    glm = _glm(group_dataset)
    mask = nib.load(glm / layout.group_mask()).get_fdata() > 0
    seen = set()
    for contrast in ("faceVsBaseline", "sceneVsBaseline", "objectVsBaseline"):
        z = nib.load(glm / layout.group_map(contrast, "z")).get_fdata()[mask]
        t = nib.load(glm / layout.group_map(contrast, "t")).get_fdata()[mask]
        p = nib.load(glm / layout.group_map(contrast, "p")).get_fdata()[mask]
        for correction in ("fdr", "fwe"):
            info = MapSidecar.model_validate(
                _json(group_dataset, layout.group_map(contrast, correction=correction))
            ).Correction
            survive = (
                nib.load(glm / layout.group_map(contrast, correction=correction))
                .get_fdata()[mask]
                .astype(bool)
            )
            if not survive.any():
                continue
            seen.add(correction)
            if correction == "fdr":
                assert info.PThreshold == pytest.approx(p[survive].max(), rel=1e-5)
            # surviving voxels are beyond the critical value, the others are not
            assert np.abs(t[survive]).min() >= info.TThreshold - 1e-3
            assert np.abs(z[survive]).min() >= info.ZThreshold - 1e-3
            assert np.abs(t[~survive]).max() <= info.TThreshold + 1e-3
            assert info.SmallestSurvivingZ == pytest.approx(np.abs(z[survive]).min())
    assert seen == {"fdr", "fwe"}


def test_pybids_finds_maps_and_their_sidecars(group_dataset):
    bids = pytest.importorskip("bids")
    from laion_fmri_dataloader import pybids_layout

    glm = _glm(group_dataset)
    plain = bids.BIDSLayout(
        glm, config=["bids", "derivatives", PYBIDS_CONFIG], validate=False
    )
    found = plain.get(
        contrast="faceVsScene",
        stat="z",
        split=bids.layout.Query.NONE,
        extension=".nii.gz",
    )
    expected = {
        str(glm / layout.group_map("faceVsScene", "z")),
        *(
            str(
                glm
                / layout.first_level_map(f"{i:02d}", "experiment", "faceVsScene", "z")
            )
            for i in range(1, 7)
        ),
    }
    assert {f.path for f in found} == expected
    odd = plain.get(contrast="faceVsScene", stat="z", split="odd", extension=".nii.gz")
    assert {f.filename for f in odd} == {
        f"sub-{i:02d}_task-experiment_split-odd_contrast-faceVsScene_stat-z.nii.gz"
        for i in range(1, 7)
    }
    assert [
        f.path
        for f in plain.get(
            level="group", contrast="faceVsScene", stat="z", extension=".nii.gz"
        )
    ] == [str(glm / layout.group_map("faceVsScene", "z"))]
    fdr = plain.get(contrast="faceVsScene", correction="fdr", extension=".nii.gz")
    assert [f.filename for f in fdr] == [
        "group_contrast-faceVsScene_fdr-corrected.nii.gz"
    ]
    # every documented name parses the same in pybids and in layout
    for bids_file in plain.get(extension=".nii.gz"):
        ours = layout.parse_name(bids_file.filename)
        entities = bids_file.get_entities()
        for key, entity in (
            ("contrast", "contrast"),
            ("stat", "stat"),
            ("correction", "correction"),
            ("sub", "subject"),
        ):
            assert ours.get(key) == entities.get(entity), bids_file.filename
    assert plain.build_path(
        {"subject": "01", "task": "experiment", "contrast": "faceVsScene", "stat": "z"},
        validate=False,
        absolute_paths=False,
    ) == str(layout.first_level_map("01", "experiment", "faceVsScene", "z"))

    with_sidecars = pybids_layout(glm)
    (group_z,) = with_sidecars.get(
        contrast="faceVsScene", stat="z", level="group", extension=".nii.gz"
    )
    metadata = with_sidecars.get_metadata(group_z.path)
    expected_sidecar = _json(group_dataset, layout.group_map("faceVsScene", "z"))
    assert metadata["AnalysisLevel"] == "group_level"
    assert metadata["Model"] == expected_sidecar["Model"]
    assert metadata["Subjects"] == expected_sidecar["Subjects"]
    (subject_z,) = with_sidecars.get(
        subject="01",
        contrast="faceVsScene",
        stat="z",
        split=bids.layout.Query.NONE,
        extension=".nii.gz",
    )
    assert with_sidecars.get_metadata(subject_z.path)["Subject"] == "sub-01"
    (corrected,) = with_sidecars.get(
        contrast="faceVsScene", correction="fwe", extension=".nii.gz"
    )
    assert "ZThreshold" in with_sidecars.get_metadata(corrected.path)["Correction"]
    # fROI masks share the suffix; pick the brain mask by its name
    (mask,) = (
        found
        for found in with_sidecars.get(subject="01", suffix="mask", extension=".nii.gz")
        if found.filename == layout.first_level_mask("01", "experiment").name
    )
    assert with_sidecars.get_metadata(mask.path)["StatType"] == "mask"
