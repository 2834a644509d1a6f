"""Pydantic models of the JSON sidecars and of ``dataset_description.json``.

A sidecar sits beside every map (same name, ``.json``).  It follows the
metadata example of the LAION-fMRI documentation key for key
(``AnalysisLevel``, ``Model`` with ``Type``, ``HRF``, ``DriftModel``,
``HighPassFilter`` and ``NoiseModel``, ``Contrasts`` keyed by name with
``Description`` and ``Weights``, ``Software`` with ``Name``, ``Version`` and
``Container``, ``Confounds``), and holds beside those keys what a reader needs
to reproduce the map: the other packages' versions (``Dependencies``), how the
runs were combined, the runs or subjects used, the input files as they were,
the degrees of freedom and, for corrected maps, the method, alpha and critical
values.  Unknown keys are kept, so that files written by a newer version still
load; sidecars of earlier versions of this package (``AnalysisLevel`` ``first``,
``Software`` a list) load in today's shape.

Examples
--------
>>> sidecar = MapSidecar(AnalysisLevel="group_level", StatType="z")
>>> MapSidecar.model_validate_json(sidecar.model_dump_json()).AnalysisLevel
'group_level'
>>> MapSidecar.model_validate({"AnalysisLevel": "first"}).AnalysisLevel
'first_level'
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from laion_fmri_dataloader._version import __version__
from laion_fmri_dataloader.contrasts import Contrast

__all__ = [
    "BIDS_VERSION",
    "ClusterInfo",
    "ContrastInfo",
    "CorrectionInfo",
    "DatasetDescription",
    "Generator",
    "InputFile",
    "MapSidecar",
    "ModelInfo",
    "SoftwareInfo",
    "TFCEInfo",
    "changed_inputs",
    "container",
    "contrast_info",
    "dependency_versions",
    "first_level_signature",
    "input_files",
    "signature_difference",
    "software",
]

BIDS_VERSION = "1.10.0"
PACKAGE_NAME = "laion-fmri-dataloader"

#: The libraries whose numbers end up in the maps.
_DEPENDENCIES = ("nilearn", "nibabel", "numpy", "scipy")

# Marker files that container runtimes put in the root of the containers they
# run (Docker, Podman); Apptainer and Singularity set environment variables.
_CONTAINER_MARKERS = {
    "docker": Path("/.dockerenv"),
    "podman": Path("/run/.containerenv"),
}
_APPTAINER_VARIABLES = (
    "APPTAINER_NAME",
    "SINGULARITY_NAME",
    "APPTAINER_CONTAINER",
    "SINGULARITY_CONTAINER",
)
#: An image may name itself here (``ENV LAION_FMRI_CONTAINER=org/image:tag``):
#: nothing inside a Docker container tells the image's name.
CONTAINER_VARIABLE = "LAION_FMRI_CONTAINER"


class _Sidecar(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ModelInfo(_Sidecar):
    """The GLM: type, HRF, drift model, high-pass (Hz), noise model, and ours."""

    Type: str = "GLM"
    HRF: str = "spm"
    DriftModel: str = "cosine"
    HighPassFilter: float = Field(0.01, description="Hz")
    NoiseModel: str = "ar1"
    SignalScaling: str = "percent signal change (voxel mean = 100)"
    SmoothingFWHM: float | None = Field(None, description="mm")
    RunCombination: Literal["mean", "precision"] | None = Field(
        None,
        description="how a subject's runs were combined: 'mean' (equal weights, "
        "as nilearn's FirstLevelModel) or 'precision' (inverse-variance weights)",
    )


class ContrastInfo(_Sidecar):
    """One contrast: what it tests and its weights over conditions."""

    Description: str
    Weights: list[float]
    Conditions: list[str] = []

    def nonzero_weights(self) -> dict[str, float]:
        """Weight by condition, zero weights left out (what the contrast tests)."""
        return {
            name: weight
            for name, weight in zip(self.Conditions, self.Weights, strict=False)
            if weight != 0
        }


class SoftwareInfo(_Sidecar):
    """The software that wrote the file, and the container it ran in if any."""

    Name: str
    Version: str
    Container: str | None = None

    @model_serializer(mode="wrap")
    def _null_container(self, handler):
        # written as null, not left out, when there is no container: readers of
        # the documented shape find the key
        data = handler(self)
        data.setdefault("Container", None)
        return data


class InputFile(_Sidecar):
    """An input file as it was when the map was made."""

    Path: str = Field(description="relative to the BIDS dataset if inside it")
    Size: int = Field(description="bytes")
    ModifiedNs: int = Field(description="modification time, ns since the epoch")


class TFCEInfo(_Sidecar):
    """How a TFCE map was computed (nilearn's and FSL's defaults: E 0.5, H 2)."""

    E: float = Field(description="extent exponent")
    H: float = Field(description="height exponent")
    Dh: float | None = Field(
        None, description="threshold step of the observed map (t units)"
    )
    DhRule: str = Field(description="how each map's step is chosen")
    Connectivity: int = Field(description="6: voxels sharing a face")
    TwoSided: bool = Field(description="both signs enhanced, each apart")


class ClusterInfo(_Sidecar):
    """How the clusters of a cluster-extent map were formed."""

    FormingP: float = Field(description="uncorrected cluster-forming p-value")
    FormingT: float = Field(description="the same as |t| with the group's dof")
    Connectivity: int = Field(description="6: voxels sharing a face")


class CorrectionInfo(_Sidecar):
    """How a corrected map was thresholded.

    ``TThreshold`` and ``ZThreshold`` are the method's critical values, there
    whether or not any voxel survives; ``SmallestSurvivingZ`` is the smallest
    |z| in the map, so that ``|z| >= SmallestSurvivingZ`` reproduces it.  TFCE
    and cluster extent threshold another statistic: their critical values are
    ``CriticalMaxTFCE`` (voxels with a larger |TFCE| survive) and
    ``CriticalClusterSize`` (clusters of more voxels survive).
    """

    Method: str
    Alpha: float
    TwoSided: bool = True
    TThreshold: float | None = Field(
        None, description="critical |t| (t if one-sided) of the method"
    )
    ZThreshold: float | None = Field(None, description="critical |z| of the method")
    PThreshold: float | None = Field(
        None, description="critical uncorrected p (FDR, Bonferroni)"
    )
    SmallestSurvivingZ: float | None = Field(
        None, description="smallest |z| that survives; None if none survives"
    )
    NPermutations: int | None = None
    Exhaustive: bool | None = None
    Seed: int | None = None
    TFCE: TFCEInfo | None = None
    CriticalMaxTFCE: float | None = Field(
        None, description="95th-percentile-style cutoff of the max |TFCE| null"
    )
    Cluster: ClusterInfo | None = None
    CriticalClusterSize: int | None = Field(
        None, description="voxels; larger clusters survive"
    )
    Note: str | None = None


class MapSidecar(_Sidecar):
    """The sidecar of one map (the documented keys first, ours after them)."""

    AnalysisLevel: Literal["first_level", "group_level"]
    Model: ModelInfo = ModelInfo()
    Contrasts: dict[str, ContrastInfo] = {}
    Software: SoftwareInfo | None = None
    Confounds: list[str] = []
    Dependencies: dict[str, str] = Field(
        {}, description="versions of the libraries the numbers come from"
    )
    StatType: str | None = None
    Units: str | None = None
    TwoSided: bool | None = Field(None, description="whether a p map is two-sided")
    Task: str | None = None
    Subject: str | None = None
    Subjects: list[str] | None = None
    ExcludedSubjects: dict[str, str] | None = Field(
        None, description="subjects left out of a group map, and why"
    )
    Conditions: list[str] = []
    ExtraConditions: list[str] = []
    ImplicitBaseline: bool = False
    Runs: list[str] = []
    InputFiles: list[InputFile] = []
    DegreesOfFreedom: float | None = None
    Mask: str | None = None
    Correction: CorrectionInfo | None = None
    TFCE: TFCEInfo | None = None
    SkippedCorrections: dict[str, str] | None = Field(
        None, description="corrections asked for but not written, and why"
    )
    Parameters: dict[str, object] = {}

    @model_validator(mode="before")
    @classmethod
    def _earlier_shapes(cls, data: object) -> object:
        """Sidecars of earlier versions: ``first``/``group``, ``Software`` a list."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("AnalysisLevel") in ("first", "group"):
            data["AnalysisLevel"] = f"{data['AnalysisLevel']}_level"
        entries = data.get("Software")
        if isinstance(entries, list):
            ours = [e for e in entries if e.get("Name") == PACKAGE_NAME]
            data["Software"] = ours[0] if ours else None
            data.setdefault(
                "Dependencies",
                {
                    e["Name"]: e["Version"]
                    for e in entries
                    if e.get("Name") != PACKAGE_NAME
                },
            )
        return data


class Generator(_Sidecar):
    """An entry of ``GeneratedBy`` in ``dataset_description.json``."""

    Name: str
    Version: str | None = None
    Description: str | None = None
    CodeURL: str | None = None
    Container: dict[str, str] | None = None


class DatasetDescription(_Sidecar):
    """``dataset_description.json`` of a BIDS derivative dataset."""

    Name: str
    BIDSVersion: str = BIDS_VERSION
    DatasetType: Literal["raw", "derivative"] = "derivative"
    GeneratedBy: list[Generator] = []
    SourceDatasets: list[dict[str, str]] = []

    def local_source(self, root: Path) -> Path | None:
        """The first source dataset that is a local folder, or None.

        ``URL`` may be a path relative to ``root`` (the folder of this file),
        as this package writes it, or a ``file:`` URL.
        """
        for source in self.SourceDatasets:
            url = urllib.parse.urlparse(source.get("URL", ""))
            if url.scheme == "file":
                return Path(urllib.parse.unquote(url.path))
            if not url.scheme and url.path:
                return (Path(root) / urllib.parse.unquote(url.path)).resolve()
        return None


def container() -> tuple[str, str | None] | None:
    """The container this process runs in: (runtime, image) or None.

    The image is known for Apptainer and Singularity (their environment names
    it) and for any image that sets ``LAION_FMRI_CONTAINER``.
    """
    image = os.environ.get(CONTAINER_VARIABLE) or None
    for variable in _APPTAINER_VARIABLES:
        if os.environ.get(variable):
            return "apptainer", image or Path(os.environ[variable]).name
    for runtime, marker in _CONTAINER_MARKERS.items():
        if marker.exists():
            return runtime, image
    return ("container", image) if image else None


def software() -> SoftwareInfo:
    """This package, its version and the container it runs in (if any)."""
    found = container()
    return SoftwareInfo(
        Name=PACKAGE_NAME,
        Version=__version__,
        Container=None if found is None else (found[1] or found[0]),
    )


def dependency_versions() -> dict[str, str]:
    """Versions of the libraries whose numbers end up in the maps."""
    versions = {}
    for name in _DEPENDENCIES:
        try:
            versions[name] = importlib.metadata.version(name)
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


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it is inside, else absolute (POSIX)."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def input_files(paths: Iterable[Path], root: Path) -> list[InputFile]:
    """What the sidecar records of each input: path, size, modification time."""
    records = []
    for path in paths:
        status = Path(path).stat()
        records.append(
            InputFile(
                Path=_relative(path, root),
                Size=status.st_size,
                ModifiedNs=status.st_mtime_ns,
            )
        )
    return records


def changed_inputs(
    files: Iterable[InputFile], root: Path
) -> tuple[list[str], list[str]]:
    """Inputs changed since they were recorded, and inputs no longer there.

    Parameters
    ----------
    files : iterable of InputFile
        A sidecar's ``InputFiles``.
    root : Path
        The BIDS dataset that relative paths are relative to.

    Returns
    -------
    changed, missing : list of str
        Recorded paths whose size or modification time differ now, and those
        that do not exist (a moved or deleted input cannot be checked).
    """
    changed, missing = [], []
    for record in files:
        path = Path(root) / record.Path
        try:
            status = path.stat()
        except OSError:
            missing.append(record.Path)
            continue
        if (status.st_size, status.st_mtime_ns) != (record.Size, record.ModifiedNs):
            changed.append(record.Path)
    return changed, missing


def first_level_signature(sidecars: Iterable[MapSidecar]) -> dict[str, str]:
    """What must be the same for every subject of a group map, as JSON text.

    From the sidecars of one subject's maps (one per contrast): the model (HRF,
    drift, high-pass, noise model, smoothing, run combination), the space, the
    confounds, whether the baseline is implicit, and each contrast's weights
    (over the conditions with a non-zero weight, so that subjects with other
    extra trial types still agree).

    Examples
    --------
    >>> signature = first_level_signature([MapSidecar(AnalysisLevel="first_level")])
    >>> sorted(signature)
    ['Confounds', 'Contrasts', 'ImplicitBaseline', 'Model', 'Space']
    """
    sidecars = list(sidecars)
    first = sidecars[0]
    contrasts = {
        name: info.nonzero_weights()
        for sidecar in sidecars
        for name, info in sidecar.Contrasts.items()
    }
    values: Mapping[str, object] = {
        "Model": first.Model.model_dump(exclude={"Type"}),
        "Space": first.Parameters.get("Space"),
        "Confounds": list(first.Confounds),
        "ImplicitBaseline": first.ImplicitBaseline,
        "Contrasts": contrasts,
    }
    return {key: json.dumps(value, sort_keys=True) for key, value in values.items()}


def signature_difference(
    signatures: Mapping[str, Mapping[str, str]],
) -> tuple[str, dict[str, list[str]]] | None:
    """The first thing on which subjects' signatures differ, and who has what.

    Parameters
    ----------
    signatures : mapping of str to signature
        :func:`first_level_signature` of each subject, by subject label.

    Returns
    -------
    (key, groups) or None
        ``key`` names what differs, down to the model's field or the contrast
        (``Model.SmoothingFWHM``, ``Contrasts.faceVsScene``); ``groups`` maps
        each value (JSON text) to the subjects that have it.  None if all agree.

    Examples
    --------
    >>> a = first_level_signature([MapSidecar(AnalysisLevel="first_level")])
    >>> b = first_level_signature(
    ...     [MapSidecar(AnalysisLevel="first_level", Model={"SmoothingFWHM": 6.0})]
    ... )
    >>> signature_difference({"01": a, "02": a, "03": b})
    ('Model.SmoothingFWHM', {'null': ['01', '02'], '6.0': ['03']})
    """
    if not signatures:
        return None
    for key in next(iter(signatures.values())):
        values = {s: json.loads(signature[key]) for s, signature in signatures.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) == 1:
            continue
        name, by_subject = key, values
        if all(isinstance(v, dict) for v in values.values()):
            for inner in sorted(set().union(*values.values())):
                texts = {
                    json.dumps(v.get(inner), sort_keys=True) for v in values.values()
                }
                if len(texts) > 1:
                    name = f"{key}.{inner}"
                    by_subject = {s: v.get(inner) for s, v in values.items()}
                    break
        groups: dict[str, list[str]] = {}
        for subject, value in by_subject.items():
            groups.setdefault(json.dumps(value, sort_keys=True), []).append(subject)
        return name, groups
    return None
