"""Shared fixtures: small derivative trees written once per session."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest

from _trees import write_derivative_tree


@pytest.fixture(scope="session")
def derivative_tree(tmp_path_factory):
    """A dataset folder whose derivatives/glm holds two subjects and the group."""
    return write_derivative_tree(tmp_path_factory.mktemp("laion-fmri-data"))
