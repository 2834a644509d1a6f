"""GLM derivatives of the LAION-fMRI dataset: pipeline, simulator and loader.

>>> from laion_fmri_dataloader import LAIONfMRIDataset  # doctest: +SKIP
>>> dataset = LAIONfMRIDataset(data_dir="./laion-fmri-data")  # doctest: +SKIP
"""

from laion_fmri_dataloader._version import __version__
from laion_fmri_dataloader.contrasts import STANDARD_CONTRASTS
from laion_fmri_dataloader.dataset import PYBIDS_CONFIG, LAIONfMRIDataset, pybids_layout
from laion_fmri_dataloader.errors import (
    CorruptFileError,
    InputError,
    InvalidLabelError,
    LaionFmriError,
    NotFoundError,
)

__all__ = [
    "PYBIDS_CONFIG",
    "STANDARD_CONTRASTS",
    "CorruptFileError",
    "InputError",
    "InvalidLabelError",
    "LAIONfMRIDataset",
    "LaionFmriError",
    "NotFoundError",
    "__version__",
    "pybids_layout",
]
