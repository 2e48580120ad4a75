"""Team operation: candidates per hour with 1 and with 2 Dask worker processes (the same
job, measured in one run of this script), and the orchestration overhead per round: the
share of search time spent outside building, fine-tuning and measuring candidates
(Prefect task submission and state reporting, Dask transfer, MLflow logging).

    .venv/bin/python benchmarks/team.py [--rounds 8] [--epochs 3] [--image-size 32]

It starts the team stack for real, on loopback only, as the integration tests do: moto's
S3 endpoint, a Prefect server on the local PostgreSQL (database created and dropped), an
MLflow server with its artifacts in S3; and stops all of it at the end. The search time
is the flow's own search loop (after the baseline); candidate time is each candidate's
own clock (``seconds``, measured inside the task), summed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


RUNNERS = [
    ("threads, 1 worker", "threads-1", ["--runner", "threads", "--workers", "1"]),
    ("dask, 1 worker", "dask-1", ["--runner", "dask", "--workers", "1"]),
    ("dask, 2 workers", "dask-2", ["--runner", "dask", "--workers", "2"]),
]


@dataclass
class Clock:
    """Seconds spent in the instrumented calls of one job."""

    search: float = 0.0
    mlflow: float = 0.0
    optimizer: float = 0.0
    candidates: list[float] = field(default_factory=list)


@contextlib.contextmanager
def instrumented(clock: Clock):
    """Time the search loop, MLflow's per-candidate logging and the optimiser, in place."""
    from hpo.optimizer import Optimizer
    from pipeline.job.twofidelity import TwoFidelity
    from pipeline.records.tracking import Tracker

    def timed(owner, name, add):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                add(time.perf_counter() - started, args)

        setattr(owner, name, wrapper)
        return original

    def add_search(dt, args):
        clock.search += dt

    def add_mlflow(dt, args):
        clock.mlflow += dt
        clock.candidates.append(args[2].seconds)  # (self, parent, result, feasible)

    def add_optimizer(dt, args):
        clock.optimizer += dt

    saved = [
        (TwoFidelity, "run", timed(TwoFidelity, "run", add_search)),
        (Tracker, "log_candidate", timed(Tracker, "log_candidate", add_mlflow)),
        (Optimizer, "ask", timed(Optimizer, "ask", add_optimizer)),
        (Optimizer, "tell", timed(Optimizer, "tell", add_optimizer)),
    ]
    try:
        yield clock
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def run_job(args, stack, out: Path, name: str, runner: list[str]) -> Clock:
    from pipeline.cli.main import main

    flags = [
        "run",
        "--name", name,
        "--model", args.model,
        "--data", "digits", "--image-size", str(args.image_size),
        "--data-limit", str(args.data_limit),
        "--pretrain-epochs", "2", "--epochs", str(args.epochs),
        "--measure-batch", "16", "--repeats", "5",
        "--target-speedup", "1.5", "--rounds", str(args.rounds), "--parallel", "2",
        "--patience", str(args.rounds),
        "--tracking-uri", stack.mlflow.uri, "--experiment", "bench-team", "--no-register",
        "--output", str(out),
        *runner,
    ]  # fmt: skip
    with instrumented(Clock()) as clock:
        code = main(flags)
    if code not in (0, 3) or len(clock.candidates) != args.rounds:
        raise SystemExit(f"{name}: the job failed (exit {code}); see the log above")
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="candidates per job (even)")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--data-limit", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.servers import team_stack

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-team-") as tmp, team_stack(Path(tmp)) as stack:
        os.environ["PREFECT_API_URL"] = stack.prefect.api_url  # for the Dask worker processes
        with temporary_settings({PREFECT_API_URL: stack.prefect.api_url}):
            runs = {
                label: run_job(args, stack, Path(tmp, "out"), name, runner)
                for label, name, runner in RUNNERS
            }
    report(args, runs, load_before, os.getloadavg())


def report(args, runs: dict[str, Clock], load_before, load_after) -> None:
    print()
    print(
        f"{args.model} on digits {args.image_size}x{args.image_size} ({args.data_limit} samples), "
        f"{args.rounds} candidates per job in batches of 2, {args.epochs} fine-tune epoch(s); "
        f"{os.cpu_count()} CPU cores, load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after"
    )
    print()
    print("| runner | search s | candidates/h | candidate s (mean) | overhead | of it MLflow |")
    print("|---|---|---|---|---|---|")
    for name, c in runs.items():
        per_hour = len(c.candidates) / c.search * 3600
        busy = sum(c.candidates)
        # Sequential runs only: with 2 workers candidates overlap, so busy time exceeds wall.
        sequential = "1 worker" in name
        outside = c.search - busy - c.optimizer
        share = f"{outside / c.search:.1%}" if sequential else "-"
        mlflow = f"{c.mlflow / c.search:.1%}" if sequential else "-"
        print(
            f"| {name} | {c.search:.1f} | {per_hour:.0f} | {busy / len(c.candidates):.2f} "
            f"| {share} | {mlflow} |"
        )
    one, two = runs["dask, 1 worker"], runs["dask, 2 workers"]
    print()
    print(f"2 workers / 1 worker, candidates per hour: {one.search / two.search:.2f}x")
    for name in ("threads, 1 worker", "dask, 1 worker"):
        c = runs[name]
        rounds = len(c.candidates)
        outside = c.search - sum(c.candidates) - c.optimizer
        print(
            f"{name}: per round {c.search / rounds:.2f} s, of which {outside / rounds:.2f} s "
            f"Prefect + MLflow ({c.mlflow / rounds:.2f} s MLflow logging), "
            f"{c.optimizer / rounds:.2f} s optimiser"
        )


if __name__ == "__main__":
    main()
