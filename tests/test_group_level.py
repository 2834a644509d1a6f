"""Group level: agreement with nilearn, corrected maps, bad input, power."""

from __future__ import annotations

import json
import os
import re
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from laion_fmri_dataloader import LAIONfMRIDataset, layout
from laion_fmri_dataloader.cli import main
from laion_fmri_dataloader.contrasts import STANDARD_CONTRASTS
from laion_fmri_dataloader.errors import NotFoundError
from laion_fmri_dataloader.pipeline.group import GroupConfig, read_group_inputs
from laion_fmri_dataloader.sidecar import MapSidecar
from laion_fmri_dataloader.stats.inference import SpatialInference, sign_flip_max_t


def _glm(dataset):
    return dataset / "derivatives" / "glm"


def _group(dataset, *extra):
    args = [
        *("glm", str(dataset), str(_glm(dataset)), "group"),
        *("--scheduler", "none", "--no-reports"),
    ]
    return main([*args, *extra])


def _sidecar(dataset, contrast, stat="z", correction=None):
    relative = layout.group_map(contrast, stat, correction)
    return MapSidecar.model_validate_json(
        (_glm(dataset) / layout.sidecar_of(relative)).read_text()
    )


@pytest.mark.parametrize("contrast", ["faceVsScene", "objectVsBaseline"])
def test_agrees_with_nilearn_second_level(group_dataset, contrast):
    from nilearn.glm.second_level import SecondLevelModel

    dataset = LAIONfMRIDataset(group_dataset)
    mask_img = nib.load(_glm(group_dataset) / layout.group_mask())
    mask = mask_img.get_fdata() > 0
    effects = [
        dataset.load_first_level_contrast(subject, "experiment", contrast, "effect")
        for subject in dataset.subjects
    ]
    design = pd.DataFrame({"intercept": np.ones(len(effects))})
    model = SecondLevelModel(mask_img=mask_img).fit(effects, design_matrix=design)
    reference = model.compute_contrast("intercept", output_type="all")
    for stat, key in (("z", "z_score"), ("t", "stat"), ("p", "p_value")):
        ours = dataset.load_group_level_contrast(contrast, stat).get_fdata()[mask]
        expected = reference[key].get_fdata()[mask]
        if stat == "p":
            # nilearn's p is one-sided (effect > 0); ours is two-sided.
            expected = 2 * np.minimum(expected, 1 - expected)
            np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-7)
        else:
            assert np.max(np.abs(ours - expected)) < 1e-3, stat


def test_corrected_maps_are_surviving_z(group_dataset):
    dataset = LAIONfMRIDataset(group_dataset)
    for contrast in STANDARD_CONTRASTS:
        z = dataset.load_group_level_contrast(contrast, "z").get_fdata()
        for correction in ("fdr", "fwe"):
            corrected = dataset.load_group_level_contrast(
                contrast, correction=correction
            )
            values = corrected.get_fdata()
            survive = values != 0
            np.testing.assert_array_equal(values[survive], z[survive])
            info = _sidecar(group_dataset, contrast, correction=correction).Correction
            assert info.Alpha == 0.05 and info.TwoSided
            # the method's critical values are there whether or not a voxel survives
            assert info.TThreshold > 0 and info.ZThreshold > 0
            mask = nib.load(_glm(group_dataset) / layout.group_mask()).get_fdata() > 0
            if info.SmallestSurvivingZ is not None:
                np.testing.assert_array_equal(
                    survive[mask], np.abs(z[mask]) >= info.SmallestSurvivingZ
                )
                assert info.SmallestSurvivingZ >= info.ZThreshold - 1e-4
            else:
                assert not survive.any()
                assert np.abs(z[mask]).max() < info.ZThreshold + 1e-4
            table = _glm(group_dataset) / layout.cluster_table(contrast, correction)
            assert table.is_file()
    fwe = _sidecar(group_dataset, "faceVsScene", correction="fwe").Correction
    assert fwe.Method.startswith("fwe (sign-flip permutation")
    assert fwe.NPermutations == 64 and fwe.Exhaustive
    sidecar = _sidecar(group_dataset, "faceVsScene", "t")
    assert sidecar.AnalysisLevel == "group_level"
    assert sidecar.Subjects == [f"sub-{i:02d}" for i in range(1, 7)]
    assert sidecar.DegreesOfFreedom == 5


def test_tfce_and_cluster_maps_are_the_permutation_tests(group_dataset):
    # The same test run on the effects the group level read: its TFCE map, and
    # which voxels survive TFCE and cluster extent, are what was written.
    inputs = read_group_inputs(GroupConfig(output_dir=_glm(group_dataset)))
    mask = inputs.mask
    spatial = SpatialInference.from_mask(mask)
    dataset = LAIONfMRIDataset(group_dataset)
    assert dataset.corrections() == ["fdr", "fwe", "tfce", "cluster"]
    assert dataset.stat_types() == ["t", "z", "p", "tfce"]
    surviving = {"tfce": 0, "cluster": 0}
    for contrast in STANDARD_CONTRASTS:
        expected = sign_flip_max_t(inputs.effects[contrast], spatial=spatial)
        stored = dataset.load_group_level_contrast(contrast, "tfce").get_fdata()
        np.testing.assert_array_equal(
            stored[mask], expected.tfce.tfce.astype(np.float32)
        )
        z = dataset.load_group_level_contrast(contrast, "z").get_fdata()[mask]
        for correction, result in (
            ("tfce", expected.tfce),
            ("cluster", expected.cluster),
        ):
            values = dataset.load_group_level_contrast(
                contrast, correction=correction
            ).get_fdata()[mask]
            np.testing.assert_array_equal(values != 0, result.mask)
            np.testing.assert_array_equal(values[result.mask], z[result.mask])
            surviving[correction] += int(result.mask.sum())
            info = _sidecar(group_dataset, contrast, correction=correction).Correction
            assert (info.NPermutations, info.Exhaustive, info.Seed) == (64, True, 0)
            assert info.Alpha == 0.05 and info.TwoSided
            table = _glm(group_dataset) / layout.cluster_table(contrast, correction)
            assert table.is_file()
        tfce = _sidecar(group_dataset, contrast, correction="tfce").Correction
        assert tfce.CriticalMaxTFCE == expected.tfce.cutoff
        assert (tfce.TFCE.E, tfce.TFCE.H, tfce.TFCE.Connectivity) == (0.5, 2.0, 6)
        assert tfce.TFCE.Dh == pytest.approx(np.abs(expected.t).max() / 100)
        assert tfce.TFCE.DhRule.startswith("max |t| / 100 of each map")
        cluster = _sidecar(group_dataset, contrast, correction="cluster").Correction
        assert cluster.CriticalClusterSize == expected.cluster.cutoff
        assert cluster.Cluster.FormingP == 0.001
        assert cluster.Cluster.FormingT == pytest.approx(stats.t.isf(0.0005, 5))
        statistic = _sidecar(group_dataset, contrast, "tfce")
        assert statistic.StatType == "tfce" and statistic.TFCE == tfce.TFCE
        assert statistic.SkippedCorrections is None
    assert surviving["tfce"] > 0 and surviving["cluster"] > 0


def test_too_few_subjects_for_tfce_and_cluster_say_why(group_dataset, tmp_path, caplog):
    copy = _copy_without_group(group_dataset, tmp_path)
    five = ("--participant-label", "01", "02", "03", "04", "05")
    with caplog.at_level("INFO", logger="laion_fmri"):
        assert _group(copy, *five) == 0
    assert re.search(
        r"TFCE maps not written: 5 subjects are too few for a sign-flip test at "
        r"alpha=0\.05 .* at least 6 subjects are needed",
        caplog.text,
    )
    assert "CLUSTER maps not written" in caplog.text
    dataset = LAIONfMRIDataset(copy)
    assert dataset.corrections() == ["fdr", "fwe"]
    assert dataset.stat_types() == ["t", "z", "p"]
    for stat, correction in (("z", None), ("z", "fwe"), ("p", None)):
        skipped = _sidecar(copy, "faceVsScene", stat, correction).SkippedCorrections
        assert set(skipped) == {"tfce", "cluster"}
        assert "smallest corrected p of 0.0625" in skipped["tfce"]
    with pytest.raises(NotFoundError):
        dataset.load_group_level_contrast("faceVsScene", correction="tfce")
    caplog.clear()
    with caplog.at_level("INFO", logger="laion_fmri"):
        assert _group(copy, *five) == 0
    assert "outputs complete and up to date, skipped" in caplog.text


def test_corrections_choose_the_maps_and_the_report_follows(group_dataset, tmp_path):
    copy = _copy_without_group(group_dataset, tmp_path)
    args = ("glm", str(copy), str(_glm(copy)), "group", "--scheduler", "none")
    assert (
        main([*args, "--corrections", "cluster", "fdr", "--cluster-threshold", "0.01"])
        == 0
    )
    dataset = LAIONfMRIDataset(copy)
    assert dataset.corrections() == ["fdr", "cluster"]
    assert dataset.stat_types() == ["t", "z", "p"]
    cluster = _sidecar(copy, "faceVsScene", correction="cluster").Correction
    assert cluster.Cluster.FormingP == 0.01
    assert cluster.Cluster.FormingT == pytest.approx(stats.t.isf(0.005, 5))
    page = (_glm(copy) / "reports" / "group.html").read_text()
    assert "CLUSTER" in page and "TFCE" not in page


def test_rerun_is_skipped(group_dataset, caplog):
    with caplog.at_level("INFO", logger="laion_fmri"):
        assert _group(group_dataset) == 0
    assert "outputs complete and up to date, skipped" in caplog.text


def test_few_subjects_fall_back_to_bonferroni(group_dataset, tmp_path, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(group_dataset, copy)
    shutil.rmtree(_glm(copy) / "group_level")
    with caplog.at_level("INFO", logger="laion_fmri"):
        assert _group(copy, "--participant-label", "01", "02", "03", "04") == 0
    assert "too few for a sign-flip FWE test" in caplog.text
    fwe = _sidecar(copy, "faceVsScene", correction="fwe").Correction
    assert fwe.Method == "fwe (Bonferroni, parametric)"


def _copy_without_group(group_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(group_dataset, copy)
    shutil.rmtree(_glm(copy) / "group_level")
    return copy


def _effect_path(dataset, subject, contrast="faceVsScene"):
    return _glm(dataset) / layout.first_level_map(
        subject, "experiment", contrast, "effect"
    )


def _nan_in_map(dataset):
    path = _effect_path(dataset, "03")
    image = nib.load(path)
    data = image.get_fdata()
    mask = nib.load(
        _glm(dataset) / layout.first_level_mask("03", "experiment")
    ).get_fdata()
    data[tuple(np.argwhere(mask > 0)[0])] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), path)


def _other_grid(dataset):
    path = _effect_path(dataset, "02")
    image = nib.load(path)
    nib.save(nib.Nifti1Image(image.get_fdata()[1:], image.affine), path)


BAD_GROUP_INPUTS = {
    "two subjects": (
        lambda d: None,
        ("--participant-label", "01", "02"),
        r"needs at least 3 subjects .* found 2 \(sub-01, sub-02\)",
    ),
    "missing contrast": (
        lambda d: _effect_path(d, "04", "sceneVsObject").unlink(),
        (),
        r"sub-04 has no task-experiment effect map of contrast sceneVsObject",
    ),
    "NaN in a map": (
        _nan_in_map,
        (),
        r"sub-03_task-experiment_contrast-faceVsScene_stat-effect\.nii\.gz has NaN",
    ),
    "other grid": (
        _other_grid,
        (),
        r"sub-02_task-experiment_contrast-faceVsScene_stat-effect\.nii\.gz \(shape "
        r"\(\d+, \d+, \d+\)\) is not on the grid of",
    ),
    "permutation with too few subjects": (
        lambda d: None,
        ("--fwe", "permutation", "--participant-label", "01", "02", "03", "04", "05"),
        r"--fwe permutation cannot reach alpha=0\.05 with 5 subjects.* at least 6",
    ),
    "too few permutations": (
        lambda d: None,
        ("--n-perm", "20", "--fwe", "permutation"),
        r"--n-perm 20 is too small for alpha=0\.05; use at least \d+",
    ),
    "unknown subject": (
        lambda d: None,
        ("--participant-label", "01", "02", "09"),
        r"sub-09 has no first-level task-experiment maps",
    ),
    "cluster threshold outside (0, 1)": (
        lambda d: None,
        ("--cluster-threshold", "1.5"),
        r"--cluster-threshold must be a cluster-forming p-value in \(0, 1\), e\.g\. "
        r"0\.001; got 1\.5",
    ),
    "unknown correction": (
        lambda d: None,
        ("--corrections", "fdr", "tfc"),
        r"unknown correction 'tfc' in --corrections; did you mean 'tfce'\? "
        r"Available: fdr, fwe, tfce, cluster",
    ),
    "TFCE E not positive": (
        lambda d: None,
        ("--tfce-e", "0"),
        r"--tfce-e must be a positive number \(nilearn's default: 0\.5\); got 0\.0",
    ),
    "TFCE H not positive": (
        lambda d: None,
        ("--tfce-h", "-2"),
        r"--tfce-h must be a positive number \(nilearn's default: 2\); got -2\.0",
    ),
    "TFCE dh neither auto nor positive": (
        lambda d: None,
        ("--tfce-dh", "fine"),
        r"--tfce-dh must be 'auto' \(max \|t\| / 100 of each map\) or a positive "
        r"number; got 'fine'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_GROUP_INPUTS))
def test_bad_group_input(group_dataset, tmp_path, capsys, case):
    damage, extra, message = BAD_GROUP_INPUTS[case]
    copy = _copy_without_group(group_dataset, tmp_path)
    damage(copy)
    assert _group(copy, *extra) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and re.search(message, error), error
    assert not (_glm(copy) / "group_level").exists()


@pytest.mark.slow
def test_power_face_regions_found_by_fwe(tmp_path_factory):
    """Default simulation, twelve subjects: FWE faceVsScene finds the face areas."""
    from conftest import _simulate_and_fit

    dataset = _simulate_and_fit(
        tmp_path_factory.mktemp("power"),
        levels=("participant", "group"),
        subjects=12,
        # Measured on seed 21: 0 left-FFA voxels with equal run weights (1 with
        # inverse-variance weights), 5 right; seed 22: 5 left, 2 right with either.
        # Voxel-wise FWE with 12 subjects is near its power limit per hemisphere.
        seed=22,
    )
    report = _face_area_recovery(dataset)
    print(report)
    # Each hemisphere's face area is found; voxel-wise FWE with twelve subjects
    # and realistic between-subject variability finds the cores, not their extent.
    assert report["left"] > 0 and report["right"] > 0
    assert report["hits"] > 0.1
    assert report["false_positives"] <= 3


def _face_area_recovery(dataset):
    from laion_fmri_dataloader.simulate import load_truth

    fwe = LAIONfMRIDataset(dataset).load_group_level_contrast(
        "faceVsScene", correction="fwe"
    )
    effect, support = load_truth(dataset, "group", "faceVsScene")
    found = fwe.get_fdata() > 0
    true_core = effect.get_fdata() > 0.5 * effect.get_fdata().max()
    outside = support.get_fdata() == 0
    x_mm = nib.affines.apply_affine(fwe.affine, np.indices(fwe.shape).reshape(3, -1).T)
    left = (x_mm[:, 0] < 0).reshape(fwe.shape)
    return {
        "hits": float(found[true_core].mean()),
        "left": int(found[true_core & left].sum()),
        "right": int(found[true_core & ~left].sum()),
        "false_positives": int((found & outside).sum()),
    }


def _edit_effect_sidecars(dataset, subject, edit):
    for path in (_glm(dataset) / layout.first_level_dir(subject)).glob(
        "*_stat-effect.json"
    ):
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))


def _set(*keys, value):
    def edit(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


MIXED_FIRST_LEVELS = {
    "smoothing": (
        _set("Model", "SmoothingFWHM", value=6.0),
        r"disagree on Model\.SmoothingFWHM \(sub-01, sub-02, sub-04, sub-05, "
        r"sub-06: null; sub-03: 6\.0\)",
    ),
    "HRF": (_set("Model", "HRF", value="glover"), r"disagree on Model\.HRF"),
    "confounds": (
        _set("Confounds", value=["trans_x", "trans_y", "trans_z"]),
        r"disagree on Confounds",
    ),
    "contrast weights": (
        lambda data: (
            data["Contrasts"]
            .get("faceVsScene", {})
            .update(Weights=[1.0, -0.5, -0.5, 0.0])
        ),
        r"disagree on Contrasts\.faceVsScene",
    ),
}


@pytest.mark.parametrize("case", list(MIXED_FIRST_LEVELS))
def test_group_never_mixes_first_levels(group_dataset, tmp_path, capsys, case):
    edit, message = MIXED_FIRST_LEVELS[case]
    copy = _copy_without_group(group_dataset, tmp_path)
    _edit_effect_sidecars(copy, "03", edit)
    assert _group(copy) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and re.search(message, error), error
    assert "--participant-label" in error
    assert not (_glm(copy) / "group_level").exists()


def test_group_never_mixes_run_combinations(group_dataset, tmp_path, capsys):
    """A subject refitted with the other run combination stops the group level."""
    copy = _copy_without_group(group_dataset, tmp_path)
    args = ["glm", str(copy), str(_glm(copy)), "participant", "--scheduler", "none"]
    assert (
        main([*args, "--participant-label", "03", "--run-combination", "precision"])
        == 0
    )
    assert _group(copy) == 2
    error = capsys.readouterr().err
    assert re.search(
        r"disagree on Model\.RunCombination \(sub-01, sub-02, sub-04, sub-05, "
        r'sub-06: "mean"; sub-03: "precision"\)',
        error,
    ), error
    # the subjects that agree can still make a group map, named explicitly
    assert _group(copy, "--participant-label", "01", "02", "04", "05", "06") == 0


def test_out_of_date_and_failed_subjects_are_left_out_by_name(
    group_dataset, tmp_path, caplog, capsys
):
    copy = _copy_without_group(group_dataset, tmp_path)
    (events,) = (copy / "sub-03" / "func").glob("*run-1_events.tsv")
    os.utime(events, ns=(events.stat().st_atime_ns, events.stat().st_mtime_ns + 10**9))
    shutil.rmtree(_glm(copy) / layout.first_level_dir("06"))
    with caplog.at_level("WARNING", logger="laion_fmri"):
        assert _group(copy) == 0
    assert re.search(
        r"sub-03 left out: its input sub-03/func/\S+_events\.tsv changed after",
        caplog.text,
    )
    assert re.search(
        r"sub-06 left out: has preprocessed BOLD of task-experiment but no "
        r"first-level maps",
        caplog.text,
    )
    sidecar = _sidecar(copy, "faceVsScene", "z")
    assert sidecar.Subjects == ["sub-01", "sub-02", "sub-04", "sub-05"]
    assert set(sidecar.ExcludedSubjects) == {"sub-03", "sub-06"}
    # named explicitly, an out-of-date subject is an error
    assert _group(copy, "--participant-label", "01", "02", "03", "--force") == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert re.search(
        r"sub-03: its input \S+ changed after its maps were made; rerun", error
    )
    capsys.readouterr()
    assert main(["info", str(copy)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"sub-03 task-experiment.*\n.*spm HRF.*combined by mean", printed)
    assert re.search(r"state: out of date: sub-03/func/\S+_events\.tsv", printed)
    assert printed.count("state: complete and up to date") == 4
    assert re.search(
        r"participant level failed or not run\) but preprocessed "
        r"BOLD: sub-06",
        printed,
    )


def test_mask_that_cuts_the_group_mask_is_named(group_dataset, tmp_path, caplog):
    copy = _copy_without_group(group_dataset, tmp_path)
    path = _glm(copy) / layout.first_level_mask("02", "experiment")
    image = nib.load(path)
    data = np.asanyarray(image.dataobj).copy()
    data[:, :, : data.shape[2] // 3] = 0
    nib.save(nib.Nifti1Image(data, image.affine, image.header), path)
    with caplog.at_level("WARNING", logger="laion_fmri"):
        assert _group(copy) == 0
    named = re.findall(r"the mask of (sub-\d+) leaves out ([\d.]+) %", caplog.text)
    assert [subject for subject, _ in named] == ["sub-02"]
    assert float(named[0][1]) > 5


def test_participant_smoothing_is_not_applied_again(group_dataset, tmp_path, caplog):
    copy = _copy_without_group(group_dataset, tmp_path)
    with caplog.at_level("INFO", logger="laion_fmri"):
        assert _group(copy, "--smoothing-fwhm", "6") == 0
    assert "--smoothing-fwhm is the participant level's smoothing" in caplog.text
    unsmoothed = nib.load(_glm(group_dataset) / layout.group_map("faceVsScene", "t"))
    again = nib.load(_glm(copy) / layout.group_map("faceVsScene", "t"))
    np.testing.assert_array_equal(again.get_fdata(), unsmoothed.get_fdata())
    assert _sidecar(copy, "faceVsScene", "t").Model.SmoothingFWHM is None
    assert _group(copy, "--group-smoothing-fwhm", "6", "--force") == 0
    model = _sidecar(copy, "faceVsScene", "t").Model
    assert model.SmoothingFWHM == 6.0
    assert model.model_extra.get("FirstLevelSmoothingFWHM") is None
    smoothed = nib.load(_glm(copy) / layout.group_map("faceVsScene", "t"))
    assert not np.allclose(smoothed.get_fdata(), unsmoothed.get_fdata())
