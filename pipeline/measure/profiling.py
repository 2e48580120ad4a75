"""Per-layer profile of a model: analytic cost (pipeline.measure.costmodel) beside the share of
measured time each layer takes on a runtime.

Time shares come from a profiler run, not from FLOPs:

- ``torch-cpu``: torch.profiler with one ``record_function`` range per module (forward
  hooks); each operator's self time goes to the innermost module range around it.
- ``onnxruntime-cpu``: onnxruntime's built-in profiling of the exported graph; a node's
  time goes to the module its name comes from (the exporter names nodes by module
  path). onnxruntime folds BatchNorm into the convolution and fuses the activation, so
  the fused node's time appears under the module that produced its output (often the
  ReLU) and the convolution and BatchNorm rows show none. Layout reorders it inserts
  belong to no module.

Shares are of the operator time the profiler measured (kernels, not the Python and
profiler overhead around them). Time in no row (runtime-inserted nodes such as layout
reorders) is ``unattributed_time_share``. ``latency_ms`` is measured separately, without
the profiler: the median of ``repeats`` forward passes.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learners.base import CPU_RUNTIMES
from pipeline.measure import costmodel

RUNTIMES = CPU_RUNTIMES  # the runtimes profiled here


@dataclass
class Profile:
    runtime: str
    batch: int
    input_shape: tuple[int, ...]
    layers: list[costmodel.LayerCost]
    time_share: dict[str, float]  # row name -> share of measured time
    total: costmodel.Totals
    latency_ms: float  # median time of one forward pass, profiler off
    unattributed_time_share: float

    def to_dict(self) -> dict[str, Any]:
        layers = []
        for row in self.layers:
            d = row.to_dict()
            d.pop("ops")
            d["time_share"] = round(self.time_share.get(row.name, 0.0), 6)
            layers.append(d)
        total = {
            "param_count": self.total.param_count,
            "macs": self.total.macs,
            "counted_macs": self.total.counted_macs,
            "bytes_moved": self.total.bytes_moved,
            "latency_ms": round(self.latency_ms, 4),
            "unattributed_time_share": round(self.unattributed_time_share, 6),
        }
        return {
            "runtime": self.runtime,
            "batch": self.batch,
            "input_shape": list(self.input_shape),
            "layers": layers,
            "total": total,
        }


def torch_time(model: nn.Module, batch: torch.Tensor, repeats: int) -> tuple[dict, float]:
    """Milliseconds of operator time per module row (summed over ``repeats`` profiled
    runs) and the total operator time. Each operator's self time goes to the innermost
    module range around it, so hook and profiler overhead is in no row."""
    from torch.profiler import ProfilerActivity, profile, record_function

    model = model.eval()
    open_ranges: list[Any] = []

    def enter(name: str, module: nn.Module) -> None:
        open_ranges.append(record_function(f"cf::{name}"))
        open_ranges[-1].__enter__()

    def leave(name: str, module: nn.Module, output: Any) -> None:
        open_ranges.pop().__exit__(None, None, None)

    with costmodel.module_stack(model, enter, leave), torch.inference_mode():
        model(batch)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(batch)
    per_module: dict[str, float] = defaultdict(float)
    total = 0.0
    for event in prof.events():
        if event.name.startswith("cf::"):
            continue
        ms = event.self_cpu_time_total / 1000.0
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("cf::"):
            parent = parent.cpu_parent
        total += ms
        if parent is not None:
            per_module[parent.name[4:]] += ms
    return dict(per_module), total


def onnx_node_module(node_name: str) -> str | None:
    """'/stage2/stage2.0/branch2/branch2.2/Relu_...' -> 'stage2.0.branch2.2'."""
    if not node_name.startswith("/"):
        return None
    parts: list[str] = []
    for scope in node_name.strip("/").split("/")[:-1]:
        if parts and scope.startswith(parts[-1] + "."):
            parts[-1] = scope
        else:
            parts.append(scope)
    return ".".join(parts)


def onnx_time(model: nn.Module, batch: torch.Tensor, repeats: int, threads: int):
    """Milliseconds of node time per module from onnxruntime's profiler (summed over
    runs) and the total node time."""
    import onnx

    from learners.formats.export import export_onnx
    from pipeline.measure import ort_session

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, batch[:1], Path(tmp) / "model.onnx")
        session = ort_session(path, threads)
        feed = {session.get_inputs()[0].name: batch.numpy()}
        for _ in range(2):  # warm-up, outside the profiled session
            session.run(None, feed)
        session = ort_session(path, threads, profile_prefix=str(Path(tmp) / "ort"))
        for _ in range(repeats):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
        graph = onnx.load(str(path)).graph
    producers = {out: node.name for node in graph.node for out in node.output}
    per_module: dict[str, float] = defaultdict(float)
    total = 0.0
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total += event["dur"] / 1000.0
            module = _event_module(event["name"][: -len("_kernel_time")], producers)
            if module is not None:
                per_module[module] += event["dur"] / 1000.0
    return dict(per_module), total


def _event_module(node: str, producers: dict[str, str]) -> str | None:
    """Module of a profiled node. onnxruntime renames nodes it rewrites after their
    output tensor (``<tensor>_nchwc``); the exported graph says which node made it."""
    for name in (node, node.removesuffix("_nchwc")):
        if name in producers:
            return onnx_node_module(producers[name])
        if name.startswith("/"):
            return onnx_node_module(name)
    return None


def median_latency_ms(
    model: nn.Module, batch: torch.Tensor, runtime: str, repeats: int, threads: int
) -> float:
    """Median milliseconds of one forward pass with no profiler attached."""
    from pipeline import measure

    settings = measure.LatencySettings(
        runtime=runtime, batch_size=batch.shape[0], threads=threads, repeats=repeats
    )
    with tempfile.TemporaryDirectory() as tmp:
        return measure.latency_ms(model, batch[:1], settings, Path(tmp))


def profile_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    runtime: str = "torch-cpu",
    batch: int = 1,
    repeats: int = 10,
    threads: int = 1,
) -> Profile:
    """Cost rows for one forward pass of ``batch`` inputs and the share of measured time
    each row takes on ``runtime`` (median of nothing: shares are summed over runs)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    x = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(0))
    model = model.eval()
    rows = costmodel.layer_costs(model, x)
    total = costmodel.totals(model, x, rows)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if runtime == "torch-cpu":
            per_module, total_ms = torch_time(model, x, repeats)
        else:
            per_module, total_ms = onnx_time(model, x, repeats, threads)
        latency = median_latency_ms(model, x, runtime, repeats, threads)
    finally:
        torch.set_num_threads(before)
    names = {row.name: ("" if row.name == "(model)" else row.name) for row in rows}
    shares = {
        row: max(per_module.get(key, 0.0), 0.0) / total_ms if total_ms > 0 else 0.0
        for row, key in names.items()
    }
    return Profile(
        runtime=runtime,
        batch=batch,
        input_shape=tuple(input_shape),
        layers=rows,
        time_share=shares,
        total=total,
        latency_ms=latency,
        unattributed_time_share=max(0.0, 1.0 - sum(shares.values())),
    )
