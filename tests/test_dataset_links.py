"""The loader on datasets made of symbolic links (DataLad, git-annex), and on
sidecars that are not valid."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from _s3 import same_image
from laion_fmri_dataloader import cli, layout
from laion_fmri_dataloader.dataset import LAIONfMRIDataset
from laion_fmri_dataloader.errors import CorruptFileError, NotFoundError


def _annex(tree: Path, dataset: Path) -> None:
    """Copy ``tree`` as git-annex stores it: every file a relative link to an
    object named after its checksum, in ``.git/annex/objects``."""
    for source in sorted(path for path in tree.rglob("*") if path.is_file()):
        content = source.read_bytes()
        digest = hashlib.sha256(content).hexdigest()
        key = f"SHA256E-s{len(content)}--{digest}{''.join(source.suffixes)}"
        annexed = dataset / ".git/annex/objects" / digest[:2] / digest[2:4] / key / key
        annexed.parent.mkdir(parents=True, exist_ok=True)
        annexed.write_bytes(content)
        link = dataset / source.relative_to(tree)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(annexed, link.parent))


@pytest.fixture(scope="module")
def linked_dataset(derivative_tree, tmp_path_factory) -> Path:
    """The derivative tree as a DataLad dataset would hold it, with a
    subject's folder that is itself a link, reached through a linked root."""
    root = tmp_path_factory.mktemp("linked")
    _annex(derivative_tree, root / "annexed")
    first_level = root / "annexed" / layout.DERIVATIVE_SUBDIR / layout.FIRST_LEVEL_DIR
    elsewhere = root / "elsewhere" / "sub-02"
    elsewhere.parent.mkdir()
    shutil.move(first_level / "sub-02", elsewhere)
    # Moved, its files link to their objects by absolute paths instead.
    for link in elsewhere.iterdir():
        target = os.path.normpath(first_level / "sub-02" / os.readlink(link))
        link.unlink()
        link.symlink_to(target)
    (first_level / "sub-02").symlink_to(elsewhere, target_is_directory=True)
    (root / "dataset").symlink_to(root / "annexed", target_is_directory=True)
    return root / "dataset"


def test_listing_and_loading_follow_links(derivative_tree, linked_dataset, capsys):
    linked = LAIONfMRIDataset(linked_dataset)
    plain = LAIONfMRIDataset(derivative_tree)
    assert linked.subjects == plain.subjects == ["sub-01", "sub-02"]
    for subject in (None, "sub-01", "sub-02"):
        assert linked.contrasts(subject) == plain.contrasts(subject)
        assert linked.stat_types(subject) == plain.stat_types(subject)
    assert linked.corrections() == plain.corrections() == list(layout.CORRECTIONS)
    for subject in plain.subjects:
        for stat_type in layout.FIRST_LEVEL_STAT_TYPES:
            images = linked.load_all_contrasts(subject, stat_type=stat_type)
            expected = plain.load_all_contrasts(subject, stat_type=stat_type)
            assert list(images) == list(expected)
            for name, image in images.items():
                same_image(image, expected[name])
        assert linked.load_metadata(subject) == plain.load_metadata(subject)
        png = linked.load_design_matrix_image(subject)
        assert png.is_symlink()  # the link's own name, never its target's
        assert png.read_bytes() == plain.load_design_matrix_image(subject).read_bytes()
    for correction in (None, *layout.CORRECTIONS):
        same_image(
            linked.load_group_level_contrast("faceVsScene", correction=correction),
            plain.load_group_level_contrast("faceVsScene", correction=correction),
        )
    assert linked.get_path("sub-02").is_relative_to(linked_dataset)

    assert cli.main(["info", str(linked_dataset)]) == 0
    linked_lines = capsys.readouterr().out.splitlines()
    assert cli.main(["info", str(derivative_tree)]) == 0
    assert linked_lines[1:] == capsys.readouterr().out.splitlines()[1:]


def test_a_file_whose_content_was_not_fetched_says_how_to_get_it(
    linked_dataset, tmp_path
):
    dataset = tmp_path / "dataset"
    shutil.copytree(linked_dataset, dataset, symlinks=True)
    # git-annex without the content: the link is there, its object is not.
    link = dataset / layout.DERIVATIVE_SUBDIR / layout.group_map("faceVsScene", "t")
    (link.parent / os.readlink(link)).unlink()
    loader = LAIONfMRIDataset(dataset)
    assert loader.has_map(contrast="faceVsScene", stat_type="t")
    with pytest.raises(
        NotFoundError, match=rf"{link} is a symbolic link to .*datalad get {link}"
    ):
        loader.load_group_level_contrast("faceVsScene", stat_type="t")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{", r"Invalid JSON: EOF while parsing an object"),
        (json.dumps({"AnalysisLevel": "third"}), r"AnalysisLevel: Input should be"),
        (json.dumps(["a", "list"]), r"Input should be an object"),
        ("\udcff", r"Invalid JSON"),
    ],
)
def test_an_invalid_sidecar_raises_corrupt_file_error_naming_it(
    derivative_tree, tmp_path, content, problem
):
    target = tmp_path / "copy"
    shutil.copytree(derivative_tree, target)
    dataset = LAIONfMRIDataset(target)
    sidecar = (
        target
        / layout.DERIVATIVE_SUBDIR
        / layout.sidecar_of(
            layout.first_level_map("01", "experiment", "faceVsBaseline", "z")
        )
    )
    sidecar.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(
        CorruptFileError, match=rf"sidecar {sidecar} is not valid \({problem}"
    ) as caught:
        dataset.load_metadata("sub-01")
    assert isinstance(caught.value, ValueError)
