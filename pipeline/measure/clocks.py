"""Which clock times a run, and what keeps the timing thread steady while it does.

``wall`` is ``time.perf_counter``: it also counts the time the timing thread sat
descheduled while other processes ran, so on a shared machine it measures the load as
much as the model. ``cpu`` is the calling thread's CPU time (``time.thread_time``,
CLOCK_THREAD_CPUTIME_ID), which leaves that time out; it is the whole cost of a forward
only where the forward runs on the calling thread: torch-cpu and onnxruntime-cpu with one
intra-op thread (``tests/test_measure_clock.py`` checks both against the process's CPU
time, and that a second thread breaks it). GPU runtimes time a synchronised run by the
wall clock: the work is on the device, not on the thread.

Nothing here picks models or pairs; ``pipeline.measure`` times with these parts.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from learners.base import CPU_RUNTIMES

CLOCKS = ("auto", "wall", "cpu")
CPU_CLOCK_RUNTIMES = CPU_RUNTIMES  # the work runs on the calling thread (threads: 1)


def clock_problem(clock: str, runtime: str, threads: int) -> str | None:
    """Why ``clock`` cannot time ``runtime`` with ``threads`` intra-op threads (None: it can)."""
    if clock not in CLOCKS:
        return f"unknown clock {clock!r}; known: {', '.join(CLOCKS)}"
    if clock != "cpu":
        return None
    if runtime not in CPU_CLOCK_RUNTIMES:
        return (
            f"clock 'cpu' cannot time runtime {runtime!r}: its work runs on the device, "
            "not on the timing thread; use 'wall' or 'auto'"
        )
    if threads > 1:
        return (
            f"clock 'cpu' needs threads: 1 (got {threads}): with more intra-op threads part "
            "of each forward runs on other threads, which the timing thread's CPU time "
            "leaves out; use 'wall' or 'auto'"
        )
    return None


def resolve_clock(clock: str, runtime: str, threads: int) -> str:
    """``wall`` or ``cpu``: ``auto`` is ``cpu`` wherever that clock is valid."""
    if problem := clock_problem(clock, runtime, threads):
        raise ValueError(problem)
    if clock == "auto":
        return "wall" if clock_problem("cpu", runtime, threads) else "cpu"
    return clock


def clock_function(resolved: str) -> Callable[[], float]:
    """Seconds, by the resolved clock."""
    return time.thread_time if resolved == "cpu" else time.perf_counter


def involuntary_switches() -> int:
    """How often the kernel has taken the CPU from the calling thread so far (0 where the
    platform does not say: then nothing counts as disturbed)."""
    who = getattr(resource, "RUSAGE_THREAD", None)
    return resource.getrusage(who).ru_nivcsw if who is not None else 0


def quiet_rounds(switches: Sequence[int]) -> list[int]:
    """Indices of the rounds to keep: those taken from the CPU no more often than the
    median round. A round preempted more than its peers ran with cold caches and, by the
    wall clock, with the other process's time in it; at least half are always kept, so
    a machine that is busy all the time still gets a figure."""
    if not switches:
        return []
    limit = statistics.median(switches)
    return [i for i, n in enumerate(switches) if n <= limit]


def _current_cpu() -> int | None:
    """The core the calling thread runs on now (Linux), None where unknown."""
    try:
        with open("/proc/thread-self/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    # Field 39 (processor); the command name (field 2) may hold spaces, so count after ')'.
    return int(stat.rpartition(")")[2].split()[36])


@contextmanager
def pinned(enabled: bool) -> Iterator[None]:
    """Keep the calling thread on the core it is on (``sched_setaffinity`` of the thread)
    and restore its allowed cores after, also on error. Does nothing where not enabled or
    the platform cannot pin."""
    can = enabled and hasattr(os, "sched_setaffinity")
    before = os.sched_getaffinity(0) if can else None
    cpu = _current_cpu() if can else None
    if before is None or cpu is None or cpu not in before:
        yield
        return
    os.sched_setaffinity(0, {cpu})  # 0: the calling thread on Linux
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
