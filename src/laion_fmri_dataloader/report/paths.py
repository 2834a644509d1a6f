"""Where reports are written, what they read, and whether one is up to date."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.dataset import LAIONfMRIDataset
from laion_fmri_dataloader.errors import InvalidParameterError
from laion_fmri_dataloader.io.storage import is_remote

__all__ = [
    "REPORTS_DIR",
    "is_fresh",
    "open_dataset",
    "report_path",
    "reports_folder",
]

#: Folder of the reports below the GLM derivative root.
REPORTS_DIR = PurePosixPath("reports")


def report_path(name: str) -> PurePosixPath:
    """Path of a report, relative to the GLM derivative root.

    Report names are built here rather than in :mod:`layout`, because reports
    are for people, not derivatives the loader reads.

    Parameters
    ----------
    name : str
        ``"index"``, ``"group"`` or ``"sub-<label>"``.

    Examples
    --------
    >>> report_path("sub-01")
    PurePosixPath('reports/sub-01.html')
    """
    if name.startswith("sub-"):
        name = f"sub-{layout.subject_label(name)}"
    else:
        layout.validate_choice(name, ("index", "group"), "report name")
    return REPORTS_DIR / f"{name}.html"


def open_dataset(glm_dir: str | os.PathLike | LAIONfMRIDataset) -> LAIONfMRIDataset:
    """The derivatives a report reads: a dataset, or a folder or URL to open."""
    if isinstance(glm_dir, LAIONfMRIDataset):
        return glm_dir
    return LAIONfMRIDataset(glm_dir)


def reports_folder(
    dataset: LAIONfMRIDataset, output_dir: str | os.PathLike | None
) -> Path:
    """The local folder the reports go to: ``output_dir``, else ``<glm>/reports``.

    Raises
    ------
    InvalidParameterError
        If the dataset is remote and no ``output_dir`` is given.
    """
    if output_dir is not None:
        return Path(output_dir)
    if is_remote(dataset.root):
        raise InvalidParameterError(
            f"the GLM derivatives in {dataset.root} are remote; name a local "
            "folder for their reports (output_dir)"
        )
    return Path(dataset.root) / REPORTS_DIR


def is_fresh(report: Path, newest_input_ns: int | None) -> bool:
    """Whether ``report`` is newer than every input (None: times unknown)."""
    if newest_input_ns is None or not report.is_file():
        return False
    return newest_input_ns < report.stat().st_mtime_ns
