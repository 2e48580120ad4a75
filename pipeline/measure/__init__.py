"""Measurements, as plain functions. What each number means:

- ``flops``: floating-point operations of one forward pass on one example, counted by
  torch's own FlopCounterMode, which counts a multiply-accumulate as 2 FLOPs
  (MACs = flops / 2). FLOPs are reported as FLOPs, never as speedup.
- ``speedup``: median latency of the baseline / median latency of the candidate, both
  measured on the same runtime, batch size and thread count, interleaved, after warm-up,
  by the settings' clock (the timing thread's CPU time where the forward runs on that
  thread, else the wall clock; ``pipeline.measure.clocks``), with its 95% interval
  (``low``, ``high``; ``pipeline.measure.noise``). With ``max_repeats`` set, pairs are
  added until the interval is within ``tolerance``.
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
import math
import statistics
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from learners.base import GPU_RUNTIMES, RUNTIMES
from learners.formats.export import export_onnx, ort_session
from pipeline.measure.clocks import (
    clock_function,
    clock_problem,
    involuntary_switches,
    pinned,
    quiet_rounds,
    resolve_clock,
)
from pipeline.measure.noise import (
    MeasurementPool,
    Pair,
    point_speedup,
    pool_key,
    precise_enough,
    relative_half_width,
    speedup_interval,
)

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
    repeats: int = 15  # timed pairs to start with
    # Pairs at most, added while the speedup's 95% interval is wider than ``tolerance``
    # (its relative half-width); 0: exactly ``repeats`` pairs.
    max_repeats: int = 0
    tolerance: float = 0.03
    clock: str = "auto"  # wall, cpu, or auto: cpu where valid (``pipeline.measure.clocks``)
    # Steadiers, each measured by benchmarks/measurement_noise.py before it is turned on:
    pin: bool = False  # keep the timing thread on one core while it times
    trim: bool = False  # drop rounds preempted more often than the median round

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; known: {', '.join(RUNTIMES)}")
        if problem := clock_problem(self.clock, self.runtime, self.threads):
            raise ValueError(problem)
        if self.batch_size < 1 or self.threads < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError(
                "latency settings need batch_size >= 1, threads >= 1, repeats >= 1 and "
                f"warmup >= 0; got batch_size={self.batch_size}, threads={self.threads}, "
                f"repeats={self.repeats}, warmup={self.warmup}"
            )
        if self.max_repeats < 0 or not 0 < self.tolerance < 1:
            raise ValueError(
                "latency settings need max_repeats >= 0 (0: exactly repeats) and "
                f"0 < tolerance < 1; got max_repeats={self.max_repeats}, "
                f"tolerance={self.tolerance}"
            )

    @property
    def pair_cap(self) -> int:
        """Most pairs one comparison rests on (never fewer than ``repeats``)."""
        return max(self.repeats, self.max_repeats)

    @property
    def on_gpu(self) -> bool:
        return self.runtime in GPU_RUNTIMES

    @property
    def resolved_clock(self) -> str:
        """The clock the runs are timed by: ``wall`` or ``cpu``."""
        return resolve_clock(self.clock, self.runtime, self.threads)


@dataclass(frozen=True)
class LatencyComparison:
    """Median ms of both models over ``pairs`` interleaved pairs, and the speedup's 95%
    interval [``low``, ``high``], which always contains ``speedup``. Built without an
    interval (``low``/``high`` left out), it is the point: a figure with no noise known."""

    baseline_ms: float
    candidate_ms: float
    low: float = math.nan
    high: float = math.nan
    pairs: int = 0
    reused: int = 0  # how many of the pairs came from the pool (timed earlier)

    def __post_init__(self) -> None:
        if math.isnan(self.low):
            object.__setattr__(self, "low", self.speedup)
        if math.isnan(self.high):
            object.__setattr__(self, "high", self.speedup)

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.candidate_ms

    @property
    def relative_half_width(self) -> float:
        return relative_half_width(self.low, self.high, self.speedup)

    @classmethod
    def from_pairs(cls, pairs: list[Pair], reused: int = 0) -> LatencyComparison:
        base_ms, cand_ms, _ = point_speedup(pairs)
        low, high = speedup_interval(pairs)
        return cls(base_ms, cand_ms, low=low, high=high, pairs=len(pairs), reused=reused)


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


def time_samples(
    runners: list[Callable[[], None]],
    warmup: int,
    repeats: int,
    clock: str = "wall",
    trim: bool = False,
) -> list[list[float]]:
    """Milliseconds of each runner's every timed run by the resolved ``clock`` (``wall``
    or ``cpu``), in alternating order (a b, b a, ...) so that machine noise (other
    processes, frequency changes) falls on all alike. ``trim``: only the rounds (one run
    of each runner) preempted no more often than the median round (``quiet_rounds``)."""
    for run in runners:
        for _ in range(warmup):
            run()
    now = clock_function(clock)
    samples: list[list[float]] = [[] for _ in runners]
    switches: list[int] = []
    order = list(range(len(runners)))
    for _ in range(repeats):
        before = involuntary_switches()
        for i in order:
            start = now()
            runners[i]()
            samples[i].append((now() - start) * 1000.0)
        switches.append(involuntary_switches() - before)
        order.reverse()
    if trim:
        keep = quiet_rounds(switches)
        samples = [[s[j] for j in keep] for s in samples]
    return samples


def time_interleaved(
    runners: list[Callable[[], None]], warmup: int, repeats: int, clock: str = "wall"
) -> list[float]:
    """Median milliseconds of each runner, timed interleaved (``time_samples``)."""
    return [statistics.median(s) for s in time_samples(runners, warmup, repeats, clock)]


def compare_latency(
    baseline: nn.Module,
    candidate: nn.Module,
    example_inputs: torch.Tensor,
    settings: LatencySettings,
    workdir: Path,
    pool: MeasurementPool | None = None,
    fresh: bool = False,
) -> LatencyComparison:
    """Baseline against candidate in interleaved pairs, with the speedup's 95% interval.

    ``settings.repeats`` pairs first; with ``max_repeats`` set, more in chunks until the
    interval's relative half-width is within ``tolerance`` or ``max_repeats`` pairs are
    reached. With a ``pool``, the pairs of earlier comparisons of the same architectures
    (runtime, batch size, threads) count too, new ones are added only while needed, and
    every new one is stored: identical models get one pooled figure, not a new draw each.
    ``fresh``: a re-measurement (confirmation) that counts only pairs timed now (they are
    still stored in the pool)."""
    if pool is None:
        return LatencyComparison.from_pairs(
            _more_pairs(baseline, candidate, example_inputs, settings, workdir, [])
        )
    key = pool_key(
        baseline,
        candidate,
        example_inputs,
        settings.runtime,
        settings.batch_size,
        settings.threads,
        settings.resolved_clock,
    )
    with pool.holding(key):  # a second comparison of these models waits, then reuses
        earlier = [] if fresh else pool.load(key)
        pairs = _more_pairs(baseline, candidate, example_inputs, settings, workdir, earlier)
        pool.add(key, pairs[len(earlier) :])
    return LatencyComparison.from_pairs(pairs, reused=len(earlier))


def _more_pairs(
    baseline: nn.Module,
    candidate: nn.Module,
    example_inputs: torch.Tensor,
    settings: LatencySettings,
    workdir: Path,
    pairs: list[Pair],
) -> list[Pair]:
    """``pairs`` plus as many new ones as the stopping rule asks for (none when they
    already suffice: then nothing is built or run)."""
    pairs = list(pairs)
    runners: list[Callable[[], None]] = []
    with runtime_flags(settings), pinned(settings.pin):
        while missing := _pairs_missing(pairs, settings):
            warmup = 0  # only freshly built runners warm up, not each chunk
            if not runners:
                runners = [
                    make_runner(baseline, example_inputs, settings, workdir, "baseline"),
                    make_runner(candidate, example_inputs, settings, workdir, "candidate"),
                ]
                warmup = settings.warmup
            clock = settings.resolved_clock
            base, cand = time_samples(runners, warmup, missing, clock, settings.trim)
            pairs.extend(zip(base, cand, strict=True))
    return pairs


def _pairs_missing(pairs: list[Pair], settings: LatencySettings) -> int:
    """How many pairs to time next: up to ``repeats`` first; then, while the interval is
    too wide and the cap allows, a chunk of half the starting number (at least 5)."""
    if len(pairs) < settings.repeats:
        return settings.repeats - len(pairs)
    if len(pairs) >= settings.pair_cap or precise_enough(pairs, settings.tolerance):
        return 0
    return min(max(5, settings.repeats // 2), settings.pair_cap - len(pairs))


def latency_ms(
    model: nn.Module, example_inputs: torch.Tensor, settings: LatencySettings, workdir: Path
) -> float:
    with runtime_flags(settings), pinned(settings.pin):
        run = make_runner(model, example_inputs, settings, workdir, "model")
        clock = settings.resolved_clock
        return time_interleaved([run], settings.warmup, settings.repeats, clock)[0]


def time_onnx_files(
    paths: list[Path], example_inputs: torch.Tensor, settings: LatencySettings
) -> list[float]:
    """Median ms of ONNX files on onnxruntime, interleaved: how a user would time exports."""
    batch = timing_batch(example_inputs, settings.batch_size)
    runners = [_onnx_runner(Path(p), batch, settings.threads) for p in paths]
    clock = resolve_clock(settings.clock, "onnxruntime-cpu", settings.threads)
    with pinned(settings.pin):
        return time_interleaved(runners, settings.warmup, settings.repeats, clock)
