"""The loader: the seed's example, every method, every error path."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from laion_fmri_dataloader import (
    CorruptFileError,
    InvalidLabelError,
    LAIONfMRIDataset,
    LaionFmriError,
    NotFoundError,
)
from laion_fmri_dataloader.contrasts import STANDARD_CONTRASTS
from laion_fmri_dataloader.sidecar import MapSidecar


def run_seed_example(data_dir):
    """The seed's example, as users have it in their scripts."""
    from nilearn import plotting

    from laion_fmri_dataloader import LAIONfMRIDataset

    dataset = LAIONfMRIDataset(data_dir=data_dir)
    contrast_img = dataset.load_first_level_contrast(
        subject="sub-01", task="experiment", contrast="faceVsBaseline", stat_type="z"
    )
    plotting.plot_stat_map(
        contrast_img,
        threshold=3.1,
        title="Face > Baseline (sub-01)",
        display_mode="ortho",
        cut_coords=(0, 0, 0),
    )
    all_contrasts = dataset.load_all_contrasts(
        subject="sub-01", task="experiment", stat_type="z"
    )
    print(f"Available contrasts: {list(all_contrasts.keys())}")
    group_contrast = dataset.load_group_level_contrast(
        contrast="faceVsBaseline", stat_type="z"
    )
    group_fdr = dataset.load_group_level_contrast(
        contrast="faceVsBaseline", correction="fdr"
    )
    plotting.plot_stat_map(group_fdr, threshold=0.05)
    return contrast_img, all_contrasts, group_contrast, group_fdr


def test_seed_example_runs(derivative_tree, monkeypatch, capsys):
    import matplotlib.pyplot as plt

    monkeypatch.chdir(derivative_tree.parent)
    contrast_img, all_contrasts, group_contrast, group_fdr = run_seed_example(
        f"./{derivative_tree.name}"
    )
    plt.close("all")
    assert list(all_contrasts) == list(STANDARD_CONTRASTS)
    assert "Available contrasts: ['faceVsBaseline'" in capsys.readouterr().out
    for image in (contrast_img, group_contrast, group_fdr, *all_contrasts.values()):
        assert isinstance(image, nib.Nifti1Image)
        assert image.ndim == 3
    fdr = group_fdr.get_fdata()
    z = group_contrast.get_fdata()
    survivors = fdr != 0
    np.testing.assert_array_equal(fdr[survivors], z[survivors])


def test_listing(derivative_tree):
    dataset = LAIONfMRIDataset(derivative_tree)
    assert dataset.subjects == ["sub-01", "sub-02"]
    assert dataset.tasks() == ["experiment"]
    assert dataset.contrasts("01") == list(STANDARD_CONTRASTS)
    assert dataset.contrasts() == list(STANDARD_CONTRASTS)
    assert dataset.stat_types("sub-01") == ["effect", "variance", "t", "z"]
    assert dataset.stat_types() == ["t", "z", "p", "tfce"]
    assert dataset.corrections() == ["fdr", "fwe", "tfce", "cluster"]
    assert "sub-01" in repr(dataset)


def test_glm_folder_itself_is_accepted(derivative_tree):
    dataset = LAIONfMRIDataset(derivative_tree / "derivatives" / "glm")
    assert dataset.subjects == ["sub-01", "sub-02"]


@pytest.mark.parametrize("subject", ["sub-01", "01"])
@pytest.mark.parametrize("stat_type", ["z", "t", "effect", "variance"])
def test_first_level_loads(derivative_tree, subject, stat_type):
    dataset = LAIONfMRIDataset(derivative_tree)
    image = dataset.load_first_level_contrast(
        subject, "experiment", "faceVsScene", stat_type
    )
    assert image.shape == (9, 11, 9)
    assert np.isfinite(image.get_fdata()).all()


def test_map_loads_without_sidecar(derivative_tree, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(derivative_tree, target)
    for sidecar in target.rglob("*.json"):
        sidecar.unlink()
    dataset = LAIONfMRIDataset(target)
    dataset.load_first_level_contrast("01", contrast="faceVsBaseline")
    with pytest.raises(NotFoundError, match="has no sidecar"):
        dataset.load_metadata("01", contrast="faceVsBaseline")


def test_metadata_and_paths(derivative_tree):
    dataset = LAIONfMRIDataset(derivative_tree)
    metadata = dataset.load_metadata("sub-01", contrast="faceVsBaseline", stat_type="t")
    assert isinstance(metadata, MapSidecar)
    assert metadata.Contrasts["faceVsBaseline"].Weights == [1, 0, 0, -1]
    assert metadata.Model.NoiseModel == "ar1"
    group = dataset.load_metadata(contrast="faceVsScene", correction="fwe")
    assert group.AnalysisLevel == "group_level"
    assert group.Correction.Method == "fwe"
    path = dataset.get_path("sub-02", contrast="sceneVsObject", stat_type="effect")
    assert (
        path.name == "sub-02_task-experiment_contrast-sceneVsObject_stat-effect.nii.gz"
    )
    assert path.is_file()
    png = dataset.load_design_matrix_image("sub-01", "experiment")
    assert png.name == "sub-01_task-experiment_design-matrix.png"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda d: d.load_first_level_contrast("sub-09"),
            NotFoundError,
            r"subject 'sub-09' not found.*Available: sub-01, sub-02",
        ),
        (
            lambda d: d.load_first_level_contrast("sub-01", contrast="faceVsbaseline"),
            NotFoundError,
            r"did you mean 'faceVsBaseline'\?",
        ),
        (
            lambda d: d.load_first_level_contrast("sub-01", task="experimnt"),
            NotFoundError,
            r"task 'experimnt' not found.*did you mean 'experiment'",
        ),
        (
            lambda d: d.load_first_level_contrast("sub-01", stat_type="Z"),
            InvalidLabelError,
            r"stat_type must be one of \['effect', 'variance', 't', 'z'\]; got 'Z'",
        ),
        (
            lambda d: d.load_all_contrasts("sub-01", stat_type="p"),
            InvalidLabelError,
            r"stat_type must be one of",
        ),
        (
            lambda d: d.load_group_level_contrast("faceVsBaseline", stat_type="effect"),
            InvalidLabelError,
            r"stat_type must be one of \['t', 'z', 'p', 'tfce'\]",
        ),
        (
            lambda d: d.load_group_level_contrast("faceVsBaseline", correction="bonf"),
            InvalidLabelError,
            r"correction must be one of \['fdr', 'fwe', 'tfce', 'cluster'\]; "
            r"got 'bonf'",
        ),
        (
            lambda d: d.load_group_level_contrast("faceVsScen"),
            NotFoundError,
            r"did you mean 'faceVsScene'",
        ),
        (
            lambda d: d.load_group_level_contrast(
                "faceVsScene", stat_type="t", correction="fdr"
            ),
            InvalidLabelError,
            r"stat_type of a corrected map must be one of \['z'\]",
        ),
        (
            lambda d: d.load_design_matrix_image("sub-01", task="rest"),
            NotFoundError,
            r"no design-matrix figure for sub-01 task-rest",
        ),
        (
            lambda d: d.load_all_contrasts("sub-01", task="rest"),
            NotFoundError,
            r"no z maps for sub-01 task-rest",
        ),
    ],
)
def test_errors(derivative_tree, call, error, match):
    dataset = LAIONfMRIDataset(derivative_tree)
    with pytest.raises(error, match=match) as caught:
        call(dataset)
    assert isinstance(caught.value, LaionFmriError)


@pytest.mark.parametrize(
    "label",
    [
        "../sub-01",
        "01/../../etc",
        "..",
        "sub-01 ",
        "0 1",
        "01\n",
        "",
        "sub-",
        "a_b",
        "/etc",
    ],
)
def test_path_traversal_is_refused(derivative_tree, label):
    dataset = LAIONfMRIDataset(derivative_tree)
    with pytest.raises(InvalidLabelError, match=r"label .* is not allowed"):
        dataset.load_first_level_contrast(label)
    with pytest.raises(InvalidLabelError):
        dataset.load_first_level_contrast("01", contrast=label or "x/y")
    with pytest.raises(InvalidLabelError):
        dataset.load_first_level_contrast("01", task=label or "../x")
    with pytest.raises(InvalidLabelError):
        dataset.load_group_level_contrast(label or "..")


def test_missing_group_level(tmp_path):
    from laion_fmri_dataloader.simulate.data_gen import write_derivative_tree

    write_derivative_tree(tmp_path, subjects=("01",), group=False)
    dataset = LAIONfMRIDataset(tmp_path)
    with pytest.raises(NotFoundError, match=r"no group-level maps.*laion-fmri-glm glm"):
        dataset.load_group_level_contrast("faceVsBaseline")


def test_missing_correction(derivative_tree, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(derivative_tree, target)
    for path in target.rglob("*fwe-corrected*"):
        path.unlink()
    dataset = LAIONfMRIDataset(target)
    with pytest.raises(NotFoundError, match=r"no fwe-corrected map.*Available: fdr"):
        dataset.load_group_level_contrast("faceVsBaseline", correction="fwe")


def test_no_derivatives(tmp_path):
    with pytest.raises(
        NotFoundError, match=r"no derivatives/glm folder.*laion-fmri-glm glm"
    ):
        LAIONfMRIDataset(tmp_path)
    with pytest.raises(FileNotFoundError):
        LAIONfMRIDataset(tmp_path / "does-not-exist")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file_names_the_file(derivative_tree, tmp_path, damage):
    target = tmp_path / "copy"
    shutil.copytree(derivative_tree, target)
    dataset = LAIONfMRIDataset(target)
    path = dataset.get_path("sub-01", contrast="faceVsBaseline", stat_type="z")
    content = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(content[: len(content) // 2])
    else:
        path.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(
        CorruptFileError, match=rf"{path.name}.*corrupt or truncated"
    ) as caught:
        dataset.load_first_level_contrast("sub-01", contrast="faceVsBaseline")
    assert isinstance(caught.value, ValueError)


def test_error_classes_inherit_builtins():
    assert issubclass(NotFoundError, FileNotFoundError)
    assert issubclass(InvalidLabelError, ValueError)


def test_info_lists_what_is_there_and_what_is_missing(
    derivative_tree, tmp_path, capsys
):
    from laion_fmri_dataloader.cli import main

    target = tmp_path / "copy"
    shutil.copytree(derivative_tree, target)
    dataset = LAIONfMRIDataset(target)
    dataset.get_path("sub-02", contrast="faceVsObject", stat_type="t").unlink()
    dataset.get_path(contrast="sceneVsObject", correction="fwe").unlink()
    assert main(["info", str(target)]) == 0
    out = capsys.readouterr().out
    assert "subjects (2): sub-01, sub-02" in out
    assert "tasks: experiment" in out
    assert "corrections: fdr, fwe" in out
    assert "missing: 2" in out
    assert "sub-02 task-experiment faceVsObject stat-t" in out
    assert "group sceneVsObject fwe-corrected" in out
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "holds no GLM derivatives" in capsys.readouterr().err
