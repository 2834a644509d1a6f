"""``laion-fmri-glm demo``: simulate a dataset, fit both levels, write the reports.

The demo is the shortest path from nothing to a group map a scientist can
look at: it simulates the default localizer dataset with eight subjects,
fits every subject's first level, the group level with FDR and FWE
correction, writes the HTML reports and prints where they are and how to load
the maps.  A rerun on the same folder reuses everything that is complete.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.errors import InputError
from laion_fmri_dataloader.pipeline.group import GroupConfig
from laion_fmri_dataloader.pipeline.levels import (
    run_group_level,
    run_participants,
    select_subjects,
)
from laion_fmri_dataloader.pipeline.participant import FirstLevelConfig
from laion_fmri_dataloader.pipeline.scheduler import Scheduler
from laion_fmri_dataloader.report import report_path, write_reports
from laion_fmri_dataloader.simulate import SimulationConfig, simulate_dataset

__all__ = ["DEMO_SCHEDULER", "DEMO_SUBJECTS", "demo_simulation", "run_demo"]

log = logging.getLogger("laion_fmri")

#: Subjects of the demo dataset.  With N subjects the sign-flip test's smallest
#: two-sided p is 2 / 2**N, so at alpha 0.05 it needs N >= 6; eight leave room
#: (smallest p 2/256) and still run in a minute or two.
DEMO_SUBJECTS = 8


#: The demo's scheduler: a Dask LocalCluster, one worker per core.
DEMO_SCHEDULER = Scheduler("local")


def demo_simulation() -> SimulationConfig:
    """The demo's simulation: the default dataset with :data:`DEMO_SUBJECTS`."""
    return SimulationConfig(subjects=DEMO_SUBJECTS)


def _simulation_is_complete(directory: Path, parameters: dict) -> bool:
    """Whether ``directory`` holds a finished simulation with these parameters."""
    record = directory / "derivatives" / "truth" / "simulation.json"
    try:
        recorded = json.loads(record.read_text())["parameters"]
    except (OSError, KeyError, json.JSONDecodeError):
        return False
    return recorded == parameters


def run_demo(directory: str | Path, scheduler: Scheduler = DEMO_SCHEDULER) -> int:
    """Simulate, fit participant and group levels, write reports; return 0.

    Parameters
    ----------
    directory : str or Path
        Folder of the simulated BIDS dataset; the GLM derivatives go to
        ``directory/derivatives/glm``.  Complete work in it is reused.
    scheduler : Scheduler, default=DEMO_SCHEDULER
        Where the subjects and the sign flips run (a LocalCluster by default;
        ``Scheduler("none")`` runs every step in this process).

    Returns
    -------
    int
        0, the exit code of success.

    Raises
    ------
    InputError
        If a subject fails at the first level (the command line exits with 2).
    """
    start = time.monotonic()
    directory = Path(directory)
    glm_dir = directory / layout.DERIVATIVE_SUBDIR
    simulation = demo_simulation()
    log.info(
        "demo: the default simulated localizer with %d subjects instead of %d, so "
        "that the sign-flip permutation FWE test can reach alpha 0.05 (with N "
        "subjects its smallest two-sided p is 2/2^N; N >= 6 is needed)",
        simulation.subjects,
        SimulationConfig().subjects,
    )
    if _simulation_is_complete(directory, simulation.to_dict()):
        log.info("demo: simulated dataset in %s is complete, reused", directory)
    else:
        log.info(
            "demo: simulating %d subjects x %d runs x %d volumes at %g mm in %s",
            simulation.subjects,
            simulation.runs,
            simulation.n_volumes,
            simulation.resolution,
            directory,
        )
        simulate_dataset(directory, **simulation.to_dict())
    config = FirstLevelConfig(bids_dir=directory, output_dir=glm_dir)
    subjects = select_subjects(config, None)
    log.info(
        "demo: first level of %d subjects (scheduler %s)", len(subjects), scheduler
    )
    results = run_participants(config, subjects, scheduler)
    failed = [result for result in results if result.status == "failed"]
    for result in failed:
        log.error("%s failed: %s", result.subject, result.message)
    if failed:
        raise InputError(
            f"{len(failed)} subject(s) failed at the first level; see the log above"
        )
    log.info("demo: group level")
    run_group_level(GroupConfig(output_dir=glm_dir), scheduler)
    log.info("demo: writing reports")
    write_reports(glm_dir)
    index = glm_dir / report_path("index")
    print(_closing_message(directory, glm_dir, index, time.monotonic() - start))
    return 0


def _closing_message(
    directory: Path, glm_dir: Path, index: Path, seconds: float
) -> str:
    return f"""
Demo finished in {seconds:.0f} s.

  Reports:      {index}  (open in a browser; works offline)
  Group maps:   {glm_dir / layout.GROUP_LEVEL_DIR}
  Subject maps: {glm_dir / layout.FIRST_LEVEL_DIR}
  Ground truth: {directory / "derivatives" / "truth"}

Load the results in Python:

    from laion_fmri_dataloader import LAIONfMRIDataset
    dataset = LAIONfMRIDataset("{directory}")
    z = dataset.load_first_level_contrast("sub-01", "experiment", "faceVsScene", "z")
    fwe = dataset.load_group_level_contrast("faceVsScene", correction="fwe")
    print(dataset.load_metadata(contrast="faceVsScene", correction="fwe").Correction)
"""
