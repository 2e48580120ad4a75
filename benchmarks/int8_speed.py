"""int8 on this CPU: which onnxruntime int8 graph is fast, against fp32.

    PYTHONPATH=<dir with torchvision> .venv/bin/python benchmarks/int8_speed.py

torchvision's ResNet-18 and MobileNetV2 (random weights, 10 classes: speed does not
depend on the values), at 32 and 224 px, batch 1 and 32, one onnxruntime thread. Each
int8 variant is made by ``learners.int8.quantize_int8`` (the learner's own code path:
export, pre-processing, quantiser), calibrated on random batches. Per model, size and
batch the fp32 graph and every variant are timed round-robin (interleaved, so machine
noise falls on all alike) and the table gives each variant's median and its speedup
(fp32 median / variant median).

Variants: the format (QOperator, QDQ), the activation type (uint8: onnxruntime's x86
U8S8 kernels; int8: S8S8), per-channel weights (always; per-tensor ran within noise in a
first look) and the layers kept float (none, last, first and last).

torchvision is not a dependency: installed into the project's environment it breaks
``import transformers`` (which then imports it and fails on torchvision's operator
registrations); install it into a separate folder (``pip install --no-deps --target DIR
torchvision``) and put that folder on PYTHONPATH for this script only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learners.formats.export import export_onnx, ort_session
from learners.int8 import quantize_int8

# name: quantize_int8 options
VARIANTS: dict[str, dict[str, Any]] = {
    "qoperator u8": {"quant_format": "qoperator", "activation": "u8"},
    "qdq u8": {"quant_format": "qdq", "activation": "u8"},
    "qdq s8": {"quant_format": "qdq", "activation": "s8"},
    "qoperator u8, last float": {"quant_format": "qoperator", "keep": "last"},
    "qoperator u8, first+last float": {"quant_format": "qoperator", "keep": "first_last"},
}
ARCHS = ("resnet18", "mobilenet_v2")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8", "avx512_bf16")


def torchvision_models() -> Any:
    """torchvision.models, imported with ``torch.library.register_fake`` as a no-op:
    torchvision's compiled operators do not match this torch build, and only the model
    definitions are needed."""
    real = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: lambda f: f  # type: ignore[assignment]
    try:
        import torchvision.models as models
    except ImportError:
        sys.exit(
            "int8_speed: torchvision is not importable; install it into a separate folder "
            "(pip install --no-deps --target DIR torchvision) and set PYTHONPATH=DIR"
        )
    finally:
        torch.library.register_fake = real  # type: ignore[assignment]
    return models


def cpu_int8_features() -> list[str]:
    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return [f for f in INT8_FLAGS if f in flags]


def graphs(model: nn.Module, px: int, folder: Path) -> dict[str, bytes]:
    """fp32 and every int8 variant, as ONNX bytes."""
    x = torch.randn(1, 3, px, px)
    out = {"fp32": export_onnx(model, x, folder / "fp32.onnx").read_bytes()}
    calibration = [torch.randn(8, 3, px, px) for _ in range(2)]
    root = logging.getLogger()
    handlers, root.handlers = root.handlers[:], [logging.NullHandler()]
    try:
        for name, options in VARIANTS.items():
            with contextlib.redirect_stdout(io.StringIO()):
                out[name], _ = quantize_int8(model, x, calibration, **options)
    finally:
        root.handlers = handlers
    return out


def interleaved(
    models: dict[str, bytes], batch: torch.Tensor, repeats: int
) -> dict[str, tuple[float, float]]:
    """Median (CPU, wall) seconds per run of each graph, timed round-robin. With one
    intra-op thread onnxruntime runs the graph on the calling thread, so that thread's
    CPU time leaves out the time other processes on this shared machine took."""
    sessions = {name: ort_session(data, threads=1) for name, data in models.items()}
    feed = {"input": batch.numpy()}
    for s in sessions.values():
        s.run(None, feed)
    cpu: dict[str, list[float]] = {name: [] for name in sessions}
    wall: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, s in sessions.items():
            start, start_cpu = time.perf_counter(), time.thread_time()
            s.run(None, feed)
            cpu[name].append(time.thread_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name])) for name in cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds (odd)")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    args = parser.parse_args()
    models = torchvision_models()
    print(f"CPU int8 features: {', '.join(cpu_int8_features()) or 'none'}; {os.cpu_count()} CPUs")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    print("| model | px | batch | graph | CPU ms | speedup (CPU) | wall ms | speedup (wall) |")
    print("|---|---|---|---|---|---|---|---|")
    for arch in args.archs:
        torch.manual_seed(0)
        model = getattr(models, arch)(num_classes=10).eval()
        for px in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                variants = graphs(model, px, Path(tmp))
            for bs in args.batches:
                medians = interleaved(variants, torch.randn(bs, 3, px, px), args.repeats)
                base_cpu, base_wall = medians["fp32"]
                for name, (cpu, wall) in medians.items():
                    print(
                        f"| {arch} | {px} | {bs} | {name} | {cpu * 1e3:.2f} | "
                        f"{base_cpu / cpu:.2f}x | {wall * 1e3:.2f} | {base_wall / wall:.2f}x |",
                        flush=True,
                    )
                print(f"<!-- load average: {os.getloadavg()} -->", flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
