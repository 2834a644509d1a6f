"""Dask scheduling: the same pipeline on a laptop, a scheduler address or SLURM.

:func:`open_client` gives a :class:`dask.distributed.Client` for a
:class:`~laion_fmri_dataloader.pipeline.scheduler.Scheduler`: ``local`` (a
:class:`~distributed.LocalCluster` sized to the machine), ``slurm`` (a
:class:`dask_jobqueue.SLURMCluster`, one worker per job) or the address of a
running scheduler (``tcp://HOST:PORT``).

:func:`map_subjects` runs the first level as one task per subject.  A task reads
its inputs and writes its outputs itself, so that only the configuration and a
small :class:`~laion_fmri_dataloader.pipeline.participant.SubjectResult` travel
through the scheduler, and each worker thread holds one subject at a time.  When
a worker dies, the scheduler reruns its task elsewhere; outputs are written
atomically and deterministically, so the rerun gives the bytes an undisturbed
run gives.  A result is released as soon as it reaches the client, so that a
worker dying later never takes a finished subject with it.  A subject whose
outputs are complete is skipped by the first level itself, which makes an
interrupted run resumable by running it again.

:func:`permutation_function` gives the group level its sign-flip test:
:func:`distributed_sign_flip`, which computes the chunks of a sign-flip permutation test
on the workers and reduces them on the client, with the result of
:func:`~laion_fmri_dataloader.stats.inference.sign_flip_max_t` bit for bit (on
``"local"`` it runs in this process, where that function already uses every
core).

Workers must see the input and output folders at the same paths as the client
(a shared file system on a cluster).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import dask
import numpy as np
from dask.utils import format_bytes
from distributed import Client, KilledWorker, LocalCluster, as_completed
from distributed.system import MEMORY_LIMIT
from threadpoolctl import threadpool_limits

from laion_fmri_dataloader._system import usable_cpus
from laion_fmri_dataloader.errors import InputError, InvalidParameterError
from laion_fmri_dataloader.layout import subject_label
from laion_fmri_dataloader.pipeline.participant import SubjectResult
from laion_fmri_dataloader.pipeline.scheduler import Scheduler, check_memory
from laion_fmri_dataloader.stats.inference import (
    DEFAULT_CHUNK_SIZE,
    Maxima,
    PermutationResult,
    SignFlipData,
    SpatialInference,
    check_permutation_test,
    flips_for_chunk,
    n_chunks,
    permutation_result,
    prepare_sign_flip,
    sign_flip_max_t,
    sign_flip_maxima,
)

__all__ = [
    "distributed_sign_flip",
    "map_subjects",
    "open_client",
    "permutation_function",
    "slurm_cluster_kwargs",
]

log = logging.getLogger("laion_fmri")

ConfigT = TypeVar("ConfigT")

# Tasks per worker thread of a permutation test: a few per thread balance
# workers of unequal speed at a negligible cost per task.
_TASKS_PER_THREAD = 4

# A worker resource, one unit per thread, that every first-level task holds on
# the clusters this module starts: the scheduler then gives a worker its next
# subject only once it knows the last one finished.  Without it Dask queues
# subjects on workers ahead of time, and a worker that dies (out of memory, say)
# counts as a failure of every subject queued on it, not only the one it fitted.
_SUBJECT_RESOURCE = "subject"

# Clients of the open_client blocks being executed, by their scheduler.
_OPEN_CLIENTS: dict[Scheduler, Client] = {}


def slurm_cluster_kwargs(scheduler: Scheduler) -> dict[str, Any]:
    """Keyword arguments of :class:`dask_jobqueue.SLURMCluster` for the pipeline.

    Each SLURM job runs one Dask worker (``processes=1``) with ``slurm_cores``
    threads, one subject per thread, within ``memory_per_worker``.  Options left
    at None are omitted, so that the Dask configuration (``jobqueue.slurm.*``, e.g.
    in ``~/.config/dask/jobqueue.yaml``) supplies them, as it supplies every
    option not listed here (``interface``, ``job-extra-directives``, ...).

    Parameters
    ----------
    scheduler : Scheduler
        Its ``memory_per_worker`` (memory of a job and limit of its worker, e.g.
        ``"8GiB"``; falls back to ``jobqueue.slurm.memory``), ``slurm_queue`` and
        ``slurm_account`` (SLURM partition ``-p`` and account ``-A``),
        ``slurm_walltime`` (time limit of a job, e.g. ``"02:00:00"``) and
        ``slurm_cores`` (CPUs of a job and threads of its worker; falls back to
        ``jobqueue.slurm.cores``, then 1).

    Returns
    -------
    dict
        Keyword arguments for ``SLURMCluster(**kwargs)``.

    Raises
    ------
    InvalidParameterError
        If the memory is missing or not a size, or the configured cores are not
        a positive whole number.

    Examples
    --------
    >>> scheduler = Scheduler.parse("slurm", memory_per_worker="8GiB", slurm_cores=4)
    >>> kwargs = slurm_cluster_kwargs(scheduler)
    >>> kwargs["processes"], kwargs["cores"], kwargs["memory"]
    (1, 4, '8GiB')
    """
    import dask_jobqueue  # noqa: F401  (registers the jobqueue.* configuration)

    kwargs: dict[str, Any] = {
        "processes": 1,
        "job_name": "laion-fmri-glm",
        # A free dashboard port: 8787 is often taken on a shared login node.
        # Passing scheduler_options replaces the configured ones, so merge them.
        "scheduler_options": {
            "dashboard_address": ":0",
            **dask.config.get("jobqueue.slurm.scheduler-options", {}),
        },
    }
    memory = scheduler.memory_per_worker or dask.config.get(
        "jobqueue.slurm.memory", None
    )
    if memory is None:
        raise InvalidParameterError(
            "--scheduler slurm needs --memory-per-worker (e.g. 8GiB) or "
            "jobqueue.slurm.memory in the Dask configuration"
        )
    check_memory(memory)
    kwargs["memory"] = memory
    cores = scheduler.slurm_cores or dask.config.get("jobqueue.slurm.cores", None) or 1
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise InvalidParameterError(
            f"--slurm-cores must be a whole number >= 1; got {cores!r}"
        )
    kwargs["cores"] = cores
    # Passing worker_extra_args replaces the configured ones, so extend them.
    kwargs["worker_extra_args"] = [
        *(dask.config.get("jobqueue.slurm.worker-extra-args", None) or []),
        "--resources",
        f"{_SUBJECT_RESOURCE}={cores}",
    ]
    if scheduler.slurm_walltime is not None:
        kwargs["walltime"] = scheduler.slurm_walltime
    if scheduler.slurm_queue is not None:
        kwargs["queue"] = scheduler.slurm_queue
    if scheduler.slurm_account is not None:
        kwargs["account"] = scheduler.slurm_account
    return kwargs


def _has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None


@contextmanager
def _quiet_dask_logs() -> Iterator[None]:
    """Keep distributed's connection chatter out of the pipeline's log.

    The command line logs at INFO on the root logger, where distributed's own
    INFO messages (every connection, every worker) would bury the pipeline's.
    """
    dask_log = logging.getLogger("distributed")
    previous = dask_log.level
    if not log.isEnabledFor(logging.DEBUG):
        dask_log.setLevel(max(previous, logging.WARNING))
    try:
        yield
    finally:
        dask_log.setLevel(previous)


@contextmanager
def _local_client(
    workers: int | None, memory_per_worker: str | None
) -> Iterator[Client]:
    n_workers = workers or usable_cpus()
    memory_limit = (
        check_memory(memory_per_worker)
        if memory_per_worker
        else MEMORY_LIMIT // n_workers
    )
    log.info(
        "starting a local Dask cluster: %d worker process%s, 1 thread and %s each",
        n_workers,
        "" if n_workers == 1 else "es",
        format_bytes(memory_limit),
    )
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            resources={_SUBJECT_RESOURCE: 1},
            host="127.0.0.1",
            # A free port: 8787 is often taken on a shared machine.
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@contextmanager
def _address_client(address: str) -> Iterator[Client]:
    try:
        client = Client(address)
    except (OSError, ValueError, TypeError) as error:
        raise InputError(
            f"could not connect to the Dask scheduler at {address}; is it running "
            f"and reachable from here? ({error})"
        ) from error
    with client:
        n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
        log.info(
            "connected to the Dask scheduler at %s (%d workers)", address, n_workers
        )
        if not n_workers:
            log.warning("the scheduler has no workers yet; tasks wait for some to join")
        yield client


@contextmanager
def _slurm_client(scheduler: Scheduler) -> Iterator[Client]:
    kwargs = slurm_cluster_kwargs(scheduler)
    if shutil.which("sbatch") is None:
        raise InputError(
            "--scheduler slurm needs the SLURM command sbatch, which is not on PATH; "
            "run from a SLURM login node"
        )
    from dask_jobqueue import SLURMCluster

    try:
        cluster = SLURMCluster(**kwargs)
    except ValueError as error:
        raise InputError(
            f"dask-jobqueue rejected the SLURM options: {error}"
        ) from error
    n_jobs = scheduler.workers or 1
    with cluster, Client(cluster) as client:
        # Adaptive with a fixed size rather than scale(): a job that ends (its
        # walltime, a node failure) is replaced, and its tasks rerun there.
        cluster.adapt(minimum_jobs=n_jobs, maximum_jobs=n_jobs)
        log.info(
            "keeping %d SLURM job%s (one Dask worker each) running; tasks start as "
            "jobs do",
            n_jobs,
            "" if n_jobs == 1 else "s",
        )
        log.debug("SLURM job script:\n%s", cluster.job_script())
        yield client


@contextmanager
def open_client(scheduler: Scheduler) -> Iterator[Client]:
    """A Dask client of a scheduler, closed (with its cluster) on exit.

    Inside an ``open_client`` block, a call with the same scheduler yields the
    client already open instead of starting another cluster, so that a caller
    that maps subjects and then runs a permutation test per contrast can pay for
    one cluster start::

        with open_client(scheduler):
            run_group(config, permutation_function(scheduler))

    Parameters
    ----------
    scheduler : Scheduler
        ``local``: a :class:`~distributed.LocalCluster` of ``workers`` processes
        (default one per core) with one thread each, within ``memory_per_worker``
        (default: the machine's memory shared between the workers; a worker past
        95 % of it is restarted and its task rerun elsewhere).  ``slurm``: a
        :class:`dask_jobqueue.SLURMCluster` scaled to ``workers`` jobs (default
        1), see :func:`slurm_cluster_kwargs`.  ``address``: a running scheduler,
        e.g. ``tcp://10.0.0.5:8786``, which is left running.

    Yields
    ------
    distributed.Client
        A client of the scheduler; its dashboard link, if any, is logged.

    Raises
    ------
    InputError
        On a scheduler that cannot be reached, no ``sbatch`` for ``slurm``, or
        SLURM options that dask-jobqueue rejects.
    InvalidParameterError
        On SLURM options that are missing (see :func:`slurm_cluster_kwargs`), or
        a scheduler that runs in this process (``none``, ``auto``).
    """
    if scheduler in _OPEN_CLIENTS:
        yield _OPEN_CLIENTS[scheduler]
        return
    if scheduler.kind == "local":
        context = _local_client(scheduler.workers, scheduler.memory_per_worker)
    elif scheduler.kind == "slurm":
        context = _slurm_client(scheduler)
    elif scheduler.kind == "address":
        context = _address_client(scheduler.address)
    else:
        raise InvalidParameterError(
            f"--scheduler {scheduler} runs in this process and opens no Dask client"
        )
    with _quiet_dask_logs(), context as client:
        # Without bokeh the dashboard port only serves a page asking for bokeh.
        has_dashboard = "dashboard" in client.scheduler_info().get("services", {})
        if has_dashboard and (not scheduler.starts_cluster or _has_bokeh()):
            log.info("Dask dashboard: %s", client.dashboard_link)
        _OPEN_CLIENTS[scheduler] = client
        try:
            yield client
        finally:
            del _OPEN_CLIENTS[scheduler]


def _absolute_paths(config: ConfigT) -> ConfigT:
    # Workers may run in another working directory (SLURM jobs, remote hosts).
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    changes = {
        item.name: Path(value).absolute()
        for item in dataclasses.fields(config)
        if isinstance(value := getattr(config, item.name), Path)
    }
    return dataclasses.replace(config, **changes)


@contextmanager
def _progress(total: int) -> Iterator[Callable[[SubjectResult], None]]:
    """Yield a callback that reports each finished subject.

    A rich progress bar on a terminal; otherwise one log line per subject, which
    reads well in a SLURM log or CI output.
    """
    finished = 0

    def describe(result: SubjectResult) -> str:
        nonlocal finished
        finished += 1
        status = result.status
        if status == "skipped":
            status = "skipped (already complete)"
        return f"{result.subject} {status} ({finished} of {total})"

    if not sys.stderr.isatty():
        yield lambda result: log.info("%s", describe(result))
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("first level"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("first level", total=total)

        def report(result: SubjectResult) -> None:
            bar.console.print(describe(result), highlight=False)
            bar.advance(task)

        yield report


class _ThreadRecords(logging.Handler):
    """The pipeline's log records of one thread: a worker fits several at once."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.records: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.records.append((record.levelno, record.getMessage()))


_capturing_lock = threading.Lock()
_capturing = {"tasks": 0, "level": logging.NOTSET}


def _task_with_log(
    func: Callable[[ConfigT, str], SubjectResult],
    config: ConfigT,
    label: str,
    level: int,
    client_pid: int,
) -> SubjectResult:
    """Run ``func`` on a worker and return its log lines with its result.

    A worker process has no logging set up, so the per-subject lines (runs,
    TR, extra trial types, warnings) would be lost; the client logs them as an
    in-process run does.  In the client's own process they are logged already.
    """
    if os.getpid() == client_pid:
        return func(config, label)
    handler = _ThreadRecords()
    with _capturing_lock:
        if _capturing["tasks"] == 0:
            _capturing["level"] = log.level
            log.setLevel(level)
        _capturing["tasks"] += 1
    log.addHandler(handler)
    try:
        result = func(config, label)
    finally:
        log.removeHandler(handler)
        with _capturing_lock:
            _capturing["tasks"] -= 1
            if _capturing["tasks"] == 0:
                log.setLevel(_capturing["level"])
    result.log_records = handler.records
    return result


def _result_of(future, subject: str) -> SubjectResult:
    """The task's result; a worker death or a bug becomes a failed result."""
    try:
        return future.result()
    except KilledWorker:
        allowed = dask.config.get("distributed.scheduler.allowed-failures")
        return SubjectResult(
            subject,
            "failed",
            message=f"the worker fitting {subject} died {allowed + 1} time(s): it "
            "ran out of memory (the log then says 'exceeded ... memory budget'; "
            "give workers more with --memory-per-worker) or crashed in compiled "
            "code (please report it, with the log)",
        )
    except Exception as error:
        summary = "".join(
            traceback.format_exception(
                type(error), error, error.__traceback__, limit=-5
            )
        )
        log.error(
            "%s: unexpected error, a bug; please report it:\n%s", subject, summary
        )
        return SubjectResult(
            subject,
            "error",
            message=f"unexpected error {type(error).__name__}: {error} "
            "(a bug; the traceback is in the log above)",
        )


def map_subjects(
    func: Callable[[ConfigT, str], SubjectResult],
    config: ConfigT,
    subjects: Sequence[str],
    scheduler: Scheduler,
) -> list[SubjectResult]:
    """Run ``func(config, subject)`` for every subject as one Dask task each.

    Parameters
    ----------
    func : callable
        ``func(config, subject) -> SubjectResult``; reads and writes files itself
        and returns bad input as a failed result rather than raising.
    config : dataclass
        Passed to every task; its :class:`~pathlib.Path` fields are made absolute
        first, since workers may run in another working directory.
    subjects : sequence of str
        Subject labels (``"01"`` or ``"sub-01"``).
    scheduler : Scheduler
        See :func:`open_client`.

    Returns
    -------
    list of SubjectResult
        One per subject, in the order of ``subjects``.  A task that raised
        (a bug) or whose workers kept dying gives a ``"failed"`` result with
        the reason; the other subjects go on.

    Raises
    ------
    InputError
        If the scheduler cannot be opened (see :func:`open_client`).
    """
    labels = [subject_label(subject) for subject in subjects]
    if not labels:
        return []
    config = _absolute_paths(config)
    # Keys unique to this run: a long-lived scheduler may remember earlier runs.
    token = uuid.uuid4().hex[:8]
    results: dict[str, SubjectResult] = {}
    # Workers of a scheduler given by address may not declare the resource.
    resources = {_SUBJECT_RESOURCE: 1} if scheduler.starts_cluster else None
    with open_client(scheduler) as client:
        level = log.getEffectiveLevel()

        def submit(label: str):
            return client.submit(
                _task_with_log,
                func,
                config,
                label,
                level,
                os.getpid(),
                key=f"first-level-sub-{label}-{token}",
                pure=False,
                retries=2,
                resources=resources,
            )

        # At most one subject in flight per worker thread: a worker that dies
        # then takes only the subject it was fitting with it, not others queued
        # on it (Dask counts every task assigned to a dying worker as suspect).
        window = max(1, sum(client.nthreads().values()), scheduler.workers or 1)
        waiting = iter(labels)
        futures = {submit(label): f"sub-{label}" for label in islice(waiting, window)}
        log.info("first level: %d subjects, %d at a time", len(labels), len(futures))
        completed = as_completed(list(futures))
        with _progress(len(labels)) as report:
            for future in completed:
                subject = futures.pop(future)
                results[subject] = _result_of(future, subject)
                # The result is here: let the scheduler forget it.  Held (the
                # loop holds the last future while it waits for the next), it
                # would be recomputed when the worker that has it dies.
                future.release()
                for record_level, message in results[subject].log_records:
                    log.log(record_level, "%s", message)
                report(results[subject])
                label = next(waiting, None)
                if label is not None:
                    new = submit(label)
                    futures[new] = f"sub-{label}"
                    completed.add(new)
    return [results[f"sub-{label}"] for label in labels]


def _maxima_of_chunks(
    data: SignFlipData,
    chunk_indices: Sequence[int],
    *,
    n_perm: int,
    seed: int,
    chunk_size: int,
    one_sided: bool,
) -> Maxima:
    """Maximum statistics of every permutation of consecutive chunks (a worker task)."""
    # As in sign_flip_max_t: these small products run fastest on one BLAS thread,
    # and workers started without a nanny do not get OMP_NUM_THREADS=1.
    with threadpool_limits(limits=1, user_api="blas"):
        return Maxima.concatenate(
            [
                sign_flip_maxima(
                    data,
                    flips_for_chunk(
                        data.n_subjects,
                        chunk_index,
                        chunk_size=chunk_size,
                        seed=seed,
                        n_perm=n_perm,
                    ),
                    one_sided=one_sided,
                )
                for chunk_index in chunk_indices
            ]
        )


def distributed_sign_flip(
    effects: np.ndarray,
    *,
    scheduler: Scheduler,
    n_perm: int = 10000,
    alpha: float = 0.05,
    one_sided: bool = False,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    spatial: SpatialInference | None = None,
) -> PermutationResult:
    """:func:`~laion_fmri_dataloader.stats.inference.sign_flip_max_t` on Dask workers.

    With a ``local`` scheduler and no :func:`open_client` block open for it, the
    test runs in this process instead: ``sign_flip_max_t`` already uses every
    core, and starting worker processes per contrast would cost more than the
    test.

    The effects are normalised once on the client and broadcast to the workers;
    each task computes the maxima (max |t|, and TFCE and cluster size with
    ``spatial``) of a run of consecutive chunks of sign flips
    (:func:`~laion_fmri_dataloader.stats.inference.flips_for_chunk`, which depend
    only on the seed and the chunk index), and the client concatenates them in
    chunk order.  The result is therefore the in-process result bit for bit,
    whatever the number of workers or the order in which tasks finish.

    Parameters
    ----------
    effects : numpy.ndarray, shape (n_subjects, n_voxels)
        One effect map per subject, finite, inside the group mask.
    scheduler : Scheduler
        See :func:`open_client`.
    n_perm, alpha, one_sided, seed, chunk_size, spatial
        As :func:`~laion_fmri_dataloader.stats.inference.sign_flip_max_t`; the
        chunk size is part of the definition of the random flips.

    Returns
    -------
    PermutationResult
        As :func:`~laion_fmri_dataloader.stats.inference.sign_flip_max_t`.

    Raises
    ------
    InvalidParameterError
        Exactly when :func:`~laion_fmri_dataloader.stats.inference.sign_flip_max_t`
        raises it, before any client is opened.
    """
    if scheduler.kind == "local" and scheduler not in _OPEN_CLIENTS:
        # sign_flip_max_t already spreads the chunks over this machine's cores
        # with threads; a LocalCluster started for one test would only add
        # seconds of start-up and copies of the data, for the same result.
        log.info("FWE: sign flips computed in this process, on every core")
        return sign_flip_max_t(
            effects,
            n_perm=n_perm,
            alpha=alpha,
            one_sided=one_sided,
            seed=seed,
            chunk_size=chunk_size,
            spatial=spatial,
        )
    data = prepare_sign_flip(effects, spatial)
    n_used, exhaustive = check_permutation_test(
        data.n_subjects,
        n_perm=n_perm,
        alpha=alpha,
        one_sided=one_sided,
        seed=seed,
        chunk_size=chunk_size,
    )
    total_chunks = n_chunks(data.n_subjects, n_used, chunk_size)
    token = uuid.uuid4().hex[:8]
    with open_client(scheduler) as client:
        n_threads = sum(client.nthreads().values()) or scheduler.workers or 1
        n_tasks = min(total_chunks, _TASKS_PER_THREAD * n_threads)
        groups = np.array_split(np.arange(total_chunks), n_tasks)
        log.info(
            "FWE: %d sign flips of %d subjects in %d tasks on %d worker threads",
            n_used,
            data.n_subjects,
            n_tasks,
            n_threads,
        )
        shared = client.scatter(data, broadcast=True)
        futures = [
            client.submit(
                _maxima_of_chunks,
                shared,
                group.tolist(),
                n_perm=n_used,
                seed=seed,
                chunk_size=chunk_size,
                one_sided=one_sided,
                key=f"sign-flip-chunks-{group[0]}-{group[-1]}-{token}",
                pure=False,
                retries=2,
            )
            for group in groups
        ]
        maxima = Maxima.concatenate(client.gather(futures))
    return permutation_result(
        data,
        maxima,
        exhaustive=exhaustive,
        seed=seed,
        chunk_size=chunk_size,
        alpha=alpha,
        one_sided=one_sided,
    )


def permutation_function(scheduler: Scheduler) -> Callable[..., PermutationResult]:
    """The group level's sign-flip test for a scheduler.

    In this process (``none``): :func:`~laion_fmri_dataloader.stats.inference.
    sign_flip_max_t` itself; otherwise :func:`distributed_sign_flip` on that
    scheduler.  Both take the effects and ``n_perm``, ``alpha``, ``one_sided``
    and ``seed`` (and ``spatial``), and give the same result bit for bit.
    """
    scheduler = scheduler.for_group()
    if scheduler.in_process:
        return sign_flip_max_t
    return partial(distributed_sign_flip, scheduler=scheduler)
