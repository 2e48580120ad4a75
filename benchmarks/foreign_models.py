"""The foreign-model matrix (issue 9, item 10): Hugging Face ResNet, MobileNetV2,
EfficientNet and ConvNeXt, a BERT-style text classifier on token ids, a Conv1d +
BatchNorm1d signal classifier, and our own models with the patterns that broke (BatchNorm
momentum 0.001; squeeze-excitation + hardswish + stochastic depth + an output object; a
channel shuffle written with view/transpose/flatten), each through the real flow with
every learner chain of ``tests.foreign_models.CHAINS``.

    .venv/bin/python benchmarks/foreign_models.py [--rounds 3] [--epochs 2]
        [--pretrain-scale 2] [--models a,b] [--chains channel,int8] [--out DIR]

All jobs run in this process under one temporary Prefect API (as the test does), each
with its own sqlite MLflow store and output folder under DIR. Per job the table gives the
exit code, the baseline and best validation accuracy, the baseline accuracy re-estimated
here independently (fresh BatchNorm statistics from the training split), the winner's
measured speedup on torch-cpu and onnxruntime-cpu (from the report's interleaved timing
of winner against baseline), its file compression, met / NOT met, the pruning groups the
channel learner had to leave alone, and the job's wall time. Markdown on stdout; every
summary's figures also in DIR/foreign_models.json.
"""

# ruff: noqa: E402  (the path fix below must run before the package imports)
from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import argparse
import contextlib
import json
import re
import tempfile
import time
import traceback
from typing import Any

import torch

from pipeline.cli.main import main
from tests.foreign_models import CHAINS, MODELS, baseline_check

torch.set_num_threads(1)


def job_flags(
    model: str, chain: str, workdir: Path, rounds: int, epochs: int, scale: float
) -> list[str]:
    case = MODELS[model]
    flags = case.flags(workdir, max(1, round(case.pretrain_epochs * scale)))
    return [
        "run", *flags, *CHAINS[chain],
        "--rounds", str(rounds), "--epochs", str(epochs),
        "--measure-batch", "16", "--repeats", "9", "--no-register",
        "--tracking-uri", f"sqlite:///{workdir}/mlflow.db",
        "--output", str(workdir / "out"),
        "--summary-json", str(workdir / "summary.json"),
    ]  # fmt: skip


def excluded_groups(summary: dict[str, Any]) -> int:
    """Channel groups the winner left unpruned (its summary warning; 0 without one)."""
    for line in summary.get("warnings", []):
        if m := re.search(r"left (\d+) dependency group", line):
            return int(m.group(1))
    return 0


def row(model: str, chain: str, code: int, seconds: float, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "chain": chain, "exit": code, "seconds": seconds}
    path = workdir / "summary.json"
    if not path.exists():
        return out
    s = json.loads(path.read_text())
    best = s.get("best") or {}
    timed = best.get("runtimes") or {}
    out.update(
        baseline=s["baseline"]["accuracy"],
        recomputed=baseline_check(s)[1],
        best=best.get("accuracy"),
        torch_cpu=timed.get("torch-cpu", {}).get("speedup"),
        onnxruntime_cpu=timed.get("onnxruntime-cpu", {}).get("speedup"),
        compression=best.get("compression"),
        met=s["target_met"],
        excluded=excluded_groups(s) if best else None,  # the winner's records say
        rounds=s["rounds"],
    )
    return out


def fmt(v: Any, spec: str = "{:.3f}") -> str:
    return "-" if v is None else spec.format(v)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | learners | exit | baseline acc (re-estimated here) | best acc "
        "| speedup torch-cpu | speedup onnxruntime-cpu | compression | target "
        "| excluded groups | s |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        if "baseline" not in r:
            lines.append(
                f"| {r['model']} | {r['chain']} | {r['exit']} | no summary: {r.get('error', '')}"
                f" | | | | | | | {r['seconds']:.0f} |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['chain']} | {r['exit']} "
            f"| {fmt(r['baseline'])} ({fmt(r['recomputed'])}) | {fmt(r['best'])} "
            f"| {fmt(r['torch_cpu'], '{:.2f}x')} | {fmt(r['onnxruntime_cpu'], '{:.2f}x')} "
            f"| {fmt(r['compression'], '{:.2f}x')} | {'met' if r['met'] else 'NOT met'} "
            f"| {fmt(r['excluded'], '{}')} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from prefect.testing.utilities import prefect_test_harness

    rows = []
    models = args.models.split(",") if args.models else list(MODELS)
    chains = args.chains.split(",") if args.chains else list(CHAINS)
    with prefect_test_harness(server_startup_timeout=120):
        for model in models:
            for chain in chains:
                workdir = args.out / f"{model}--{chain.replace(',', '+')}"
                workdir.mkdir(parents=True, exist_ok=True)
                flags = job_flags(
                    model, chain, workdir, args.rounds, args.epochs, args.pretrain_scale
                )
                started = time.perf_counter()
                error = ""
                log = workdir / "job.log"
                with open(log, "w") as f, contextlib.redirect_stdout(f):
                    try:
                        code = main(flags)
                    except BaseException as err:  # noqa: BLE001 - a row, not the end
                        code, error = -1, f"{type(err).__name__}: {err}".splitlines()[0]
                        traceback.print_exc(file=f)
                r = row(model, chain, code, time.perf_counter() - started, workdir)
                if error:
                    r["error"] = error
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    return rows


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--pretrain-scale", type=float, default=2.0, help="x each model's pretraining epochs"
    )
    parser.add_argument("--models", default="", help="comma-separated (default: all)")
    parser.add_argument("--chains", default="", help="comma-separated (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or Path(tempfile.mkdtemp(prefix="foreign-models-"))
    started = time.perf_counter()
    rows = run(args)
    (args.out / "foreign_models.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))
    print(
        f"\n{len(rows)} jobs in {time.perf_counter() - started:.0f} s; "
        f"summaries and logs in {args.out}"
    )


if __name__ == "__main__":
    main_()
