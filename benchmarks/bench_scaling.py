"""Wall time and worker memory of the participant stage on 1 and 2 Dask workers.

Simulates 8 subjects with the simulator's defaults (4 mm, 2 runs of 160
volumes), then fits their first level in this process (``--scheduler none``)
and on a LocalCluster of 1 and 2 single-thread workers, and prints one row per
setting: cluster start (with the workers' imports), participant stage, CPU
seconds of the stage, the machine's 1-minute load average after it (other
processes compete for the cores of a shared machine), a worker's resident
memory after its imports, each worker's peak and the memory limit.  A worker
fits one subject at a time, so its peak minus its imports bounds the memory of
one subject.  The outputs of every setting are compared byte for byte with the
in-process run.

Usage::

    .venv/bin/python benchmarks/bench_scaling.py [FOLDER] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from dask.utils import format_bytes

from laion_fmri_dataloader.pipeline.levels import run_participants
from laion_fmri_dataloader.pipeline.participant import FirstLevelConfig
from laion_fmri_dataloader.pipeline.scheduler import IN_PROCESS, Scheduler
from laion_fmri_dataloader.pipeline.scheduling import open_client
from laion_fmri_dataloader.simulate import simulate_dataset

N_SUBJECTS = 8


def _peak_rss() -> int:
    # ru_maxrss is in KiB on Linux: the peak of the worker process so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _resident_after_imports() -> int:
    """Import what a first-level task imports; return the resident memory then."""
    import matplotlib.pyplot  # noqa: F401  (the design-matrix figure)

    import laion_fmri_dataloader.pipeline.levels  # noqa: F401

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _outputs(output_dir: Path) -> dict[str, bytes]:
    return {
        path.relative_to(output_dir).as_posix(): path.read_bytes()
        for path in sorted(output_dir.rglob("*.nii.gz"))
    }


def _in_process(config: FirstLevelConfig, subjects: list[str]) -> dict:
    start, cpu = time.perf_counter(), _cpu_seconds()
    results = run_participants(config, subjects, IN_PROCESS)
    return {
        "setting": "in process",
        "start_s": 0.0,
        "stage_s": time.perf_counter() - start,
        "cpu_s": _cpu_seconds() - cpu,
        "load": os.getloadavg()[0],
        "statuses": {r.status for r in results},
        # This process also simulated the data: its peak says nothing of the fit.
        "peaks": [],
        "baseline": None,
        "limit": None,
    }


def _on_cluster(config: FirstLevelConfig, subjects: list[str], workers: int) -> dict:
    start = time.perf_counter()
    with open_client(Scheduler.parse("local", workers=workers)) as client:
        client.wait_for_workers(workers)
        # Imports are paid once per worker; leave them out of the stage so that
        # the memory a task adds on top of them can be told apart.
        baseline = max(client.run(_resident_after_imports).values())
        cpu = sum(client.run(_cpu_seconds).values())
        started = time.perf_counter()
        # The cluster is reached by address, so that its workers can be asked
        # for their peak memory once the stage is over.
        results = run_participants(
            config, subjects, Scheduler.parse(client.scheduler.address)
        )
        stage = time.perf_counter() - started
        cpu = sum(client.run(_cpu_seconds).values()) - cpu
        load = os.getloadavg()[0]
        peaks = list(client.run(_peak_rss).values())
        info = client.scheduler_info(n_workers=-1)["workers"].values()
        limit = min(worker["memory_limit"] for worker in info)
    return {
        "setting": f"{workers} worker{'s' if workers > 1 else ''}",
        "start_s": started - start,
        "stage_s": stage,
        "cpu_s": cpu,
        "load": load,
        "statuses": {r.status for r in results},
        "peaks": peaks,
        "baseline": baseline,
        "limit": limit,
    }


def main(argv: list[str] | None = None) -> None:
    """Simulate, run every setting, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--reuse", action="store_true", help="use the data simulated in FOLDER before"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="bench-scaling-"))
    bids_dir = folder / "bids"
    if not args.reuse:
        start = time.perf_counter()
        simulate_dataset(bids_dir, subjects=N_SUBJECTS, seed=0)
        print(f"simulated {N_SUBJECTS} subjects in {time.perf_counter() - start:.1f} s")
    subjects = [f"{index:02d}" for index in range(1, N_SUBJECTS + 1)]
    bold = next((bids_dir / "derivatives" / "fmriprep").rglob("*_bold.nii.gz"))
    shape = nib.load(bold).shape
    print(
        f"one run: {shape} voxels x volumes, {format_bytes(4 * np.prod(shape))} "
        "as float32"
    )

    def config(name: str) -> FirstLevelConfig:
        return FirstLevelConfig(
            bids_dir=bids_dir, output_dir=folder / name / "glm", force=True
        )

    rows = [_in_process(config("none"), subjects)]
    reference = _outputs(folder / "none" / "glm")
    for workers in args.workers:
        rows.append(_on_cluster(config(f"workers-{workers}"), subjects, workers))
        outputs = _outputs(folder / f"workers-{workers}" / "glm")
        differ = sorted(
            name for name in reference if outputs.get(name) != reference[name]
        )
        print(
            f"{workers} worker(s): outputs byte-identical to the in-process run: "
            + ("yes" if not differ else f"no, {len(differ)} differ: {differ[:3]}")
        )
    print(
        f"{'setting':<12} {'start (s)':>10} {'stage (s)':>10} {'speed-up':>9} "
        f"{'CPU (s)':>8} {'load':>5} {'after imports':>14} "
        f"{'peak RSS per worker':>24} {'limit':>10}"
    )
    for row in rows:
        assert row["statuses"] == {"done"}, row
        peaks = ", ".join(format_bytes(peak) for peak in row["peaks"]) or "-"
        baseline = format_bytes(row["baseline"]) if row["baseline"] else "-"
        limit = format_bytes(row["limit"]) if row["limit"] else "-"
        print(
            f"{row['setting']:<12} {row['start_s']:>10.1f} {row['stage_s']:>10.1f} "
            f"{rows[0]['stage_s'] / row['stage_s']:>8.2f}x {row['cpu_s']:>8.1f} "
            f"{row['load']:>5.1f} {baseline:>14} {peaks:>24} {limit:>10}"
        )


if __name__ == "__main__":
    main()
