"""Peak resident memory of a piece of work, sampled every millisecond (Linux ``/proc``), for the benchmarks."""

from __future__ import annotations

import resource
import threading
import time


def resident_mib() -> float:
    """The process's resident set size now, in MiB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def peak_extra_mib(work) -> float:
    """Run ``work()`` and return its peak resident memory above the level before it, in MiB."""
    before, peak, done = resident_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], resident_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return max(0.0, peak[0] - before)
