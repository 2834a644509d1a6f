"""Tests of the simulator: BIDS validity, truth recovery, determinism, noise."""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import subprocess
import sys
import textwrap
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from laion_fmri_dataloader.errors import (
    InvalidLabelError,
    InvalidParameterError,
    NotFoundError,
)
from laion_fmri_dataloader.simulate import (
    CONTRAST_WEIGHTS,
    SPACE,
    SimulationConfig,
    load_truth,
    simulate_dataset,
)

MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


@pytest.fixture(scope="session")
def localizer(tmp_path_factory) -> pathlib.Path:
    """Two subjects, two runs, default effect, timing and 4 mm grid."""
    return simulate_dataset(tmp_path_factory.mktemp("localizer"), subjects=2)


@pytest.fixture(scope="session")
def coarse_pair(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """The same small 6 mm dataset, with and without task response."""
    kwargs = {"subjects": 1, "runs": 1, "resolution": 6, "n_volumes": 120}
    task = simulate_dataset(tmp_path_factory.mktemp("task"), **kwargs)
    null = simulate_dataset(tmp_path_factory.mktemp("null"), null=True, **kwargs)
    return task, null


def _preproc(dataset: pathlib.Path, subject: str, run: int, kind: str) -> pathlib.Path:
    func = dataset / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
    stem = f"sub-{subject}_task-experiment_run-{run}"
    if kind == "confounds":
        return func / f"{stem}_desc-confounds_timeseries.tsv"
    return func / f"{stem}_space-{SPACE}_desc-{kind}.nii.gz"


def _hashes(root: pathlib.Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _cosine_drift(n_volumes: int, tr: float, high_pass: float = 0.01) -> np.ndarray:
    from nilearn.signal import create_cosine_drift

    return create_cosine_drift(high_pass, np.arange(n_volumes) * tr)


# ---------------------------------------------------------------------------
# Layout and metadata


def test_layout_headers_and_confounds(localizer):
    raw_bold = (
        localizer / "sub-01" / "func" / "sub-01_task-experiment_run-1_bold.nii.gz"
    )
    assert raw_bold.exists()
    assert json.loads((localizer / "task-experiment_bold.json").read_text())[
        "RepetitionTime"
    ] == pytest.approx(1.9)
    fmriprep = json.loads(
        (
            localizer / "derivatives" / "fmriprep" / "dataset_description.json"
        ).read_text()
    )
    assert fmriprep["DatasetType"] == "derivative"
    assert fmriprep["GeneratedBy"][0]["Name"] == "fMRIPrep"

    bold = nib.load(_preproc(localizer, "01", 1, "preproc_bold"))
    assert bold.shape[3] == 160
    assert bold.get_data_dtype() == np.float32
    assert bold.header.get_zooms() == pytest.approx((4.0, 4.0, 4.0, 1.9))
    assert bold.header.get_xyzt_units() == ("mm", "sec")
    assert int(bold.header["sform_code"]) == 4
    template = nib.load(_preproc(localizer, "01", 1, "brain_mask"))
    np.testing.assert_allclose(bold.affine, template.affine)

    # per-run masks differ by a few edge voxels only
    mask_1 = nib.load(_preproc(localizer, "01", 1, "brain_mask")).get_fdata() > 0
    mask_2 = nib.load(_preproc(localizer, "01", 2, "brain_mask")).get_fdata() > 0
    assert 0 < (mask_1 ^ mask_2).sum() < 0.02 * mask_1.sum()

    # realistic intensity and temporal SNR
    data = np.asarray(bold.dataobj)[mask_1]
    mean = data.mean(axis=1)
    assert 300 < np.median(mean) < 1500
    tsnr = np.median(mean / data.std(axis=1))
    assert 50 < tsnr < 110

    confounds = pd.read_csv(_preproc(localizer, "01", 1, "confounds"), sep="\t")
    for base in ["global_signal", "csf", "white_matter", *MOTION]:
        for suffix in ("", "_derivative1", "_power2", "_derivative1_power2"):
            assert base + suffix in confounds.columns
        assert (
            confounds[f"{base}_derivative1"].isna().tolist() == [True] + [False] * 159
        )
    assert np.isnan(confounds["framewise_displacement"][0])
    assert 0.01 < confounds["framewise_displacement"][1:].mean() < 0.5
    np.testing.assert_allclose(confounds["global_signal"], data.mean(axis=0), rtol=1e-5)
    assert confounds["csf"].mean() > confounds["white_matter"].mean()

    events = pd.read_csv(
        localizer / "sub-01" / "func" / "sub-01_task-experiment_run-1_events.tsv",
        sep="\t",
    )
    assert list(events.columns) == ["onset", "duration", "trial_type"]
    assert set(events.trial_type) == {"face", "scene", "object", "baseline"}
    assert events.onset.min() == 12.0
    assert (events.onset + events.duration).max() <= 160 * 1.9 - 12.0
    run_2 = pd.read_csv(
        localizer / "sub-01" / "func" / "sub-01_task-experiment_run-2_events.tsv",
        sep="\t",
    )
    assert run_2.trial_type.tolist() != events.trial_type.tolist()


def test_raw_part_passes_the_bids_validator(localizer):
    validator = pathlib.Path(sys.executable).with_name("bids-validator-deno")
    if not validator.exists():
        pytest.skip("bids-validator-deno is not installed in this environment")
    try:
        result = subprocess.run(
            [str(validator), str(localizer), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"bids-validator-deno could not run offline: {error}")
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.skip(f"bids-validator-deno gave no report: {result.stderr[-500:]}")
    errors = [
        issue for issue in report["issues"]["issues"] if issue["severity"] == "error"
    ]
    assert errors == []


def test_nilearn_finds_runs_events_and_confounds(localizer):
    from nilearn.glm.first_level import first_level_from_bids

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models, images, events, confounds = first_level_from_bids(
            localizer,
            "experiment",
            space_label=SPACE,
            derivatives_folder="derivatives/fmriprep",
            hrf_model="spm",
        )
    assert [model.subject_label for model in models] == ["01", "02"]
    assert [len(runs) for runs in images] == [2, 2]
    assert [len(runs) for runs in events] == [2, 2]
    assert confounds[0][0].shape == (160, 37)
    assert models[0].t_r == pytest.approx(1.9)
    assert models[0].slice_time_ref == 0.0


# ---------------------------------------------------------------------------
# Truth


def test_truth_files_and_group(localizer):
    effect, mask = load_truth(localizer, "01", "faceVsScene")
    effect_data, mask_data = effect.get_fdata(), mask.get_fdata()
    assert set(np.unique(mask_data)) == {0.0, 1.0}
    np.testing.assert_array_equal(mask_data > 0, effect_data != 0)
    # FFA is face-selective, PPA scene-selective, early visual cortex neither
    ijk = np.round(np.linalg.inv(effect.affine) @ [40, -52, -18, 1]).astype(int)[:3]
    assert effect_data[tuple(ijk)] > 0.5
    ijk = np.round(np.linalg.inv(effect.affine) @ [26, -44, -10, 1]).astype(int)[:3]
    assert effect_data[tuple(ijk)] < -0.5
    evc, _ = load_truth(localizer, "sub-01", "faceVsBaseline")
    ijk = np.round(np.linalg.inv(effect.affine) @ [10, -90, 0, 1]).astype(int)[:3]
    assert evc.get_fdata()[tuple(ijk)] > 0.5
    assert effect_data[tuple(ijk)] == 0.0

    group_effect, group_mask = load_truth(localizer, "group", "faceVsScene")
    second = load_truth(localizer, "02", "faceVsScene")[1].get_fdata() > 0
    np.testing.assert_array_equal(group_mask.get_fdata() > 0, (mask_data > 0) | second)
    assert group_effect.shape == effect.shape

    simulation = json.loads(
        (localizer / "derivatives" / "truth" / "simulation.json").read_text()
    )
    assert simulation["parameters"] == SimulationConfig(subjects=2).to_dict()
    assert simulation["contrasts"]["faceVsScene"] == [1.0, -1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("subject", "contrast", "message"),
    [
        ("01", "faceVsbaseline", "did you mean 'faceVsBaseline'"),
        ("07", "faceVsScene", "no truth for subject '07'"),
    ],
)
def test_load_truth_not_found(localizer, subject, contrast, message):
    with pytest.raises(NotFoundError, match=message):
        load_truth(localizer, subject, contrast)


def test_load_truth_rejects_paths(localizer):
    with pytest.raises(InvalidLabelError, match=r"subject label '\.\./01'"):
        load_truth(localizer, "../01", "faceVsScene")


def test_noiseless_ols_recovers_the_truth(tmp_path):
    from nilearn.glm.first_level import make_first_level_design_matrix

    dataset = simulate_dataset(
        tmp_path, subjects=1, runs=1, resolution=6, n_volumes=120, noise_scale=0.0
    )
    bold = nib.load(_preproc(dataset, "01", 1, "preproc_bold"))
    mask = nib.load(_preproc(dataset, "01", 1, "brain_mask")).get_fdata() > 0
    events = pd.read_csv(
        dataset / "sub-01" / "func" / "sub-01_task-experiment_run-1_events.tsv",
        sep="\t",
    )
    design = make_first_level_design_matrix(
        np.arange(120) * 1.9, events, hrf_model="spm", drift_model=None
    )
    series = np.asarray(bold.dataobj, dtype=np.float64)[mask].T
    percent = 100.0 * (series / series.mean(axis=0) - 1.0)
    betas = np.linalg.lstsq(design.to_numpy(), percent, rcond=None)[0]
    columns = list(design.columns)
    for contrast, weights in CONTRAST_WEIGHTS.items():
        vector = np.zeros(len(columns))
        for weight, name in zip(
            weights, ["face", "scene", "object", "baseline"], strict=True
        ):
            vector[columns.index(name)] = weight
        truth = load_truth(dataset, "01", contrast)[0].get_fdata()[mask]
        np.testing.assert_allclose(vector @ betas, truth, atol=2e-3)
    assert np.abs(truth).max() > 1.0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_default_effect_is_detectable_but_not_trivial(localizer):
    from nilearn.glm.first_level import FirstLevelModel
    from nilearn.masking import intersect_masks

    images = [str(_preproc(localizer, "01", run, "preproc_bold")) for run in (1, 2)]
    masks = [str(_preproc(localizer, "01", run, "brain_mask")) for run in (1, 2)]
    events = [
        pd.read_csv(
            localizer
            / "sub-01"
            / "func"
            / f"sub-01_task-experiment_run-{run}_events.tsv",
            sep="\t",
        )
        for run in (1, 2)
    ]
    confounds = [
        pd.read_csv(_preproc(localizer, "01", run, "confounds"), sep="\t")[MOTION]
        for run in (1, 2)
    ]
    # fit only around the true regions (plus a margin for false positives):
    # voxel-wise results do not depend on the other voxels, and this is fast
    brain = intersect_masks(masks, threshold=1)
    near = ndimage.binary_dilation(
        load_truth(localizer, "group", "faceVsScene")[1].get_fdata() > 0,
        iterations=2,
    )
    fit_mask = nib.Nifti1Image(
        (near & (brain.get_fdata() > 0)).astype(np.uint8), brain.affine
    )
    model = FirstLevelModel(t_r=1.9, hrf_model="spm", mask_img=fit_mask)
    model.fit(images, events, confounds)
    z_map = model.compute_contrast("face - scene", output_type="z_score").get_fdata()
    effect, mask = load_truth(localizer, "01", "faceVsScene")
    effect_data = effect.get_fdata()
    inside = model.masker_.mask_img_.get_fdata() > 0
    true = (mask.get_fdata() > 0) & inside
    strong = true & (np.abs(effect_data) >= 0.5 * np.abs(effect_data).max())
    detected = np.abs(z_map) > 3.1
    assert detected[true].mean() > 0.5
    assert detected[strong].mean() > 0.9
    # detected voxels carry the sign of the truth
    assert np.all(
        np.sign(z_map[true & detected]) == np.sign(effect_data[true & detected])
    )
    # a realistic, not a huge, effect: central voxels well above but not at z 40
    assert 4.0 < np.median(np.abs(z_map[strong])) < 15.0


# ---------------------------------------------------------------------------
# Determinism and null data


def test_same_seed_gives_identical_files(coarse_pair, tmp_path):
    task, _ = coarse_pair
    again = simulate_dataset(
        tmp_path / "again", subjects=1, runs=1, resolution=6, n_volumes=120
    )
    assert _hashes(again) == _hashes(task)
    other = simulate_dataset(
        tmp_path / "other", subjects=1, runs=1, resolution=6, n_volumes=120, seed=1
    )
    differing = {
        name
        for name, digest in _hashes(other).items()
        if _hashes(task).get(name) != digest
    }
    assert any(name.endswith("desc-preproc_bold.nii.gz") for name in differing)
    assert any(name.endswith("_events.tsv") for name in differing)
    with open(_preproc(task, "01", 1, "preproc_bold"), "rb") as stream:
        header = stream.read(10)
    assert header[4:8] == b"\x00\x00\x00\x00"  # gzip mtime


def test_null_is_the_same_noise_without_task(coarse_pair):
    task, null = coarse_pair
    task_data = np.asarray(nib.load(_preproc(task, "01", 1, "preproc_bold")).dataobj)
    null_data = np.asarray(nib.load(_preproc(null, "01", 1, "preproc_bold")).dataobj)
    responsive = np.zeros(task_data.shape[:3], dtype=bool)
    for contrast in ("faceVsBaseline", "sceneVsBaseline", "objectVsBaseline"):
        responsive |= load_truth(task, "01", contrast)[1].get_fdata() > 0
    difference = np.abs(task_data - null_data).max(axis=3)
    assert difference[~responsive].max() == 0.0
    assert difference[responsive].max() > 1.0
    for contrast in CONTRAST_WEIGHTS:
        effect, mask = load_truth(null, "01", contrast)
        assert not effect.get_fdata().any()
        assert not mask.get_fdata().any()


def test_noise_has_the_true_ar1(tmp_path):
    dataset = simulate_dataset(
        tmp_path, subjects=1, runs=1, resolution=6, n_volumes=300, null=True
    )
    mask = nib.load(_preproc(dataset, "01", 1, "brain_mask")).get_fdata() > 0
    series = np.asarray(
        nib.load(_preproc(dataset, "01", 1, "preproc_bold")).dataobj, dtype=np.float64
    )[mask].T
    confounds = pd.read_csv(_preproc(dataset, "01", 1, "confounds"), sep="\t")
    design = np.column_stack(
        [_cosine_drift(300, 1.9), confounds[[*MOTION, "global_signal"]].to_numpy()]
    )
    residuals = series - design @ np.linalg.lstsq(design, series, rcond=None)[0]
    lag1 = (residuals[1:] * residuals[:-1]).sum(axis=0) / (residuals**2).sum(axis=0)
    # OLS residuals of p regressors are biased by about -p / n
    lag1 += design.shape[1] / series.shape[0]
    truth = nib.load(
        dataset
        / "derivatives"
        / "truth"
        / "sub-01"
        / "sub-01_task-experiment_truth-ar1.nii.gz"
    ).get_fdata()[mask]
    assert 0.1 <= truth.min() and truth.max() <= 0.5
    assert np.corrcoef(lag1, truth)[0, 1] > 0.7
    assert abs(np.median(lag1 - truth)) < 0.05


# ---------------------------------------------------------------------------
# Options and errors


def test_sessions_task_and_extra_categories(tmp_path):
    dataset = simulate_dataset(
        tmp_path,
        subjects=1,
        runs=1,
        sessions=2,
        resolution=8,
        n_volumes=120,
        task="oloc",
        extra_categories=("body", "character", "scrambled"),
    )
    for session in ("01", "02"):
        func = dataset / "sub-01" / f"ses-{session}" / "func"
        stem = f"sub-01_ses-{session}_task-oloc_run-1"
        events = pd.read_csv(func / f"{stem}_events.tsv", sep="\t")
        assert set(events.trial_type) == {
            "face",
            "scene",
            "object",
            "body",
            "character",
            "scrambled",
            "baseline",
        }
        derivative = (
            dataset / "derivatives" / "fmriprep" / "sub-01" / f"ses-{session}" / "func"
        )
        assert (derivative / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz").exists()
        assert (derivative / f"{stem}_desc-confounds_timeseries.tsv").exists()
    body = (
        dataset
        / "derivatives"
        / "truth"
        / "sub-01"
        / "sub-01_task-oloc_condition-body_truth-effect.nii.gz"
    )
    effect = nib.load(body)
    ijk = np.round(np.linalg.inv(effect.affine) @ [46, -70, 2, 1]).astype(int)[:3]
    assert effect.get_fdata()[tuple(ijk)] > 1.0
    assert (
        load_truth(dataset, "01", "faceVsScene", task="oloc")[0].shape == effect.shape
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subjects": 0}, "subjects must be >= 1; got 0"),
        ({"runs": 0}, "runs must be >= 1; got 0"),
        ({"sessions": -1}, "sessions must be >= 1; got -1"),
        ({"resolution": 0.5}, "resolution must be between 1 and 8 mm; got 0.5"),
        ({"tr": 0}, "tr must be between 0.1 and 10 seconds"),
        ({"effect_size": -1}, "effect_size must be >= 0 percent; got -1"),
        ({"task": "face loc"}, "task must be a BIDS label"),
        ({"extra_categories": ["bodies"]}, "did you mean 'body'"),
        ({"n_volumes": 20}, "cannot hold 12 s of rest"),
        ({"n_volumes": 160.5}, "n_volumes must be an integer; got 160.5"),
        ({"seed": -3}, "seed must be >= 0; got -3"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises((InvalidLabelError, InvalidParameterError), match=message):
        simulate_dataset(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# Memory


@pytest.mark.slow
def test_memory_stays_within_twice_one_run(tmp_path):
    """Peak memory allocated while simulating one 2 mm run, after imports.

    Counted with tracemalloc, which numpy reports its arrays to: the process's
    resident size for the very same run measured 1.28x to 2.03x the run depending
    on the machine's state (transparent huge pages, other jobs), the allocations
    1.23x every time.
    """
    script = textwrap.dedent(
        f"""
        import tracemalloc
        from laion_fmri_dataloader.simulate import simulate_dataset
        # import everything on a tiny grid, then measure the 2 mm run alone
        simulate_dataset({str(tmp_path / "warm")!r}, subjects=1, runs=1,
                         resolution=8, n_volumes=24)
        tracemalloc.start()
        simulate_dataset({str(tmp_path / "run")!r}, subjects=1, runs=1,
                         resolution=2, n_volumes=70)
        print(tracemalloc.get_traced_memory()[1])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    peak = int(result.stdout.split()[-1])
    # 70 volumes (308 MB) are above the size that the simulator compresses in a
    # background thread, so the run is written as a 300-volume run is.
    run_bytes = 99 * 117 * 95 * 70 * 4
    # one run's array, the templates, the per-subject maps and write buffers
    assert peak < 2 * run_bytes
    shutil.rmtree(tmp_path)
