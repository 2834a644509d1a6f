"""First level: agreement with nilearn, truth recovery, outputs, resume."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from laion_fmri_dataloader import LAIONfMRIDataset, layout
from laion_fmri_dataloader.cli import main
from laion_fmri_dataloader.contrasts import STANDARD_CONTRASTS, contrast_vector
from laion_fmri_dataloader.inputs.bids import DEFAULT_CONFOUNDS, find_runs
from laion_fmri_dataloader.sidecar import DatasetDescription, MapSidecar

GLM = ("derivatives", "glm")


def _glm_dir(dataset):
    return dataset.joinpath(*GLM)


def _fmriprep_runs(dataset, subject="01", task="experiment"):
    return find_runs(dataset, dataset / "derivatives" / "fmriprep", subject, task)


def _nilearn_model(runs, mask_img):
    """nilearn's FirstLevelModel fitted on ``runs`` with our model's settings."""
    from nilearn.glm.first_level import FirstLevelModel

    tr = json.loads(runs[0].bold_json.read_text())["RepetitionTime"]
    model = FirstLevelModel(
        t_r=tr,
        hrf_model="spm",
        drift_model="cosine",
        high_pass=0.01,
        noise_model="ar1",
        signal_scaling=0,
        mask_img=mask_img,
        minimize_memory=True,
    )
    model.fit(
        [nib.load(run.bold) for run in runs],
        events=[pd.read_csv(run.events, sep="\t") for run in runs],
        confounds=[
            pd.read_csv(run.confounds, sep="\t", na_values="n/a")[
                list(DEFAULT_CONFOUNDS)
            ]
            for run in runs
        ],
    )
    return model


def _nilearn_contrasts(model, names=tuple(STANDARD_CONTRASTS)):
    """``compute_contrast(..., output_type='all')``, one weight vector per run."""
    return {
        name: model.compute_contrast(
            [
                contrast_vector(STANDARD_CONTRASTS[name], list(design.columns))
                for design in model.design_matrices_
            ],
            output_type="all",
        )
        for name in names
    }


def _nilearn_run_fit(run, mask_img):
    return _nilearn_contrasts(_nilearn_model([run], mask_img))


def _ours(dataset, name, stat, subject="01"):
    path = _glm_dir(dataset) / layout.first_level_map(subject, "experiment", name, stat)
    return nib.load(path).get_fdata()


def _mask(dataset, subject="01"):
    return nib.load(_glm_dir(dataset) / layout.first_level_mask(subject, "experiment"))


def test_single_run_agrees_with_nilearn(one_run_dataset):
    mask_img = _mask(one_run_dataset)
    mask = mask_img.get_fdata() > 0
    (run,) = _fmriprep_runs(one_run_dataset)
    reference = _nilearn_run_fit(run, mask_img)
    for name, outputs in reference.items():
        z_ref = outputs["z_score"].get_fdata()[mask]
        z = _ours(one_run_dataset, name, "z")[mask]
        assert np.max(np.abs(z - z_ref)) < 1e-3, name
        t_ref = outputs["stat"].get_fdata()[mask]
        np.testing.assert_allclose(
            _ours(one_run_dataset, name, "t")[mask], t_ref, atol=1e-3
        )
        effect_ref = outputs["effect_size"].get_fdata()[mask]
        scale = np.abs(effect_ref).max()
        effect = _ours(one_run_dataset, name, "effect")[mask]
        assert np.max(np.abs(effect - effect_ref)) < 1e-4 * scale, name
        variance_ref = outputs["effect_variance"].get_fdata()[mask]
        variance = _ours(one_run_dataset, name, "variance")[mask]
        np.testing.assert_allclose(variance, variance_ref, rtol=1e-3)


@pytest.fixture(scope="module")
def uneven_runs(tmp_path_factory):
    """One subject, three runs unlike each other, fitted with both combinations.

    Run 2 is cut to 80 of its 110 volumes (its events after the cut dropped),
    run 3 gets white noise of 3 % of each voxel's mean on top of the simulated
    noise, so that equal and inverse-variance weights give different maps.
    """
    from laion_fmri_dataloader.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("uneven-runs")
    simulate_dataset(root, subjects=1, runs=3, resolution=8.0, n_volumes=110, seed=7)
    runs = _fmriprep_runs(root)
    tr = json.loads(runs[1].bold_json.read_text())["RepetitionTime"]
    short = nib.load(runs[1].bold)
    nib.save(
        nib.Nifti1Image(
            short.get_fdata(dtype=np.float32)[..., :80], short.affine, short.header
        ),
        runs[1].bold,
    )
    confounds = pd.read_csv(runs[1].confounds, sep="\t")
    confounds.iloc[:80].to_csv(runs[1].confounds, sep="\t", index=False, na_rep="n/a")
    events = pd.read_csv(runs[1].events, sep="\t")
    events[events["onset"] < 80 * tr].to_csv(runs[1].events, sep="\t", index=False)
    noisy = nib.load(runs[2].bold)
    data = noisy.get_fdata(dtype=np.float32)
    rng = np.random.default_rng(0)
    data += rng.standard_normal(data.shape, dtype=np.float32) * (
        0.03 * data.mean(axis=3, keepdims=True)
    )
    nib.save(nib.Nifti1Image(data, noisy.affine, noisy.header), runs[2].bold)
    outputs = {}
    for combination in ("mean", "precision"):
        output = root / "derivatives" / f"glm{combination}"
        args = ["glm", str(root), str(output), "participant", "--scheduler", "none"]
        assert main([*args, "--run-combination", combination]) == 0
        outputs[combination] = output
    return root, outputs


def _map(output, name, stat):
    path = output / layout.first_level_map("01", "experiment", name, stat)
    return nib.load(path).get_fdata()


def test_runs_combine_as_nilearns_first_level_model(uneven_runs):
    """Default (mean): one FirstLevelModel fitted on all runs, to |d| < 1e-3."""
    root, outputs = uneven_runs
    output = outputs["mean"]
    mask_img = nib.load(output / layout.first_level_mask("01", "experiment"))
    mask = mask_img.get_fdata() > 0
    runs = _fmriprep_runs(root)
    assert [nib.load(run.bold).shape[3] for run in runs] == [110, 80, 110]
    model = _nilearn_model(runs, mask_img)
    reference = _nilearn_contrasts(model)
    worst = {}
    for name, outputs_ref in reference.items():
        for stat, key in (("z", "z_score"), ("t", "stat"), ("effect", "effect_size")):
            difference = (
                _map(output, name, stat)[mask] - outputs_ref[key].get_fdata()[mask]
            )
            worst[stat] = max(worst.get(stat, 0.0), float(np.abs(difference).max()))
        variance_ref = outputs_ref["effect_variance"].get_fdata()[mask]
        np.testing.assert_allclose(
            _map(output, name, "variance")[mask], variance_ref, rtol=1e-3
        )
    print(f"max |difference| over the six contrasts: {worst}")
    assert worst["z"] < 1e-3 and worst["t"] < 1e-3 and worst["effect"] < 1e-3
    sidecar = MapSidecar.model_validate_json(
        (
            output
            / layout.sidecar_of(
                layout.first_level_map("01", "experiment", "faceVsScene", "z")
            )
        ).read_text()
    )
    assert sidecar.Model.RunCombination == "mean"
    assert sidecar.Parameters["RunCombination"] == "mean"
    # degrees of freedom summed over the runs, as nilearn's Contrast.__add__
    assert sidecar.DegreesOfFreedom == sum(
        len(design) - np.linalg.matrix_rank(design) for design in model.design_matrices_
    )


def test_precision_option_is_nilearns_precision_weighted_fixed_effects(uneven_runs):
    from nilearn.glm.contrasts import compute_fixed_effects

    root, outputs = uneven_runs
    output = outputs["precision"]
    mask_img = nib.load(output / layout.first_level_mask("01", "experiment"))
    mask = mask_img.get_fdata() > 0
    runs = _fmriprep_runs(root)
    models = [_nilearn_model([run], mask_img) for run in runs]
    dofs = [
        len(model.design_matrices_[0])
        - np.linalg.matrix_rank(model.design_matrices_[0])
        for model in models
    ]
    changed = 0.0
    for name in ("faceVsScene", "objectVsBaseline"):
        fits = [_nilearn_contrasts(model, [name])[name] for model in models]
        _, _, t_img, z_img = compute_fixed_effects(
            [fit["effect_size"] for fit in fits],
            [fit["effect_variance"] for fit in fits],
            mask_img,
            precision_weighted=True,
            dofs=dofs,
        )
        z = _map(output, name, "z")[mask]
        assert np.max(np.abs(z - z_img.get_fdata()[mask])) < 1e-3
        np.testing.assert_allclose(
            _map(output, name, "t")[mask], t_img.get_fdata()[mask], atol=1e-3
        )
        changed = max(
            changed, float(np.abs(z - _map(outputs["mean"], name, "z")[mask]).max())
        )
    # the two combinations differ on these runs: the tests above tell them apart
    print(f"max |z(precision) - z(mean)| = {changed:.3f}")
    assert changed > 0.1
    sidecar = MapSidecar.model_validate_json(
        (
            output
            / layout.sidecar_of(
                layout.first_level_map("01", "experiment", "faceVsScene", "t")
            )
        ).read_text()
    )
    assert sidecar.Model.RunCombination == "precision"


def test_sidecars_and_layout(one_run_dataset):
    glm = _glm_dir(one_run_dataset)
    description = DatasetDescription.model_validate_json(
        (glm / "dataset_description.json").read_text()
    )
    assert description.DatasetType == "derivative"
    assert description.GeneratedBy[0].Name == "laion-fmri-dataloader"
    for name, contrast in STANDARD_CONTRASTS.items():
        for stat in layout.FIRST_LEVEL_STAT_TYPES:
            relative = layout.first_level_map("01", "experiment", name, stat)
            sidecar = MapSidecar.model_validate_json(
                (glm / layout.sidecar_of(relative)).read_text()
            )
            assert sidecar.AnalysisLevel == "first_level"
            assert sidecar.StatType == stat
            assert sidecar.Model.HRF == "spm"
            assert sidecar.Model.DriftModel == "cosine"
            assert sidecar.Model.HighPassFilter == 0.01
            assert sidecar.Model.NoiseModel == "ar1"
            assert sidecar.Confounds == list(DEFAULT_CONFOUNDS)
            info = sidecar.Contrasts[name]
            weights = dict(zip(info.Conditions, info.Weights, strict=True))
            assert weights == contrast.weights
            assert sidecar.Software.Name == "laion-fmri-dataloader"
            assert "nilearn" in sidecar.Dependencies
            assert len(sidecar.Runs) == 1
            assert sidecar.DegreesOfFreedom > 50
    png = glm / layout.design_matrix_png("01", "experiment")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_z_does_not_saturate_and_maps_are_finite(one_run_dataset):
    for name in STANDARD_CONTRASTS:
        for stat in layout.FIRST_LEVEL_STAT_TYPES:
            assert np.isfinite(_ours(one_run_dataset, name, stat)).all()


def test_truth_recovery_face_vs_scene(tmp_path_factory):
    """A realistic simulated subject: faceVsScene at z > 3.1 finds the face areas."""
    from conftest import _simulate_and_fit
    from laion_fmri_dataloader.simulate import load_truth

    dataset = _simulate_and_fit(
        tmp_path_factory.mktemp("truth"), subjects=1, runs=2, resolution=4.0, seed=11
    )
    z = _ours(dataset, "faceVsScene", "z")
    effect_img, support_img = load_truth(dataset, "01", "faceVsScene")
    effect = effect_img.get_fdata()
    mask = _mask(dataset).get_fdata() > 0
    face_selective = (effect > 0.5 * effect.max()) & mask
    outside = (support_img.get_fdata() == 0) & mask
    detected = z > 3.1
    sensitivity = detected[face_selective].mean()
    false_positive_rate = detected[outside].mean()
    print(
        f"sensitivity {sensitivity:.3f}, false-positive rate {false_positive_rate:.5f}"
    )
    assert sensitivity > 0.75
    # Nominal P(z > 3.1) is 0.001; nilearn's AR(1) estimate (which we match) is
    # biased toward zero with ~20 regressors and 160 volumes, so the first-level z
    # is somewhat liberal (measured on null data: 0.004-0.007).
    assert false_positive_rate < 0.01


def test_loader_example_on_pipeline_output(group_dataset):
    from test_dataset import run_seed_example

    contrast_img, all_contrasts, group_contrast, group_fdr = run_seed_example(
        group_dataset
    )
    assert list(all_contrasts) == list(STANDARD_CONTRASTS)
    assert group_contrast.shape == group_fdr.shape == contrast_img.shape
    dataset = LAIONfMRIDataset(group_dataset)
    assert dataset.subjects == [f"sub-{i:02d}" for i in range(1, 7)]


def test_rerun_skips_complete_and_redoes_partial(one_run_dataset, tmp_path, caplog):
    dataset = tmp_path / "copy"
    shutil.copytree(one_run_dataset, dataset)
    args = [
        "glm",
        str(dataset),
        str(_glm_dir(dataset)),
        "participant",
        "--scheduler",
        "none",
    ]
    z_path = _glm_dir(dataset) / layout.first_level_map(
        "01", "experiment", "faceVsScene", "z"
    )
    before = z_path.read_bytes()
    with caplog.at_level("INFO", logger="laion_fmri"):
        assert main(args) == 0
    assert "1 skipped" in caplog.text
    z_path.unlink()
    caplog.clear()
    with caplog.at_level("INFO", logger="laion_fmri"):
        assert main(args) == 0
    assert "1 done" in caplog.text
    assert z_path.read_bytes() == before
    caplog.clear()
    with caplog.at_level("INFO", logger="laion_fmri"):
        assert main([*args, "--force"]) == 0
    assert "1 done" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="laion_fmri"):
        assert main([*args, "--smoothing-fwhm", "6"]) == 0
    assert "1 done" in caplog.text, "changed parameters must redo the subject"
