"""Peak memory of the current benchmark process (shared by the bench scripts)."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's own peak resident memory, MB.

    VmHWM is this process's own peak; ru_maxrss also counts the parent's memory
    at the fork, which inflates it when a large process (run.py) starts the
    worker, so it is only the fallback where /proc is missing.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
