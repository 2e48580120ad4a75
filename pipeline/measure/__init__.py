"""Measurements, as plain functions. What each number means:

- ``flops``: floating-point operations of one forward pass on one example, counted by
  torch's own FlopCounterMode, which counts a multiply-accumulate as 2 FLOPs
  (MACs = flops / 2). FLOPs are reported as FLOPs, never as speedup.
- ``speedup``: median latency of the baseline / median latency of the candidate, both
  measured on the same runtime, batch size and thread count, interleaved, after warm-up.
- ``bytes``: size of the deployable file on disk.

Nothing here moves or changes the caller's model: runners time a copy (its own device,
eval mode), and counting FLOPs puts the model back in the mode it was in. On a GPU this
matters: a runner that moved the baseline itself to ``cuda`` broke the next CPU step.

Runtimes: ``torch-cpu`` (eager), ``onnxruntime-cpu`` (the fp32 ONNX export), ``cuda``
(eager on the current GPU, float32 unless the model says otherwise) and ``cuda-graph``
(the forward captured once as a CUDA graph and replayed: how small models are served on
GPUs, where eager latency is mostly kernel launches).
"""

from __future__ import annotations

import copy
import hashlib
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from learners.finetune import accuracy  # noqa: F401  (re-exported: one accuracy definition)
from learners.formats.export import export_onnx, ort_session

RUNTIMES = ("torch-cpu", "onnxruntime-cpu", "cuda", "cuda-graph")
GPU_RUNTIMES = ("cuda", "cuda-graph")
GRAPH_WARMUP = 3  # eager runs on a side stream before capture (lazy init, cuDNN choices)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example_inputs`` (torch's counter; 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    x = example_inputs.to(_device_of(model))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _device_of(model: nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives; CPU for a stateless one."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def fingerprint(model: nn.Module) -> tuple[frozenset[str], tuple[bool, ...], str]:
    """(devices, every module's training flag, SHA-256 of the state dict's names, dtypes
    and bytes): equal before and after a call that left ``model`` alone."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    devices = frozenset(str(t.device) for t in (*model.parameters(), *model.buffers()))
    return devices, tuple(m.training for m in model.modules()), digest.hexdigest()


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
    """Eager inference of a copy of ``model`` on ``device`` (the caller's model stays where
    and as it is); on a GPU each run waits for its kernels (synchronised inside the timed
    region: launches are asynchronous)."""
    model = copy.deepcopy(model).eval().to(device)
    batch = batch.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run() -> None:
        with torch.inference_mode():
            model(batch)
        sync()

    return run


class _CudaGraphRunner:
    """A copy of a model captured as one CUDA graph (``torch.cuda.CUDAGraph``) over a
    static input buffer; each call copies a batch into the buffer, replays, synchronises.
    ``output`` is the graph's static output buffer (what the last replay computed).

    Why a raw CUDA graph rather than ``torch.compile(mode="reduce-overhead")`` (which also
    ends in CUDA graphs): no compile time per candidate (Inductor takes tens of seconds per
    new architecture, and every candidate is one), and the capture is deterministic: it
    records exactly the kernels eager mode runs, so the speedup compares architectures,
    not compiler luck. Warm-up runs on a side stream before capture, as the CUDA-graph
    docs require (lazy initialisation and cuDNN's algorithm choices must not be captured);
    warm-up and capture lie outside the timed region.
    """

    def __init__(self, model: nn.Module, batch: torch.Tensor, device: str) -> None:
        model = copy.deepcopy(model).eval().to(device)
        self.incoming = batch.to(device)
        self.static_input = self.incoming.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP):
                model(self.static_input)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: candidates timed in other threads may use CUDA meanwhile
            with torch.no_grad(), torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.output = model(self.static_input)
        except Exception as err:  # a host sync, CPU op or dynamic shape inside forward
            first = str(err).splitlines()[0] if str(err) else ""
            raise RuntimeError(
                f"{type(model).__name__} cannot be captured as a CUDA graph "
                f"({type(err).__name__}: {first}): time it on runtime 'cuda' instead"
            ) from err
        self.model = model  # the graph reads its parameters' memory: keep them alive
        torch.cuda.synchronize()

    def __call__(self) -> None:
        self.static_input.copy_(self.incoming)  # as a server feeds each request in
        self.graph.replay()
        torch.cuda.synchronize()


def _cuda_graph_runner(model: nn.Module, batch: torch.Tensor, device: str) -> _CudaGraphRunner:
    return _CudaGraphRunner(model, batch, device)


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

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; known: {', '.join(RUNTIMES)}")
        if self.batch_size < 1 or self.threads < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError(
                "latency settings need batch_size >= 1, threads >= 1, repeats >= 1 and "
                f"warmup >= 0; got batch_size={self.batch_size}, threads={self.threads}, "
                f"repeats={self.repeats}, warmup={self.warmup}"
            )

    @property
    def on_gpu(self) -> bool:
        return self.runtime in GPU_RUNTIMES


@dataclass(frozen=True)
class LatencyComparison:
    baseline_ms: float
    candidate_ms: float

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.candidate_ms


def timing_batch(example_inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The batch latency is timed on: ``batch_size`` rows shaped and typed like the
    example. Float inputs get seeded random values of the example's dtype; any other
    dtype (token ids, masks) repeats the example's own rows, since random values would be
    out of range (an index past the vocabulary) or of the wrong type for the graph."""
    shape = (batch_size, *example_inputs.shape[1:])
    if example_inputs.is_floating_point():
        generator = torch.Generator().manual_seed(0)
        return torch.randn(shape, generator=generator).to(example_inputs.dtype)
    rows = example_inputs.detach().cpu()
    reps = -(-batch_size // rows.shape[0])  # ceil
    return rows.repeat(reps, *([1] * (rows.dim() - 1)))[:batch_size].clone()


def make_runner(
    model: nn.Module,
    example_inputs: torch.Tensor,
    settings: LatencySettings,
    workdir: Path,
    tag: str,
) -> Callable[[], None]:
    """A no-argument callable running one batch of inference on the declared runtime
    (on a copy of ``model``: the caller's model is not moved or put in eval mode)."""
    batch = timing_batch(example_inputs, settings.batch_size)
    if settings.runtime == "onnxruntime-cpu":
        path = export_onnx(model, example_inputs, Path(workdir) / f"{tag}.latency.onnx")
        return _onnx_runner(path, batch, settings.threads)
    if not settings.on_gpu:
        return _torch_runner(model, batch, "cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"runtime {settings.runtime!r} was declared but no CUDA device is available "
            f"(torch {torch.__version__}): use torch-cpu or onnxruntime-cpu, or run on a GPU"
        )
    device = f"cuda:{torch.cuda.current_device()}"
    if settings.runtime == "cuda-graph":
        return _cuda_graph_runner(model, batch, device)
    return _torch_runner(model, batch, device)


@contextmanager
def runtime_flags(settings: LatencySettings):
    """Threads for CPU runtimes; on GPU runtimes also cuDNN's autotuner (``benchmark``),
    which picks the fastest kernel per input shape during warm-up, as deployment does."""
    gpu = settings.on_gpu and torch.cuda.is_available()
    with torch_threads(settings.threads), _cudnn_benchmark() if gpu else nullcontext():
        yield


@contextmanager
def _cudnn_benchmark():
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


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
    with runtime_flags(settings):
        runners = [
            make_runner(baseline, example_inputs, settings, workdir, "baseline"),
            make_runner(candidate, example_inputs, settings, workdir, "candidate"),
        ]
        base_ms, cand_ms = time_interleaved(runners, settings.warmup, settings.repeats)
    return LatencyComparison(baseline_ms=base_ms, candidate_ms=cand_ms)


def latency_ms(
    model: nn.Module, example_inputs: torch.Tensor, settings: LatencySettings, workdir: Path
) -> float:
    with runtime_flags(settings):
        run = make_runner(model, example_inputs, settings, workdir, "model")
        return time_interleaved([run], settings.warmup, settings.repeats)[0]


def time_onnx_files(
    paths: list[Path], example_inputs: torch.Tensor, settings: LatencySettings
) -> list[float]:
    """Median ms of ONNX files on onnxruntime, interleaved: how a user would time exports."""
    batch = timing_batch(example_inputs, settings.batch_size)
    runners = [_onnx_runner(Path(p), batch, settings.threads) for p in paths]
    return time_interleaved(runners, settings.warmup, settings.repeats)
