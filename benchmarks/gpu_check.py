"""The GPU check: real compressflow jobs on one GPU, end to end, in under five minutes.

    benchmarks/gpu_check.sh                    # on a machine with one GPU (installs .whl/)
    python benchmarks/gpu_check.py --dry-run   # the jobs it would run, nothing started
    python benchmarks/gpu_check.py --device cpu --out /tmp/gc   # one tiny job, here

On ``--device cuda`` it runs, one after another (timings must not share the GPU):
ResNet-56 and MobileNetV2 on digits (32x32), baselines trained on the GPU, channel pruning
timed on ``cuda-graph`` and ``cuda`` (one job measures both: ``target.also_on``) at batch
32 and 256, and ``channel,half`` at batch 256 against a 2x target. Later jobs of a model
start from the first one's trained baseline (``--weights``), so only one pretraining per
model is paid. Alongside, with half the CPU cores and no GPU, the ResNet-56 baseline is
trained by the same job on ``cpu``, for the baseline accuracy cpu vs cuda.

It prints one Markdown table (and writes it, the summaries and the logs to ``--out``:
three files): baseline accuracy and where it was trained, the best candidate's accuracy
and measured speedup on each runtime, seconds per round and candidates per hour. A job
that does not fit in ``--budget-s`` is reported as skipped, not silently dropped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Job:
    name: str
    model: str
    learners: str
    runtime: str
    batch: int
    device: str = "cuda"
    also_on: tuple[str, ...] = ()
    target: float = 2.0
    rounds: int = 4
    pretrain_epochs: int = 15
    epochs: int = 2
    weights_from: str | None = None  # reuse this job's trained baseline
    image_size: int = 32
    data_limit: int | None = None
    repeats: int = 15
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    alongside: bool = False  # runs next to the others (no GPU, half the cores)

    def spec(self, work: Path, weights: Path | None) -> dict[str, Any]:
        data: dict[str, Any] = {"source": "digits", "image_size": self.image_size}
        if self.data_limit:
            data["limit"] = self.data_limit
        model: dict[str, Any] = {"source": self.model, "options": self.options}
        if weights is not None:
            model["weights"] = str(weights)
        target: dict[str, Any] = {"speedup": self.target, "runtime": self.runtime}
        if self.also_on:
            target["also_on"] = list(self.also_on)
        return {
            "name": self.name,
            "model": model,
            "data": data,
            "target": target,
            "learners": self.learners,
            "budget": {"rounds": self.rounds, "patience": self.rounds},
            "finetune": {"pretrain_epochs": self.pretrain_epochs, "epochs": self.epochs},
            "measure": {"batch_size": self.batch, "repeats": self.repeats},
            "tracking": {
                "uri": f"sqlite:///{work}/mlflow-{self.name}.db",  # no two writers
                "experiment": "gpu-check",
                "register_model": False,
            },
            "output": str(work / "out"),
            "device": self.device,
        }


def gpu_plan() -> list[Job]:
    both = ("cuda",)
    r56 = dict(model="resnet56", runtime="cuda-graph", also_on=both)
    mv2 = dict(model="mobilenet_v2", runtime="cuda-graph", also_on=both, pretrain_epochs=10)
    cores = max(1, (os.cpu_count() or 2) // 2)
    cpu_env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(cores)}
    return [
        Job("resnet56-cpu-baseline", "resnet56", "channel", "torch-cpu", 32, device="cpu",
            rounds=1, epochs=0, repeats=3, env=cpu_env, alongside=True),
        Job("resnet56-channel-b32", learners="channel", batch=32, **r56),
        Job("resnet56-channel-b256", learners="channel", batch=256,
            weights_from="resnet56-channel-b32", **r56),
        Job("resnet56-channel-half-b256", learners="channel,half", batch=256,
            weights_from="resnet56-channel-b32", **r56),
        Job("mobilenet_v2-channel-b32", learners="channel", batch=32, **mv2),
        Job("mobilenet_v2-channel-b256", learners="channel", batch=256,
            weights_from="mobilenet_v2-channel-b32", **mv2),
    ]  # fmt: skip


def cpu_plan() -> list[Job]:
    """One tiny job (and a second that reuses its baseline): the script's own check."""
    tiny = dict(model="resnet20", runtime="torch-cpu", device="cpu", image_size=8,
                data_limit=300, pretrain_epochs=1, epochs=1, rounds=2, repeats=3)  # fmt: skip
    return [
        Job("tiny-channel-b8", learners="channel", batch=8, **tiny),
        Job(
            "tiny-channel-b16", learners="channel", batch=16, weights_from="tiny-channel-b8", **tiny
        ),
    ]


def command(job: Job, job_file: Path, summary: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", "--job", str(job_file),
            "--summary-json", str(summary)]  # fmt: skip


def baseline_weights(work: Path, job: str) -> Path:
    """The trained baseline of ``job`` as a state dict (what ``model.weights`` takes)."""
    import shutil

    target = work / "weights" / f"{job}.safetensors"
    if not target.exists():  # the baseline's state is already a safetensors state dict
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "out" / job / "baseline" / "model.safetensors", target)
    return target


@dataclass
class Outcome:
    job: Job
    status: str  # ok | failed (exit code) | skipped (budget) | timed out
    seconds: float = 0.0
    summary: dict[str, Any] | None = None
    exit_code: int | None = None


def start(job: Job, work: Path, weights: Path | None, log) -> tuple[subprocess.Popen, Path]:
    job_file = work / "jobs" / f"{job.name}.yaml"
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(yaml.safe_dump(job.spec(work, weights), sort_keys=False))
    summary = work / "summaries" / f"{job.name}.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **job.env}
    if job.alongside:  # its own Prefect database: two ephemeral servers, one sqlite file each
        env["PREFECT_HOME"] = str(work / "prefect" / job.name)
    (work / "logs").mkdir(exist_ok=True)
    logfile = (work / "logs" / f"{job.name}.log").open("w")
    log(f"start {job.name}: {shlex.join(command(job, job_file, summary))}")
    proc = subprocess.Popen(
        command(job, job_file, summary), cwd=ROOT, env=env, stdout=logfile,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, summary


def finish(job: Job, proc: subprocess.Popen, summary: Path, began: float, timeout: float):
    try:
        code = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        return Outcome(job, "timed out", time.perf_counter() - began)
    seconds = time.perf_counter() - began
    data = json.loads(summary.read_text()) if summary.exists() else None
    # exit 3 = ran, target not met: a result like any other
    status = "ok" if code in (0, 3) and data else f"failed (exit {code})"
    return Outcome(job, status, seconds, data, code)


def run_plan(plan: list[Job], work: Path, budget_s: float, log) -> list[Outcome]:
    began = time.perf_counter()
    outcomes: dict[str, Outcome] = {}
    background = [
        (job, *start(job, work, None, log), time.perf_counter()) for job in plan if job.alongside
    ]
    for job in (j for j in plan if not j.alongside):
        left = budget_s - (time.perf_counter() - began)
        source = outcomes.get(job.weights_from or "")
        if left < 20:
            outcomes[job.name] = Outcome(job, "skipped (budget)")
            continue
        if job.weights_from and (source is None or source.status != "ok"):
            outcomes[job.name] = Outcome(job, f"skipped ({job.weights_from} did not run)")
            continue
        weights = baseline_weights(work, job.weights_from) if job.weights_from else None
        t0 = time.perf_counter()
        proc, summary = start(job, work, weights, log)
        outcomes[job.name] = finish(job, proc, summary, t0, left)
        log(f"done  {job.name}: {outcomes[job.name].status} in {outcomes[job.name].seconds:.0f} s")
    for job, proc, summary, t0 in background:
        left = budget_s - (time.perf_counter() - began)
        outcomes[job.name] = finish(job, proc, summary, t0, left)
        log(f"done  {job.name}: {outcomes[job.name].status} in {outcomes[job.name].seconds:.0f} s")
    return [outcomes[j.name] for j in plan]


RUNTIME_COLUMNS = ("torch-cpu", "cuda", "cuda-graph")


def row(outcome: Outcome) -> dict[str, str]:
    job, s = outcome.job, outcome.summary or {}
    trained = "loaded" if job.weights_from else job.device
    cells = {
        "job": job.name,
        "learners": job.learners,
        "batch": str(job.batch),
        "baseline acc (trained on)": "",
        "best acc": "",
        **{f"speedup {r}": "" for r in RUNTIME_COLUMNS},
        "baseline ms": "",
        "target": f"{job.target:g}x {job.runtime}",
        "met": "",
        "s/round": "",
        "candidates/h": "",
        "status": outcome.status,
    }
    if not s:
        return cells
    base, best = s.get("baseline") or {}, s.get("best") or {}
    cells["baseline acc (trained on)"] = f"{base.get('accuracy', float('nan')):.3f} ({trained})"
    if best:
        cells["best acc"] = f"{best.get('accuracy', float('nan')):.3f}"
        for runtime, value in (best.get("speedups") or {}).items():
            if f"speedup {runtime}" in cells:
                cells[f"speedup {runtime}"] = f"{value:.2f}x"
    cells["baseline ms"] = f"{base.get('latency_ms', float('nan')):.3f}"
    cells["met"] = "yes" if s.get("target_met") else "no"
    seconds = [c["seconds"] for c in s.get("candidates", []) if c.get("seconds")]
    if seconds:
        per_round = statistics.median(seconds)
        cells["s/round"] = f"{per_round:.1f}"
        cells["candidates/h"] = f"{3600 / per_round:.0f}"
    return cells


def table(outcomes: list[Outcome]) -> str:
    rows = [row(o) for o in outcomes]
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]
    return "\n".join(lines)


def header(device: str) -> str:
    import torch

    name = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else ""
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"GPU check, {when}: device {device}{f' ({name})' if name else ''}, torch "
        f"{torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda: the GPU plan; cpu: one tiny job (and one reusing it), to check the script",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the jobs, run nothing")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or "gpu-check"),
        help="where table.md, summaries.json and log.txt go (default: $OUT or ./gpu-check)",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="job outputs, tracking stores, weights"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=285.0,
        help="no job starts once this much wall time is spent; running ones are stopped",
    )
    args = parser.parse_args(argv)
    plan = gpu_plan() if args.device == "cuda" else cpu_plan()
    work = args.work or Path(f"/tmp/compressflow-gpu-check-{os.getpid()}")
    if args.dry_run:
        for job in plan:
            where = "alongside, no GPU" if job.alongside else "in turn"
            reuse = f", baseline from {job.weights_from}" if job.weights_from else ""
            print(f"# {job.name} ({where}{reuse})")
            weights = work / "weights" / f"{job.weights_from}.pt" if job.weights_from else None
            print(yaml.safe_dump(job.spec(work, weights), sort_keys=False, width=100).strip())
            job_file = work / "jobs" / f"{job.name}.yaml"
            summary = work / "summaries" / f"{job.name}.json"
            env = " ".join(f"{k}={v}" for k, v in job.env.items())
            print(f"$ {env + ' ' if env else ''}{shlex.join(command(job, job_file, summary))}\n")
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: torch sees no CUDA GPU here; use --device cpu", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        log_lines.append(line)
        print(line, flush=True)

    title = header(args.device)
    log(title)
    outcomes = run_plan(plan, work, args.budget_s, log)
    text = f"{title}\n\n{table(outcomes)}\n"
    print("\n" + text)
    (args.out / "table.md").write_text(text)
    (args.out / "summaries.json").write_text(
        json.dumps({o.job.name: o.summary for o in outcomes}, indent=1, default=str)
    )
    logs = [*log_lines, ""]
    for o in outcomes:
        path = work / "logs" / f"{o.job.name}.log"
        if path.exists():
            logs += [f"===== {o.job.name} =====", path.read_text()[-20000:]]
    (args.out / "log.txt").write_text("\n".join(logs))
    return 0 if all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
