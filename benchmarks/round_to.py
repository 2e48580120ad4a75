"""Which channel multiple (``round_to``) makes pruned models fastest, per runtime.

    .venv/bin/python benchmarks/round_to.py

Each model is pruned with one ratio for every stage, once per width multiple (1 = any
width, 4, 8, 16: torch-pruning rounds every kept channel count to that multiple). The
baseline and the pruned variants are then timed on torch-cpu and on onnxruntime-cpu at the
job's default measurement settings (batch 32, one thread), all of them interleaved in one
``measure.time_interleaved`` call per trial, so that machine noise falls on all alike;
the speedup of each variant is baseline median / variant median, and the table gives
the median over the trials.

Rounding changes how many channels go (kept widths are rounded to the nearest
multiple), so the variants are matched on FLOPs: the unrounded model at the nominal
ratio sets the FLOP cut, and each multiple's ratio is bisected to the cut nearest to it.
A multiple is then judged by how much of its FLOP cut turns into time: efficiency =
speedup / (baseline FLOPs / pruned FLOPs), 1.0 when time falls exactly as FLOPs do. A
variant whose FLOP cut misses the goal by more than 15% (a multiple too coarse for the
model's narrow layers: x16 cannot prune a 16-wide layer at all) is shown but not
counted, and a multiple with such a row is not eligible as the default, which must not
put cuts out of the search's reach. The best multiple per runtime is the eligible one
with the highest median efficiency over the models and ratios.

The default ``round_to: auto`` of the channel learner takes the multiple this table
finds best on the job's runtime (``learners.channel.ROUND_TO``); the figures and the
command that produced them are in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from learners.channel import ChannelPruning, prunable_units
from pipeline import measure
from pipeline.sources.zoo import build

MULTIPLES = (1, 4, 8, 16)
RUNTIMES = ("torch-cpu", "onnxruntime-cpu")


def widths(model: nn.Module) -> list[int]:
    return [int(m.out_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]


def odd_share(model: nn.Module) -> float:
    """Share of conv layers whose width is not a multiple of 8."""
    w = widths(model)
    return sum(c % 8 != 0 for c in w) / len(w)


def variants(name: str, ratio: float, example: torch.Tensor):
    """The baseline and one pruned copy per multiple, matched on FLOPs (see above)."""
    torch.manual_seed(0)
    model = build(name).eval()
    units = [unit for unit, _ in prunable_units(model, example, "stage")]
    base_flops = measure.count_flops(model, example)

    def pruned(multiple: int, r: float):
        learner = ChannelPruning(round_to=multiple, importances=("l1",))
        out = learner.prune(model, {f"ratio.{u}": r for u in units}, example)[0]
        return out, base_flops / measure.count_flops(out, example)

    found, goal = pruned(1, ratio)
    out = {"baseline": model, "round_to=1": found}
    for multiple in MULTIPLES[1:]:
        lo, hi = 0.0, 0.95
        tried = []
        for _ in range(7):  # the cut rises with the ratio, in steps
            mid = (lo + hi) / 2
            candidate, cut = pruned(multiple, mid)
            tried.append((abs(cut - goal), mid, candidate))
            lo, hi = (mid, hi) if cut < goal else (lo, mid)
        out[f"round_to={multiple}"] = min(tried, key=lambda t: t[0])[2]
    return out


def time_all(models: dict, example, runtime: str, batch: int, repeats: int, trials: int, tmp):
    settings = measure.LatencySettings(runtime, batch, 1, 3, repeats)
    with measure.torch_threads(1):
        runners = [
            measure.make_runner(m, example, settings, Path(tmp), f"{runtime}-{i}")
            for i, m in enumerate(models.values())
        ]
        speedups: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(trials):
            ms = measure.time_interleaved(runners, settings.warmup, settings.repeats)
            for key, t in zip(models, ms, strict=True):
                speedups[key].append(ms[0] / t)
    return {k: statistics.median(v) for k, v in speedups.items()}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,mobilenet_v2")
    parser.add_argument("--ratios", default="0.3,0.6")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9, help="interleaved, per trial")
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    example = torch.randn(1, 3, 32, 32)
    cols = [f"{rt} x{m}" for rt in RUNTIMES for m in MULTIPLES]
    print(
        f"batch {args.batch}, 1 thread, {args.trials} trials of {args.repeats} interleaved "
        "repeats; speedup over the unpruned model (median of trials) / efficiency "
        "(speedup per FLOP cut)"
    )
    print()
    print(f"| model | ratio | multiple | FLOP cut | widths not x8 | {' | '.join(RUNTIMES)} |")
    print("|---|---|---|---|---|" + "---|" * len(RUNTIMES))
    unmatched: set[int] = set()
    efficiency: dict[tuple[str, int], list[float]] = {
        (rt, m): [] for rt in RUNTIMES for m in MULTIPLES
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for ratio in map(float, args.ratios.split(",")):
                models = variants(name, ratio, example)
                found = {
                    rt: time_all(models, example, rt, args.batch, args.repeats, args.trials, tmp)
                    for rt in RUNTIMES
                }
                base_flops = measure.count_flops(models["baseline"], example)
                goal = base_flops / measure.count_flops(models["round_to=1"], example)
                for m in MULTIPLES:
                    key = f"round_to={m}"
                    cut = base_flops / measure.count_flops(models[key], example)
                    cells = []
                    for rt in RUNTIMES:
                        speedup = found[rt][key]
                        matched = abs(cut / goal - 1) <= 0.15
                        if matched:
                            efficiency[(rt, m)].append(speedup / cut)
                        else:
                            unmatched.add(m)
                        mark = "" if matched else " (cut unmatched)"
                        cells.append(f"{speedup:.2f}x / {speedup / cut:.2f}{mark}")
                    print(
                        f"| {name} | {ratio:g} | {m} | {cut:.2f}x | "
                        f"{odd_share(models[key]):.0%} | {' | '.join(cells)} |"
                    )
    print()
    print(f"| median efficiency | {' | '.join(cols)} |")
    print("|---|" + "---|" * len(cols))
    print(
        "| all models and ratios | "
        + " | ".join(f"{_median(efficiency[(rt, m)]):.2f}" for rt in RUNTIMES for m in MULTIPLES)
        + " |"
    )
    print()
    for rt in RUNTIMES:
        eligible = [m for m in MULTIPLES if m not in unmatched]
        best = max(eligible, key=lambda m: _median(efficiency[(rt, m)]))
        print(f"best eligible multiple on {rt}: {best}")
    if unmatched:
        print(f"not eligible (some cut out of reach): {sorted(unmatched)}")


if __name__ == "__main__":
    main()
