"""The block design: which category is shown when, and its HRF regressors.

Every cycle shows each category once in an order rotated by run and cycle (a
Latin square over runs, with a per-subject random base order), then a fixation
block (``trial_type`` ``baseline``); ``docs/simulation.md``, "Timing and design".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from laion_fmri_dataloader.simulate.config import (
    BASELINE,
    INITIAL_REST,
    MIN_FINAL_REST,
    SimulationConfig,
)

__all__ = ["HRF_MODEL", "OVERSAMPLING", "Block", "block_sequence", "regressors"]

#: The response model of the regressors (nilearn's name).
HRF_MODEL = "spm"
#: Time steps per TR of the HRF convolution, so that onsets off the TR are exact.
OVERSAMPLING = 50


class Block(NamedTuple):
    """A block of the design (a row of ``events.tsv``)."""

    onset: float  # s
    duration: float  # s
    trial_type: str


def block_sequence(
    config: SimulationConfig, base_order: Sequence[str], run_index: int
) -> list[Block]:
    """Return the blocks of one run.

    Only whole cycles are used when one fits; at least
    :data:`~laion_fmri_dataloader.simulate.config.MIN_FINAL_REST` seconds of
    fixation end the run.
    """
    n_categories = len(base_order)
    cycle = n_categories + 1
    available = config.n_volumes * config.tr - INITIAL_REST - MIN_FINAL_REST
    n_blocks = math.floor(available / config.block_duration + 1e-9)
    if n_blocks >= cycle:
        n_blocks -= n_blocks % cycle
    blocks = []
    for index in range(n_blocks):
        cycle_index, position = divmod(index, cycle)
        if position == n_categories:
            trial_type = BASELINE
        else:
            shift = (run_index + cycle_index) % n_categories
            trial_type = base_order[(position + shift) % n_categories]
        onset = INITIAL_REST + index * config.block_duration
        blocks.append(Block(onset, config.block_duration, trial_type))
    return blocks


def regressors(config: SimulationConfig, blocks: Sequence[Block]) -> np.ndarray:
    """Centred SPM-HRF regressors, (n_volumes, n_categories + 1), baseline last.

    Volumes are sampled at ``k * TR`` (slice-time reference at the start).
    """
    from nilearn.glm.first_level import compute_regressor

    frame_times = np.arange(config.n_volumes) * config.tr
    names = [*config.categories, BASELINE]
    columns = np.zeros((config.n_volumes, len(names)))
    for index, name in enumerate(names):
        own = [(onset, duration) for onset, duration, kind in blocks if kind == name]
        if not own:
            continue
        condition = np.array(
            [[o for o, _ in own], [d for _, d in own], [1.0] * len(own)]
        )
        regressor, _ = compute_regressor(
            condition, HRF_MODEL, frame_times, oversampling=OVERSAMPLING
        )
        columns[:, index] = regressor[:, 0]
    return columns - columns.mean(axis=0)
