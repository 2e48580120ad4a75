"""The timing claims the unit tests no longer make: channel pruning makes resnet20 faster
when measured, and a model timed against itself comes out at about 1x.

    .venv/bin/python benchmarks/channel_speedup.py

ResNet-20 (untrained, 3x32x32) with every stage pruned by 70% (the ratio the channel test
uses), torch-cpu, batch 16, one thread. Each trial is one ``measure.compare_latency``
(medians of interleaved repeats, as the search times candidates); the script prints every
trial and the median and range of the ratios over the trials, for both comparisons.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from learners.channel import ChannelPruning
from pipeline import measure
from pipeline.sources.zoo import build

STAGES = ("ratio.conv1", "ratio.layer1", "ratio.layer2", "ratio.layer3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=9, help="per trial (interleaved)")
    parser.add_argument("--trials", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build("resnet20").eval()
    example = torch.randn(1, 3, 32, 32)
    pruned, _ = ChannelPruning().prune(model, dict.fromkeys(STAGES, args.ratio), example)
    settings = measure.LatencySettings("torch-cpu", args.batch, 1, 3, args.repeats)
    flops = measure.count_flops(model, example), measure.count_flops(pruned, example)
    print(
        f"resnet20, every stage pruned by {args.ratio:.0%}: {flops[0]:,} -> {flops[1]:,} FLOPs "
        f"({flops[0] / flops[1]:.1f}x fewer); torch-cpu, batch {args.batch}, 1 thread, "
        f"{args.trials} trials of {args.repeats} interleaved repeats"
    )
    print("| trial | baseline ms | pruned ms | speedup | baseline vs itself |")
    print("|---|---|---|---|---|")
    speedups, selfs = [], []
    for trial in range(1, args.trials + 1):
        timing = measure.compare_latency(model, pruned, example, settings, workdir=None)
        same = measure.compare_latency(model, model, example, settings, workdir=None)
        speedups.append(timing.speedup)
        selfs.append(same.speedup)
        print(
            f"| {trial} | {timing.baseline_ms:.2f} | {timing.candidate_ms:.2f} | "
            f"{timing.speedup:.2f}x | {same.speedup:.2f}x |"
        )
    print(
        f"median speedup {statistics.median(speedups):.2f}x "
        f"(range {min(speedups):.2f}-{max(speedups):.2f}x); "
        f"median self-ratio {statistics.median(selfs):.2f}x "
        f"(range {min(selfs):.2f}-{max(selfs):.2f}x)"
    )


if __name__ == "__main__":
    main()
