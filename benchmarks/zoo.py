"""The model zoo measured: size, analytic vs counted MACs, latency on two runtimes, the
design-space claims of the MobileNet/ShuffleNet papers, and structured pruning to 2x.

    .venv/bin/python benchmarks/zoo.py [--out DIR] [--quick]

Sections (markdown on stdout, every number also in DIR/zoo.json):

1. Every zoo model at 32x32 ("cifar" stem) and 224x224 ("imagenet" stem; the CIFAR
   ResNets have no ImageNet stem): parameters, MACs from the analytic cost model and
   from torch's FlopCounterMode (FLOPs / 2), latency at batch 1 and 32 on torch-cpu and
   onnxruntime-cpu. One thread; medians of interleaved repeats (the four runners of a
   model alternate), fewer repeats at 224.
2. Design-space claims. Depthwise-separable vs standard convolution: the MAC ratio
   1/M + 1/K^2 beside the measured latency ratio. 1x1 group convolution (G groups) vs a
   dense 1x1, with and without a channel shuffle: MAC ratio 1/G (the shuffle adds none)
   beside the measured ratios. Where the measurement disagrees with the FLOPs story the
   row says so.
3. Channel pruning (learners/channel.py with learners/channel_ops.py) of every zoo model
   at 32x32: the smallest uniform per-stage ratio (steps of 0.1) that reaches a 2x
   measured speedup on torch-cpu at batch 32, one thread; the same pruned model on
   onnxruntime-cpu. Every pruned model passed the pruner's own check (equal to the
   original on the kept channels).

Takes about 5 minutes on one CPU thread of a busy 2-core machine.
"""

# ruff: noqa: E402  (the path fix below must run before the package imports)
from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse
import json
import tempfile
import time
import warnings
from typing import Any

import torch
from torch import nn

from learners.channel import ChannelPruning, prunable_units
from pipeline import measure
from pipeline.measure import costmodel
from pipeline.sources.zoo import build, names
from pipeline.sources.zoo.shufflenet import ChannelShuffle

torch.set_num_threads(1)
warnings.filterwarnings("ignore")


_EXPORTS = iter(range(10**6))  # unique ONNX file names within the work folder


def runners(model: nn.Module, shape: tuple[int, ...], batches, workdir: Path) -> list:
    """torch-cpu and onnxruntime-cpu runners for each batch size, in that order."""
    example = torch.randn(1, *shape)
    out = []
    for batch in batches:
        for runtime in ("torch-cpu", "onnxruntime-cpu"):
            settings = measure.LatencySettings(runtime=runtime, batch_size=batch)
            tag = f"m{next(_EXPORTS)}"
            out.append(measure.make_runner(model, example, settings, workdir, tag))
    return out


def zoo_table(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    rows = []
    for stem, size in (("cifar", 32), ("imagenet", 224)):
        for name in sorted(names()):
            if name.startswith("resnet") and stem == "imagenet":
                continue
            kwargs = {} if name.startswith("resnet") else {"stem": stem}
            model = build(name, **kwargs).eval()
            x = torch.randn(1, 3, size, size)
            cost = costmodel.totals(model, x, costmodel.layer_costs(model, x))
            repeats = (3 if size == 224 else 9) if not quick else 2
            ms = measure.time_interleaved(
                runners(model, (3, size, size), (1, 32), workdir), warmup=1, repeats=repeats
            )
            rows.append(
                {
                    "model": name,
                    "input": f"3x{size}x{size} ({stem})",
                    "params": cost.param_count,
                    "macs": cost.macs,
                    "counted_macs": cost.counted_macs,
                    "torch_b1_ms": ms[0],
                    "ort_b1_ms": ms[1],
                    "torch_b32_ms": ms[2],
                    "ort_b32_ms": ms[3],
                    "repeats": repeats,
                }
            )
            print(f"  measured {name} {size}px", file=sys.stderr, flush=True)
    return rows


def _verdict(mac_ratio: float, measured: float) -> str:
    """Compare the FLOPs story (latency scales with MACs) with the measurement."""
    if measured >= 1.0 > mac_ratio:
        return f"**disagrees**: {1 / mac_ratio:.1f}x fewer MACs, but slower"
    predicted, got = 1 / mac_ratio, 1 / measured
    if got < 0.5 * predicted:
        return f"**disagrees**: FLOPs predict {predicted:.1f}x, measured {got:.1f}x"
    return "agrees (within 2x)"


def design_space(workdir: Path, quick: bool) -> dict[str, list[dict[str, Any]]]:
    batch, repeats = 32, (15 if not quick else 2)
    separable = []
    for n, m, k, h in ((32, 64, 3, 56), (64, 128, 3, 28), (128, 256, 3, 14), (256, 512, 3, 7),
                       (128, 128, 5, 14)):  # fmt: skip
        standard = nn.Conv2d(n, m, k, padding=k // 2, bias=False)
        dw_pw = nn.Sequential(
            nn.Conv2d(n, n, k, padding=k // 2, groups=n, bias=False), nn.Conv2d(n, m, 1, bias=False)
        )
        run = runners(standard, (n, h, h), (batch,), workdir) + runners(
            dw_pw, (n, h, h), (batch,), workdir
        )
        ms = measure.time_interleaved(run, warmup=1, repeats=repeats)
        mac_ratio = 1 / m + 1 / k**2
        torch_ratio, ort_ratio = ms[2] / ms[0], ms[3] / ms[1]
        separable.append(
            {
                "N": n, "M": m, "K": k, "H": h, "mac_ratio": mac_ratio,
                "torch_ratio": torch_ratio, "ort_ratio": ort_ratio,
                "torch_ms": [ms[0], ms[2]], "ort_ms": [ms[1], ms[3]],
                "torch_verdict": _verdict(mac_ratio, torch_ratio),
                "ort_verdict": _verdict(mac_ratio, ort_ratio),
            }
        )  # fmt: skip
        print(f"  measured separable {n}x{m}x{k}x{h}", file=sys.stderr, flush=True)
    grouped = []
    for n, g, h in ((240, 3, 28), (480, 3, 14), (384, 8, 28), (960, 3, 7)):
        pointwise = nn.Conv2d(n, n, 1, bias=False)
        gconv = nn.Conv2d(n, n, 1, groups=g, bias=False)
        shuffled = nn.Sequential(nn.Conv2d(n, n, 1, groups=g, bias=False), ChannelShuffle(n, g))
        run = []
        for module in (pointwise, gconv, shuffled):
            run += runners(module, (n, h, h), (batch,), workdir)
        ms = measure.time_interleaved(run, warmup=1, repeats=repeats)
        row = {"N": n, "G": g, "H": h, "mac_ratio": 1 / g, "ms": ms}
        for i, rt in ((0, "torch"), (1, "ort")):
            row[f"{rt}_grouped_ratio"] = ms[2 + i] / ms[i]
            row[f"{rt}_shuffled_ratio"] = ms[4 + i] / ms[i]
            row[f"{rt}_shuffle_share"] = (ms[4 + i] - ms[2 + i]) / ms[4 + i]
            row[f"{rt}_verdict"] = _verdict(1 / g, ms[4 + i] / ms[i])
        grouped.append(row)
        print(f"  measured grouped {n}/{g}x{h}", file=sys.stderr, flush=True)
    return {"separable": separable, "grouped": grouped}


def prune_to_2x(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    example = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    repeats = 11 if not quick else 3
    rows = []
    for name in sorted(names()):
        torch.manual_seed(0)
        model = build(name).eval()
        units = prunable_units(model, example, "stage")
        base_macs = costmodel.counted_macs(model, example)
        found = None
        for ratio in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
            params = {f"ratio.{u}": ratio for u, _ in units}
            start = time.perf_counter()
            pruned, _ = ChannelPruning().prune(model, params, example)
            prune_s = time.perf_counter() - start
            settings = measure.LatencySettings(batch_size=32, repeats=repeats, warmup=2)
            timing = measure.compare_latency(model, pruned, example, settings, workdir)
            found = (ratio, pruned, timing, prune_s)
            if timing.speedup >= 2.0:
                break
        ratio, pruned, timing, prune_s = found
        ort = measure.compare_latency(
            model,
            pruned,
            example,
            measure.LatencySettings("onnxruntime-cpu", batch_size=32, repeats=repeats),
            workdir,
        )
        rows.append(
            {
                "model": name,
                "ratio": ratio,
                "params": [measure.count_params(model), measure.count_params(pruned)],
                "macs": [base_macs, costmodel.counted_macs(pruned, example)],
                "torch_ms": [timing.baseline_ms, timing.candidate_ms],
                "torch_speedup": timing.speedup,
                "ort_ms": [ort.baseline_ms, ort.candidate_ms],
                "ort_speedup": ort.speedup,
                "prune_seconds": prune_s,
            }
        )
        print(f"  pruned {name} at {ratio}: {timing.speedup:.2f}x", file=sys.stderr, flush=True)
    return rows


def _m(n: float) -> str:
    return f"{n / 1e6:.2f}M"


def markdown(result: dict[str, Any]) -> str:
    out = ["## Zoo", "", f"Command: `{result['command']}` ({result['minutes']:.1f} min).", ""]
    out += [
        "One CPU thread, fp32. MACs: analytic (pipeline/costmodel.py) and counted by torch's",
        "FlopCounterMode (FLOPs / 2). Latency: median ms of interleaved repeats (torch-cpu",
        "and onnxruntime-cpu runners alternate), 9 repeats at 32x32, 3 at 224x224.",
        "",
        "| model | input | params | MACs (analytic) | MACs (counted) | torch b1 | ort b1 "
        "| torch b32 | ort b32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["zoo"]:
        out.append(
            f"| {r['model']} | {r['input']} | {_m(r['params'])} | {_m(r['macs'])} "
            f"| {_m(r['counted_macs'])} | {r['torch_b1_ms']:.2f} | {r['ort_b1_ms']:.2f} "
            f"| {r['torch_b32_ms']:.1f} | {r['ort_b32_ms']:.1f} |"
        )
    out += [
        "",
        "### Design space: depthwise-separable vs standard convolution (batch 32)",
        "",
        "MAC ratio = (depthwise KxK + pointwise 1x1) / standard KxK = 1/M + 1/K^2.",
        "Latency ratio = separable / standard, measured (lower is better; medians of 15",
        'interleaved repeats). "disagrees": the measured gain is under half of what the',
        "MAC ratio predicts.",
        "",
        "| N -> M, K, HxW | MAC ratio | torch ratio | ort ratio | torch: FLOPs story "
        "| ort: FLOPs story |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in result["design"]["separable"]:
        out.append(
            f"| {r['N']} -> {r['M']}, {r['K']}, {r['H']}x{r['H']} | {r['mac_ratio']:.3f} "
            f"| {r['torch_ratio']:.3f} | {r['ort_ratio']:.3f} | {r['torch_verdict']} "
            f"| {r['ort_verdict']} |"
        )
    out += [
        "",
        "### Design space: 1x1 group convolution vs dense 1x1, with and without shuffle",
        "",
        "Ratios are against the dense 1x1 (N -> N). MAC ratio = 1/G for both grouped",
        "variants: the shuffle adds zero MACs but reads and writes the whole tensor.",
        '"shuffle share" = the shuffle\'s part of the grouped+shuffle time.',
        "",
        "| N, G, HxW | MAC ratio | torch grouped | torch +shuffle | torch shuffle share "
        "| ort grouped | ort +shuffle | ort shuffle share | torch: FLOPs story "
        "| ort: FLOPs story |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in result["design"]["grouped"]:
        out.append(
            f"| {r['N']}, {r['G']}, {r['H']}x{r['H']} | {r['mac_ratio']:.3f} "
            f"| {r['torch_grouped_ratio']:.3f} | {r['torch_shuffled_ratio']:.3f} "
            f"| {100 * r['torch_shuffle_share']:.0f}% | {r['ort_grouped_ratio']:.3f} "
            f"| {r['ort_shuffled_ratio']:.3f} | {100 * r['ort_shuffle_share']:.0f}% "
            f"| {r['torch_verdict']} | {r['ort_verdict']} |"
        )
    out += [
        "",
        "### Channel pruning to a 2x measured speedup (32x32, batch 32, one thread)",
        "",
        "Smallest uniform per-stage ratio (0.3, 0.4, ... 0.8) whose pruned model is 2x",
        "faster on torch-cpu (median of 11 interleaved repeats); the same model on",
        "onnxruntime-cpu beside it. ShuffleNets included: shuffles, splits, concats and",
        "group layouts are kept consistent by learners/channel_ops.py, and every pruned",
        "model equals the original on its kept channels (checked on each pruning).",
        "",
        "| model | ratio | params | MACs | torch ms | torch speedup | ort ms | ort speedup "
        "| prune s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["pruning"]:
        flag = "" if r["torch_speedup"] >= 2.0 else " (**below 2x**)"
        out.append(
            f"| {r['model']} | {r['ratio']} | {_m(r['params'][0])} -> {_m(r['params'][1])} "
            f"| {_m(r['macs'][0])} -> {_m(r['macs'][1])} "
            f"| {r['torch_ms'][0]:.1f} -> {r['torch_ms'][1]:.1f} "
            f"| {r['torch_speedup']:.2f}x{flag} | {r['ort_ms'][0]:.1f} -> {r['ort_ms'][1]:.1f} "
            f"| {r['ort_speedup']:.2f}x | {r['prune_seconds']:.1f} |"
        )
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for zoo.json")
    parser.add_argument("--quick", action="store_true", help="2-3 repeats (a smoke run)")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        result: dict[str, Any] = {
            "command": "python benchmarks/zoo.py" + (" --quick" if args.quick else ""),
            "torch": torch.__version__,
            "zoo": zoo_table(workdir, args.quick),
            "design": design_space(workdir, args.quick),
            "pruning": prune_to_2x(workdir, args.quick),
        }
    result["minutes"] = (time.perf_counter() - start) / 60
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "zoo.json").write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
