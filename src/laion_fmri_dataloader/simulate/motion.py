"""Head motion: six rigid-body parameters per volume and framewise displacement.

Smooth random walks with rare abrupt moves, in fMRIPrep's units (translations
in mm, rotations in radians); ``docs/simulation.md``, "Motion".
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "HEAD_RADIUS",
    "MOTION_PARAMETERS",
    "framewise_displacement",
    "simulate_motion",
]

#: mm, Power et al. (2012) framewise displacement.
HEAD_RADIUS = 50.0
#: fMRIPrep's names of the six parameters, in column order.
MOTION_PARAMETERS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def simulate_motion(rng: np.random.Generator, n_volumes: int) -> np.ndarray:
    """Rigid-body parameters (n_volumes, 6): trans_x..z in mm, rot_x..z in rad."""
    steps = np.empty((n_volumes, 6))
    steps[:, :3] = rng.normal(0.0, 0.015, size=(n_volumes, 3))
    steps[:, 3:] = rng.normal(0.0, 0.0002, size=(n_volumes, 3))
    moves = rng.random(n_volumes) < 0.01
    sizes = rng.uniform(0.2, 0.8, size=(n_volumes, 3)) * rng.choice(
        [-1.0, 1.0], size=(n_volumes, 3)
    )
    angles = rng.uniform(0.002, 0.008, size=(n_volumes, 3)) * rng.choice(
        [-1.0, 1.0], size=(n_volumes, 3)
    )
    steps[moves, :3] += sizes[moves]
    steps[moves, 3:] += angles[moves]
    steps[0] = 0.0
    return np.cumsum(steps, axis=0)


def framewise_displacement(motion: np.ndarray) -> np.ndarray:
    """Power's framewise displacement in mm, NaN for the first volume."""
    delta = np.abs(np.diff(motion, axis=0))
    fd = delta[:, :3].sum(axis=1) + HEAD_RADIUS * delta[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])
