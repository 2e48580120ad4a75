"""The same models measured in separate jobs: before speedups knew their noise, after,
and with one pool shared by every job.

    .venv/bin/python benchmarks/measurement_noise.py --jobs 6 \\
        --notes benchmarks/notes/measurement_noise.md

Issue 10 found one pruned ResNet-56 measured at 1.84x to 3.05x in different jobs here,
and an unpruned one at 0.91x and 1.06x. This script repeats that on purpose: ResNet-56
(zoo, cifar stem, digits' input shape 1x32x32, 10 classes) pruned at one fixed uniform
ratio, and the unpruned model against a copy of itself, each timed against the baseline
in ``--jobs`` separate Python processes per mode (as separate jobs are), torch-cpu,
batch 32, one thread:

- before: what jobs did until now: a fixed 15 interleaved pairs, the ratio of medians
  (its 95% interval is printed too, though jobs did not have one);
- after: ``compare_latency`` as jobs now call it: 15 pairs, then more up to 60 while the
  interval's relative half-width exceeds 3% (``measure.max_repeats``/``tolerance``
  defaults), each job with its own fresh pool, as each job's output folder has;
- shared: as after, but every job uses one pool folder (``measure.pool``), empty when the
  benchmark starts: a later job reuses the pairs of earlier ones and times more only while
  the pooled interval is too wide and below the cap; its figure is the pooled one.

Jobs alternate (before 1, after 1, shared 1, before 2, ...) so that the machine's load
falls on every mode alike. Printed: every job's speedup, interval, pairs (and how many
were reused from the pool); per mode the spread (max/min of the jobs' speedups) and
whether every job's interval contains the median of the independent jobs (before and
after together: the best estimate there is of the true figure). Shared jobs are left out
of that median: they are not independent draws, and counting one pooled figure six times
would pull the reference towards itself.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("before", "after", "shared")
INDEPENDENT = ("before", "after")  # each job its own draw: these set the reference
COMPARISONS = ("pruned", "unpruned")


def child(mode: str, ratio: float, pool_dir: Path) -> dict:
    """One job's measurements (run in its own process)."""
    import torch

    from learners.base import ModelInfo
    from learners.channel import ChannelPruning
    from pipeline import measure
    from pipeline.job.candidate import measurement_pool
    from pipeline.sources.zoo import build
    from pipeline.spec import parse

    torch.manual_seed(0)
    model = build("resnet56", num_classes=10, in_channels=1).eval()
    example = torch.randn(1, 1, 32, 32)
    learner = ChannelPruning().for_runtimes(["torch-cpu"])
    params = learner.uniform_params(ModelInfo(model, example), ratio)
    pruned, _ = learner.prune(model, params, example)
    same = copy.deepcopy(model)  # another object with the same architecture
    if mode == "before":
        settings = measure.LatencySettings("torch-cpu", 32, 1, 3, repeats=15)
        pool = None
    else:
        settings = measure.LatencySettings(
            "torch-cpu", 32, 1, 3, repeats=15, max_repeats=60, tolerance=0.03
        )
        # Chosen as a job chooses it: the spec's measure.pool (shared) or the run's own.
        shared = str(pool_dir) if mode == "shared" else None
        spec = parse({"target": {"speedup": 3.0}, "measure": {"pool": shared}})
        pool = measurement_pool(spec, pool_dir / "rounds")
    out: dict = {"mode": mode, "load": os.getloadavg()[0]}
    for name, candidate in (("pruned", pruned), ("unpruned", same)):
        started = time.perf_counter()
        t = measure.compare_latency(model, candidate, example, settings, pool_dir, pool)
        out[name] = {
            "speedup": t.speedup,
            "low": t.low,
            "high": t.high,
            "pairs": t.pairs,
            "reused": t.reused,
            "baseline_ms": t.baseline_ms,
            "candidate_ms": t.candidate_ms,
            "seconds": time.perf_counter() - started,
        }
    return out


def run_jobs(jobs: int, ratio: float) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as shared_dir:  # one pool for every shared job
        for job in range(1, jobs + 1):
            for mode in MODES:
                with tempfile.TemporaryDirectory() as own_dir:  # or each job its own pool
                    pool_dir = shared_dir if mode == "shared" else own_dir
                    cmd = [sys.executable, __file__, "--child", mode, "--ratio", str(ratio)]
                    cmd += ["--pool", pool_dir]
                    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result["job"] = job
                results.append(result)
                print(_row(result), flush=True)
    return results


def _row(r: dict) -> str:
    cells = [str(r["job"]), r["mode"], f"{r['load']:.1f}"]
    for name in COMPARISONS:
        m = r[name]
        reused = f", {m['reused']} reused" if m.get("reused") else ""
        cells.append(
            f"{m['speedup']:.3f}x [{m['low']:.3f}, {m['high']:.3f}] ({m['pairs']} pairs"
            f"{reused}, {m['seconds']:.0f} s)"
        )
    return "| " + " | ".join(cells) + " |"


def summary(results: list[dict]) -> list[str]:
    lines = []
    for name in COMPARISONS:
        independent = [r[name]["speedup"] for r in results if r["mode"] in INDEPENDENT]
        everyone = statistics.median(independent)
        lines.append(
            f"**{name}** (median of the {len(independent)} independent jobs, "
            f"{' and '.join(INDEPENDENT)}: {everyone:.3f}x)"
        )
        lines.append("")
        lines.append(
            "| mode | jobs' speedups min-max | spread (max/min) | median half-width | "
            "intervals containing that median |"
        )
        lines.append("|---|---|---|---|---|")
        for mode in MODES:
            mine = [r[name] for r in results if r["mode"] == mode]
            points = [m["speedup"] for m in mine]
            half = statistics.median((m["high"] - m["low"]) / 2 / m["speedup"] for m in mine)
            inside = sum(m["low"] <= everyone <= m["high"] for m in mine)
            lines.append(
                f"| {mode} | {min(points):.3f}-{max(points):.3f}x | "
                f"{max(points) / min(points):.3f} | {half:.1%} | {inside} of {len(mine)} |"
            )
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5, help="separate processes per mode")
    parser.add_argument(
        "--ratio", type=float, default=0.6, help="uniform pruning ratio (about 3x here)"
    )
    parser.add_argument("--notes", type=Path, help="also write the markdown section here")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.ratio, args.pool)))
        return
    command = " ".join(
        [".venv/bin/python", "benchmarks/measurement_noise.py", *map(shlex.quote, sys.argv[1:])]
    )
    started = datetime.datetime.now().astimezone()
    header = [
        "| job | mode | load (1 min) | pruned vs baseline | unpruned vs baseline |",
        "|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    results = run_jobs(args.jobs, args.ratio)
    minutes = (datetime.datetime.now().astimezone() - started).total_seconds() / 60
    lines = summary(results)
    print("\n" + "\n".join(lines))
    if args.notes:
        section = [
            "## Measurement noise: one model in separate jobs, before and after intervals, "
            "and with a shared pool",
            "",
            f"`{command}` — run {started:%Y-%m-%d %H:%M %Z}, {minutes:.0f} min, "
            f"on {os.cpu_count()} CPUs shared with other work (load column: 1-minute "
            "load average when each job started).",
            "",
            f"ResNet-56 (zoo, cifar stem, 1x32x32, 10 classes, untrained) pruned at a uniform "
            f"ratio of {args.ratio} and the unpruned model (a copy) against the baseline; "
            "torch-cpu, batch 32, one thread. Before: fixed 15 interleaved pairs (the 15 "
            "pairs' 95% interval shown, though jobs had none). After: 15 pairs, then up to 60 "
            "while the interval is wider than +-3%, each job its own fresh pool. Shared: as "
            "after, but all jobs use one pool folder, empty at the start. Each cell: "
            "speedup [95% interval] (pairs, of which reused from the pool, seconds).",
            "",
            *header,
            *(_row(r) for r in results),
            "",
            *lines,
        ]
        args.notes.parent.mkdir(parents=True, exist_ok=True)
        args.notes.write_text("\n".join(section) + "\n")


if __name__ == "__main__":
    main()
