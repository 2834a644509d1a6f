"""Small GLM derivative trees with the documented layout, for loader tests."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.contrasts import CONDITIONS, STANDARD_CONTRASTS
from laion_fmri_dataloader.io.files import save_image, write_json
from laion_fmri_dataloader.sidecar import (
    CorrectionInfo,
    MapSidecar,
    contrast_info,
    dependency_versions,
    software,
)

SHAPE = (9, 11, 9)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
AFFINE[:3, 3] = [-16.0, -20.0, -16.0]


def _write_map(root, relative, data, sidecar):
    save_image(nib.Nifti1Image(data.astype(np.float32), AFFINE), root / relative)
    write_json(sidecar, root / layout.sidecar_of(relative))


def write_derivative_tree(
    data_dir, subjects=("01", "02"), task="experiment", group=True
):
    """Write a small GLM derivative tree with the documented layout."""
    root = data_dir / layout.DERIVATIVE_SUBDIR
    rng = np.random.default_rng(0)
    for subject in subjects:
        for name, contrast in STANDARD_CONTRASTS.items():
            for stat in layout.FIRST_LEVEL_STAT_TYPES:
                sidecar = MapSidecar(
                    AnalysisLevel="first_level",
                    StatType=stat,
                    Subject=f"sub-{subject}",
                    Task=task,
                    Contrasts={name: contrast_info(contrast, list(CONDITIONS))},
                    Software=software(),
                    Dependencies=dependency_versions(),
                    DegreesOfFreedom=280.0,
                )
                _write_map(
                    root,
                    layout.first_level_map(subject, task, name, stat),
                    rng.normal(size=SHAPE),
                    sidecar,
                )
        png = root / layout.design_matrix_png(subject, task)
        png.write_bytes(b"\x89PNG\r\n\x1a\n")
    if group:
        for name, contrast in STANDARD_CONTRASTS.items():
            z_map = rng.normal(size=SHAPE) * 2
            base = MapSidecar(
                AnalysisLevel="group_level",
                Subjects=[f"sub-{s}" for s in subjects],
                Contrasts={name: contrast_info(contrast, list(CONDITIONS))},
                Software=software(),
                Dependencies=dependency_versions(),
                DegreesOfFreedom=len(subjects) - 1,
            )
            for stat in layout.GROUP_STAT_TYPES:
                sidecar = base.model_copy(update={"StatType": stat})
                _write_map(root, layout.group_map(name, stat), z_map, sidecar)
            for correction in layout.CORRECTIONS:
                corrected = np.where(np.abs(z_map) > 3, z_map, 0)
                sidecar = base.model_copy(
                    update={
                        "StatType": "z",
                        "Correction": CorrectionInfo(
                            Method=correction,
                            Alpha=0.05,
                            ZThreshold=3.0,
                            SmallestSurvivingZ=3.0,
                        ),
                    }
                )
                _write_map(
                    root,
                    layout.group_map(name, correction=correction),
                    corrected,
                    sidecar,
                )
    return data_dir
