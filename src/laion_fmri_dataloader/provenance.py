"""Fingerprints of a step's parameters and inputs, for resuming reruns.

Each output sidecar records the fingerprint of the parameters and input files
that made it (``Parameters.Fingerprint``).  A rerun skips a step when every
expected output and sidecar exists and records the same fingerprint, and redoes
it otherwise, so a partial or stale output is never mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from laion_fmri_dataloader import layout

__all__ = ["fingerprint", "outputs_complete"]


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


def outputs_complete(
    root: Path, outputs: Iterable[PurePosixPath], expected_fingerprint: str
) -> bool:
    """Whether every output and its sidecar exist and record the fingerprint."""
    for relative in outputs:
        sidecar = root / layout.sidecar_of(relative)
        if not (root / relative).is_file() or not sidecar.is_file():
            return False
        try:
            recorded = json.loads(sidecar.read_text(encoding="utf-8")).get(
                "Parameters", {}
            )
        except (OSError, json.JSONDecodeError):
            return False
        if recorded.get("Fingerprint") != expected_fingerprint:
            return False
    return True
