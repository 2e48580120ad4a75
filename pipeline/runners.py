"""Where candidates run: the Prefect task runner a job asks for (a thread pool, a local
Dask cluster of worker processes, or an existing Dask scheduler) and the device each
candidate trains on.

The flow enters the runner once per job and submits every candidate to it, so the same
``compress`` entrypoint honours ``runner:`` for ``compressflow run`` and for a flow run a
worker starts from a deployment alike. Device picking is a pure function of the requested
device, the worker's slot and the visible GPU count, so it is tested on CPU.

A job started by ``compressflow run`` is also stopped here: ``INTERRUPTS`` turns the first
SIGINT or SIGTERM into a stop request that the flow honours between rounds (the rounds
that finished are recorded, the ones still running are abandoned), and a second one into
an immediate exit.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch

from pipeline.job import candidate  # noqa: F401  (imported by Dask workers via preload)
from pipeline.spec import Runner

_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


class RunnerError(RuntimeError):
    """The task runner or device a job asks for cannot be had; the message says why."""


class Interrupted(Exception):
    """A SIGINT or SIGTERM stopped the job before its search began (nothing recorded)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Interrupts:
    """Ctrl-C and SIGTERM for a job run from the command line.

    The first signal is a stop request. While the search runs (``graceful``), it only
    sets ``signum``: the flow stops proposing, records the rounds that finished, abandons
    the ones still running, writes the summary with the best so far and marks the MLflow
    parent run KILLED. Before that (the baseline), nothing is on record yet, so it raises
    ``Interrupted`` at once. A second signal runs ``on_exit`` hooks (stop the temporary
    Prefect server) and exits immediately with 128 + the signal number.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self.graceful = False
        self.on_exit: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: object = None) -> None:
        if self.signum is not None:
            for hook in self.on_exit:
                with suppress(Exception):
                    hook()
            os.write(2, b"\ncompressflow: second interrupt: exiting now\n")
            os._exit(128 + signum)
        self.signum = signum
        os.write(
            2,
            f"\ncompressflow: {signal.Signals(signum).name}: stopping (press Ctrl-C again to "
            "exit at once)\n".encode(),
        )
        if not self.graceful:
            raise Interrupted(signum)

    def install(self) -> None:
        """Take SIGINT and SIGTERM (main thread only). Prefect swaps SIGTERM for its own
        handler while a flow runs; the flow calls this again inside its body."""
        if not self.armed or threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            signal.signal(sig, self.handle)

    @contextmanager
    def armed_for_job(self) -> Iterator[Interrupts]:
        """For the length of a ``compressflow run`` (a worker's flow run is stopped by
        Prefect's own cancellation instead)."""
        previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}
        self.armed, self.signum, self.graceful = True, None, False
        self.install()
        try:
            yield self
        finally:
            self.armed = False
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextmanager
    def graceful_section(self) -> Iterator[None]:
        """From here a first signal only asks the search to stop (see the class)."""
        if self.signum is not None and not self.graceful:
            raise Interrupted(self.signum)
        self.graceful = True
        try:
            yield
        finally:
            self.graceful = False


INTERRUPTS = Interrupts()


def abandon(pool: Any) -> None:
    """Leave a thread pool's running candidates behind, so stopping the job does not wait
    for them (``ThreadPoolTaskRunner`` joins its threads on exit). The process then ends
    with ``os._exit`` (see ``pipeline.cli.run``), which does not join them either."""
    executor = getattr(pool, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)
        pool._executor = None


def task_runner(runner: Runner, batch: int) -> Any:
    """The Prefect task runner for ``runner:``; ``workers`` defaults to the batch size, so a
    batch of proposals runs at once."""
    workers = runner.workers or batch
    if runner.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise RunnerError(
            "runner.kind 'dask' needs prefect-dask: pip install 'compressflow[dask]'"
        ) from None
    if runner.address:
        return DaskTaskRunner(address=runner.address)
    # Dask caps each worker at one OpenMP thread; a worker here gets its share of the
    # cores for fine-tuning instead (latency is timed with measure.threads regardless).
    share = str(max(1, (os.cpu_count() or 1) // workers))
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            # One candidate per process: fine-tuning and latency timing each want the
            # process's cores (and its GPU) to themselves.
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",  # a free port: never clash with another job
            "env": {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share},
        }
    )


@contextmanager
def started(runner: Runner, batch: int) -> Iterator[Any]:
    """The task runner, started (a local cluster up, or the scheduler reached) for the
    length of the block; a scheduler that cannot be reached fails here, before training."""
    pool = task_runner(runner, batch)
    with pool:
        if runner.kind == "dask":
            import dask

            try:
                # Dask sets MALLOC_TRIM_THRESHOLD_ in the workers it spawns, which turns off
                # glibc's adaptive mmap threshold: torch's tensors are then mapped and
                # unmapped on every step, and fine-tuning ran 2-3x slower than in-process.
                with dask.config.set({_TRIM: None}):
                    client = pool.client  # connects, or starts the local cluster
            except OSError as err:
                where = runner.address or "a local cluster"
                raise RunnerError(f"cannot reach the Dask scheduler at {where}: {err}") from None
            preload_workers(client)
        yield pool


def preload_workers(client: Any) -> None:
    """Each worker imports torch, the learners, ONNX export and onnxruntime once: queued
    now, that overlaps the baseline's training instead of delaying the first round."""
    from distributed import fire_and_forget

    for address in client.scheduler_info()["workers"]:
        fire_and_forget(client.submit(preload, workers=[address], pure=False))


def preload() -> None:
    """Import what a candidate needs (run in each Dask worker when the cluster starts:
    unpickling this function imports this module and with it the job's steps)."""
    import onnxruntime  # noqa: F401
    import torch.onnx  # noqa: F401


def worker_slot(default: int) -> int:
    """This process's index among the job's Dask workers (a LocalCluster names them
    0..n-1; other names map to a stable number); outside Dask, ``default``."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return default
    if isinstance(name, int):
        return name
    digits = re.search(r"(\d+)$", str(name))
    return int(digits.group(1)) if digits else zlib.crc32(str(name).encode())


def pick_device(requested: str, slot: int, cuda_count: int) -> str:
    """``cpu`` or ``cuda:i``: with ``auto`` or ``cuda``, GPU ``slot % cuda_count``, so N
    workers on a machine with N GPUs use one each; ``cuda:i`` is taken as given."""
    if requested == "cpu" or requested.startswith("cuda:"):
        return requested
    if cuda_count == 0:
        if requested == "auto":
            return "cpu"
        raise RunnerError(
            "device 'cuda' was asked for but this worker sees no CUDA device "
            "(check the GPU request and CUDA_VISIBLE_DEVICES)"
        )
    return f"cuda:{slot % cuda_count}"


def device_here(requested: str, slot: int) -> str:
    """The one place a device is decided, where a task runs: ``cpu`` or ``cuda:i`` (made
    torch's current CUDA device, so latency timing and its ``cuda.synchronize`` use the
    same GPU). ``slot`` is the Dask worker's index, or outside Dask the caller's (the
    round number: a thread pool's candidates spread over the GPUs)."""
    if requested == "cpu":
        return "cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = pick_device(requested, worker_slot(slot), count)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    return device
