"""The ground truth of a simulation: written under ``derivatives/truth``, read back.

Per subject: the true effect and support of every standard contrast, the true
response to each category, the noise's AR(1) coefficient and standard deviation;
for the group: the mean effect and where any or all subjects have one; and
``simulation.json`` with every parameter, every fixed choice and what each
subject and run received.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Literal

import nibabel as nib
import numpy as np

from laion_fmri_dataloader._version import __version__
from laion_fmri_dataloader.contrasts import CONDITIONS
from laion_fmri_dataloader.errors import NotFoundError, did_you_mean
from laion_fmri_dataloader.io.files import write_json
from laion_fmri_dataloader.layout import bids_name, validate_label
from laion_fmri_dataloader.simulate.anatomy import NOISE_FWHM_VOXELS, Geometry
from laion_fmri_dataloader.simulate.bids_writer import SimulatedRun, generated_by
from laion_fmri_dataloader.simulate.config import (
    BASELINE,
    CONTRAST_WEIGHTS,
    GENERATOR_NAME,
    INITIAL_REST,
    MIN_FINAL_REST,
    SPACE,
    SimulationConfig,
)
from laion_fmri_dataloader.simulate.motion import HEAD_RADIUS, framewise_displacement
from laion_fmri_dataloader.simulate.paradigm import HRF_MODEL, OVERSAMPLING
from laion_fmri_dataloader.simulate.signal import (
    AR1_CENTRE,
    AR1_HALF_RANGE,
    GLOBAL_AR1,
    GLOBAL_SD,
    N_DRIFT_COSINES,
    SubjectMaps,
    thermal_noise_sd,
)
from laion_fmri_dataloader.simulate.writing import volume_image, write_nifti

__all__ = [
    "TRUTH_SUBDIR",
    "TruthKind",
    "load_truth",
    "run_record",
    "truth_path",
    "write_group_truth",
    "write_simulation_record",
    "write_subject_truth",
    "write_truth_description",
]

#: Where the truth sits below the simulated dataset's root.
TRUTH_SUBDIR = pathlib.PurePosixPath("derivatives/truth")

#: What a truth map holds (see :func:`truth_path`).
TruthKind = Literal["effect", "mask", "anymask", "allmask", "ar1", "noisesd"]


def truth_path(
    subject: str,
    task: str,
    kind: TruthKind,
    *,
    contrast: str | None = None,
    condition: str | None = None,
) -> pathlib.PurePosixPath:
    """Path of a truth file, relative to the truth folder.

    The name is a BIDS-like derivative name whose last entity, ``truth-<kind>``,
    stands where BIDS has a suffix.

    Parameters
    ----------
    subject : str
        Subject label without ``sub-``, or ``"group"``.
    task : str
        Task label.
    kind : str
        ``effect`` (percent per unit regressor), ``mask`` (support of a
        subject's effect), ``anymask`` / ``allmask`` (the group's union and
        intersection of supports), ``ar1`` or ``noisesd`` (percent).
    contrast, condition : str, optional
        The contrast or the category the map is of.

    Examples
    --------
    >>> truth_path("01", "experiment", "effect", contrast="faceVsScene").as_posix()
    'sub-01/sub-01_task-experiment_contrast-faceVsScene_truth-effect.nii.gz'
    >>> truth_path("group", "experiment", "anymask", contrast="faceVsScene").name
    'group_task-experiment_contrast-faceVsScene_truth-anymask.nii.gz'
    """
    entities = {"task": task, "contrast": contrast, "condition": condition}
    suffix = f"truth-{kind}"
    if subject == "group":
        return pathlib.PurePosixPath(
            "group", "group_" + bids_name(entities, suffix, ".nii.gz")
        )
    name = bids_name({"sub": subject, **entities}, suffix, ".nii.gz")
    return pathlib.PurePosixPath(f"sub-{subject}", name)


def write_truth_description(truth_dir: pathlib.Path) -> None:
    """Write the truth derivative's ``dataset_description.json``."""
    write_json(
        {
            "Name": "Ground truth of the simulated dataset",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [generated_by()],
            "SourceDatasets": [{"URL": "../../"}],
        },
        truth_dir / "dataset_description.json",
    )


def write_subject_truth(
    truth_dir: pathlib.Path,
    config: SimulationConfig,
    geometry: Geometry,
    subject: str,
    maps: SubjectMaps,
) -> None:
    """Write one subject's true effects, supports, responses and noise maps."""
    task = config.task
    for name, effect in maps.contrasts.items():
        write_nifti(
            truth_dir / truth_path(subject, task, "effect", contrast=name),
            volume_image(geometry, effect),
        )
        write_nifti(
            truth_dir / truth_path(subject, task, "mask", contrast=name),
            volume_image(geometry, effect != 0.0, np.uint8),
        )
    for index, category in enumerate(config.categories):
        write_nifti(
            truth_dir / truth_path(subject, task, "effect", condition=category),
            volume_image(geometry, maps.responses[index]),
        )
    write_nifti(
        truth_dir / truth_path(subject, task, "ar1"),
        volume_image(geometry, maps.ar1),
    )
    write_nifti(
        truth_dir / truth_path(subject, task, "noisesd"),
        volume_image(geometry, maps.noise_sd * np.float32(config.noise_scale)),
    )


def write_group_truth(
    truth_dir: pathlib.Path,
    config: SimulationConfig,
    geometry: Geometry,
    group_effects: dict[str, list[np.ndarray]],
) -> None:
    """Write the group's mean effect and union and intersection of supports."""
    for name, effects in group_effects.items():
        stacked = np.asarray(effects)
        nonzero = stacked != 0.0
        for kind, values, dtype in (
            ("effect", stacked.mean(axis=0), np.float32),
            ("anymask", nonzero.any(axis=0), np.uint8),
            ("allmask", nonzero.all(axis=0), np.uint8),
        ):
            write_nifti(
                truth_dir / truth_path("group", config.task, kind, contrast=name),
                volume_image(geometry, values, dtype),
            )


def run_record(simulated: SimulatedRun) -> dict[str, Any]:
    """What ``simulation.json`` records of one run."""
    return {
        "session": simulated.session,
        "run": simulated.run,
        "blocks": [list(block) for block in simulated.blocks],
        "n_mask_voxels_dropped": int((~simulated.keep).sum()),
        "median_temporal_snr": round(
            float(np.median(simulated.signals.temporal_snr)), 3
        ),
        "mean_framewise_displacement_mm": round(
            float(np.nanmean(framewise_displacement(simulated.motion))), 6
        ),
    }


def write_simulation_record(
    truth_dir: pathlib.Path,
    config: SimulationConfig,
    geometry: Geometry,
    subjects: dict[str, Any],
) -> None:
    """Write ``simulation.json``: parameters, fixed choices, what each subject got.

    Written last: its presence says that the simulation finished.
    """
    resolution = config.resolution
    write_json(
        {
            "GeneratedBy": {"Name": GENERATOR_NAME, "Version": __version__},
            "parameters": config.to_dict(),
            "fixed": {
                "space": SPACE,
                "resolution_mm": resolution,
                "grid_shape": list(geometry.shape),
                "n_brain_voxels": int(geometry.mask.sum()),
                "initial_rest_s": INITIAL_REST,
                "min_final_rest_s": MIN_FINAL_REST,
                "hrf_model": HRF_MODEL,
                "oversampling": OVERSAMPLING,
                "slice_time_reference_s": 0.0,
                "noise_innovation_fwhm_voxels": NOISE_FWHM_VOXELS,
                "ar1_range": [AR1_CENTRE - AR1_HALF_RANGE, AR1_CENTRE + AR1_HALF_RANGE],
                "thermal_noise_sd_percent": thermal_noise_sd(resolution),
                "drift_cosines": N_DRIFT_COSINES,
                "global_signal_ar1": GLOBAL_AR1,
                "global_signal_sd_percent": GLOBAL_SD,
                "head_radius_mm": HEAD_RADIUS,
                "effect_unit": "percent signal change per unit regressor "
                "(nilearn signal_scaling=0)",
            },
            "categories": [*config.categories, BASELINE],
            "contrasts": {name: list(w) for name, w in CONTRAST_WEIGHTS.items()},
            "contrast_weight_order": list(CONDITIONS),
            "subjects": subjects,
        },
        truth_dir / "simulation.json",
    )


def load_truth(
    dataset_dir: str | os.PathLike[str],
    subject: str,
    contrast: str,
    *,
    task: str = "experiment",
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Read the true effect and its support for one subject and contrast.

    Parameters
    ----------
    dataset_dir : str or path-like
        The simulated BIDS dataset.
    subject : str
        Subject label, with or without ``sub-`` (``"01"``), or ``"group"``
        for the group truth (effect: mean over subjects; mask: non-zero in
        any subject).
    contrast : str
        One of :data:`~laion_fmri_dataloader.simulate.CONTRAST_WEIGHTS`.
    task : str
        Task label.

    Returns
    -------
    effect_img : nibabel.Nifti1Image
        True effect in percent signal change per unit regressor.
    mask_img : nibabel.Nifti1Image
        1 where the true effect is non-zero, else 0 (uint8).

    Raises
    ------
    NotFoundError
        If the contrast or subject does not exist.
    InvalidLabelError
        If the subject or task is not a BIDS label.
    """
    if contrast not in CONTRAST_WEIGHTS:
        raise NotFoundError(
            f"contrast {contrast!r} not found; "
            + did_you_mean(contrast, CONTRAST_WEIGHTS)
        )
    truth_dir = pathlib.Path(dataset_dir) / TRUTH_SUBDIR
    label = validate_label(str(subject).removeprefix("sub-"), "subject")
    validate_label(task, "task")
    support = "anymask" if label == "group" else "mask"
    effect_path = truth_dir / truth_path(label, task, "effect", contrast=contrast)
    mask_path = truth_dir / truth_path(label, task, support, contrast=contrast)
    if not effect_path.exists() or not mask_path.exists():
        available = sorted(p.name for p in truth_dir.glob("sub-*") if p.is_dir())
        raise NotFoundError(
            f"no truth for subject {subject!r}, task {task!r} and contrast "
            f"{contrast!r} in {truth_dir}; " + did_you_mean(f"sub-{label}", available)
        )
    return nib.load(effect_path), nib.load(mask_path)
