"""Where candidates run: the Prefect task runner a job asks for (a thread pool, a local
Dask cluster of worker processes, or an existing Dask scheduler) and the device each
candidate trains on.

The flow enters the runner once per job and submits every candidate to it, so the same
``compress`` entrypoint honours ``runner:`` for ``compressflow run`` and for a flow run a
worker starts from a deployment alike. Device picking is a pure function of the requested
device, the worker's slot and the visible GPU count, so it is tested on CPU.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pipeline.job import candidate  # noqa: F401  (imported by Dask workers via preload)
from pipeline.spec import Runner

_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


class RunnerError(RuntimeError):
    """The task runner or device a job asks for cannot be had; the message says why."""


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
