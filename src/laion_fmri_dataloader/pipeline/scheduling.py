"""Dask scheduling: the same pipeline on a laptop, a scheduler address or SLURM.

:func:`open_client` gives a :class:`dask.distributed.Client` for a ``--scheduler``
value: ``"local"`` (a :class:`~distributed.LocalCluster` sized to the machine),
``"slurm"`` (a :class:`dask_jobqueue.SLURMCluster`, one worker per job) or the
address of a running scheduler (``tcp://HOST:PORT``).

:func:`map_subjects` runs the first level as one task per subject.  A task reads
its inputs and writes its outputs itself, so that only the configuration and a
small :class:`~laion_fmri_dataloader.pipeline.participant.SubjectResult` travel
through the scheduler, and each worker thread holds one subject at a time.  When
a worker dies, the scheduler reruns its task elsewhere; outputs are written
atomically and deterministically, so the rerun gives the bytes an undisturbed
run gives.  A subject whose outputs are complete is skipped by the first level
itself, which makes an interrupted run resumable by running it again.

:func:`distributed_sign_flip` computes the chunks of a sign-flip permutation test
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
import re
import shutil
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import dask
import numpy as np
from dask.utils import format_bytes, parse_bytes
from distributed import Client, KilledWorker, LocalCluster, as_completed
from distributed.system import MEMORY_LIMIT
from threadpoolctl import threadpool_limits

from laion_fmri_dataloader._system import usable_cpus
from laion_fmri_dataloader.errors import InputError
from laion_fmri_dataloader.layout import subject_label
from laion_fmri_dataloader.pipeline.participant import SubjectResult
from laion_fmri_dataloader.stats.inference import (
    DEFAULT_CHUNK_SIZE,
    PermutationResult,
    SignFlipData,
    check_permutation_test,
    flips_for_chunk,
    n_chunks,
    permutation_result,
    prepare_sign_flip,
    sign_flip_chunk,
    sign_flip_max_t,
)

__all__ = [
    "distributed_sign_flip",
    "map_subjects",
    "open_client",
    "slurm_cluster_kwargs",
]

log = logging.getLogger("laion_fmri")

ConfigT = TypeVar("ConfigT")

#: ``--scheduler`` values that name a cluster rather than an address.
_NAMED_SCHEDULERS = ("local", "slurm")

# Tasks per worker thread of a permutation test: a few per thread balance
# workers of unequal speed at a negligible cost per task.
_TASKS_PER_THREAD = 4

# A worker resource, one unit per thread, that every first-level task holds on
# the clusters this module starts: the scheduler then gives a worker its next
# subject only once it knows the last one finished.  Without it Dask queues
# subjects on workers ahead of time, and a worker that dies (out of memory, say)
# counts as a failure of every subject queued on it, not only the one it fitted.
_SUBJECT_RESOURCE = "subject"

# Clients of the open_client blocks being executed, by their arguments.
_OPEN_CLIENTS: dict[tuple, Client] = {}

# What ``sbatch --time`` accepts: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


def _check_workers(workers: int | None) -> int | None:
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"--workers must be a whole number >= 1; got {workers!r}")
    return workers


def _check_memory(memory: str | int) -> int:
    """Bytes of a size such as ``"4GiB"``; InputError when it is not one."""
    try:
        size = parse_bytes(memory)
    except (ValueError, TypeError):
        size = 0
    if size <= 0:
        raise InputError(
            f"--memory-per-worker must be a size such as 4GiB or 8GB; got {memory!r}"
        )
    return size


def _check_scheduler(scheduler: str) -> None:
    if scheduler in _NAMED_SCHEDULERS or "://" in str(scheduler):
        return
    raise InputError(
        "--scheduler must be 'auto', 'local', 'slurm', 'none' or a scheduler address "
        f"such as tcp://HOST:PORT; got {scheduler!r}"
    )


def slurm_cluster_kwargs(
    *,
    memory_per_worker: str | None = None,
    slurm_queue: str | None = None,
    slurm_account: str | None = None,
    slurm_walltime: str | None = None,
    slurm_cores: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments of :class:`dask_jobqueue.SLURMCluster` for the pipeline.

    Each SLURM job runs one Dask worker (``processes=1``) with ``slurm_cores``
    threads, one subject per thread, within ``memory_per_worker``.  Options left
    at None are omitted, so that the Dask configuration (``jobqueue.slurm.*``, e.g.
    in ``~/.config/dask/jobqueue.yaml``) supplies them, as it supplies every
    option not listed here (``interface``, ``job-extra-directives``, ...).

    Parameters
    ----------
    memory_per_worker : str or None
        Memory of a job and limit of its worker, e.g. ``"8GiB"``; falls back to
        ``jobqueue.slurm.memory``.
    slurm_queue, slurm_account : str or None
        SLURM partition (``-p``) and account (``-A``).
    slurm_walltime : str or None
        Time limit of a job, e.g. ``"02:00:00"`` or ``"1-00:00:00"``.
    slurm_cores : int or None
        CPUs of a job and threads of its worker; falls back to
        ``jobqueue.slurm.cores``, then 1.

    Returns
    -------
    dict
        Keyword arguments for ``SLURMCluster(**kwargs)``.

    Raises
    ------
    InputError
        If the memory is missing or not a size, the cores are not a positive
        whole number or the walltime is not in a format SLURM accepts.

    Examples
    --------
    >>> kwargs = slurm_cluster_kwargs(memory_per_worker="8GiB", slurm_cores=4)
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
    memory = memory_per_worker or dask.config.get("jobqueue.slurm.memory", None)
    if memory is None:
        raise InputError(
            "--scheduler slurm needs --memory-per-worker (e.g. 8GiB) or "
            "jobqueue.slurm.memory in the Dask configuration"
        )
    _check_memory(memory)
    kwargs["memory"] = memory
    cores = slurm_cores or dask.config.get("jobqueue.slurm.cores", None) or 1
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise InputError(f"--slurm-cores must be a whole number >= 1; got {cores!r}")
    kwargs["cores"] = cores
    # Passing worker_extra_args replaces the configured ones, so extend them.
    kwargs["worker_extra_args"] = [
        *(dask.config.get("jobqueue.slurm.worker-extra-args", None) or []),
        "--resources",
        f"{_SUBJECT_RESOURCE}={cores}",
    ]
    if slurm_walltime is not None:
        if not _WALLTIME.match(str(slurm_walltime)):
            raise InputError(
                "--slurm-walltime must be a SLURM time such as 02:00:00 or "
                f"1-00:00:00; got {slurm_walltime!r}"
            )
        kwargs["walltime"] = slurm_walltime
    if slurm_queue is not None:
        kwargs["queue"] = slurm_queue
    if slurm_account is not None:
        kwargs["account"] = slurm_account
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
        _check_memory(memory_per_worker)
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
def _slurm_client(workers: int | None, **slurm_options) -> Iterator[Client]:
    kwargs = slurm_cluster_kwargs(**slurm_options)
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
    n_jobs = workers or 1
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


def _client_spec(
    scheduler: str,
    *,
    workers: int | None = None,
    memory_per_worker: str | None = None,
    slurm_queue: str | None = None,
    slurm_account: str | None = None,
    slurm_walltime: str | None = None,
    slurm_cores: int | None = None,
) -> tuple:
    """The arguments of :func:`open_client` that identify the client it opens."""
    return (
        scheduler,
        workers,
        memory_per_worker,
        slurm_queue,
        slurm_account,
        slurm_walltime,
        slurm_cores,
    )


@contextmanager
def open_client(
    scheduler: str,
    *,
    workers: int | None = None,
    memory_per_worker: str | None = None,
    slurm_queue: str | None = None,
    slurm_account: str | None = None,
    slurm_walltime: str | None = None,
    slurm_cores: int | None = None,
) -> Iterator[Client]:
    """A Dask client for a ``--scheduler`` value, closed (with its cluster) on exit.

    Inside an ``open_client`` block, a call with the same arguments yields the
    client already open instead of starting another cluster, so that a caller
    that maps subjects and then runs a permutation test per contrast can pay for
    one cluster start::

        with open_client("local", workers=4):
            run_group(config, scheduler="local", workers=4)

    Parameters
    ----------
    scheduler : str
        ``"local"``: a :class:`~distributed.LocalCluster` of ``workers`` processes
        (default one per core) with one thread each.  ``"slurm"``: a
        :class:`dask_jobqueue.SLURMCluster` scaled to ``workers`` jobs (default 1),
        see :func:`slurm_cluster_kwargs`.  Otherwise the address of a running
        scheduler, e.g. ``"tcp://10.0.0.5:8786"``, which is left running.
    workers : int or None
        Worker processes (local) or SLURM jobs.
    memory_per_worker : str or None
        Memory limit of a worker, e.g. ``"4GiB"``; locally the default shares the
        machine's memory between the workers.  A worker past 95 % of it is
        restarted and its task rerun elsewhere.
    slurm_queue, slurm_account, slurm_walltime, slurm_cores
        See :func:`slurm_cluster_kwargs`.

    Yields
    ------
    distributed.Client
        A client of the scheduler; its dashboard link, if any, is logged.

    Raises
    ------
    InputError
        On an unknown scheduler, a bad option, a scheduler that cannot be
        reached or SLURM options that dask-jobqueue rejects.
    """
    _check_scheduler(scheduler)
    workers = _check_workers(workers)
    spec = _client_spec(
        scheduler,
        workers=workers,
        memory_per_worker=memory_per_worker,
        slurm_queue=slurm_queue,
        slurm_account=slurm_account,
        slurm_walltime=slurm_walltime,
        slurm_cores=slurm_cores,
    )
    if spec in _OPEN_CLIENTS:
        yield _OPEN_CLIENTS[spec]
        return
    if memory_per_worker:
        _check_memory(memory_per_worker)
    if scheduler == "local":
        context = _local_client(workers, memory_per_worker)
    elif scheduler == "slurm":
        context = _slurm_client(
            workers,
            memory_per_worker=memory_per_worker,
            slurm_queue=slurm_queue,
            slurm_account=slurm_account,
            slurm_walltime=slurm_walltime,
            slurm_cores=slurm_cores,
        )
    else:
        context = _address_client(scheduler)
    with _quiet_dask_logs(), context as client:
        # Without bokeh the dashboard port only serves a page asking for bokeh.
        has_dashboard = "dashboard" in client.scheduler_info().get("services", {})
        if has_dashboard and (scheduler not in _NAMED_SCHEDULERS or _has_bokeh()):
            log.info("Dask dashboard: %s", client.dashboard_link)
        _OPEN_CLIENTS[spec] = client
        try:
            yield client
        finally:
            del _OPEN_CLIENTS[spec]


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


def _result_of(future, subject: str) -> SubjectResult:
    """The task's result; a worker death or a bug becomes a failed result."""
    try:
        return future.result()
    except KilledWorker:
        allowed = dask.config.get("distributed.scheduler.allowed-failures")
        return SubjectResult(
            subject,
            "failed",
            message=f"the worker fitting {subject} died {allowed + 1} time(s) "
            "(out of memory? give workers more with --memory-per-worker)",
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
    *,
    scheduler: str = "local",
    **options: Any,
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
    scheduler : str, default="local"
        See :func:`open_client`.
    **options
        ``workers``, ``memory_per_worker`` and the ``slurm_*`` options of
        :func:`open_client`.

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
    resources = {_SUBJECT_RESOURCE: 1} if scheduler in _NAMED_SCHEDULERS else None
    with open_client(scheduler, **options) as client:

        def submit(label: str):
            return client.submit(
                func,
                config,
                label,
                key=f"first-level-sub-{label}-{token}",
                pure=False,
                retries=2,
                resources=resources,
            )

        # At most one subject in flight per worker thread: a worker that dies
        # then takes only the subject it was fitting with it, not others queued
        # on it (Dask counts every task assigned to a dying worker as suspect).
        window = max(1, sum(client.nthreads().values()), options.get("workers") or 1)
        waiting = iter(labels)
        futures = {submit(label): f"sub-{label}" for label in islice(waiting, window)}
        log.info("first level: %d subjects, %d at a time", len(labels), len(futures))
        completed = as_completed(list(futures))
        with _progress(len(labels)) as report:
            for future in completed:
                subject = futures.pop(future)
                results[subject] = _result_of(future, subject)
                report(results[subject])
                label = next(waiting, None)
                if label is not None:
                    new = submit(label)
                    futures[new] = f"sub-{label}"
                    completed.add(new)
    return [results[f"sub-{label}"] for label in labels]


def _max_t_of_chunks(
    data: SignFlipData,
    chunk_indices: Sequence[int],
    *,
    n_perm: int,
    seed: int,
    chunk_size: int,
    one_sided: bool,
) -> np.ndarray:
    """Maximum statistic of every permutation of consecutive chunks (a worker task)."""
    # As in sign_flip_max_t: these small products run fastest on one BLAS thread,
    # and workers started without a nanny do not get OMP_NUM_THREADS=1.
    with threadpool_limits(limits=1, user_api="blas"):
        return np.concatenate(
            [
                sign_flip_chunk(
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
    config: Any,
    *,
    scheduler: str = "local",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    **options: Any,
) -> PermutationResult:
    """:func:`~laion_fmri_dataloader.stats.inference.sign_flip_max_t` on Dask workers.

    With ``scheduler="local"`` and no :func:`open_client` block open for it, the
    test runs in this process instead: ``sign_flip_max_t`` already uses every
    core, and starting worker processes per contrast would cost more than the
    test.

    The effects are normalised once on the client and broadcast to the workers;
    each task computes the maxima of a run of consecutive chunks of sign flips
    (:func:`~laion_fmri_dataloader.stats.inference.flips_for_chunk`, which depend
    only on the seed and the chunk index), and the client concatenates them in
    chunk order.  The result is therefore the in-process result bit for bit,
    whatever the number of workers or the order in which tasks finish.

    Parameters
    ----------
    effects : numpy.ndarray, shape (n_subjects, n_voxels)
        One effect map per subject, finite, inside the group mask.
    config : GroupConfig
        Provides ``n_perm``, ``alpha``, ``one_sided`` and ``seed``.
    scheduler : str, default="local"
        See :func:`open_client`.
    chunk_size : int, default=DEFAULT_CHUNK_SIZE
        Sign flips per chunk; part of the definition of the random flips.
    **options
        ``workers``, ``memory_per_worker`` and the ``slurm_*`` options of
        :func:`open_client`.

    Returns
    -------
    PermutationResult
        As :func:`~laion_fmri_dataloader.stats.inference.sign_flip_max_t`.

    Raises
    ------
    InputError, InvalidLabelError
        Exactly when :func:`~laion_fmri_dataloader.stats.inference.sign_flip_max_t`
        raises them, before any client is opened.
    """
    if scheduler == "local" and _client_spec(scheduler, **options) not in _OPEN_CLIENTS:
        # sign_flip_max_t already spreads the chunks over this machine's cores
        # with threads; a LocalCluster started for one test would only add
        # seconds of start-up and copies of the data, for the same result.
        log.info("FWE: sign flips computed in this process, on every core")
        return sign_flip_max_t(
            effects,
            n_perm=config.n_perm,
            alpha=config.alpha,
            one_sided=config.one_sided,
            seed=config.seed,
            chunk_size=chunk_size,
        )
    data = prepare_sign_flip(effects)
    n_used, exhaustive = check_permutation_test(
        data.n_subjects,
        n_perm=config.n_perm,
        alpha=config.alpha,
        one_sided=config.one_sided,
        seed=config.seed,
        chunk_size=chunk_size,
    )
    total_chunks = n_chunks(data.n_subjects, n_used, chunk_size)
    token = uuid.uuid4().hex[:8]
    with open_client(scheduler, **options) as client:
        n_threads = sum(client.nthreads().values()) or options.get("workers") or 1
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
                _max_t_of_chunks,
                shared,
                group.tolist(),
                n_perm=n_used,
                seed=config.seed,
                chunk_size=chunk_size,
                one_sided=config.one_sided,
                key=f"sign-flip-chunks-{group[0]}-{group[-1]}-{token}",
                pure=False,
                retries=2,
            )
            for group in groups
        ]
        max_t = np.concatenate(client.gather(futures))
    return permutation_result(
        data,
        max_t,
        exhaustive=exhaustive,
        seed=config.seed,
        chunk_size=chunk_size,
        alpha=config.alpha,
        one_sided=config.one_sided,
    )
