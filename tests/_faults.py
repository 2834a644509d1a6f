"""Shared parts of the fault-injection tests (tests/test_faults*.py)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
from pathlib import Path

from laion_fmri_dataloader.cli import main
from laion_fmri_dataloader.io.files import KILL_AT_WRITE_ENV

#: Small enough that a run takes well under a second: a kill at every write
#: means a hundred runs or more.
SIMULATION = {
    "subjects": 4,
    "runs": 1,
    "resolution": 8.0,
    "n_volumes": 40,
    "seed": 11,
}


def glm(dataset: Path) -> Path:
    return dataset / "derivatives" / "glm"


def participant_args(dataset: Path, *extra: str) -> list[str]:
    return [
        "glm",
        str(dataset),
        str(glm(dataset)),
        "participant",
        "--scheduler",
        "none",
        *extra,
    ]


def group_args(dataset: Path, *extra: str) -> list[str]:
    return [
        "glm",
        str(dataset),
        str(glm(dataset)),
        "group",
        "--scheduler",
        "none",
        "--no-reports",
        *extra,
    ]


def simulate(folder: Path) -> Path:
    from laion_fmri_dataloader.simulate import simulate_dataset

    simulate_dataset(folder, **SIMULATION)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones too), by relative path."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def differences(found: dict[str, bytes], expected: dict[str, bytes]) -> list[str]:
    """Names missing, extra or with other bytes (empty when identical)."""
    names = sorted(set(found) | set(expected))
    return [name for name in names if found.get(name) != expected.get(name)]


def copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


def _child(argv: list[str], kill_at: str | None) -> None:
    if kill_at is not None:
        os.environ[KILL_AT_WRITE_ENV] = kill_at
    logging.disable(logging.CRITICAL)
    os._exit(main(argv))


def run_forked(argv: list[str], kill_at: str | None = None) -> int:
    """Run the command line in a forked child; its exit code (-9: killed).

    Forked rather than started afresh, so that the imports (two seconds) are
    paid once and a hundred killed runs stay fast.
    """
    process = multiprocessing.get_context("fork").Process(
        target=_child, args=(argv, kill_at)
    )
    process.start()
    process.join(timeout=300)
    if process.exitcode is None:
        process.kill()
        raise AssertionError(f"{argv} did not finish in 300 s")
    return process.exitcode
