"""One pruned model measured in separate jobs, by each clock and steadier, with and
without load of the benchmark's own.

    .venv/bin/python benchmarks/measurement_noise.py --jobs 6 --load 2 \\
        --variants wall cpu cpu+pin cpu+trim --out benchmarks/results/noise-load2.json

ResNet-56 (zoo, cifar stem, digits' input shape 1x32x32, 10 classes, untrained: latency
does not depend on the weights) pruned at one fixed uniform ratio, timed against the
unpruned model in ``--jobs`` separate Python processes per variant, as a job times it
(``compare_latency``: 15 pairs, then up to 60 while the 95% interval is wider than +-3%,
each job its own fresh pool), torch-cpu, batch 32, one thread.

A variant is a clock (``wall``, ``cpu``, ``auto``) with steadiers joined by ``+``:
``pin`` (the timing thread kept on one core) and ``trim`` (rounds preempted more often
than the median round dropped). ``--load N`` starts N busy processes of the benchmark's
own for the whole run (stopped at the end, on Ctrl-C and on errors), so "load 2" means
two more runnable processes than the machine had anyway.

Jobs alternate (variant 1 job 1, variant 2 job 1, ...) so that whatever else the machine
does falls on every variant alike. Printed per variant: every job's speedup, interval and
pairs; the spread (max/min of the jobs' speedups); and how many jobs' intervals hold the
median of the variant's jobs (the goal: spread <= 1.03 and all of them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSY = "while True: pass"


@contextlib.contextmanager
def busy_processes(n: int) -> Iterator[list[subprocess.Popen]]:
    """``n`` processes spinning on a core each, stopped when the block ends however it
    ends (SIGTERM to this process is turned into an exception so that this still runs)."""
    before = signal.getsignal(signal.SIGTERM)

    def stop(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    procs: list[subprocess.Popen] = []
    try:
        procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(n)]
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        signal.signal(signal.SIGTERM, before)


def parse_variant(variant: str) -> dict:
    """``clock[+pin][+trim]`` -> LatencySettings fields (a clear error for anything else)."""
    clock, *steadiers = variant.split("+")
    unknown = set(steadiers) - {"pin", "trim"}
    if clock not in ("auto", "wall", "cpu") or unknown:
        raise argparse.ArgumentTypeError(
            f"variant {variant!r}: a clock (auto, wall, cpu) then any of +pin, +trim"
        )
    return {"clock": clock, "pin": "pin" in steadiers, "trim": "trim" in steadiers}


def pruned_resnet56(ratio: float):
    import torch

    from learners.base import ModelInfo
    from learners.channel import ChannelPruning
    from pipeline.sources.zoo import build

    torch.manual_seed(0)
    model = build("resnet56", num_classes=10, in_channels=1).eval()
    example = torch.randn(1, 1, 32, 32)
    learner = ChannelPruning().for_runtimes(["torch-cpu"])
    params = learner.uniform_params(ModelInfo(model, example), ratio)
    return model, learner.prune(model, params, example)[0], example


def child(variant: str, ratio: float, workdir: Path) -> dict:
    """One job's measurement (run in its own process)."""
    from pipeline import measure

    model, pruned, example = pruned_resnet56(ratio)
    settings = measure.LatencySettings(
        "torch-cpu", 32, 1, 3, repeats=15, max_repeats=60, tolerance=0.03,
        **parse_variant(variant),
    )  # fmt: skip
    pool = measure.MeasurementPool(workdir / "measurements")  # the job's own, fresh
    load = os.getloadavg()[0]
    started = time.perf_counter()
    t = measure.compare_latency(model, pruned, example, settings, workdir, pool)
    return {
        "variant": variant,
        "clock": settings.resolved_clock,
        "load": load,
        "speedup": t.speedup,
        "low": t.low,
        "high": t.high,
        "pairs": t.pairs,
        "baseline_ms": t.baseline_ms,
        "candidate_ms": t.candidate_ms,
        "seconds": time.perf_counter() - started,
    }


def run_jobs(jobs: int, variants: list[str], ratio: float, out: Path | None) -> list[dict]:
    results = []
    for job in range(1, jobs + 1):
        for variant in variants:
            with tempfile.TemporaryDirectory() as workdir:
                cmd = [sys.executable, __file__, "--child", variant, "--ratio", str(ratio)]
                cmd += ["--workdir", workdir]
                done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            result = {**json.loads(done.stdout.strip().splitlines()[-1]), "job": job}
            results.append(result)
            print(row(result), flush=True)
            if out:
                out.write_text(json.dumps(results, indent=1))
    return results


def row(r: dict) -> str:
    return (
        f"| {r['job']} | {r['variant']} | {r['load']:.1f} | {r['speedup']:.3f}x "
        f"[{r['low']:.3f}, {r['high']:.3f}] | {r['pairs']} | {r['seconds']:.0f} s |"
    )


def summary(results: list[dict], variants: list[str]) -> list[str]:
    lines = [
        "| variant | jobs' speedups min-max | spread (max/min) | median half-width | "
        "intervals holding the variant's median |",
        "|---|---|---|---|---|",
    ]
    for variant in variants:
        mine = [r for r in results if r["variant"] == variant]
        points = [r["speedup"] for r in mine]
        middle = statistics.median(points)
        half = statistics.median((r["high"] - r["low"]) / 2 / r["speedup"] for r in mine)
        inside = sum(r["low"] <= middle <= r["high"] for r in mine)
        lines.append(
            f"| {variant} | {min(points):.3f}-{max(points):.3f}x (median {middle:.3f}x) | "
            f"{max(points) / min(points):.3f} | {half:.1%} | {inside} of {len(mine)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6, help="separate processes per variant")
    parser.add_argument("--load", type=int, default=0, help="busy processes of our own")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["wall", "cpu"],
        help="clock[+pin][+trim] per variant, e.g. wall cpu cpu+pin cpu+trim",
    )
    parser.add_argument("--clock", help="shorthand for --variants CLOCK")
    parser.add_argument("--ratio", type=float, default=0.6, help="uniform ratio (about 3x)")
    parser.add_argument("--out", type=Path, help="write every job's figures here (JSON)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.ratio, args.workdir)))
        return
    variants = [args.clock] if args.clock else args.variants
    for v in variants:
        try:
            parse_variant(v)
        except argparse.ArgumentTypeError as err:
            parser.exit(2, f"measurement_noise: {err}\n")
    if args.jobs < 1 or args.load < 0:
        parser.exit(2, "measurement_noise: --jobs must be >= 1 and --load >= 0\n")
    print(f"uptime before: {os.getloadavg()}", flush=True)
    print("| job | variant | load (1 min) | speedup [95% interval] | pairs | time |")
    print("|---|---|---|---|---|---|", flush=True)
    with busy_processes(args.load):
        results = run_jobs(args.jobs, variants, args.ratio, args.out)
    print("\n" + "\n".join(summary(results, variants)))
    print(f"uptime after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
