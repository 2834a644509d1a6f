"""Shared fixtures: small derivative trees written once per session."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest

from laion_fmri_dataloader.simulate.data_gen import write_derivative_tree


@pytest.fixture(scope="session")
def derivative_tree(tmp_path_factory):
    """A dataset folder whose derivatives/glm holds two subjects and the group."""
    return write_derivative_tree(tmp_path_factory.mktemp("laion-fmri-data"))


def _simulate_and_fit(root, *, levels=("participant",), **options):
    from laion_fmri_dataloader.cli import main
    from laion_fmri_dataloader.simulate import simulate_dataset

    simulate_dataset(root, **options)
    for level in levels:
        code = main(
            [
                "glm",
                str(root),
                str(root / "derivatives" / "glm"),
                level,
                "--scheduler",
                "none",
                *(("--no-reports",) if level == "group" else ()),
            ]
        )
        assert code == 0, f"{level} level failed"
    return root


@pytest.fixture(scope="session")
def one_run_dataset(tmp_path_factory):
    """One subject, one run at 6 mm, fitted at the participant level."""
    return _simulate_and_fit(
        tmp_path_factory.mktemp("one-run"),
        subjects=1,
        runs=1,
        resolution=6.0,
        n_volumes=120,
        seed=3,
    )


@pytest.fixture(scope="session")
def group_dataset(tmp_path_factory):
    """Six subjects, two runs at 8 mm, fitted at participant and group levels."""
    return _simulate_and_fit(
        tmp_path_factory.mktemp("group"),
        levels=("participant", "group"),
        subjects=6,
        runs=2,
        resolution=8.0,
        n_volumes=90,
        seed=5,
    )


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto behind the proxy, with a derivative tree uploaded by upload_tree.

    Module-scoped: each test module that uses it gets its own server.
    """
    from _s3 import running_s3  # moto is imported only by the tests that use it

    with running_s3(tmp_path_factory) as server:
        yield server


@pytest.fixture
def cache(s3, tmp_path, monkeypatch):
    """A fresh cache root per test, and a proxy without faults or records."""
    from laion_fmri_dataloader.io.cache import CACHE_ENV

    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    s3.proxy.reset()
    return folder
