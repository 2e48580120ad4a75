"""How sure a measured speedup is, and measurements shared between identical models.

A speedup rests on timed *pairs*: one baseline run and one candidate run, back to back
(``time_interleaved``'s alternating order), so slow drift of the machine falls on both.
Jobs on this shared machine measured one and the same pruned ResNet-56 at 1.84x to 3.05x:
a single number hides that. Here every speedup gets a 95% interval, timing
goes on until the interval is narrow enough (or a cap is hit), and models with the same
architecture pool their pairs instead of each drawing a new, different number: within a
job, or across every job that names one pool folder (``measure.pool``), keyed also by
the machine and the software versions that time them.

Nothing here times anything: ``pipeline.measure.compare_latency`` does, with these parts.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import math
import platform
import socket
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from pipeline.records.filelock import locked

Pair = tuple[float, float]  # (baseline ms, candidate ms) of one interleaved repeat

CONFIDENCE = 0.95
# Below this many pairs no order-statistic interval reaches 95% (with 5, both tails of
# "all ratios on one side of the median" already hold 2 x 1/32 = 6%): the interval is
# the range and never counts as narrow enough to stop.
MIN_PAIRS = 6


def point_speedup(pairs: Sequence[Pair]) -> tuple[float, float, float]:
    """(median baseline ms, median candidate ms, their ratio): the reported speedup."""
    base = statistics.median(b for b, _ in pairs)
    cand = statistics.median(c for _, c in pairs)
    return base, cand, base / cand


def _order_rank(n: int, confidence: float = CONFIDENCE) -> int:
    """The largest k (1-based) with P(Binomial(n, 1/2) <= k - 1) <= (1 - confidence)/2:
    the k-th smallest and k-th largest of n values bracket their median with at least
    ``confidence`` (1 when n is too small for any narrower pair)."""
    tail, k, cumulative = (1 - confidence) / 2, 0, 0.0
    while k < n:
        cumulative += math.comb(n, k) / 2**n
        if cumulative > tail:
            break
        k += 1
    return max(k, 1)


def speedup_interval(pairs: Sequence[Pair]) -> tuple[float, float]:
    """95% interval of the speedup: the distribution-free order-statistic interval for the
    median of the per-pair ratios baseline/candidate, widened (if need be) to contain the
    reported ratio of medians.

    Why this one: latency noise on a shared CPU is skewed and heavy-tailed (preemption
    spikes), so no normal approximation; order statistics need only independent pairs,
    give at least 95% coverage for any distribution, cost a sort, and are deterministic,
    so the same pooled pairs always give the same interval (a bootstrap would not). Per-
    pair ratios keep the pairing, which cancels drift slower than one pair.
    """
    if not pairs:
        raise ValueError("a speedup interval needs at least one timed pair")
    ratios = sorted(b / c for b, c in pairs)
    k = _order_rank(len(ratios))
    low, high = ratios[k - 1], ratios[len(ratios) - k]
    point = point_speedup(pairs)[2]
    return min(low, point), max(high, point)


def relative_half_width(low: float, high: float, point: float) -> float:
    return (high - low) / (2 * point)


def precise_enough(pairs: Sequence[Pair], tolerance: float) -> bool:
    """Whether the interval's relative half-width is within ``tolerance`` (never with
    fewer than ``MIN_PAIRS`` pairs: their 'interval' is only the range)."""
    if len(pairs) < MIN_PAIRS:
        return False
    low, high = speedup_interval(pairs)
    return relative_half_width(low, high, point_speedup(pairs)[2]) <= tolerance


def architecture_key(model: nn.Module) -> str:
    """SHA-256 of what decides a model's speed but not its weights' values: every
    module's class and settings (``extra_repr``: kernel, stride, groups...), every
    parameter's and buffer's name, shape and dtype, and opaque graphs a module carries
    (an int8 ONNX graph's bytes, a torch.export program's code). A fine-tuned model and
    its un-fine-tuned self share a key; two pruned models of different widths do not."""
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        kind = type(module)
        digest.update(f"{name}|{kind.__module__}.{kind.__qualname__}|".encode())
        digest.update(module.extra_repr().encode())
        for attr, value in sorted(vars(module).items()):
            if isinstance(value, bytes):
                digest.update(f"|{attr}:".encode() + hashlib.sha256(value).digest())
        code = getattr(module, "code", None)
        if isinstance(code, str):  # an fx.GraphModule: its graph is its architecture
            digest.update(code.encode())
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    return digest.hexdigest()


@functools.cache
def _processor_model() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``; ``platform`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def timing_environment(runtime: str) -> str:
    """Where and with what a comparison on ``runtime`` is timed: the machine (host name
    and CPU model; the GPU's name on a GPU runtime) and the versions of the software that
    runs the models (torch; onnxruntime for its runtime). Why in the pool's key: a pool
    folder shared by jobs (``measure.pool``) may sit on a network disk that several
    machines mount, or outlive an upgrade, and pairs timed on another machine or by
    another kernel library are another measurement, not more of the same one."""
    parts = [f"host={socket.gethostname()}", f"cpu={_processor_model()}"]
    parts.append(f"torch={torch.__version__}")
    if runtime.startswith("onnxruntime"):
        parts.append(f"onnxruntime={_package_version('onnxruntime')}")
    if runtime.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.cuda.current_device())
        parts.append(f"gpu={gpu}|cuda={torch.version.cuda}")
    return ";".join(parts)


def pool_key(
    baseline: nn.Module,
    candidate: nn.Module,
    example_inputs: torch.Tensor,
    runtime: str,
    batch_size: int,
    threads: int,
    clock: str,
) -> str:
    """What makes two comparisons the same measurement: both architectures, the input's
    shape and dtype, how they are timed (runtime, batch, threads, and the resolved clock:
    a CPU-time pair and a wall-clock pair of the same models are different figures), and
    the machine and software that time them (``timing_environment``). Readable runtime
    first."""
    digest = hashlib.sha256()
    for part in (
        architecture_key(baseline),
        architecture_key(candidate),
        f"{tuple(example_inputs.shape[1:])}:{example_inputs.dtype}",
        timing_environment(runtime),
    ):
        digest.update(part.encode())
    return f"{runtime}-b{batch_size}-t{threads}-{clock}-{digest.hexdigest()[:24]}"


class MeasurementPool:
    """Timed pairs per ``pool_key``, in ``folder`` (one JSON-lines file per key), shared by
    every thread and process that opens the same folder. ``holding(key)`` gives one
    caller the key at a time (an ``fcntl`` lock, released by the kernel if its holder
    dies), so a second comparison of the same architectures waits for the first and then
    reuses its pairs instead of timing its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _file(self, key: str) -> Path:
        return self.folder / f"{key}.pairs.jsonl"

    @contextmanager
    def holding(self, key: str) -> Iterator[None]:
        with locked(self.folder / f"{key}.lock"):
            yield

    def load(self, key: str) -> list[Pair]:
        """Every pair stored under ``key`` (call inside ``holding(key)``)."""
        path = self._file(key)
        if not path.exists():
            return []
        pairs = []
        for line in path.read_text().splitlines():
            if line.strip():  # a line cut short by a crash is skipped, not fatal
                try:
                    b, c = json.loads(line)
                except (ValueError, TypeError):
                    continue
                pairs.append((float(b), float(c)))
        return pairs

    def add(self, key: str, pairs: Sequence[Pair]) -> None:
        """Append ``pairs`` under ``key`` (call inside ``holding(key)``)."""
        if not pairs:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._file(key)
        # After a crash mid-line, start on a new line: the cut line alone is lost.
        cut = path.exists() and not path.read_bytes().endswith(b"\n") and path.stat().st_size
        with open(path, "a") as handle:
            handle.write("\n" if cut else "")
            handle.write("".join(json.dumps([b, c]) + "\n" for b, c in pairs))
