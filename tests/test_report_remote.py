"""Reports of a dataset in an object store: the S3 server of the remote tests (moto).

A simulated, fitted dataset is uploaded; its reports are written from the
bucket into a local folder and compared with those of the local copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from _s3 import BUCKET
from laion_fmri_dataloader import layout
from laion_fmri_dataloader.errors import InvalidParameterError
from laion_fmri_dataloader.io.upload import upload_tree
from laion_fmri_dataloader.report import (
    write_group_report,
    write_index,
    write_reports,
    write_subject_report,
)

# test_remote's fixtures: moto behind the counting proxy, a fresh cache per test.

pytestmark = pytest.mark.timeout(600)

URL = f"s3://{BUCKET}/simulated"
GLM_URL = f"{URL}/{layout.DERIVATIVE_SUBDIR}"


def _pages(glm: str | Path, folder: Path) -> list[Path]:
    """One subject's report, the group's and the index (every kind of page)."""
    return [
        write_subject_report(glm, "01", output_dir=folder),
        write_group_report(glm, output_dir=folder),
        write_index(glm, output_dir=folder),
    ]


def _glm_and_confounds(source: Path, target: Path) -> Path:
    """Copy the GLM derivatives and the runs' confounds (the sidecars name the
    raw dataset relatively, ``../..``, so the copy names itself)."""
    glm = source / layout.DERIVATIVE_SUBDIR
    shutil.copytree(
        glm, target / layout.DERIVATIVE_SUBDIR, ignore=shutil.ignore_patterns("reports")
    )
    for path in (source / "derivatives" / "fmriprep").rglob("*_desc-confounds_*.tsv"):
        copy = target / path.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
    return target


@pytest.mark.slow
def test_reports_from_a_bucket_match_those_of_the_local_copy(
    s3,
    cache,
    group_dataset,
    tmp_path,
):
    local = _glm_and_confounds(group_dataset, tmp_path / "data")
    local_glm = local / layout.DERIVATIVE_SUBDIR
    expected = _pages(local_glm, tmp_path / "local-reports")
    n_runs = sorted(path.name for path in local.rglob("*_desc-confounds_*.tsv"))
    upload_tree(local, URL)
    # Without the local copy, the raw dataset the sidecars name is gone: the
    # confounds can only come from the bucket.
    shutil.rmtree(local)
    s3.proxy.reset()

    written = _pages(GLM_URL, tmp_path / "remote-reports")

    assert [path.name for path in written] == [
        "sub-01.html",
        "group.html",
        "index.html",
    ]
    for remote, reference in zip(written, expected, strict=True):
        # The same report, but for where the derivatives are (index subtitle).
        assert remote.read_text() == reference.read_text().replace(
            str(local_glm), GLM_URL
        ), remote.name
    assert GLM_URL in written[-1].read_text()
    assert "no framewise displacement found" not in written[0].read_text()
    # Every run's confounds came from the bucket (the index reads every
    # subject's), once each: then from the cache.
    confounds = s3.proxy.matching("GET", "_desc-confounds_timeseries.tsv")
    assert sorted(Path(request.path).name for request in confounds) == n_runs
    assert all(request.status == 200 for request in confounds)


def test_reports_of_a_bucket_need_a_local_folder(s3, cache):
    with pytest.raises(InvalidParameterError, match="name a local folder"):
        write_reports(f"s3://{BUCKET}/fmri/{layout.DERIVATIVE_SUBDIR}")
