"""Dask scheduling: real schedulers and worker processes, no mocks.

A scheduler and two workers are started as subprocesses on 127.0.0.1; the
pipeline runs against them through the command line, and its outputs must be
byte-identical to an in-process run (``--scheduler none``), also when a worker
is killed mid-run.  Every process a test starts is stopped in its teardown, and
an autouse fixture fails a test that leaves a child process behind.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import dask
import numpy as np
import psutil
import pytest
from distributed import Client, get_task_stream

from laion_fmri_dataloader import cli
from laion_fmri_dataloader._system import usable_cpus
from laion_fmri_dataloader.errors import (
    InputError,
    InvalidLabelError,
    InvalidParameterError,
)
from laion_fmri_dataloader.pipeline.group import GroupConfig
from laion_fmri_dataloader.pipeline.levels import run_participants
from laion_fmri_dataloader.pipeline.participant import FirstLevelConfig, SubjectResult
from laion_fmri_dataloader.pipeline.scheduler import Scheduler
from laion_fmri_dataloader.pipeline.scheduling import (
    distributed_sign_flip,
    map_subjects,
    open_client,
    slurm_cluster_kwargs,
)
from laion_fmri_dataloader.simulate import simulate_dataset
from laion_fmri_dataloader.simulate.data_gen import null_group_effects
from laion_fmri_dataloader.stats.inference import SpatialInference, sign_flip_max_t

DASK = Path(sys.executable).parent / "dask"
SUBJECTS = ("01", "02", "03")
# Nothing listens there: connections are refused at once.
UNREACHABLE = "tcp://127.0.0.1:9"


@contextmanager
def _dask_cluster(folder: Path, n_workers: int = 2):
    """A scheduler and ``n_workers`` single-thread workers, each its own process.

    Yields the scheduler address and the worker processes.  Workers run without
    a nanny, so that killing a worker's pid kills the worker and nothing restarts
    it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    processes = []

    def start(arguments, name):
        log_file = open(folder / f"{name}.log", "wb")
        processes.append(
            subprocess.Popen(
                [str(DASK), *arguments], stdout=log_file, stderr=subprocess.STDOUT
            )
        )
        log_file.close()
        return processes[-1]

    try:
        start(
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--scheduler-file",
                str(scheduler_file),
                "--no-dashboard",
            ],
            "scheduler",
        )
        workers = [
            start(
                [
                    "worker",
                    "--scheduler-file",
                    str(scheduler_file),
                    "--nworkers",
                    "1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--no-nanny",
                    "--local-directory",
                    str(folder / f"worker-{index}"),
                ],
                f"worker-{index}",
            )
            for index in range(n_workers)
        ]
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        with Client(address, timeout=30) as client:
            client.wait_for_workers(n_workers, timeout=60)
        yield address, workers
    finally:
        for process in reversed(processes):
            process.terminate()
        # A worker closing on SIGTERM sometimes hangs in distributed's own
        # shutdown; it has nothing left to save, so it is killed after a while.
        for process in reversed(processes):
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Fail a test whose clusters, workers or subprocesses outlive it.

    multiprocessing's resource tracker is one per test process, started by the
    first LocalCluster, and lives as long as the process by design.
    """
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 15
    while True:
        alive = [
            child
            for child in psutil.Process().children(recursive=True)
            if child.pid not in before
            and child.status() != psutil.STATUS_ZOMBIE
            and "multiprocessing.resource_tracker" not in " ".join(child.cmdline())
        ]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not alive, f"processes left running: {[p.cmdline() for p in alive]}"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three subjects, one short run each, on an 8 mm grid (a second per subject)."""
    return simulate_dataset(
        tmp_path_factory.mktemp("scheduling") / "bids",
        subjects=len(SUBJECTS),
        runs=1,
        n_volumes=60,
        resolution=8,
        seed=11,
    )


def _participant(bids_dir: Path, output_dir: Path, *options: str) -> int:
    return cli.main(["glm", str(bids_dir), str(output_dir), "participant", *options])


def _nifti_bytes(output_dir: Path) -> dict[str, bytes]:
    """Every output map's bytes, by relative path.

    Hidden files are the temporary files of atomic writes that a killed task can
    leave behind; they are never read as outputs.
    """
    return {
        path.relative_to(output_dir).as_posix(): path.read_bytes()
        for path in sorted(output_dir.rglob("*.nii.gz"))
        if not path.name.startswith(".")
    }


def _assert_same_outputs(outputs: dict[str, bytes], reference: dict[str, bytes]):
    """Byte equality, with a failure message that tells data from compression."""
    assert sorted(outputs) == sorted(reference)
    differ = [name for name in reference if outputs[name] != reference[name]]
    same_data = [
        name
        for name in differ
        if gzip.decompress(outputs[name]) == gzip.decompress(reference[name])
    ]
    assert not differ, (
        f"{len(differ)} maps differ, {len(same_data)} of them only in their gzip "
        f"stream (same decompressed bytes): {differ[:3]}"
    )


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """Outputs of an in-process run (``--scheduler none``)."""
    output_dir = tmp_path_factory.mktemp("reference") / "glm"
    assert _participant(dataset, output_dir, "--scheduler", "none") == 0
    outputs = _nifti_bytes(output_dir)
    # 6 contrasts x 4 stats + a mask per subject.
    assert len(outputs) == len(SUBJECTS) * 25
    return outputs


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory):
    """Address of a scheduler with two worker processes, shared by the module."""
    with _dask_cluster(tmp_path_factory.mktemp("dask")) as (address, _):
        yield address


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_address_cli_matches_in_process_run(
    dataset, reference, scheduler_address, tmp_path
):
    output_dir = tmp_path / "glm"
    assert _participant(dataset, output_dir, "--scheduler", scheduler_address) == 0
    _assert_same_outputs(_nifti_bytes(output_dir), reference)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_local_cluster_cli_matches_in_process_run(dataset, reference, tmp_path):
    output_dir = tmp_path / "glm"
    options = ("--scheduler", "local", "--workers", "2")
    assert _participant(dataset, output_dir, *options) == 0
    _assert_same_outputs(_nifti_bytes(output_dir), reference)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_worker_killed_mid_task_outputs_unchanged(dataset, reference, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="laion_fmri")
    output_dir = tmp_path / "glm"

    # Nested, so that it is pickled by value: workers cannot import this module.
    def first_level_tasks(dask_worker) -> list[str]:
        return [
            str(task.key)
            for task in dask_worker.state.executing
            if str(task.key).startswith("first-level-")
        ]

    with _dask_cluster(tmp_path / "dask") as (address, workers):
        outcome = {}

        def run():
            outcome["code"] = _participant(dataset, output_dir, "--scheduler", address)

        with Client(address, timeout=30) as observer:
            pids = observer.run(os.getpid)
            thread = threading.Thread(target=run)
            thread.start()
            killed = None
            deadline = time.monotonic() + 60
            while killed is None and time.monotonic() < deadline:
                running = observer.run(first_level_tasks)
                busy = [address for address, keys in running.items() if keys]
                if busy:
                    killed = running[busy[0]][0]
                    os.kill(pids[busy[0]], signal.SIGKILL)
                time.sleep(0.02)
            thread.join(timeout=90)
        assert killed is not None, "no first-level task ran on a worker"
        assert not thread.is_alive()
        assert sum(worker.poll() is None for worker in workers) == 1
    assert outcome["code"] == 0
    assert "3 done, 0 skipped" in caplog.text
    _assert_same_outputs(_nifti_bytes(output_dir), reference)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_corrupted_subject_fails_alone(
    dataset, reference, scheduler_address, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="laion_fmri")
    bids_dir = tmp_path / "bids"
    shutil.copytree(dataset, bids_dir, ignore=shutil.ignore_patterns("glm"))
    (bold,) = (bids_dir / "derivatives" / "fmriprep" / "sub-02").rglob(
        "*desc-preproc_bold.nii.gz"
    )
    bold.write_bytes(bold.read_bytes()[: bold.stat().st_size // 2])
    output_dir = tmp_path / "glm"
    code = _participant(bids_dir, output_dir, "--scheduler", scheduler_address)
    assert code == 2
    assert "2 done, 0 skipped (already complete), 1 failed" in caplog.text
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(m.startswith("sub-02 failed: ") and bold.name in m for m in failures)
    outputs = _nifti_bytes(output_dir)
    assert not any(name.startswith("first_level/sub-02/") for name in outputs)
    _assert_same_outputs(
        outputs,
        {
            name: data
            for name, data in reference.items()
            if not name.startswith("first_level/sub-02/")
        },
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rerun_redoes_only_deleted_subject(
    dataset, reference, scheduler_address, tmp_path
):
    config = FirstLevelConfig(bids_dir=dataset, output_dir=tmp_path / "glm")
    first = run_participants(config, SUBJECTS, Scheduler.parse(scheduler_address))
    assert [r.status for r in first] == ["done", "done", "done"]
    kept = config.output_dir / "first_level" / "sub-01"
    mtimes = {path: path.stat().st_mtime_ns for path in kept.iterdir()}
    shutil.rmtree(config.output_dir / "first_level" / "sub-02")
    second = run_participants(config, SUBJECTS, Scheduler.parse(scheduler_address))
    assert [(r.subject, r.status) for r in second] == [
        ("sub-01", "skipped"),
        ("sub-02", "done"),
        ("sub-03", "skipped"),
    ]
    assert {path: path.stat().st_mtime_ns for path in kept.iterdir()} == mtimes
    _assert_same_outputs(_nifti_bytes(config.output_dir), reference)


@pytest.mark.timeout(120)
def test_task_bug_becomes_failed_result(scheduler_address, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="laion_fmri")

    def fit(config, subject):
        if subject == "02":
            raise RuntimeError("deliberate bug")
        return SubjectResult(f"sub-{subject}", "done")

    results = map_subjects(
        fit, tmp_path, ["sub-01", "02", "03"], Scheduler.parse(scheduler_address)
    )
    assert [r.status for r in results] == ["done", "error", "done"]
    assert "RuntimeError: deliberate bug" in results[1].message
    assert "Traceback" in caplog.text and "deliberate bug" in caplog.text


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_task_that_kills_its_worker_fails_alone(tmp_path):
    def fit(config, subject):
        if subject == "02":
            os._exit(1)  # as the kernel's OOM killer would end the worker
        return SubjectResult(f"sub-{subject}", "done")

    # Dask's default allowed failures (3): the task kills four workers in turn.
    results = map_subjects(
        fit, tmp_path, ["01", "02", "03"], Scheduler.parse("local", workers=1)
    )
    assert [r.status for r in results] == ["done", "failed", "done"]
    assert "the worker fitting sub-02 died 4 time(s)" in results[1].message


def _flip_options(config: GroupConfig) -> dict:
    return {
        "n_perm": config.n_perm,
        "alpha": config.alpha,
        "one_sided": config.one_sided,
        "seed": config.seed,
    }


def _effects(n_subjects: int, seed: int) -> np.ndarray:
    """Null effects but 40 active and 10 zero-variance voxels, (n_subjects, 3000)."""
    effects = null_group_effects(np.random.default_rng(seed), n_subjects, (3000,))
    effects[:, :40] += 5.0
    effects[:, 40:50] = 0.7  # zero-variance voxels
    return effects


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_workers", [1, 2])
def test_distributed_sign_flip_equals_in_process(n_workers, scheduler_address):
    # Random flips in 4 chunks (2**10 > 1000), and exhaustive one-sided flips;
    # TFCE and clusters on a 15 x 20 x 10 grid (the active voxels are a slab),
    # then clusters alone (their screened path).
    grid = np.ones((15, 20, 10), dtype=bool)
    cases = [
        (_effects(10, 0), GroupConfig(Path("."), n_perm=1000, seed=5), None),
        (
            _effects(8, 1),
            GroupConfig(Path("."), one_sided=True, alpha=0.1, seed=2),
            None,
        ),
        (
            _effects(10, 0),
            GroupConfig(Path("."), n_perm=1000, seed=5),
            SpatialInference.from_mask(grid),
        ),
        (
            _effects(8, 1),
            GroupConfig(Path("."), one_sided=True, alpha=0.1, seed=2),
            SpatialInference.from_mask(grid, tfce=None, cluster_threshold=0.01),
        ),
    ]
    if n_workers == 1:
        scheduler, options = "local", {"workers": 1}
    else:
        scheduler, options = scheduler_address, {}
    # Both cases share the client of this block rather than each opening one.
    scheduler = Scheduler.parse(scheduler, **options)
    with open_client(scheduler) as client:
        for effects, config, spatial in cases:
            expected = sign_flip_max_t(
                effects,
                n_perm=config.n_perm,
                alpha=config.alpha,
                one_sided=config.one_sided,
                seed=config.seed,
                spatial=spatial,
            )
            with get_task_stream(client) as stream:
                result = distributed_sign_flip(
                    effects,
                    scheduler=scheduler,
                    spatial=spatial,
                    **_flip_options(config),
                )
            if spatial is not None and spatial.tfce is not None:
                np.testing.assert_array_equal(
                    result.tfce.max_tfce, expected.tfce.max_tfce
                )
                np.testing.assert_array_equal(result.tfce.p_fwe, expected.tfce.p_fwe)
                assert result.tfce.mask[:40].sum() >= 30
            if spatial is not None:
                np.testing.assert_array_equal(
                    result.cluster.max_size, expected.cluster.max_size
                )
                np.testing.assert_array_equal(
                    result.cluster.p_fwe, expected.cluster.p_fwe
                )
                assert result.cluster.mask[:40].all()
            assert any(task["key"].startswith("sign-flip-") for task in stream.data)
            np.testing.assert_array_equal(result.max_t, expected.max_t)
            np.testing.assert_array_equal(result.p_fwe, expected.p_fwe)
            np.testing.assert_array_equal(result.t, expected.t)
            assert result.t_cutoff == expected.t_cutoff
            assert (result.n_perm, result.exhaustive) == (
                expected.n_perm,
                expected.exhaustive,
            )
            assert result.mask[:40].sum() >= 30
            assert not result.mask[40:50].any()


def test_local_sign_flip_without_open_client_runs_in_process(caplog):
    caplog.set_level(logging.INFO, logger="laion_fmri")
    effects = _effects(10, 3)
    config = GroupConfig(Path("."), n_perm=500, seed=1)
    children = psutil.Process().children(recursive=True)
    result = distributed_sign_flip(
        effects, scheduler=Scheduler.parse("local", workers=2), **_flip_options(config)
    )
    assert psutil.Process().children(recursive=True) == children
    assert "computed in this process" in caplog.text
    expected = sign_flip_max_t(effects, n_perm=500, seed=1)
    np.testing.assert_array_equal(result.max_t, expected.max_t)


@pytest.mark.parametrize(
    ("n_subjects", "changes"),
    [
        (4, {}),
        (10, {"n_perm": 100}),
        (10, {"alpha": 1.5}),
        (10, {"seed": -1}),
    ],
)
def test_distributed_sign_flip_checks_like_in_process(n_subjects, changes):
    effects = _effects(n_subjects, 0)
    config = GroupConfig(Path("."), **{"n_perm": 1000, **changes})
    with pytest.raises(
        (InputError, InvalidLabelError, InvalidParameterError)
    ) as expected:
        sign_flip_max_t(
            effects,
            n_perm=config.n_perm,
            alpha=config.alpha,
            one_sided=config.one_sided,
            seed=config.seed,
        )
    # The checks come first: the unreachable scheduler is never contacted.
    with pytest.raises(type(expected.value)) as raised:
        distributed_sign_flip(
            effects, scheduler=Scheduler.parse(UNREACHABLE), **_flip_options(config)
        )
    assert str(raised.value) == str(expected.value)


@pytest.mark.parametrize(
    ("scheduler", "options", "message"),
    [
        ("lcoal", {}, "--scheduler must be 'auto', 'local', 'slurm', 'none' or"),
        ("local", {"workers": 0}, "--workers must be a whole number >= 1; got 0"),
        ("local", {"memory_per_worker": "lots"}, "must be a size such as 4GiB"),
        ("slurm", {}, "--scheduler slurm needs --memory-per-worker"),
        (
            "slurm",
            {"memory_per_worker": "4GiB", "slurm_walltime": "2 hours"},
            "--slurm-walltime must be a SLURM time",
        ),
        ("slurm", {"memory_per_worker": "4GiB"}, "needs the SLURM command sbatch"),
    ],
)
def test_open_client_rejects_bad_options(scheduler, options, message, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with (
        pytest.raises((InputError, InvalidParameterError), match=message),
        open_client(Scheduler.parse(scheduler, **options)),
    ):
        pass


@pytest.mark.timeout(60)
def test_unreachable_scheduler_is_input_error(dataset, tmp_path, capsys):
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code = _participant(dataset, tmp_path / "glm", "--scheduler", UNREACHABLE)
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        "laion-fmri-glm: error: could not connect to the Dask scheduler at "
        f"{UNREACHABLE}"
    )
    assert "\n" not in error


# Stand-ins for SLURM's commands: sbatch runs the job script on this machine in
# its own process group, scancel stops that group.
FAKE_SBATCH = """#!/bin/sh
id=$$
cp "$1" "$FAKE_SLURM_DIR/job-$id.sh"
cd "$FAKE_SLURM_DIR"
setsid bash "job-$id.sh" >"job-$id.log" 2>&1 </dev/null &
echo $! >"$FAKE_SLURM_DIR/job-$id.pid"
echo "Submitted batch job $id"
"""
FAKE_SCANCEL = """#!/bin/sh
for id in "$@"; do kill -TERM -- "-$(cat "$FAKE_SLURM_DIR/job-$id.pid")"; done
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """A folder of stand-in SLURM commands, first on PATH; jobs leave files there."""
    bin_dir = tmp_path / "slurm"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("FAKE_SLURM_DIR", str(bin_dir))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    # dask-jobqueue registers its defaults (jobqueue.slurm.*) when imported; a
    # config.set entered before that would drop them all on exit, and a later
    # SLURMCluster would fail with KeyError: 'interface'.
    import dask_jobqueue  # noqa: F401

    with dask.config.set({"jobqueue.slurm.scheduler-options": {"host": "127.0.0.1"}}):
        yield bin_dir
    # scancel stopped every job: setsid made them orphans, so check by pid.
    job_pids = [int(path.read_text()) for path in bin_dir.glob("job-*.pid")]
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(pid) for pid in job_pids):
        assert time.monotonic() < deadline, "SLURM jobs left running"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slurm_scheduler_runs_jobs_to_the_end(dataset, reference, tmp_path, fake_slurm):
    output_dir = tmp_path / "glm"
    options = ["--workers", "2", "--memory-per-worker", "2GiB", "--slurm-cores", "1"]
    code = _participant(dataset, output_dir, "--scheduler", "slurm", *options)
    assert code == 0
    _assert_same_outputs(_nifti_bytes(output_dir), reference)
    scripts = sorted(fake_slurm.glob("job-*.sh"))
    assert len(scripts) == 2
    assert "#SBATCH --mem=2G" in scripts[0].read_text()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slurm_job_that_ends_is_replaced(fake_slurm):
    options = {"workers": 2, "memory_per_worker": "2GiB", "slurm_cores": 1}
    with open_client(Scheduler.parse("slurm", **options)) as client:
        client.wait_for_workers(2, timeout=60)
        (first, _) = sorted(fake_slurm.glob("job-*.pid"))
        # As SLURM ends a job at its walltime or when its node fails.
        os.killpg(int(first.read_text()), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(list(fake_slurm.glob("job-*.pid"))) < 3:
            assert time.monotonic() < deadline, "no job replaced the one that ended"
            time.sleep(0.2)
        client.wait_for_workers(2, timeout=60)


@pytest.mark.timeout(60)
def test_slurm_job_script_has_requested_options():
    from dask_jobqueue import SLURMCluster

    kwargs = slurm_cluster_kwargs(
        Scheduler.parse(
            "slurm",
            memory_per_worker="6GiB",
            slurm_queue="short",
            slurm_account="lab42",
            slurm_walltime="01:30:00",
            slurm_cores=4,
        )
    )
    kwargs["scheduler_options"]["host"] = "127.0.0.1"
    with SLURMCluster(**kwargs) as cluster:
        script = cluster.job_script()
    for line in (
        "#SBATCH -J laion-fmri-glm",
        "#SBATCH -p short",
        "#SBATCH -A lab42",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=6G",
        "#SBATCH -t 01:30:00",
    ):
        assert line in script.splitlines()
    assert "--nthreads 4 --memory-limit 6.00GiB" in script
    assert "--resources subject=4" in script
    assert "--nworkers" not in script  # one worker process per job

    settings = {
        "jobqueue.slurm.account": "fromconfig",
        "jobqueue.slurm.memory": "3GiB",
        "jobqueue.slurm.job-extra-directives": ["--qos=low"],
        "jobqueue.slurm.worker-extra-args": ["--lifetime", "55m"],
    }
    with dask.config.set(settings):
        kwargs = slurm_cluster_kwargs(
            Scheduler.parse("slurm", slurm_walltime="00:10:00")
        )
        kwargs["scheduler_options"]["host"] = "127.0.0.1"
        with SLURMCluster(**kwargs) as cluster:
            script = cluster.job_script()
    lines = script.splitlines()
    for line in (
        "#SBATCH -A fromconfig",
        "#SBATCH --mem=3G",
        "#SBATCH --qos=low",
        "#SBATCH -t 00:10:00",
    ):
        assert line in lines
    assert "--lifetime 55m --resources subject=1" in script


@pytest.mark.parametrize(
    ("scheduler", "n_subjects", "expected"),
    [
        ("auto", 1, "none"),
        ("auto", 5, "local" if usable_cpus() > 1 else "none"),
        ("local", 1, "local"),
        ("none", 5, "none"),
        ("tcp://127.0.0.1:8786", 1, "tcp://127.0.0.1:8786"),
    ],
)
def test_auto_scheduler_runs_one_subject_in_process(scheduler, n_subjects, expected):
    assert Scheduler.parse(scheduler).for_subjects(n_subjects) == Scheduler.parse(
        expected
    )
