"""Method search: when the search may choose the chain, does its winner do at least as well
as the best single-chain fixed rule, at equal time? (issue 19)

    # full run: resnet20 on digits, onnxruntime-cpu, 2 3 4 6x, seeds 0 1 2
    .venv/bin/python benchmarks/method_search.py
    # cut-down run (one target, one seed, two chains, short training: about 2 min);
    # fewer than 4 baseline epochs, or --limit 400, leaves the baseline at chance
    .venv/bin/python benchmarks/method_search.py --targets 2 --seeds 1 --chains int8 channel,int8 \\
        --pretrain-epochs 4 --epochs 1 --out /tmp/ms-smoke/method_search.json
    # MNIST-1D (6,000 test examples, generated offline by the mnist1d package: see
    # benchmarks/mnist1d_source.py; `pip install -e '.[bench]'`), a 1-D residual CNN;
    # lowrank splits 2-D convs and Linear layers only, so its chains have nothing here
    PYTHONPATH=benchmarks .venv/bin/python benchmarks/method_search.py \
        --model mnist1d_source:cnn --data mnist1d_source:splits --chains channel int8 \
        channel,int8
    # the tables again, from --out
    .venv/bin/python benchmarks/method_search.py --summarize

Per (target, seed), from one trained baseline file per seed (the seed also draws the
job's splits, so every job of a seed sees the same test images):

- one ``rule:<chain>`` job per chain (``learners: [<chain>]``, ``budget: {rounds: 1,
  screen: 0}``): the search's first and only full evaluation is the chain's rule start
  (the optimiser is handed it first), checked by the winner's ``source`` (``rule:<chain>``;
  ``fixed rule`` before issue 19). A chain whose calibration proves the target out of
  reach ends with no winner: it does not meet the target.
- one ``search`` job with ``learners`` = every chain, its ``budget.minutes`` set by
  ``--budget`` (see ``search_budget``): by default the summed time the rule jobs spent in
  their full evaluations. Calibrating every chain and the job's start-up are outside
  ``budget.minutes`` for both sides, and the search pays start-up once where the rules pay
  it once per chain: the table shows both sides' whole wall-clock. At that budget the
  search's screenings take time the rules never spend, so it may not fully evaluate
  every chain's rule start (the per-seed note counts them); ``--budget wall`` gives it
  the rules' summed whole wall-clock, ``--screen 0`` full evaluations only.

Every winner is rebuilt here and scored on the job's test split (per example, for an exact
McNemar test against the best rule of the same seed) and its speedup re-measured against
the baseline on the job's runtime (interleaved, 31 pairs, no measurement pool). "Met" is
the job's own verdict: the low end of its speedup's 95% interval reaches the target and
its validation accuracy is within the floor (``target.max_accuracy_drop``, default 5
points). The best rule of a seed is the most accurate on test among the rules that met
the target: the strongest rival the search could have (an oracle choice).

Every finished job is one row in ``--out`` (JSON); rows already there are not run again,
and a job folder that already holds the same job's summary is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from search_quality import finished_before, mcnemar

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "results" / "work" / "method_search"
OUT = ROOT / "benchmarks" / "results" / "method_search.json"
CHAINS = {  # int8 runs only on onnxruntime
    "onnxruntime-cpu": ["channel", "int8", "channel,int8", "lowrank", "lowrank,int8"],
    "torch-cpu": ["channel", "lowrank", "channel,lowrank"],
}
RULE_SOURCES = ("rule:", "fixed rule")  # "fixed rule": a rule start's source before issue 19
GAIN = 2.0  # points of mean test accuracy the search should gain on at least two targets
ALPHA = 0.05
GOAL = (
    "Goal: at every target where no single-chain rule meets the target within the accuracy "
    "floor, the search meets it; where rules meet it, the search's winner meets it too and "
    f"is never worse than the best rule by McNemar (p<{ALPHA:g}), and beats it by >= "
    f"{GAIN:g} points of mean test accuracy on at least two targets."
)
QUIET = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
}
# What makes two rows the same job (a changed setting runs the job again).
CONFIG = ("model", "runtime", "data", "image_size", "limit", "pretrain_epochs", "epochs")
KEY = (*CONFIG, "max_ratio", "target", "seed", "job", "chains", "budget_asked")


# ---------------------------------------------------------------- the jobs' specs


def chains_of(args: argparse.Namespace) -> list[list[str]]:
    labels = args.chains or CHAINS[args.runtime]
    return [[n.strip() for n in label.split(",") if n.strip()] for label in labels]


def label(chain: Sequence[str]) -> str:
    return ",".join(chain)


def config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in CONFIG}


def job_raw(
    args: argparse.Namespace, target: float, seed: int, learners: list, weights: Path | None
) -> dict[str, Any]:
    """A job of the benchmark (budget, name and output are added per job); ``learners``
    is one chain or a list of chains."""
    model: Any = args.model if weights is None else {"source": args.model, "weights": str(weights)}
    return {
        "model": model,
        "data": {"source": args.data, "image_size": args.image_size, "limit": args.limit},
        "target": {"speedup": float(target), "runtime": args.runtime},
        "learners": learners,
        "learner_options": learner_options(args, learners),
        "finetune": {"pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs},
        "measure": {"batch_size": 32, "threads": 1},
        "seed": seed,
        "tracking": {
            "uri": f"sqlite:///{WORK / 'mlflow.db'}",
            "experiment": "method-search",
            "register_model": False,
        },
    }


def learner_options(args: argparse.Namespace, learners: list) -> dict[str, Any]:
    """``--max-ratio`` for the channel learner, where a chain has it (a spec may not name
    options of a learner it does not use)."""
    chains = learners if isinstance(learners[0], list) else [learners]
    if args.max_ratio and any("channel" in chain for chain in chains):
        return {"channel": {"max_ratio": args.max_ratio}}
    return {}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def cell_dir(args: argparse.Namespace, target: float, seed: int) -> Path:
    data = f"{slug(args.data)}{args.image_size}" + (f"l{args.limit}" if args.limit else "")
    name = f"{slug(args.model)}-{data}-{args.runtime}-p{args.pretrain_epochs}e{args.epochs}"
    name += f"-mr{args.max_ratio:g}" if args.max_ratio else ""
    return WORK / name / f"{target:g}x-s{seed}"


# ---------------------------------------------------------------- baseline and scoring


def trained_baseline(args: argparse.Namespace, seed: int) -> Path:
    """The baseline's weights file for this seed, trained once and kept."""
    from pipeline import spec as specs
    from pipeline.job import baseline

    data = f"{slug(args.data)}{args.image_size}" + (f"l{args.limit}" if args.limit else "")
    folder = WORK / "baselines" / f"{slug(args.model)}-{data}-s{seed}-p{args.pretrain_epochs}"
    done = folder / "baseline.json"
    if not done.exists():
        started = time.perf_counter()
        spec = specs.parse(job_raw(args, 2.0, seed, ["channel"], None))
        made = baseline.prepare(spec, folder, log=lambda m: print(f"[baseline s{seed}] {m}"))
        done.write_text(json.dumps({**made.to_dict(), "seconds": time.perf_counter() - started}))
    return Path(json.loads(done.read_text())["model_path"])


def winner_model(raw: dict[str, Any], summary: dict[str, Any], baseline, seed: int):
    """The job's winner rebuilt from its files, with a spec of the chain it won with."""
    from pipeline import spec as specs
    from pipeline.job.modelfile import load_candidate

    best = summary["best"]
    path = (summary.get("artifacts") or {}).get("best_model") or best.get("model_path")
    chain = winner_chain(raw, best)
    options = {k: v for k, v in raw["learner_options"].items() if k in chain}
    spec = specs.parse({**raw, "learners": chain, "learner_options": options})
    return spec, load_candidate(spec, path, baseline=baseline, seed=seed).eval()


def winner_chain(raw: dict[str, Any], best: dict[str, Any]) -> list[str]:
    """The winner's chain: ``best.learners``, else its ``chain`` parameter, else the job's
    one chain."""
    if best.get("learners"):
        return list(best["learners"])
    if (params := best.get("params") or {}).get("chain"):
        return str(params["chain"]).split(",")
    return list(raw["learners"])


def score(spec, baseline, model, workdir: Path) -> dict[str, Any]:
    """Per-example test correctness, and the speedup re-measured against the baseline on
    the job's runtime with the job's timing settings (31 interleaved pairs, no pool)."""
    import torch
    from torch.utils.data import DataLoader

    from pipeline import measure
    from pipeline.job.settings import latency_settings, splits_for

    splits = splits_for(spec)
    correct: list[bool] = []
    with torch.no_grad():
        for x, y in DataLoader(splits.test, batch_size=256, shuffle=False):
            correct += (model(x).argmax(1) == y).tolist()
    settings = replace(latency_settings(spec), warmup=3, repeats=31, max_repeats=0)
    timing = measure.compare_latency(
        baseline, model, splits.example_inputs(), settings, workdir / "score"
    )
    return {
        "test_accuracy": sum(correct) / len(correct),
        "correct": "".join("1" if c else "0" for c in correct),
        "speedup": timing.speedup,
        "speedup_interval": [timing.low, timing.high],
    }


# ---------------------------------------------------------------- running a job


def run_job(raw: dict[str, Any], folder: Path) -> tuple[dict[str, Any] | None, int, float]:
    """``compressflow run`` on ``raw`` in ``folder``: (summary or None, exit code, wall
    seconds). The same job already finished there is reused, not run again."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    job, summary_path, wall = folder / "job.yaml", folder / "summary.json", folder / "wall.json"
    text = yaml.safe_dump({**raw, "output": str(folder / "out")}, sort_keys=False)
    if finished_before(job, summary_path, text) and wall.exists():
        done = json.loads(wall.read_text())
        return json.loads(summary_path.read_text()), done["exit"], done["seconds"]
    summary_path.unlink(missing_ok=True)
    job.write_text(text)
    command = [str(ROOT / ".venv" / "bin" / "compressflow"), "run", "--job", str(job)]
    command += ["--summary-json", str(summary_path)]
    started = time.perf_counter()
    with (folder / "log.txt").open("w") as log:
        exit_code = subprocess.run(
            command, cwd=ROOT, env={**os.environ, **QUIET}, stdout=log, stderr=subprocess.STDOUT
        ).returncode
    seconds = time.perf_counter() - started
    wall.write_text(json.dumps({"exit": exit_code, "seconds": seconds}))
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return summary, exit_code, seconds


@dataclass
class Job:
    """One job of the benchmark: the key fields of its row, its spec and its folder."""

    base: dict[str, Any]
    raw: dict[str, Any]
    folder: Path


def rule_job(args, target: float, seed: int, chain: list[str], weights: Path) -> Job:
    """A chain's fixed rule: one full evaluation, no screening (the chain's rule start)."""
    raw = job_raw(args, target, seed, chain, weights)
    raw["name"] = f"ms-{target:g}x-s{seed}-{'-'.join(chain)}"
    raw["budget"] = {"rounds": 1, "screen": 0, "patience": 1}
    base = keyed(args, target, seed, f"rule:{label(chain)}", label(chain), "rule")
    return Job(base, raw, cell_dir(args, target, seed) / f"rule-{'-'.join(chain)}")


def search_job(args, target: float, seed: int, rules: list[dict[str, Any]], weights) -> Job:
    """The search among every chain, with the budget ``search_budget`` sets."""
    chains = chains_of(args)
    budget, why = search_budget(args, rules)
    raw = job_raw(args, target, seed, chains, weights)
    raw["name"] = f"ms-{target:g}x-s{seed}-search-{len(chains)}-chains"
    raw["budget"] = budget
    if args.distill_search:  # distil or not, and T and alpha, become searched choices
        raw["distillation"] = {"search": True}
        raw["name"] += "-kd"
    chains_label = ";".join(label(c) for c in chains)
    base = keyed(args, target, seed, "search", chains_label, budget_asked(args))
    base.update(budget=budget, budget_why=why)
    kd = "-kd" if args.distill_search else ""
    return Job(base, raw, cell_dir(args, target, seed) / f"search{kd}-{slug(budget_asked(args))}")


def search_budget(args, rules: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The search's budget and how it was set: ``--search-rounds`` full evaluations, or
    ``--search-minutes``, or by ``--budget``: ``eval``, the summed full-evaluation time of
    the rule jobs (each side also calibrates every chain and starts up outside it);
    ``wall``, the summed whole wall-clock of the rule jobs (more than the rules had: the
    search's calibrations and start-up come on top). A time budget is never stopped
    first by its rounds (100) or patience (100)."""
    budget: dict[str, Any] = {"rounds": 100, "patience": 100}
    if args.screen is not None:
        budget["screen"] = args.screen
    if args.search_rounds:
        budget["rounds"] = args.search_rounds
        return budget, f"budget.rounds {args.search_rounds} (a rounds budget, not timed)"
    if args.search_minutes:
        return {**budget, "minutes": args.search_minutes}, "budget.minutes as given"
    if len(rules) < len(chains_of(args)):
        raise RuntimeError("the search's time budget needs every rule's job first")
    field = "eval_seconds" if args.budget == "eval" else "seconds"
    minutes = max(0.1, sum(r.get(field) or 0.0 for r in rules) / 60)
    what = "full evaluations" if args.budget == "eval" else "whole wall-clock"
    return {**budget, "minutes": round(minutes, 2)}, f"the rule jobs' summed {what}"


def budget_asked(args: argparse.Namespace) -> str:
    if args.search_rounds:
        return f"{args.search_rounds} rounds"
    return f"{args.search_minutes:g} min" if args.search_minutes else args.budget


def keyed(args, target: float, seed: int, job: str, chains: str, asked: str) -> dict[str, Any]:
    return {
        **config(args),
        "max_ratio": args.max_ratio,
        "target": float(target),
        "seed": seed,
        "job": job,
        "chains": chains,
        "budget_asked": asked,
    }


def job_row(job: Job, baseline, seed: int) -> dict[str, Any]:
    """Run one job and score its winner: the row for ``--out``."""
    summary, exit_code, seconds = run_job(job.raw, job.folder)
    row = {**job.base, "exit": exit_code, "seconds": seconds, "folder": str(job.folder)}
    if summary is None:
        tail = (job.folder / "log.txt").read_text().splitlines()[-5:]
        return {**row, "status": "failed", "error": "\n".join(tail)}
    best = summary.get("best")
    candidates = summary.get("candidates") or []
    row.update(
        met=bool(summary.get("target_met")),
        stop_reason=summary.get("stop_reason"),
        rounds=summary.get("rounds"),
        eval_seconds=sum(c.get("seconds") or 0.0 for c in candidates),
        sources=[c.get("source") for c in candidates],
        baseline_val_accuracy=(summary.get("baseline") or {}).get("accuracy"),
    )
    if not best:
        return {**row, "status": "no winner", "met": False}
    spec, model = winner_model(job.raw, summary, baseline, seed)
    runtime = job.raw["target"]["runtime"]
    row.update(
        source=best.get("source"),
        winner_chain=label(winner_chain(job.raw, best)),
        chain_param=(best.get("params") or {}).get("chain"),
        # distillation as a searched choice (--distill-search): the winner's, and how
        # many fully evaluated candidates distilled
        distilled=(best.get("params") or {}).get("distill.on"),
        distilled_candidates=sum(
            (c.get("params") or {}).get("distill.on") is True for c in candidates
        ),
        val_accuracy=best.get("accuracy"),
        job_test_accuracy=best.get("test_accuracy"),
        job_speedup=best.get("speedup"),
        job_speedup_interval=(best.get("speedup_intervals") or {}).get(runtime),
        **score(spec, baseline, model, job.folder),
    )
    return {**row, "status": "ok"}


def checked_rule(row: dict[str, Any]) -> dict[str, Any]:
    """A rule's row whose one evaluation was not the chain's rule start does not count."""
    if row["status"] != "ok":
        return row
    if not str(row.get("source")).startswith(RULE_SOURCES):
        # no rule start (its calibration failed or fell short within the noise): the one
        # evaluation was the optimiser's first proposal, not the rule's setting
        return {**row, "status": "no rule start"}
    if (row.get("rounds") or {}).get("total") != 1:
        return {**row, "status": "not one evaluation"}
    return row


# ---------------------------------------------------------------- the results file


def read_rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


def save_row(path: Path, row: dict[str, Any]) -> None:
    """``row`` into ``path``, replacing a row of the same job."""
    rows = [r for r in read_rows(path) if key(r) != key(row)] + [row]
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    part.write_text(json.dumps(rows, indent=1))
    part.replace(path)


def key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in KEY)


def recorded(path: Path, job: Job) -> dict[str, Any] | None:
    """The row ``--out`` holds for ``job``, unless it failed (then it runs again)."""
    return next(
        (r for r in read_rows(path) if key(r) == key(job.base) and r["status"] != "failed"),
        None,
    )


# ---------------------------------------------------------------- the runs


def run(args: argparse.Namespace) -> None:
    """Seed by seed, target by target: every chain's rule, then the search."""
    import torch

    from pipeline import spec as specs
    from pipeline.job.modelfile import load_baseline

    torch.set_num_threads(1)  # two shared cores; the jobs train and time with one thread
    for seed in range(args.seeds):
        weights = trained_baseline(args, seed)
        spec = specs.parse(job_raw(args, 2.0, seed, ["channel"], weights))
        baseline = load_baseline(spec, weights).eval()
        for target in args.targets:
            rules = [
                run_one(args, rule_job(args, target, seed, chain, weights), baseline, seed)
                for chain in chains_of(args)
            ]
            if not args.rules_only:
                run_one(args, search_job(args, target, seed, rules, weights), baseline, seed)
    print(summarize(read_rows(args.out)))


def run_one(args: argparse.Namespace, job: Job, baseline, seed: int) -> dict[str, Any]:
    if (row := recorded(args.out, job)) is not None:
        return row
    print(f"== {job.base['target']:g}x seed {seed}: {job.base['job']}", flush=True)
    try:
        row = job_row(job, baseline, seed)
    except Exception as err:  # noqa: BLE001 - recorded; the grid goes on
        row = {**job.base, "status": "failed", "error": f"{type(err).__name__}: {err}"}
    if job.base["job"].startswith("rule:"):
        row = checked_rule(row)
    print(
        f"   {row['status']}: {row.get('winner_chain')} ({row.get('source')}) test "
        f"{row.get('test_accuracy')} speedup {row.get('speedup')} met {row.get('met')} in "
        f"{row.get('seconds', 0):.0f} s",
        flush=True,
    )
    save_row(args.out, row)
    return row


# ---------------------------------------------------------------- the tables


def summarize(rows: list[dict[str, Any]]) -> str:
    """Per setting and target: each job's winner per seed, then the verdict lines."""
    lines: list[str] = []
    groups: dict[tuple, dict[float, list[dict[str, Any]]]] = {}
    for r in rows:
        setting = tuple(r.get(k) for k in (*CONFIG, "max_ratio"))
        groups.setdefault(setting, {}).setdefault(r["target"], []).append(r)
    for setting, by_target in groups.items():
        s = dict(zip((*CONFIG, "max_ratio"), setting, strict=True))
        lines += [
            f"## {s['model']} on {s['data']} ({s['image_size']} px"
            + (f", {s['limit']} samples" if s["limit"] else "")
            + f"), {s['runtime']}, baseline trained {s['pretrain_epochs']} epochs, "
            f"fine-tune {s['epochs']} epochs"
            + (f", channel.max_ratio {s['max_ratio']}" if s["max_ratio"] else ""),
            "",
        ]
        verdicts = []
        for target in sorted(by_target):
            table, verdict = target_section(target, by_target[target])
            lines += table
            verdicts.append(verdict)
        lines += ["### Verdict (issue 19)", "", GOAL, "", *[v[0] for v in verdicts], ""]
        lines.append(overall(verdicts))
        lines.append("")
    return "\n".join(lines) if lines else "nothing finished yet"


def target_section(target: float, rows: list[dict[str, Any]]):
    """The table of one target (a row per seed and job) and its verdict."""
    n_test = next((len(r["correct"]) for r in rows if r.get("correct")), 0)
    lines = [
        f"### target {target:g}x",
        "",
        f"Test split: {n_test} examples"
        + (f" (one = {100 / n_test:.2f} points)" if n_test else "")
        + ". Met: the job's own verdict (95% interval's low end and accuracy floor); "
        "re >=: the re-measured speedup reaches the target too.",
        "",
        "| seed | job | winner's chain | source | test acc % | speedup re-measured [95%] "
        "| met / re >= | wall s (full evals s) | McNemar vs best rule met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], []).append(r)
    notes = []
    for seed in sorted(by_seed):
        rules = [r for r in by_seed[seed] if r["job"].startswith("rule:")]
        search = next((r for r in by_seed[seed] if r["job"] == "search"), None)
        best = best_rule(rules)
        for r in [*rules, *([search] if search else [])]:
            lines.append(table_row(r, target, best))
        if search is not None:
            notes.append(budget_note(seed, search, rules))
    return lines + ["", *notes, ""], target_verdict(target, by_seed)


def best_rule(rules: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most accurate on test of the rules that met the target (None: none met)."""
    met = [r for r in rules if r["status"] == "ok" and r.get("met")]
    return max(met, key=lambda r: r["test_accuracy"], default=None)


def table_row(r: dict[str, Any], target: float, best: dict[str, Any] | None) -> str:
    if r["status"] != "ok":
        why = (r.get("stop_reason") or r.get("error") or "-").splitlines()[0][:90]
        return (
            f"| {r['seed']} | {r['job']} | - | {r['status']}: {why} | - | - | no "
            f"| {r.get('seconds', 0):.0f} | - |"
        )
    low, high = r["speedup_interval"]
    versus = "-"
    if r is best:
        versus = "(best rule)"
    elif r["job"] == "search" and best is not None:
        b, c, p = mcnemar(best["correct"], r["correct"])
        versus = f"p={p:.2g} ({c}+/{b}-) vs {best['job']}"
    return (
        f"| {r['seed']} | {r['job']} | {r['winner_chain']} | {r['source']} "
        f"| {100 * r['test_accuracy']:.2f} | {r['speedup']:.2f}x [{low:.2f}-{high:.2f}] "
        f"| {yes(r['met'])} / {yes(r['speedup'] >= target)} "
        f"| {r['seconds']:.0f} ({r.get('eval_seconds', 0):.0f}) | {versus} |"
    )


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def budget_note(seed: int, search: dict[str, Any], rules: list[dict[str, Any]]) -> str:
    budget = search.get("budget") or {}
    spent = f"budget.minutes {budget['minutes']:g}" if "minutes" in budget else "rounds budget"
    rounds = (search.get("rounds") or {}).get("total")
    starts = sum(str(s).startswith(RULE_SOURCES) for s in search.get("sources") or [])
    return (
        f"- seed {seed}: search {spent} ({search.get('budget_why')}); whole wall-clock: search "
        f"{search.get('seconds', 0):.0f} s, the rules {sum(r.get('seconds', 0) for r in rules):.0f}"
        f" s summed; {rounds} full evaluations ({starts} of them rule starts); "
        f"stopped: {search.get('stop_reason')}"
    )


def target_verdict(target: float, by_seed: dict[int, list[dict[str, Any]]]):
    """(line, this target's part of the goal holds, mean gain in points over the best
    rule where any met): where no rule meets the target the search meets it; where
    rules meet it the search meets it too and is not worse than the best rule by
    McNemar (p < ALPHA)."""
    none_met, search_met, gains, worse, missed, meeting = [], [], [], [], [], []
    for seed, rows in sorted(by_seed.items()):
        search = next((r for r in rows if r["job"] == "search"), None)
        if search is None:
            continue
        ok = search["status"] == "ok" and bool(search.get("met"))
        rules = [r for r in rows if r["job"].startswith("rule:")]
        best = best_rule(rules)
        meeting.append(f"{sum(r['status'] == 'ok' and bool(r.get('met')) for r in rules)}")
        if best is None:
            none_met.append(seed)
            search_met += [seed] if ok else []
            continue
        if not ok:
            missed.append(seed)
            continue
        b, c, p = mcnemar(best["correct"], search["correct"])
        if p < ALPHA and b > c:
            worse.append(f"{seed} (p={p:.2g})")
        gains.append(100 * (search["test_accuracy"] - best["test_accuracy"]))
    seeds = len(none_met) + len(missed) + len(gains)
    if not seeds:
        return f"- {target:g}x: the search has not finished yet", False, None
    holds = len(search_met) == len(none_met) and not worse and not missed
    gain = statistics.fmean(gains) if gains else None
    line = f"- {target:g}x ({seeds} seeds; rules meeting it per seed: {', '.join(meeting)}): "
    if none_met:
        line += f"no rule met at seeds {none_met}: the search met at {len(search_met)}; "
    if gains or missed:
        line += (
            f"rules met at {len(gains) + len(missed)} seeds: the search missed the target "
            f"at {missed or 'none'}, worse than the best rule by McNemar at "
            f"{', '.join(worse) or 'none'}"
        )
        line += f", mean gain {gain:+.2f} points; " if gain is not None else "; "
    return line + ("holds" if holds else "FAILS"), holds, gain


def overall(verdicts: list[tuple[str, bool, float | None]]) -> str:
    gained = sum(g is not None and g >= GAIN for _, _, g in verdicts)
    every = all(h for _, h, _ in verdicts)
    reached = every and gained >= 2
    return (
        f"Result: every target holds: {yes(every)}; the search gains >= {GAIN:g} points over "
        f"the best rule at {gained} target(s) (2 needed): goal "
        f"{'REACHED' if reached else 'not reached'}."
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", help="zoo name (mobilenet_v2, ...)")
    parser.add_argument("--targets", nargs="+", type=float, default=[2.0, 3.0, 4.0, 6.0])
    parser.add_argument("--runtime", default="onnxruntime-cpu", choices=sorted(CHAINS))
    parser.add_argument("--seeds", type=int, default=3, help="how many: seeds 0 .. N-1")
    parser.add_argument(
        "--data", default="digits", help="digits | cifar10:<dir> | imagefolder:<dir> | module:fn"
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--limit", type=int, help="data.limit: use at most this many samples")
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tune epochs, every job")
    parser.add_argument(
        "--chains",
        nargs="+",
        help="comma-separated chains (default: channel int8 channel,int8 lowrank "
        "lowrank,int8 on onnxruntime-cpu; channel lowrank channel,lowrank on torch-cpu)",
    )
    parser.add_argument("--max-ratio", type=float, help="channel.max_ratio in every job")
    parser.add_argument(
        "--budget",
        choices=("eval", "wall"),
        default="eval",
        help="the search's budget.minutes: the rule jobs' summed full-evaluation time "
        "(eval) or summed whole wall-clock (wall)",
    )
    parser.add_argument("--search-minutes", type=float, help="a fixed budget.minutes instead")
    parser.add_argument("--search-rounds", type=int, help="a rounds budget instead of minutes")
    parser.add_argument(
        "--screen", type=int, help="the search's budget.screen (default: the job's)"
    )
    parser.add_argument(
        "--distill-search",
        action="store_true",
        help="the search job also chooses whether to distil (distillation.search); use its "
        "own --out with the rule rows copied in, so the rules are not run again",
    )
    parser.add_argument("--rules-only", action="store_true", help="run the rules, not the search")
    parser.add_argument("--out", type=Path, default=OUT, help="every job's figures (JSON)")
    parser.add_argument("--summarize", action="store_true", help="print the tables and stop")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(read_rows(args.out)))
        return
    run(args)


if __name__ == "__main__":
    main()
