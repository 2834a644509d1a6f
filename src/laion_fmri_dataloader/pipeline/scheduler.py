"""Where the pipeline's tasks run: ``--scheduler`` and its options, parsed once.

The command line, the demo and the pipeline pass one :class:`Scheduler` along;
nothing else reads the ``--scheduler`` text.  This module imports no Dask, so
that parsing stays fast; :mod:`.scheduling` opens the clients.

Examples
--------
>>> str(Scheduler.parse("tcp://10.0.0.5:8786", workers=2))
'tcp://10.0.0.5:8786'
>>> Scheduler.parse("auto").for_subjects(1).kind
'none'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from laion_fmri_dataloader._system import usable_cpus
from laion_fmri_dataloader.errors import InvalidParameterError

__all__ = ["IN_PROCESS", "Scheduler", "SchedulerKind", "check_memory"]

#: ``auto``: this process for one subject or one CPU, else ``local``; ``none``:
#: this process; ``local``: a Dask LocalCluster; ``slurm``: dask-jobqueue;
#: ``address``: a running scheduler (``tcp://HOST:PORT``).
SchedulerKind = Literal["auto", "none", "local", "slurm", "address"]

_NAMED = ("auto", "none", "local", "slurm")

# What ``sbatch --time`` accepts: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


def check_memory(memory: str | int) -> int:
    """Bytes of a size such as ``"4GiB"``; InvalidParameterError when it is not one.

    Examples
    --------
    >>> check_memory("1KiB")
    1024
    """
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(memory)
    except (ValueError, TypeError):
        size = 0
    if size <= 0:
        raise InvalidParameterError(
            f"--memory-per-worker must be a size such as 4GiB or 8GB; got {memory!r}"
        )
    return size


def _check_count(value: int | None, option: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(
            f"{option} must be a whole number >= 1; got {value!r}"
        )
    return value


@dataclass(frozen=True)
class Scheduler:
    """A ``--scheduler`` value with the options of its workers.

    Attributes
    ----------
    kind : {'auto', 'none', 'local', 'slurm', 'address'}
        See :data:`SchedulerKind`.
    address : str or None
        The scheduler's address when ``kind == "address"``.
    workers : int or None
        Worker processes (local) or SLURM jobs.
    memory_per_worker : str or None
        Memory limit of a worker, e.g. ``"4GiB"``.
    slurm_queue, slurm_account, slurm_walltime, slurm_cores
        Options of the SLURM jobs (see
        :func:`~laion_fmri_dataloader.pipeline.scheduling.slurm_cluster_kwargs`).
    """

    kind: SchedulerKind = "auto"
    address: str | None = None
    workers: int | None = None
    memory_per_worker: str | None = None
    slurm_queue: str | None = None
    slurm_account: str | None = None
    slurm_walltime: str | None = None
    slurm_cores: int | None = None

    @classmethod
    def parse(
        cls,
        value: str = "auto",
        *,
        workers: int | None = None,
        memory_per_worker: str | None = None,
        slurm_queue: str | None = None,
        slurm_account: str | None = None,
        slurm_walltime: str | None = None,
        slurm_cores: int | None = None,
    ) -> Scheduler:
        """The scheduler of ``--scheduler VALUE`` and its options, checked.

        Raises
        ------
        InvalidParameterError
            On an unknown scheduler, a worker count or core count that is not a
            positive whole number, a memory that is not a size, or a walltime
            that SLURM does not accept.
        """
        text = str(value)
        if text in _NAMED:
            kind, address = text, None
        elif "://" in text:
            kind, address = "address", text
        else:
            raise InvalidParameterError(
                "--scheduler must be 'auto', 'local', 'slurm', 'none' or a scheduler "
                f"address such as tcp://HOST:PORT; got {value!r}"
            )
        if memory_per_worker:
            check_memory(memory_per_worker)
        if slurm_walltime is not None and not _WALLTIME.match(str(slurm_walltime)):
            raise InvalidParameterError(
                "--slurm-walltime must be a SLURM time such as 02:00:00 or "
                f"1-00:00:00; got {slurm_walltime!r}"
            )
        return cls(
            kind=kind,
            address=address,
            workers=_check_count(workers, "--workers"),
            memory_per_worker=memory_per_worker,
            slurm_queue=slurm_queue,
            slurm_account=slurm_account,
            slurm_walltime=slurm_walltime,
            slurm_cores=_check_count(slurm_cores, "--slurm-cores"),
        )

    def __str__(self) -> str:
        return self.address if self.kind == "address" else self.kind

    @property
    def in_process(self) -> bool:
        """Whether tasks run in this process (no Dask)."""
        return self.kind == "none"

    @property
    def starts_cluster(self) -> bool:
        """Whether opening this scheduler starts a cluster of our own."""
        return self.kind in ("local", "slurm")

    def for_subjects(self, n_subjects: int) -> Scheduler:
        """The scheduler for a first level of ``n_subjects``: ``auto`` decided.

        ``auto`` is this process for one subject or on one CPU, else ``local``.
        A LocalCluster costs seconds to start (measured: one 2 mm subject took
        7.9 s on it and 3.7 s in this process), and the in-process fit already
        uses every core; it pays off from two subjects on several cores.
        """
        if self.kind != "auto":
            return self
        local = n_subjects > 1 and usable_cpus() > 1
        return replace(self, kind="local" if local else "none")

    def for_group(self) -> Scheduler:
        """The scheduler of the group level's permutations: ``auto`` is this process.

        The in-process sign flips already use every core; a cluster helps only
        when one is named.
        """
        return replace(self, kind="none") if self.kind == "auto" else self


#: Every task in this process: the default of the pipeline's functions.
IN_PROCESS = Scheduler("none")
