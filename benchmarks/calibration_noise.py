"""The fixed rule's calibrated uniform ratio in separate jobs, by each clock.

    .venv/bin/python benchmarks/calibration_noise.py --jobs 6 --targets 3 4 \\
        --clocks wall cpu [--load 2] --out benchmarks/results/calibration.json

One ResNet-56 (zoo, cifar stem) trained on digits at 32 px (``--pretrain-epochs``, the
baseline step of a job; trained once and its weights kept under the temp folder) is
calibrated as a job calibrates it (``calibrate_channel`` with the job's probe:
bisection of the uniform channel ratio down to 0.02, each probe timed with the quick
settings against the baseline, the smallest ratio whose interval's low end reaches the
target chosen) in ``--jobs`` separate processes per (target, clock), each with its own
fresh measurement pool; torch-cpu, batch 32, one thread. Jobs alternate over clocks
and targets. ``--load N`` starts N busy processes for the whole run (as
``measurement_noise.py`` does). Printed: every job's ratio and the figure it reached;
per (target, clock) the ratios' range (the goal: within +-0.02 of one another).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measurement_noise import busy_processes

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(tempfile.gettempdir()) / "compressflow-calibration-noise"


def raw_spec(target: float, clock: str, pretrain_epochs: int, max_ratio: float) -> dict:
    return {
        "name": f"calibration-noise-{target:g}x",
        "model": "resnet56",
        "data": {"source": "digits", "image_size": 32},
        "target": {"speedup": target, "runtime": "torch-cpu"},
        "learners": ["channel"],
        "learner_options": {"channel": {"max_ratio": max_ratio}},
        "finetune": {"pretrain_epochs": pretrain_epochs},
        "measure": {"batch_size": 32, "threads": 1, "clock": clock},
        "seed": 0,
        # The calibrated ratio rests on latency alone (a uniform ratio prunes to the same
        # widths whatever the weights): a barely trained baseline is enough, and the
        # preflight's near-chance check would stop it.
        "allow_untrained_baseline": True,
    }


def trained_baseline(pretrain_epochs: int) -> Path:
    """The trained baseline's weights, trained on the first call and kept."""
    from pipeline import spec as specs
    from pipeline.job import baseline

    folder = CACHE / f"resnet56-p{pretrain_epochs}"
    done = folder / "baseline.json"
    if not done.exists():
        started = time.perf_counter()
        spec = specs.parse(raw_spec(3.0, "auto", pretrain_epochs, 0.9))
        made = baseline.prepare(spec, folder, log=lambda m: print(f"[baseline] {m}", flush=True))
        info = {**made.to_dict(), "seconds": time.perf_counter() - started}
        done.write_text(json.dumps(info, indent=1))
    return Path(json.loads(done.read_text())["model_path"])


def child(target: float, clock: str, args: argparse.Namespace) -> dict:
    """One job's calibration (run in its own process, in a fresh folder)."""
    from learners.base import ModelInfo
    from learners.channel.calibrate import calibrate_channel
    from pipeline import spec as specs
    from pipeline.job.modelfile import load_baseline
    from pipeline.job.probe import probe_for
    from pipeline.job.settings import build_learners, splits_for

    path = trained_baseline(args.pretrain_epochs)
    raw = raw_spec(target, clock, args.pretrain_epochs, args.max_ratio)
    raw["model"] = {"source": "resnet56", "weights": str(path)}
    spec = specs.parse(raw)
    info = ModelInfo(load_baseline(spec, path).eval(), splits_for(spec).example_inputs())
    load = os.getloadavg()[0]
    started = time.perf_counter()
    probe = probe_for(spec, info, path.stat().st_size, args.workdir, start=True, predictor=False)
    found = calibrate_channel(build_learners(spec)[0], info, probe)
    met = [t["ratio"] for t in found.trail if "low" in t and t["low"] >= target]
    return {
        "target": target,
        "clock": clock,
        "load": load,
        "ratio": min(met) if found.start is not None and met else None,
        "reached": found.reached,
        "probes": len(found.trail),
        "outcome": found.outcome,
        "seconds": time.perf_counter() - started,
    }


def run_jobs(args: argparse.Namespace) -> list[dict]:
    results = []
    for job in range(1, args.jobs + 1):
        for target in args.targets:
            for clock in args.clocks:
                with tempfile.TemporaryDirectory() as workdir:
                    cmd = [sys.executable, __file__, "--child", str(target), "--clock", clock]
                    cmd += ["--workdir", workdir, "--pretrain-epochs", str(args.pretrain_epochs)]
                    cmd += ["--max-ratio", str(args.max_ratio)]
                    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"job {job} failed:\n{done.stderr[-3000:]}")
                result = {**json.loads(done.stdout.strip().splitlines()[-1]), "job": job}
                results.append(result)
                ratio = "none" if result["ratio"] is None else f"{result['ratio']:.3f}"
                reached = result["reached"] or float("nan")
                print(
                    f"| {job} | {target:g}x | {clock} | {result['load']:.1f} | {ratio} | "
                    f"{reached:.3f}x | {result['probes']} | {result['seconds']:.0f} s |",
                    flush=True,
                )
                if args.out:
                    args.out.write_text(json.dumps(results, indent=1))
    return results


def summary(results: list[dict], targets: list[float], clocks: list[str]) -> list[str]:
    lines = [
        "| target | clock | ratios | range (max-min) | most off their median | within +-0.02 |",
        "|---|---|---|---|---|---|",
    ]
    for target in targets:
        for clock in clocks:
            ratios = [r["ratio"] for r in results if r["target"] == target and r["clock"] == clock]
            found = [x for x in ratios if x is not None]
            spread = max(found) - min(found) if found else float("nan")
            off = max(abs(x - statistics.median(found)) for x in found) if found else math.nan
            cells = ", ".join("none" if x is None else f"{x:.3f}" for x in ratios)
            ok = len(found) == len(ratios) and off <= 0.02 + 1e-9
            lines.append(f"| {target:g}x | {clock} | {cells} | {spread:.3f} | {off:.3f} | {ok} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--targets", type=float, nargs="+", default=[3.0, 4.0])
    parser.add_argument(
        "--clocks", nargs="+", choices=["auto", "wall", "cpu"], default=["wall", "cpu"]
    )
    parser.add_argument("--load", type=int, default=0, help="busy processes of our own")
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    parser.add_argument("--max-ratio", type=float, default=0.9, help="the learner's largest ratio")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--clock", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.clock, args)))
        return
    if args.jobs < 1 or args.load < 0 or any(t <= 1 for t in args.targets):
        parser.exit(2, "calibration_noise: --jobs >= 1, --load >= 0 and targets > 1\n")
    print(f"uptime before: {os.getloadavg()}", flush=True)
    trained_baseline(args.pretrain_epochs)  # once, before any job and without our load
    print("| job | target | clock | load (1 min) | ratio | reached | probes | time |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    with busy_processes(args.load):
        results = run_jobs(args)
    print("\n" + "\n".join(summary(results, args.targets, args.clocks)))
    print(f"uptime after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
