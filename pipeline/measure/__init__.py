"""Measurements, as plain functions. What each number means:

- ``flops``: floating-point operations of one forward pass on one example, counted by
  torch's own FlopCounterMode, which counts a multiply-accumulate as 2 FLOPs
  (MACs = flops / 2). FLOPs are reported as FLOPs, never as speedup.
- ``speedup``: median latency of the baseline / median latency of the candidate, both
  measured on the same runtime, batch size and thread count, interleaved, after warm-up.
- ``bytes``: size of the deployable file on disk.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from learners.finetune import accuracy  # noqa: F401  (re-exported: one accuracy definition)
from learners.formats.export import export_onnx, ort_session

RUNTIMES = ("torch-cpu", "onnxruntime-cpu", "cuda")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example_inputs`` (torch's counter; 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(example_inputs)
    return int(counter.get_total_flops())


def file_bytes(path: str | Path) -> int:
    return Path(path).stat().st_size


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _torch_runner(model: nn.Module, batch: torch.Tensor, device: str) -> Callable[[], None]:
    model = model.eval().to(device)
    batch = batch.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run() -> None:
        with torch.inference_mode():
            model(batch)
        sync()

    return run


def _onnx_runner(onnx_path: Path, batch: torch.Tensor, threads: int) -> Callable[[], None]:
    session = ort_session(onnx_path, threads)
    feed = {session.get_inputs()[0].name: batch.numpy()}
    return lambda: session.run(None, feed)


@dataclass(frozen=True)
class LatencySettings:
    runtime: str = "torch-cpu"
    batch_size: int = 32
    threads: int = 1
    warmup: int = 3
    repeats: int = 15


@dataclass(frozen=True)
class LatencyComparison:
    baseline_ms: float
    candidate_ms: float

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.candidate_ms


def make_runner(
    model: nn.Module,
    example_inputs: torch.Tensor,
    settings: LatencySettings,
    workdir: Path,
    tag: str,
) -> Callable[[], None]:
    """A no-argument callable running one batch of inference on the declared runtime."""
    if settings.runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {settings.runtime!r}; known: {', '.join(RUNTIMES)}")
    shape = (settings.batch_size, *example_inputs.shape[1:])
    batch = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if settings.runtime == "onnxruntime-cpu":
        path = export_onnx(model, example_inputs, Path(workdir) / f"{tag}.latency.onnx")
        return _onnx_runner(path, batch, settings.threads)
    if settings.runtime == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime 'cuda' was declared but no CUDA device is available")
    return _torch_runner(model, batch, "cuda" if settings.runtime == "cuda" else "cpu")


def time_interleaved(runners: list[Callable[[], None]], warmup: int, repeats: int) -> list[float]:
    """Median milliseconds of each runner, timed in alternating order so that machine
    noise (other processes, frequency changes) falls on all of them alike."""
    for run in runners:
        for _ in range(warmup):
            run()
    samples: list[list[float]] = [[] for _ in runners]
    order = list(range(len(runners)))
    for _ in range(repeats):
        for i in order:
            start = time.perf_counter()
            runners[i]()
            samples[i].append((time.perf_counter() - start) * 1000.0)
        order.reverse()
    return [statistics.median(s) for s in samples]


def compare_latency(
    baseline: nn.Module,
    candidate: nn.Module,
    example_inputs: torch.Tensor,
    settings: LatencySettings,
    workdir: Path,
) -> LatencyComparison:
    with torch_threads(settings.threads):
        runners = [
            make_runner(baseline, example_inputs, settings, workdir, "baseline"),
            make_runner(candidate, example_inputs, settings, workdir, "candidate"),
        ]
        base_ms, cand_ms = time_interleaved(runners, settings.warmup, settings.repeats)
    return LatencyComparison(baseline_ms=base_ms, candidate_ms=cand_ms)


def latency_ms(
    model: nn.Module, example_inputs: torch.Tensor, settings: LatencySettings, workdir: Path
) -> float:
    with torch_threads(settings.threads):
        run = make_runner(model, example_inputs, settings, workdir, "model")
        return time_interleaved([run], settings.warmup, settings.repeats)[0]


def time_onnx_files(
    paths: list[Path], example_inputs: torch.Tensor, settings: LatencySettings
) -> list[float]:
    """Median ms of ONNX files on onnxruntime, interleaved: how a user would time exports."""
    shape = (settings.batch_size, *example_inputs.shape[1:])
    batch = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    runners = [_onnx_runner(Path(p), batch, settings.threads) for p in paths]
    return time_interleaved(runners, settings.warmup, settings.repeats)
