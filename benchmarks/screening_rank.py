"""Does a screening rank pruned candidates as fine-tuning does? (issue 10, items 1 and 3)

Draws N random channel-pruning settings for a job, scores each by screening with
``screening.train_steps`` of 0 (BatchNorm re-estimation alone, EagleEye's proxy) and of
``--steps`` (a few SGD steps first), fully evaluates each (the product's fine-tune), and
prints Spearman's rank correlation between each screening score and the fine-tuned
validation accuracy, with the seconds each fidelity cost.

    .venv/bin/python benchmarks/screening_rank.py --job <job.yaml> --settings 10 --steps 40

or, reusing full evaluations already on record (each candidate of the named jobs'
parent runs, screened with its own job's spec; no fine-tune is repeated):

    .venv/bin/python benchmarks/screening_rank.py --recorded <tracking uri> \
        --experiment search-quality --jobs sq-resnet56-3x-s0-gp sq-resnet56-4x-s0-gp --steps 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learners.base import ModelInfo  # noqa: E402
from pipeline.job import candidate, screening  # noqa: E402
from pipeline.job.modelfile import load_baseline  # noqa: E402
from pipeline.job.settings import build_learners, splits_for  # noqa: E402
from pipeline.job.twofidelity import spearman  # noqa: E402
from pipeline.spec import load  # noqa: E402


def recorded(uri: str, experiment: str, jobs: list[str]):
    """(spec, params, fine-tuned accuracy) of every completed candidate of the named jobs'
    parent runs, each with its own job's spec (``job.json`` in the run's folder)."""
    from mlflow.tracking import MlflowClient

    from pipeline.spec import parse

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    for name in jobs:
        for parent in client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`compressflow.kind` = 'job' and tags.`mlflow.runName` = '{name}'",
        ):
            pattern = f"benchmarks/results/work/*/*/out/{name}/{parent.info.run_id}/job.json"
            found = list(ROOT.glob(pattern))
            if not found:
                continue
            raw = json.loads(found[0].read_text())
            spec = parse(raw)
            for run in client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                "and tags.`compressflow.kind` = 'candidate'",
            ):
                if run.data.tags.get("status") != "ok" or "accuracy" not in run.data.metrics:
                    continue
                params = {
                    k: (v if k.endswith("importance") else float(v))
                    for k, v in run.data.params.items()
                    if k.startswith("channel.")
                }
                yield name, spec, params, run.data.metrics["accuracy"]


def screen_both(row: dict, base_spec, params: dict, index: int, steps: int, work: Path) -> None:
    """Screen ``params`` with 0 and ``steps`` training steps; scores and seconds into ``row``."""
    for n in (0, steps):
        update = {"screening": base_spec.screening.model_copy(update={"train_steps": n})}
        spec = base_spec.model_copy(update=update)
        started = time.perf_counter()
        weights = base_spec.model.weights
        got = screening.screen_batch(spec, "cpu", weights, 1, [params], index, str(work / "s"))[0]
        row[f"screen{n}"] = got["accuracy"]
        row[f"screen{n}_s"] = time.perf_counter() - started


def record(row: dict, out: Path | None) -> None:
    print(json.dumps({k: v for k, v in row.items() if k != "params"}), flush=True)
    if out:
        with open(out, "a") as handle:
            handle.write(json.dumps(row) + "\n")


def report(rows: list[dict], steps: int) -> None:
    full = [r["full"] for r in rows]
    for n in (0, steps):
        rho = spearman([r[f"screen{n}"] for r in rows], full)
        cost = statistics.median(r[f"screen{n}_s"] for r in rows)
        shown = "n/a" if rho is None else f"{rho:.3f}"
        print(f"train_steps {n:>3}: spearman {shown} over {len(rows)}, {cost:.1f} s each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", help="a job file whose model has weights")
    parser.add_argument("--recorded", help="a tracking URI holding fully evaluated jobs")
    parser.add_argument("--experiment", default="search-quality")
    parser.add_argument("--jobs", nargs="*", default=[])
    parser.add_argument("--settings", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--low", type=float, default=0.4, help="smallest ratio drawn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON lines of every setting")
    args = parser.parse_args()
    if args.recorded:
        return rank_recorded(args)

    work = Path(tempfile.mkdtemp(prefix="screening-rank-"))
    base_spec = load(args.job).model_copy(update={"output": str(work)})
    weights = base_spec.model.weights
    assert weights, "the job's model needs weights (a trained baseline file)"
    channel = build_learners(base_spec)[0]
    info = ModelInfo(load_baseline(base_spec, weights), splits_for(base_spec).example_inputs())
    dims = [d for d in channel.space(info) if d.name.startswith("ratio.")]
    rng = random.Random(args.seed)
    settings = [
        {f"channel.{d.name}": rng.uniform(args.low, d.high) for d in dims}
        for _ in range(args.settings)
    ]
    rows = []
    for i, params in enumerate(settings, 1):
        row: dict = {"params": params}
        screen_both(row, base_spec, params, i, args.steps, work)
        started = time.perf_counter()
        full = candidate.evaluate(base_spec, "cpu", weights, 1, params, i, str(work / "rounds"))
        row["full"], row["full_s"] = full["accuracy"], time.perf_counter() - started
        row["speedup"] = full["speedup"]
        rows.append(row)
        record(row, args.out)
    report(rows, args.steps)
    print(f"full evaluation: {statistics.median(r['full_s'] for r in rows):.0f} s each")


def rank_recorded(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="screening-rank-"))
    rows = []
    for i, (name, base_spec, params, full) in enumerate(
        recorded(args.recorded, args.experiment, args.jobs), 1
    ):
        base_spec = base_spec.model_copy(update={"output": str(work)})
        row: dict = {"job": name, "params": params, "full": full}
        screen_both(row, base_spec, params, i, args.steps, work)
        rows.append(row)
        record(row, args.out)
    report(rows, args.steps)


if __name__ == "__main__":
    main()
