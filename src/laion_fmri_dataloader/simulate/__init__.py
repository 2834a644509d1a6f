"""Simulate a BIDS + fMRIPrep category-localizer dataset with known ground truth.

:func:`simulate_dataset` writes a raw BIDS dataset (events, a small raw BOLD
series, sidecars), an fMRIPrep-like derivative (preprocessed BOLD in
``MNI152NLin2009cAsym``, brain masks, confounds) and the truth under
``derivatives/truth`` (true effect and support of every standard contrast per
subject and for the group, the AR(1) map, the noise level, and every parameter
in ``simulation.json``).  :func:`load_truth` reads the truth back.

The realism choices, the files written, determinism and memory are described in
``docs/simulation.md``.  One module per job:

- :mod:`~.config`: the parameters (:class:`SimulationConfig`) and categories;
- :mod:`~.anatomy`: the template grid, masks and tissue maps, smooth fields;
- :mod:`~.regions`: the category-selective regions and the true responses;
- :mod:`~.paradigm`: the block design and its HRF regressors;
- :mod:`~.motion`: head motion and framewise displacement;
- :mod:`~.signal`: per-subject noise maps and the BOLD series of a run;
- :mod:`~.writing`: deterministic NIfTI and TSV writers;
- :mod:`~.bids_writer`: the raw BIDS dataset and the fMRIPrep derivative;
- :mod:`~.truth`: the ground truth, written and read back;
- :mod:`~.generate`: the whole dataset, subject by subject and run by run;
- :mod:`~.data_gen`: small fake data for tests and benchmarks.
"""

from laion_fmri_dataloader.simulate.bids_writer import RunFiles, run_files
from laion_fmri_dataloader.simulate.config import (
    CONTRAST_WEIGHTS,
    EXTRA_CATEGORIES,
    SPACE,
    SimulationConfig,
)
from laion_fmri_dataloader.simulate.generate import simulate_dataset
from laion_fmri_dataloader.simulate.truth import load_truth

__all__ = [
    "CONTRAST_WEIGHTS",
    "EXTRA_CATEGORIES",
    "SPACE",
    "RunFiles",
    "SimulationConfig",
    "load_truth",
    "run_files",
    "simulate_dataset",
]
