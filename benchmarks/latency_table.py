"""How well the per-unit latency table predicts a channel-pruning setting's latency.

    .venv/bin/python benchmarks/latency_table.py [--models resnet56 mobilenet_v2 ...]
        [--runtimes torch-cpu onnxruntime-cpu] [--settings 20] [--granularity stage]

For each zoo model (cifar stem, 3x32x32 input, 10 classes, untrained: latency does not
depend on the weights) and runtime: build the table (``build_table``, default ratios),
draw ``--settings`` random settings (every unit's ratio uniform in the learner's range),
prune and time each one interleaved with the baseline (batches of the baseline and
``--per-batch`` settings), and compare the measured relative latency (setting ms /
baseline ms in the same batch) with the table's prediction under both combination rules.
Error = predicted / measured - 1 (positive: predicted slower than measured), as a
percentage; the table prints the median and worst absolute error and the median signed
error, and the table's build time. Prints markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from learners.base import ModelInfo
from learners.channel import ChannelPruning
from learners.channel.latency_table import RULES, LatencyTable, build_table
from pipeline import measure
from pipeline.job.probe import time_models
from pipeline.sources.zoo import build

MODELS = ("resnet56", "mobilenet_v2", "shufflenet_v2")


def random_settings(units: list[str], low: float, high: float, count: int, seed: int):
    rng = random.Random(seed)
    return [{f"ratio.{u}": round(rng.uniform(low, high), 3) for u in units} for _ in range(count)]


def measure_settings(
    learner: ChannelPruning,
    info: ModelInfo,
    settings: list[dict[str, float]],
    timing: measure.LatencySettings,
    workdir: Path,
    per_batch: int,
) -> list[float]:
    """Measured latency of each setting relative to the baseline timed in its batch."""
    relative: list[float] = []
    with measure.runtime_flags(timing):
        for start in range(0, len(settings), per_batch):
            chunk = settings[start : start + per_batch]
            runners = [
                measure.make_runner(info.model, info.example_inputs, timing, workdir, "m-base")
            ]
            for k, params in enumerate(chunk):
                pruned, _ = learner.prune(info.model, params, info.example_inputs)
                tag = f"m-{start + k}"
                runners.append(
                    measure.make_runner(pruned, info.example_inputs, timing, workdir, tag)
                )
            clock = timing.resolved_clock
            base, *ms = measure.time_interleaved(runners, timing.warmup, timing.repeats, clock)
            relative += [m / base for m in ms]
    return relative


def errors_pct(table: LatencyTable, settings, measured: list[float]) -> list[float]:
    return [
        100.0 * (table.predict_relative(p) / m - 1.0)
        for p, m in zip(settings, measured, strict=True)
    ]


def run(model_name: str, runtime: str, args: argparse.Namespace, workdir: Path) -> list[str]:
    torch.manual_seed(0)
    model = build(model_name, num_classes=10, in_channels=3).eval()
    info = ModelInfo(model, torch.randn(1, 3, 32, 32))
    learner = ChannelPruning(granularity=args.granularity).for_runtimes([runtime])
    timing = measure.LatencySettings(
        runtime, args.batch, args.threads, 3, args.repeats, clock=args.clock
    )
    table = build_table(learner, info, time_models(info, timing, workdir), asdict(timing))
    units = list(table.units)
    c = learner.config
    settings = random_settings(units, c.min_ratio, c.max_ratio, args.settings, args.seed)
    start = time.perf_counter()
    measured = measure_settings(learner, info, settings, timing, workdir, args.per_batch)
    measure_s = time.perf_counter() - start
    rows = []
    for rule in RULES:
        errs = errors_pct(dataclasses.replace(table, rule=rule), settings, measured)
        absolute = [abs(e) for e in errs]
        rows.append(
            f"| {model_name} | {runtime} | {rule} | {len(units)} | {table.baseline_ms:.1f} | "
            f"{min(measured):.2f}-{max(measured):.2f} | {statistics.median(absolute):.1f} | "
            f"{max(absolute):.1f} | {statistics.median(errs):+.1f} | "
            f"{table.exponent:.2f} | {table.build_seconds:.1f} | {measure_s:.1f} |"
        )
    if args.verbose:
        for unit in units:
            shown = [
                f"{r}: {v:.3f}"
                for r, v in zip(table.units[unit].ratios, table.units[unit].relative(), strict=True)
            ]
            print(f"  {model_name} {runtime} unit {unit} alone, relative latency {shown}")
        plain = dataclasses.replace(table, rule="multiplicative")
        assert table.uniform is not None
        for r, ms in zip(table.uniform.ratios, table.uniform.ms, strict=True):
            product = plain.predict_relative({f"ratio.{u}": r for u in units})
            print(
                f"  {model_name} {runtime} every unit at {r}: measured "
                f"{ms / table.uniform.baseline_ms:.3f}, product of the units {product:.3f}"
            )
        best = dataclasses.replace(table, rule=RULES[0])
        for p, m in zip(settings, measured, strict=True):
            pred = best.predict_relative(p)
            print(f"  {model_name} {runtime} measured {m:.3f} predicted {pred:.3f} {p}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--runtimes", nargs="+", default=["torch-cpu"])
    parser.add_argument("--granularity", default="stage", choices=("stage", "layer"))
    parser.add_argument("--settings", type=int, default=20)
    parser.add_argument("--per-batch", type=int, default=4, help="settings per timed batch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock", default="auto", choices=("auto", "wall", "cpu"), help="measure.clock"
    )
    parser.add_argument("--verbose", action="store_true", help="print every setting")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # excluded-group notices, once per prune
    print(
        f"{datetime.date.today()}, torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load averages at start {os.getloadavg()}; "
        f"granularity {args.granularity}, batch {args.batch}, {args.threads} thread(s), "
        f"clock {args.clock}, 3 warm-up + {args.repeats} repeats, {args.settings} random "
        "settings (seed "
        f"{args.seed}), {args.per_batch} per batch with the baseline"
    )
    print()
    print(
        "| model | runtime | rule | units | baseline ms | measured relative latency | "
        "median abs error % | worst abs error % | median signed error % | fitted power | "
        "table build s | "
        "settings measured in s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in args.runtimes:
            for name in args.models:
                for row in run(name, runtime, args, Path(tmp)):
                    print(row, flush=True)
    print(f"\nload averages at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
