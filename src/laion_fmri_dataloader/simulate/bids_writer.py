"""Writing the simulated raw BIDS dataset and its fMRIPrep-like derivative.

File names come from :func:`laion_fmri_dataloader.layout.bids_name`; the paths
of one run's files from :func:`run_files`, which tests and benchmarks use too.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from laion_fmri_dataloader._version import __version__
from laion_fmri_dataloader.io.files import write_json, write_text
from laion_fmri_dataloader.layout import bids_name
from laion_fmri_dataloader.simulate.anatomy import Geometry
from laion_fmri_dataloader.simulate.config import (
    BASELINE,
    GENERATOR_NAME,
    SPACE,
    SimulationConfig,
)
from laion_fmri_dataloader.simulate.motion import (
    MOTION_PARAMETERS,
    framewise_displacement,
)
from laion_fmri_dataloader.simulate.paradigm import Block
from laion_fmri_dataloader.simulate.signal import RunSignals
from laion_fmri_dataloader.simulate.writing import mni_image, write_nifti, write_tsv

__all__ = [
    "FMRIPREP_SUBDIR",
    "RunFiles",
    "SimulatedRun",
    "generated_by",
    "run_files",
    "write_run",
    "write_top_level",
]

#: Where the fMRIPrep-like derivative sits below the dataset's root.
FMRIPREP_SUBDIR = pathlib.PurePosixPath("derivatives/fmriprep")


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The files of one simulated run.

    Attributes
    ----------
    events : pathlib.Path
        Raw ``..._events.tsv``.
    raw_bold, raw_bold_json : pathlib.Path
        Raw ``..._bold.nii.gz`` (int16, half resolution) and its sidecar.
    preproc_bold, preproc_bold_json : pathlib.Path
        fMRIPrep's ``..._space-<SPACE>_desc-preproc_bold.nii.gz`` and sidecar.
    brain_mask, brain_mask_json : pathlib.Path
        fMRIPrep's ``..._space-<SPACE>_desc-brain_mask.nii.gz`` and sidecar.
    confounds : pathlib.Path
        fMRIPrep's ``..._desc-confounds_timeseries.tsv``.
    """

    events: pathlib.Path
    raw_bold: pathlib.Path
    raw_bold_json: pathlib.Path
    preproc_bold: pathlib.Path
    preproc_bold_json: pathlib.Path
    brain_mask: pathlib.Path
    brain_mask_json: pathlib.Path
    confounds: pathlib.Path


def _func_dir(root: pathlib.Path, subject: str, session: str | None) -> pathlib.Path:
    folder = root / f"sub-{subject}"
    if session is not None:
        folder = folder / f"ses-{session}"
    return folder / "func"


def run_files(
    root: str | os.PathLike[str],
    subject: str,
    run: int,
    *,
    session: str | None = None,
    task: str = "experiment",
) -> RunFiles:
    """Paths of one run's files in a simulated dataset.

    Parameters
    ----------
    root : str or path-like
        The dataset's folder; ``"."`` gives paths relative to it.
    subject : str
        Subject label without ``sub-`` (``"01"``).
    run : int
        Run index within the session (1, 2, ...).
    session : str or None
        Session label, or None for a dataset without sessions.
    task : str
        Task label.

    Returns
    -------
    RunFiles

    Examples
    --------
    >>> run_files(".", "01", 2, session="02").events.as_posix()
    'sub-01/ses-02/func/sub-01_ses-02_task-experiment_run-2_events.tsv'
    >>> run_files(".", "01", 1).confounds.name
    'sub-01_task-experiment_run-1_desc-confounds_timeseries.tsv'
    """
    root = pathlib.Path(root)
    entities = {"sub": subject, "ses": session, "task": task, "run": run}
    raw = _func_dir(root, subject, session)
    derivative = _func_dir(root / FMRIPREP_SUBDIR, subject, session)

    def name(suffix: str, extension: str, **more: str) -> str:
        return bids_name({**entities, **more}, suffix, extension)

    in_space = {"space": SPACE}
    return RunFiles(
        events=raw / name("events", ".tsv"),
        raw_bold=raw / name("bold", ".nii.gz"),
        raw_bold_json=raw / name("bold", ".json"),
        preproc_bold=derivative / name("bold", ".nii.gz", **in_space, desc="preproc"),
        preproc_bold_json=derivative
        / name("bold", ".json", **in_space, desc="preproc"),
        brain_mask=derivative / name("mask", ".nii.gz", **in_space, desc="brain"),
        brain_mask_json=derivative / name("mask", ".json", **in_space, desc="brain"),
        confounds=derivative / name("timeseries", ".tsv", desc="confounds"),
    )


@dataclasses.dataclass(frozen=True)
class SimulatedRun:
    """One generated run, ready to be written.

    Attributes
    ----------
    subject : str
        Subject label.
    session : str or None
        Session label, or None without sessions.
    run : int
        Run index within the session.
    blocks : list of Block
        The design.
    data : numpy.ndarray
        Preprocessed series, float32 (x, y, z, volumes), Fortran order.
    signals : RunSignals
        Mean signals for the confounds.
    motion : numpy.ndarray
        Rigid-body parameters, (n_volumes, 6).
    keep : numpy.ndarray
        The run's brain mask over the template mask's voxels, bool.
    """

    subject: str
    session: str | None
    run: int
    blocks: list[Block]
    data: np.ndarray
    signals: RunSignals
    motion: np.ndarray
    keep: np.ndarray


def generated_by() -> dict[str, str]:
    """The ``GeneratedBy`` entry of the simulated datasets' descriptions."""
    return {
        "Name": GENERATOR_NAME,
        "Version": __version__,
        "Description": "Simulated category localizer with known ground truth",
    }


def write_top_level(root: pathlib.Path, config: SimulationConfig) -> None:
    """Write the dataset-level files of the raw dataset and of fMRIPrep's."""
    write_json(
        {
            "Name": "Simulated LAION-fMRI category localizer",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": [GENERATOR_NAME],
            "GeneratedBy": [generated_by()],
        },
        root / "dataset_description.json",
    )
    readme = (
        f"Simulated category-localizer dataset written by `{GENERATOR_NAME}`.\n\n"
        "The BOLD data are synthetic. derivatives/fmriprep holds an fMRIPrep-like\n"
        "preprocessed series in MNI152NLin2009cAsym space with brain masks and\n"
        "confounds; derivatives/truth holds the true effect of every standard\n"
        "contrast per subject and for the group, and simulation.json lists every\n"
        "parameter of the simulation.\n"
    )
    write_text(readme, root / "README")
    subject_labels = config.subject_labels
    rng = np.random.default_rng([config.seed, 0])
    ages = rng.integers(19, 41, size=len(subject_labels))
    sexes = rng.choice(["F", "M"], size=len(subject_labels))
    write_tsv(
        root / "participants.tsv",
        {
            "participant_id": [f"sub-{label}" for label in subject_labels],
            "age": [str(int(age)) for age in ages],
            "sex": [str(sex) for sex in sexes],
        },
    )
    write_json(
        {
            "age": {"Description": "age of the participant", "Units": "year"},
            "sex": {
                "Description": "sex of the participant",
                "Levels": {"F": "female", "M": "male"},
            },
        },
        root / "participants.json",
    )
    write_json(
        {
            "RepetitionTime": config.tr,
            "TaskName": config.task,
            "TaskDescription": "Category localizer: blocks of images of one "
            "category alternate with fixation blocks.",
            "Instructions": "Keep your eyes on the central fixation dot and "
            "press a button when an image repeats.",
            "MagneticFieldStrength": 3,
            "MRAcquisitionType": "2D",
            "PulseSequenceType": "Gradient Echo EPI",
            "EchoTime": 0.03,
            "FlipAngle": 75,
            "PhaseEncodingDirection": "j-",
        },
        root / bids_name({"task": config.task}, "bold", ".json"),
    )
    levels = {category: f"block of {category} images" for category in config.categories}
    levels[BASELINE] = "fixation block"
    write_json(
        {
            "onset": {"Description": "block onset", "Units": "s"},
            "duration": {"Description": "block duration", "Units": "s"},
            "trial_type": {"Description": "stimulus category", "Levels": levels},
        },
        root / bids_name({"task": config.task}, "events", ".json"),
    )
    write_json(
        {
            "Name": "fMRIPrep - fMRI PREProcessing workflow",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "fMRIPrep",
                    "Version": "23.2.1",
                    "CodeURL": "https://github.com/nipreps/fmriprep",
                    "Description": f"simulated by {GENERATOR_NAME}",
                }
            ],
            "SourceDatasets": [{"URL": "../../"}],
        },
        root / FMRIPREP_SUBDIR / "dataset_description.json",
    )


def _confound_columns(signals: RunSignals, motion: np.ndarray) -> dict[str, np.ndarray]:
    """fMRIPrep-named confound columns (NaN where fMRIPrep writes ``n/a``)."""

    def _expand(name: str, values: np.ndarray) -> dict[str, np.ndarray]:
        derivative = np.concatenate([[np.nan], np.diff(values)])
        return {
            name: values,
            f"{name}_derivative1": derivative,
            f"{name}_derivative1_power2": derivative**2,
            f"{name}_power2": values**2,
        }

    columns: dict[str, np.ndarray] = {}
    for name in ("global_signal", "csf", "white_matter"):
        columns.update(_expand(name, getattr(signals, name)))
    columns["framewise_displacement"] = framewise_displacement(motion)
    for index, name in enumerate(MOTION_PARAMETERS):
        columns.update(_expand(name, motion[:, index]))
    return columns


def _downsample_raw(data: np.ndarray) -> np.ndarray:
    """Average 2x2x2 blocks volume by volume into an int16 'raw' series."""
    nx, ny, nz, n_volumes = data.shape
    mx, my, mz = nx // 2, ny // 2, nz // 2
    raw = np.zeros((mx, my, mz, n_volumes), dtype=np.int16, order="F")
    block = np.empty((mx, my, mz), dtype=np.float32, order="F")
    for t in range(n_volumes):
        volume = data[..., t]
        # the eight strided corners of each 2x2x2 block, summed without a copy
        block[:] = 0.0
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    block += volume[dx : 2 * mx : 2, dy : 2 * my : 2, dz : 2 * mz : 2]
        raw[..., t] = np.rint(block * np.float32(0.125))
    return raw


def _events_columns(blocks: Sequence[Block]) -> dict[str, list[Any]]:
    return {
        "onset": [block.onset for block in blocks],
        "duration": [block.duration for block in blocks],
        "trial_type": [block.trial_type for block in blocks],
    }


def write_run(
    root: pathlib.Path,
    config: SimulationConfig,
    geometry: Geometry,
    simulated: SimulatedRun,
) -> None:
    """Write one run: raw events and BOLD, fMRIPrep's BOLD, mask and confounds."""
    files = run_files(
        root,
        simulated.subject,
        simulated.run,
        session=simulated.session,
        task=config.task,
    )
    resolution = config.resolution
    write_tsv(files.events, _events_columns(simulated.blocks))
    raw = _downsample_raw(simulated.data)
    raw_affine = geometry.affine.copy()
    raw_affine[:3, :3] *= 2.0
    raw_affine[:3, 3] += 0.5 * np.diag(geometry.affine)[:3]  # block centres
    raw_image = mni_image(raw, raw_affine, (2 * resolution,) * 3 + (config.tr,))
    raw_image.set_sform(raw_affine, code=1)  # scanner space
    raw_image.set_qform(raw_affine, code=1)
    write_nifti(files.raw_bold, raw_image)
    n_slices = raw.shape[2]
    write_json(
        {
            "RepetitionTime": config.tr,
            "TaskName": config.task,
            "SliceTiming": [
                round(i * config.tr / n_slices, 6) for i in range(n_slices)
            ],
        },
        files.raw_bold_json,
    )
    del raw

    preproc = mni_image(
        simulated.data, geometry.affine, (resolution,) * 3 + (config.tr,)
    )
    write_nifti(files.preproc_bold, preproc)
    write_json(
        {
            "RepetitionTime": config.tr,
            "TaskName": config.task,
            "SkullStripped": True,
            "SliceTimingCorrected": True,
            "StartTime": 0.0,
        },
        files.preproc_bold_json,
    )
    mask_grid = np.zeros(geometry.shape, dtype=np.uint8)
    mask_grid[geometry.mask] = simulated.keep.astype(np.uint8)
    mask_image = mni_image(mask_grid, geometry.affine, (resolution,) * 3)
    write_nifti(files.brain_mask, mask_image)
    write_json({"Type": "Brain"}, files.brain_mask_json)
    write_tsv(files.confounds, _confound_columns(simulated.signals, simulated.motion))
