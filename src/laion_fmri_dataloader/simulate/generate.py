"""The whole simulated dataset: subjects, sessions and runs, in order.

Every random number comes from a ``numpy.random.Generator`` stream keyed by the
seed and what it is for: ``[seed, 0]`` participants, ``[seed, 1, subject]`` the
subject's maps, ``[seed, 2, subject]`` its category order, ``[seed, 3, subject,
session, run]`` the run.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from laion_fmri_dataloader.simulate.anatomy import Geometry, make_geometry
from laion_fmri_dataloader.simulate.bids_writer import (
    SimulatedRun,
    write_run,
    write_top_level,
)
from laion_fmri_dataloader.simulate.config import CONTRAST_WEIGHTS, SimulationConfig
from laion_fmri_dataloader.simulate.motion import simulate_motion
from laion_fmri_dataloader.simulate.paradigm import Block, block_sequence, regressors
from laion_fmri_dataloader.simulate.signal import (
    SubjectMaps,
    simulate_run,
    subject_maps,
)
from laion_fmri_dataloader.simulate.truth import (
    TRUTH_SUBDIR,
    run_record,
    write_group_truth,
    write_simulation_record,
    write_subject_truth,
    write_truth_description,
)

__all__ = ["simulate_dataset"]

# Runs up to this size are compressed in a background thread while the next one
# is generated (two such runs may be alive); larger runs are written in turn.
_OVERLAP_MAX_BYTES = 256 * 2**20
# Share of the mask's edge voxels that each run's fMRIPrep mask drops.
_EDGE_DROP_SHARE = 0.01


def simulate_dataset(
    output_dir: str | os.PathLike[str],
    *,
    subjects: int = 4,
    runs: int = 2,
    resolution: float = 4.0,
    n_volumes: int = 160,
    tr: float = 1.9,
    seed: int = 0,
    effect_size: float = 2.5,
    null: bool = False,
    task: str = "experiment",
    sessions: int = 1,
    extra_categories: Sequence[str] = (),
    block_duration: float = 16.0,
    noise_scale: float = 1.0,
) -> pathlib.Path:
    """Write a simulated BIDS + fMRIPrep category-localizer dataset.

    The choices of the simulation are described in ``docs/simulation.md``.

    Parameters
    ----------
    output_dir : str or path-like
        Folder of the BIDS dataset; created if needed.  Existing simulated
        files are overwritten.
    subjects : int
        Number of subjects (labels ``01``, ``02``, ...).
    runs : int
        Runs per session.
    resolution : float
        Isotropic voxel size of the MNI grid in mm (1 to 8).
    n_volumes : int
        Volumes per run.
    tr : float
        Repetition time in seconds.
    seed : int
        Random seed; the same seed gives byte-identical files.
    effect_size : float
        Response of a region's centre to its preferred category in percent
        signal change per unit regressor (``docs/simulation.md``,
        "Responses").  The default, 2.5 %, is a typical block-design FFA face
        response at 3 T (about 2 % in an average voxel after grey-matter
        weighting; the face-minus-scene difference is 0.8 of it).  With the
        default noise (median temporal SNR 50 to 75 at 4 mm) and two runs,
        ``faceVsScene`` at z > 3.1 finds most true face-selective voxels of one
        subject (about 60 %, all of the central ones; the misses are at the
        taper) without being trivially huge.
    null : bool
        Leave the task response out (same noise as the non-null dataset).
    task : str
        BIDS task label.
    sessions : int
        Number of sessions; with more than one, runs go to ``ses-01``, ...
    extra_categories : sequence of str
        Extra stimulus categories from ``('body', 'character', 'scrambled')``.
    block_duration : float
        Block duration in seconds.
    noise_scale : float
        Scale of all noise components; 0 gives noiseless data (for tests).

    Returns
    -------
    pathlib.Path
        ``output_dir``.

    Raises
    ------
    InvalidParameterError
        If a parameter is out of range.
    InvalidLabelError
        If ``task`` is not a BIDS label or an extra category is not simulated.
    """
    config = SimulationConfig(
        subjects=subjects,
        runs=runs,
        resolution=float(resolution),
        n_volumes=n_volumes,
        tr=float(tr),
        seed=seed,
        effect_size=float(effect_size),
        null=null,
        task=task,
        sessions=sessions,
        extra_categories=tuple(extra_categories),
        block_duration=float(block_duration),
        noise_scale=float(noise_scale),
    )
    return _simulate(pathlib.Path(output_dir), config)


def _simulated_run(
    config: SimulationConfig,
    geometry: Geometry,
    maps: SubjectMaps,
    blocks: list[Block],
    rng: np.random.Generator,
    *,
    subject: str,
    session: str | None,
    run: int,
) -> SimulatedRun:
    """Generate one run from its stream (motion, mask, then the series)."""
    motion = simulate_motion(rng, config.n_volumes)
    dropped = rng.random(geometry.edge_index.size) < _EDGE_DROP_SHARE
    keep = np.ones(geometry.coords.shape[0], dtype=bool)
    keep[geometry.edge_index[dropped]] = False
    data, signals = simulate_run(
        config,
        geometry,
        maps,
        regressors(config, blocks),
        motion,
        rng,
        geometry.edge_index[dropped],
    )
    return SimulatedRun(subject, session, run, blocks, data, signals, motion, keep)


def _simulate(root: pathlib.Path, config: SimulationConfig) -> pathlib.Path:
    root.mkdir(parents=True, exist_ok=True)
    geometry = make_geometry(config.resolution)
    truth_dir = root / TRUTH_SUBDIR
    write_top_level(root, config)
    write_truth_description(truth_dir)

    pending: concurrent.futures.Future | None = None
    truth_subjects: dict[str, Any] = {}
    group_effects: dict[str, list[np.ndarray]] = {name: [] for name in CONTRAST_WEIGHTS}
    # a writer thread; leaving the block waits for it, also after an error
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer:
        for subject_index, subject in enumerate(config.subject_labels):
            maps = subject_maps(config, geometry, subject_index)
            order_rng = np.random.default_rng([config.seed, 2, subject_index])
            base_order = [
                config.categories[i]
                for i in order_rng.permutation(len(config.categories))
            ]
            runs_written = []
            for session_index, session in enumerate(config.session_labels):
                for run in range(1, config.runs + 1):
                    rng = np.random.default_rng(
                        [config.seed, 3, subject_index, session_index, run]
                    )
                    run_index = session_index * config.runs + (run - 1)
                    simulated = _simulated_run(
                        config,
                        geometry,
                        maps,
                        block_sequence(config, base_order, run_index),
                        rng,
                        subject=subject,
                        session=session,
                        run=run,
                    )
                    runs_written.append(run_record(simulated))
                    if pending is not None:
                        pending.result()
                        pending = None
                    if simulated.data.nbytes <= _OVERLAP_MAX_BYTES:
                        # compressing this run overlaps with generating the next;
                        # at most two small runs are alive at once
                        pending = writer.submit(
                            write_run, root, config, geometry, simulated
                        )
                    else:
                        write_run(root, config, geometry, simulated)
                    del simulated
            write_subject_truth(truth_dir, config, geometry, subject, maps)
            for name in CONTRAST_WEIGHTS:
                group_effects[name].append(maps.contrasts[name])
            truth_subjects[f"sub-{subject}"] = {
                "regions": maps.regions,
                "category_order": base_order,
                "runs": runs_written,
            }
        if pending is not None:
            pending.result()
    write_group_truth(truth_dir, config, geometry, group_effects)
    write_simulation_record(truth_dir, config, geometry, truth_subjects)
    return root
