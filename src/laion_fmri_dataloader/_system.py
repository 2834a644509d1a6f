"""What this process may use of the machine, and work spread over it."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import ThreadpoolController

__all__ = ["map_threads", "usable_cpus"]

T = TypeVar("T")
R = TypeVar("R")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, e.g. a SLURM allocation).

    >>> usable_cpus() >= 1
    True
    """
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def map_threads(
    function: Callable[[T], R], items: Iterable[T], n_threads: int | None = None
) -> list[R]:
    """``[function(item) for item in items]`` on ``n_threads`` threads.

    For work that spends its time in numpy and scipy calls on large arrays,
    which release the GIL (ufuncs, BLAS, ``scipy.special``).  BLAS is held to
    one thread per worker meanwhile, so that threads do not oversubscribe.

    Parameters
    ----------
    function : callable
        Applied to each item.
    items : iterable
        The work.
    n_threads : int or None, default=None
        ``None`` uses every CPU this process may run on.

    Returns
    -------
    list
        The results, in the order of ``items``.

    Examples
    --------
    >>> map_threads(lambda x: x * x, range(4), n_threads=2)
    [0, 1, 4, 9]
    """
    n_threads = usable_cpus() if n_threads is None else n_threads
    items = list(items)
    with _blas_controller().limit(limits=1, user_api="blas"):
        if n_threads == 1 or len(items) < 2:
            return [function(item) for item in items]
        with ThreadPoolExecutor(min(n_threads, len(items))) as pool:
            return list(pool.map(function, items))


@functools.cache
def _blas_controller() -> ThreadpoolController:
    # Finding the loaded BLAS libraries takes 1-15 ms; do it once per process.
    return ThreadpoolController()
