"""The roi level end to end on a small simulated dataset: files, loader, bad input."""

from __future__ import annotations

import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.cli import main
from laion_fmri_dataloader.dataset import LAIONfMRIDataset
from laion_fmri_dataloader.errors import NotFoundError


def _roi(data_dir, *options):
    return main(
        [
            "glm",
            str(data_dir),
            str(data_dir / "derivatives" / "glm"),
            "roi",
            "--no-reports",
            *options,
        ]
    )


@pytest.fixture(scope="module")
def roi_dataset(group_dataset, tmp_path_factory):
    """A copy of the six-subject dataset with its roi level run."""
    copy = tmp_path_factory.mktemp("roi") / "data"
    shutil.copytree(group_dataset, copy)
    assert _roi(copy) == 0
    return copy


def test_participant_level_writes_half_run_maps(group_dataset):
    glm = group_dataset / "derivatives" / "glm"
    dataset = LAIONfMRIDataset(group_dataset)
    # half-run maps are not contrasts of the listings
    assert "face" not in dataset.contrasts("sub-01")
    for split, run in (("odd", "run-1"), ("even", "run-2")):
        z = glm / layout.first_level_map("01", "experiment", "faceVsObject", "z", split)
        effect = glm / layout.first_level_map(
            "01", "experiment", "face", "effect", split
        )
        sidecar = json.loads((glm / layout.sidecar_of(effect)).read_text())
        assert z.is_file() and effect.is_file()
        assert len(sidecar["Runs"]) == 1 and run in sidecar["Runs"][0]
    odd = nib.load(
        glm / layout.first_level_map("01", "experiment", "face", "effect", "odd")
    )
    even = nib.load(
        glm / layout.first_level_map("01", "experiment", "face", "effect", "even")
    )
    both = np.asarray(odd.dataobj) + np.asarray(even.dataobj)
    assert np.isfinite(both).all() and not np.array_equal(odd.dataobj, even.dataobj)


def test_roi_level_writes_named_regions_and_tables(roi_dataset):
    glm = roi_dataset / "derivatives" / "glm"
    dataset = LAIONfMRIDataset(roi_dataset)
    regions = dataset.rois()
    assert ("FFA", "R") in regions and ("PPA", "R") in regions
    parcel = nib.load(glm / layout.group_roi_map("FFA", "R", "parcel"))
    sidecar = json.loads(
        (
            glm / layout.sidecar_of(layout.group_roi_map("FFA", "R", "parcel"))
        ).read_text()
    )
    assert sidecar["DefiningContrast"] == "faceVsObject"
    assert sidecar["Parcel"]["SubjectCoverage"] >= 0.6
    assert sidecar["Parcel"]["Reference"].startswith("Kanwisher")
    assert sidecar["Parameters"]["RoiSize"] == "10%"
    in_parcel = np.asarray(parcel.dataobj) > 0
    masks = []
    for subject in dataset.subjects:
        froi = dataset.load_roi(subject, "FFA", "R")
        values = np.asarray(froi.dataobj)
        assert values.dtype == np.uint8 and values.any()
        assert not (values.astype(bool) & ~in_parcel).any()
        # top 10 % of the parcel's voxels (the parcel is inside every mask)
        assert values.sum() == max(1, int(0.1 * in_parcel.sum() + 1e-9))
        masks.append(values.astype(bool))
        for split in layout.SPLITS:
            assert np.asarray(
                dataset.load_roi(subject, "FFA", "R", split=split).dataobj
            ).any()
    probability = np.asarray(
        nib.load(glm / layout.group_roi_map("FFA", "R", "probability")).dataobj
    )
    np.testing.assert_allclose(probability, np.mean(masks, axis=0), atol=1e-6)
    responses = dataset.load_roi_responses()
    assert set(responses["subject"]) == set(dataset.subjects)
    assert set(responses["condition"]) == {"face", "scene", "object", "baseline"}
    ffa = responses[(responses.roi == "FFA") & (responses.hemi == "R")]
    by_condition = ffa.groupby("condition")["psc"].mean()
    assert by_condition["face"] > by_condition["scene"]
    assert by_condition["face"] > by_condition["object"]
    assert ((ffa.dice >= 0) & (ffa.dice <= 1)).all()
    group = pd.read_csv(glm / layout.group_roi_responses(), sep="\t")
    row = group[
        (group.roi == "FFA") & (group.hemi == "R") & (group.condition == "face")
    ]
    assert int(row.n.iloc[0]) == len(dataset.subjects)
    assert row["mean"].iloc[0] == pytest.approx(by_condition["face"], rel=1e-5)
    assert (glm / layout.group_roi_figure("FFA", "R")).read_bytes()[:4] == b"\x89PNG"


def test_loader_errors_name_what_exists(roi_dataset):
    dataset = LAIONfMRIDataset(roi_dataset)
    with pytest.raises(NotFoundError, match="did you mean 'FFA-R'"):
        dataset.load_roi("sub-01", "FFB", "R")
    with pytest.raises(NotFoundError, match="sub-99"):
        dataset.load_roi("sub-99", "FFA", "R")
    assert np.asarray(dataset.load_roi(None, "FFA", "R").dataobj).any()


def test_info_lists_the_rois(roi_dataset, capsys):
    assert main(["info", str(roi_dataset)]) == 0
    assert "FFA-R" in capsys.readouterr().out


def test_group_report_shows_the_profiles(roi_dataset):
    from laion_fmri_dataloader.report import write_group_report

    glm = roi_dataset / "derivatives" / "glm"
    page = write_group_report(glm, output_dir=glm / "reports").read_text()
    section = page[page.index('id="rois"') :]
    table = pd.read_csv(glm / layout.group_roi_responses(), sep="\t")
    for roi, hemi in table[["roi", "hemi"]].drop_duplicates().itertuples(index=False):
        assert f"{roi}-{hemi} (" in section
    assert section.count("data:image/png;base64,") >= len(
        table[["roi", "hemi"]].drop_duplicates()
    )


def test_roi_level_is_deterministic(roi_dataset, tmp_path):
    glm = roi_dataset / "derivatives" / "glm"
    before = (glm / layout.group_roi_responses()).read_bytes()
    assert _roi(roi_dataset) == 0
    assert (glm / layout.group_roi_responses()).read_bytes() == before


def test_given_parcels_replace_the_group_ones_and_stale_files_go(roi_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(roi_dataset, data)
    glm = data / "derivatives" / "glm"
    parcel = nib.load(glm / layout.group_roi_map("FFA", "R", "parcel"))
    labels = (np.asarray(parcel.dataobj) > 0).astype(np.int16) * 7
    nib.save(nib.Nifti1Image(labels, parcel.affine), tmp_path / "parcels.nii.gz")
    (tmp_path / "labels.tsv").write_text(
        "index\tname\themi\tcategory\n7\trFFA\tR\tface\n"
    )
    before = np.asarray(LAIONfMRIDataset(data).load_roi("sub-02", "FFA", "R").dataobj)
    code = _roi(
        data,
        "--parcels",
        str(tmp_path / "parcels.nii.gz"),
        "--parcel-labels",
        str(tmp_path / "labels.tsv"),
    )
    assert code == 0
    dataset = LAIONfMRIDataset(data)
    assert dataset.rois() == [("rFFA", "R")]
    assert dataset.rois("sub-02") == [("rFFA", "R")]
    after = np.asarray(dataset.load_roi("sub-02", "rFFA", "R").dataobj)
    np.testing.assert_array_equal(after, before)
    assert not list((glm / "first_level" / "sub-02").glob("*roi-PPA*"))


def test_bad_input_exits_2_with_one_line(
    roi_dataset, one_run_dataset, tmp_path, capsys
):
    cases = [
        (["--roi-size", "0%"], "outside (0, 100]"),
        (["--roi-size", "150%"], "outside (0, 100]"),
        (["--roi-size", "-4"], "positive whole number"),
        (["--roi-contrast", "body=bodyVsObject"], "Available: faceVsBaseline"),
        (["--parcels", str(tmp_path / "p.nii.gz")], "go together"),
    ]
    for options, message in cases:
        assert _roi(roi_dataset, *options) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and message in error[0], (options, error)
    # another grid
    nib.save(
        nib.Nifti1Image(np.ones((5, 5, 5), np.int16), np.eye(4)), tmp_path / "p.nii.gz"
    )
    (tmp_path / "l.tsv").write_text("index\tname\n1\tA\n")
    code = _roi(
        roi_dataset,
        "--parcels",
        str(tmp_path / "p.nii.gz"),
        "--parcel-labels",
        str(tmp_path / "l.tsv"),
    )
    assert code == 2 and "resample them" in capsys.readouterr().err
    # participant level only: the group mask is missing
    assert _roi(one_run_dataset) == 2
    assert "runs after" in capsys.readouterr().err


def test_a_subject_with_one_run_gets_no_half_run_froi(roi_dataset, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(roi_dataset, data)
    folder = data / "derivatives" / "glm" / "first_level" / "sub-03"
    for path in folder.glob("*_split-*"):
        path.unlink()
    sidecar = folder / "sub-03_task-experiment_contrast-faceVsObject_stat-z.json"
    content = json.loads(sidecar.read_text())
    content["Runs"] = content["Runs"][:1]
    sidecar.write_text(json.dumps(content))
    with caplog.at_level(logging.INFO, logger="laion_fmri"):
        assert _roi(data) == 0
    assert "sub-03: 1 run, so no half-run fROIs or response profiles" in caplog.text
    dataset = LAIONfMRIDataset(data)
    assert ("FFA", "R") in dataset.rois("sub-03")
    with pytest.raises(NotFoundError, match="split fROIs need at least two runs"):
        dataset.load_roi("sub-03", "FFA", "R", split="odd")
    with pytest.raises(NotFoundError, match="no fROI response table for sub-03"):
        dataset.load_roi_responses("sub-03")
    assert "sub-03" not in set(dataset.load_roi_responses()["subject"])
