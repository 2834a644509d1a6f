"""The parameters of a simulation, checked once, and the categories simulated.

Every number a user can set is a field of :class:`SimulationConfig` (written to
``simulation.json``); the fixed choices of the model live beside the code that
uses them (``docs/simulation.md`` describes them all).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from laion_fmri_dataloader.contrasts import CONDITIONS, STANDARD_CONTRASTS
from laion_fmri_dataloader.errors import (
    InvalidLabelError,
    InvalidParameterError,
    did_you_mean,
)

__all__ = [
    "BASELINE",
    "CONTRAST_WEIGHTS",
    "CORE_CATEGORIES",
    "EXTRA_CATEGORIES",
    "GENERATOR_NAME",
    "INITIAL_REST",
    "MIN_FINAL_REST",
    "SPACE",
    "SimulationConfig",
]

#: The simulator's name in the datasets' descriptions: the command that writes them.
GENERATOR_NAME = "laion-fmri-glm simulate"
#: The template space the fMRIPrep-like outputs are labelled with.
SPACE = "MNI152NLin2009cAsym"

#: The standard contrasts (from :mod:`laion_fmri_dataloader.contrasts`), as
#: weights over (face, scene, object, baseline).
CONTRAST_WEIGHTS: dict[str, tuple[float, ...]] = {
    name: tuple(contrast.weights.get(condition, 0.0) for condition in CONDITIONS)
    for name, contrast in STANDARD_CONTRASTS.items()
}

#: Categories that may be added to face, scene and object.
EXTRA_CATEGORIES = ("body", "character", "scrambled")
#: Categories every simulation shows.
CORE_CATEGORIES = ("face", "scene", "object")
#: The ``trial_type`` of fixation blocks.
BASELINE = "baseline"
#: Seconds without stimuli at the start of a run (LAION-fMRI).
INITIAL_REST = 12.0
#: Seconds of fixation after the last block, so that its response is sampled.
MIN_FINAL_REST = 12.0

_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9]+$")
_MAX_RESOLUTION = 8.0


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """All parameters of a simulation (written to ``simulation.json``).

    Parameters
    ----------
    subjects : int
        Number of subjects, labelled ``01``, ``02``, ...
    runs : int
        Number of runs per session.
    resolution : float
        Isotropic voxel size in mm of the MNI grid (2 gives the full-size
        2 mm grid with about 235 000 brain voxels).
    n_volumes : int
        Volumes per run.
    tr : float
        Repetition time in seconds.
    seed : int
        Seed of every random stream.
    effect_size : float
        Response of a pure grey-matter voxel at a region's centre to the
        region's preferred category, in percent signal change per unit
        regressor (nilearn's ``signal_scaling=0`` unit).
    null : bool
        Write the same data without any task response.
    task : str
        BIDS task label.
    sessions : int
        Number of sessions (``ses-01``, ...); 1 writes no session level.
    extra_categories : tuple of str
        Categories added to face, scene and object, from
        :data:`EXTRA_CATEGORIES`.
    block_duration : float
        Duration of a stimulus or fixation block in seconds.
    noise_scale : float
        Multiplies every noise component (AR(1) noise, drift, global signal,
        motion leakage); 0 gives noiseless data, for tests.
    """

    subjects: int = 4
    runs: int = 2
    resolution: float = 4.0
    n_volumes: int = 160
    tr: float = 1.9
    seed: int = 0
    effect_size: float = 2.5
    null: bool = False
    task: str = "experiment"
    sessions: int = 1
    extra_categories: tuple[str, ...] = ()
    block_duration: float = 16.0
    noise_scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_categories", tuple(self.extra_categories))
        for name in ("subjects", "runs", "sessions", "n_volumes", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidParameterError(f"{name} must be an integer; got {value!r}")
        for name in ("subjects", "runs", "sessions"):
            value = getattr(self, name)
            if value < 1:
                raise InvalidParameterError(f"{name} must be >= 1; got {value}")
        if self.seed < 0:
            raise InvalidParameterError(f"seed must be >= 0; got {self.seed}")
        if self.subjects > 99:
            raise InvalidParameterError(f"subjects must be <= 99; got {self.subjects}")
        if not 1.0 <= float(self.resolution) <= _MAX_RESOLUTION:
            raise InvalidParameterError(
                f"resolution must be between 1 and {_MAX_RESOLUTION:g} mm; "
                f"got {self.resolution!r}"
            )
        if self.n_volumes < 10:
            raise InvalidParameterError(
                f"n_volumes must be >= 10; got {self.n_volumes}"
            )
        if not 0.1 <= float(self.tr) <= 10.0:
            raise InvalidParameterError(
                f"tr must be between 0.1 and 10 seconds; got {self.tr!r}"
            )
        if not float(self.effect_size) >= 0.0:
            raise InvalidParameterError(
                f"effect_size must be >= 0 percent; got {self.effect_size!r}"
            )
        if not float(self.noise_scale) >= 0.0:
            raise InvalidParameterError(
                f"noise_scale must be >= 0; got {self.noise_scale!r}"
            )
        if not isinstance(self.task, str) or not _LABEL_PATTERN.match(self.task):
            raise InvalidLabelError(
                f"task must be a BIDS label (letters and digits only); "
                f"got {self.task!r}"
            )
        for category in self.extra_categories:
            if category not in EXTRA_CATEGORIES:
                raise InvalidLabelError(
                    f"extra category {category!r} is not simulated; "
                    + did_you_mean(str(category), EXTRA_CATEGORIES)
                )
        if len(set(self.extra_categories)) != len(self.extra_categories):
            raise InvalidParameterError(
                f"extra_categories must not repeat; got {self.extra_categories!r}"
            )
        if not float(self.block_duration) > 0.0:
            raise InvalidParameterError(
                f"block_duration must be > 0 seconds; got {self.block_duration!r}"
            )
        run_duration = self.n_volumes * self.tr
        needed = INITIAL_REST + self.block_duration + MIN_FINAL_REST
        if run_duration < needed:
            raise InvalidParameterError(
                f"a run of {self.n_volumes} volumes x {self.tr:g} s = "
                f"{run_duration:g} s cannot hold {INITIAL_REST:g} s of rest, one "
                f"{self.block_duration:g} s block and {MIN_FINAL_REST:g} s of "
                f"fixation; got n_volumes={self.n_volumes}"
            )

    @property
    def categories(self) -> tuple[str, ...]:
        """Stimulus categories in regressor order (without ``baseline``)."""
        return CORE_CATEGORIES + self.extra_categories

    @property
    def subject_labels(self) -> list[str]:
        """Subject labels: ``01``, ``02``, ..."""
        return [f"{index + 1:02d}" for index in range(self.subjects)]

    @property
    def session_labels(self) -> list[str | None]:
        """Session labels, or ``[None]`` when there is no session level."""
        if self.sessions == 1:
            return [None]
        return [f"{index + 1:02d}" for index in range(self.sessions)]

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as JSON-ready values."""
        values = dataclasses.asdict(self)
        values["extra_categories"] = list(self.extra_categories)
        return values
