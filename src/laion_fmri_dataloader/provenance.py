"""Fingerprints of a step's parameters and inputs, and manifests of its outputs.

A step (one subject's first level, the group level) records what it wrote in
a manifest beside its outputs: the fingerprint of the parameters and input
files that made them, and the size and SHA-256 of every output (maps, masks,
cluster tables, the design figure, sidecars).  The manifest is written twice:
before the first output, as ``Complete: false`` with the files about to be
written, and after the last, with their checksums.  A rerun skips the step
only when the manifest is complete, records the same fingerprint, lists
the expected files and every file it lists still has its recorded size and
checksum, so that a step killed halfway, or outputs of other parameters
beside old sidecars, are redone and never mistaken for complete ones.
Checking costs one read of the outputs (measured on the demo in the README).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "FileRecord",
    "OutputManifest",
    "file_record",
    "fingerprint",
    "outputs_complete",
    "read_manifest",
]

# Bytes hashed at a time: large enough to amortise the calls, small enough to
# stay in cache.
_HASH_CHUNK = 1 << 20


class FileRecord(BaseModel):
    """Size (bytes) and SHA-256 (hex) of one output."""

    model_config = ConfigDict(frozen=True)

    Size: int
    SHA256: str


class OutputManifest(BaseModel):
    """The outputs of one step, by name relative to the manifest's folder.

    ``Complete`` is false while the step writes; then ``Files`` lists the
    outputs about to be written and those of an earlier run that are to be
    removed, without records.
    """

    model_config = ConfigDict(frozen=True)

    Fingerprint: str
    Complete: bool
    Files: dict[str, FileRecord | None]


def fingerprint(parameters: Mapping[str, object], inputs: Iterable[Path]) -> str:
    """SHA-256 of the parameters and of each input's name, size and mtime.

    Names rather than full paths, so that a dataset moved or copied with its
    timestamps (``cp -p``, ``rsync -a``) is still recognised as the same.
    """
    files = [
        (path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in inputs
    ]
    text = json.dumps({"parameters": parameters, "inputs": files}, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_record(path: Path) -> FileRecord:
    """Size and SHA-256 of a file as it is on disk."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileRecord(Size=size, SHA256=digest.hexdigest())


def read_manifest(path: Path) -> OutputManifest | None:
    """The manifest at ``path``; None if it is missing or unreadable."""
    try:
        return OutputManifest.model_validate_json(Path(path).read_bytes())
    except (OSError, ValueError, ValidationError):
        return None


def outputs_complete(
    folder: Path, manifest: str, names: Iterable[str], expected_fingerprint: str
) -> bool:
    """Whether the outputs ``names`` of ``folder`` are complete and as recorded.

    Parameters
    ----------
    folder : Path
        The folder of the outputs and of their manifest.
    manifest : str
        File name of the manifest in ``folder``.
    names : iterable of str
        File names of the outputs that must be there (the manifest may list
        more, which are checked too).
    expected_fingerprint : str
        Fingerprint of the parameters and inputs of this run.

    Returns
    -------
    bool
        True when the manifest is complete, has this fingerprint, lists every
        one of ``names`` and every file it lists has its recorded size and
        SHA-256.
    """
    folder = Path(folder)
    recorded = read_manifest(folder / manifest)
    if (
        recorded is None
        or not recorded.Complete
        or recorded.Fingerprint != expected_fingerprint
        or not set(names) <= set(recorded.Files)
    ):
        return False
    for name, record in recorded.Files.items():
        path = folder / name
        try:
            if record is None or path.stat().st_size != record.Size:
                return False
            if file_record(path) != record:
                return False
        except OSError:
            return False
    return True
