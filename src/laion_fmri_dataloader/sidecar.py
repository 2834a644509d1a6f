"""Pydantic models of the JSON sidecars and of ``dataset_description.json``.

A sidecar sits beside every map (same name, ``.json``) and holds what a reader
needs to reproduce the map: the model, the contrast weights, the software
versions, the confounds, the runs or subjects used, the degrees of freedom and,
for corrected maps, the method, alpha and threshold.  Unknown keys are kept, so
that files written by a newer version still load.

Examples
--------
>>> sidecar = MapSidecar(AnalysisLevel="group", StatType="z")
>>> MapSidecar.model_validate_json(sidecar.model_dump_json()).AnalysisLevel
'group'
"""

from __future__ import annotations

import importlib.metadata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from laion_fmri_dataloader._version import __version__
from laion_fmri_dataloader.contrasts import Contrast

__all__ = [
    "BIDS_VERSION",
    "ContrastInfo",
    "CorrectionInfo",
    "DatasetDescription",
    "Generator",
    "MapSidecar",
    "ModelInfo",
    "SoftwareInfo",
    "contrast_info",
    "software_versions",
]

BIDS_VERSION = "1.10.0"
PACKAGE_NAME = "laion-fmri-dataloader"


class _Sidecar(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ModelInfo(_Sidecar):
    """The GLM: type, HRF, drift model, high-pass (Hz), noise model."""

    Type: str = "GLM"
    HRF: str = "spm"
    DriftModel: str = "cosine"
    HighPassFilter: float = Field(0.01, description="Hz")
    NoiseModel: str = "ar1"
    SignalScaling: str = "percent signal change (voxel mean = 100)"
    SmoothingFWHM: float | None = Field(None, description="mm")


class ContrastInfo(_Sidecar):
    """One contrast: what it tests and its weights over conditions."""

    Description: str
    Weights: list[float]
    Conditions: list[str]


class SoftwareInfo(_Sidecar):
    """A piece of software and its version."""

    Name: str
    Version: str


class CorrectionInfo(_Sidecar):
    """How a corrected map was thresholded."""

    Method: str
    Alpha: float
    TwoSided: bool = True
    ZThreshold: float | None = Field(
        None, description="|z| above which a voxel survives; None if none survives"
    )
    TThreshold: float | None = None
    NPermutations: int | None = None
    Exhaustive: bool | None = None
    Seed: int | None = None
    Note: str | None = None


class MapSidecar(_Sidecar):
    """The sidecar of one map."""

    AnalysisLevel: Literal["first", "group"]
    StatType: str | None = None
    Units: str | None = None
    Task: str | None = None
    Subject: str | None = None
    Subjects: list[str] | None = None
    Model: ModelInfo = ModelInfo()
    Contrasts: dict[str, ContrastInfo] = {}
    Software: list[SoftwareInfo] = []
    Confounds: list[str] = []
    Conditions: list[str] = []
    ExtraConditions: list[str] = []
    ImplicitBaseline: bool = False
    Runs: list[str] = []
    DegreesOfFreedom: float | None = None
    Mask: str | None = None
    Correction: CorrectionInfo | None = None
    Parameters: dict[str, object] = {}


class Generator(_Sidecar):
    """An entry of ``GeneratedBy`` in ``dataset_description.json``."""

    Name: str
    Version: str | None = None
    Description: str | None = None
    CodeURL: str | None = None


class DatasetDescription(_Sidecar):
    """``dataset_description.json`` of a BIDS derivative dataset."""

    Name: str
    BIDSVersion: str = BIDS_VERSION
    DatasetType: Literal["raw", "derivative"] = "derivative"
    GeneratedBy: list[Generator] = []
    SourceDatasets: list[dict[str, str]] = []


def software_versions() -> list[SoftwareInfo]:
    """Versions of this package and of the libraries whose numbers end up in maps."""
    versions = [SoftwareInfo(Name=PACKAGE_NAME, Version=__version__)]
    for name in ("nilearn", "nibabel", "numpy", "scipy"):
        try:
            versions.append(
                SoftwareInfo(Name=name, Version=importlib.metadata.version(name))
            )
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def contrast_info(contrast: Contrast, conditions: list[str]) -> ContrastInfo:
    """Sidecar entry of ``contrast`` with weights listed over ``conditions``."""
    return ContrastInfo(
        Description=contrast.description,
        Weights=[contrast.weights.get(name, 0.0) for name in conditions],
        Conditions=list(conditions),
    )
