"""The end of a job, in order: measure the baseline once on the test split, choose (and
for a speedup target confirm) a winner per target, export and record each winner, then
write the summary (JSON for machines, a paragraph in MLflow, plots). Each step lives in
its own module; this one only runs them in order."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.job import registration, winners
from pipeline.job import summary as parts
from pipeline.job.baseline import Baseline
from pipeline.job.export import Exported, export_winner
from pipeline.job.modelfile import load_baseline
from pipeline.job.plots import write_plots
from pipeline.job.render import description, nothing_chosen
from pipeline.job.search import SearchState
from pipeline.job.settings import splits_for
from pipeline.job.task import task_for
from pipeline.records.tracking import Tracker
from pipeline.spec import JobSpec

STOPPED_WARNING = (
    "the winner was not re-measured (the job was stopped), so no target is declared met; "
    "resume the job to confirm it"
)


@dataclass
class Ending:
    """Where a job's end is written: its spec, records, output folder and log."""

    spec: JobSpec
    tracker: Tracker
    parent_run_id: str
    out_dir: Path
    log: Callable[[str], None]


@dataclass
class HeldOut:
    """The baseline on the test split, touched once per job, for the final report."""

    model: nn.Module
    loader: Any
    example: torch.Tensor
    accuracy: float


def finalize(
    spec: JobSpec,
    baseline: Baseline,
    state: SearchState,
    stop_reason: str,
    tracker: Tracker,
    parent_run_id: str,
    out_dir: Path,
    log: Callable[[str], None] = print,
    baseline_run_id: str | None = None,
    screening: dict[str, Any] | None = None,
    confirm_winners: bool = True,
    screenings_by_chain: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The summary of a finished search. ``screening``: the two-fidelity search's counts
    (``{evaluated, skipped, failed, promoted, spearman}``), recorded as given. A speedup
    target's winner is re-measured against the baseline before it is declared
    (``pipeline.job.confirm``). A list target gets one winner per target (``targets``),
    each exported under ``best/<value>x/`` and registered with the alias
    ``<kind>-<value>x``; ``best`` and ``target_met`` are then the smallest target's winner
    and "every target met" (the CLI's exit code). ``confirm_winners`` False (a job
    stopping on Ctrl-C or SIGTERM, which must exit within seconds): nothing is
    re-measured, so no speedup target is declared met (a resumed job confirms). A job
    that searched several chains gets ``chains`` (``summary.chains_entry``), its
    screening counts per chain label from ``screenings_by_chain``."""
    end = Ending(spec, tracker, parent_run_id, out_dir, log)
    test = held_out(spec, baseline)
    confirmation: list[dict[str, Any]] = []
    remeasure = _remeasure(end, test, confirmation, confirm_winners)
    chosen = winners.choose_winners(state, remeasure)
    best = chosen[0].result
    summary = parts.start(
        spec,
        parts.baseline_entry(spec, baseline, test.accuracy, best, baseline_run_id),
        all(w.met for w in chosen),
        stop_reason,
        state.counts,
        parts.mlflow_entry(tracker, parent_run_id),
        baseline.onnx_path,
    )
    if screening is not None:
        summary["screening"] = dict(screening)
    if remeasure is not None:
        summary["confirmation"] = confirmation
    if remeasure is winners.not_remeasured and best is not None:
        summary["warnings"].append(STOPPED_WARNING)
    if baseline_run_id:
        tracker.log_metrics(baseline_run_id, {"test_accuracy": test.accuracy})
    labels = winners.won_by(spec.target.is_front, chosen)
    summary["mlflow"]["best_run_id"] = (
        tracker.mark_best(parent_run_id, best.round, labels) if best else None
    )
    run_ids = tracker.child_ids(parent_run_id)
    summary["candidates"] = parts.candidate_rows(state, run_ids, best, labels)
    if screening is None and screenings_by_chain is None:
        screenings_by_chain = {}  # no screenings at all: none of any chain
    by_chain = parts.chains_entry(state, spec.chains, screenings_by_chain)
    if by_chain is not None:
        summary["chains"] = by_chain
    exported = _export_and_log(end, chosen, baseline, test, run_ids, labels)
    _fill_winners(end, summary, chosen, exported, labels, baseline)
    _record(end, summary, exported, labels)
    return summary


def held_out(spec: JobSpec, baseline: Baseline) -> HeldOut:
    splits = splits_for(spec)
    _, _, loader = splits.loaders(spec.finetune.batch_size, spec.seed)
    model = load_baseline(spec, baseline.model_path)
    task = task_for(spec, splits.num_classes)  # the job's metric (accuracy, or the user's)
    return HeldOut(model, loader, splits.example_inputs(), task.measure(model, loader))


def _remeasure(
    end: Ending, test: HeldOut, records: list[dict[str, Any]], confirm_winners: bool
) -> winners.Remeasure | None:
    """How winners are confirmed: re-timed (speedup targets), not at all on a stopped
    job (so none is declared met), or by their exact file bytes (compression: None)."""
    if end.spec.target.kind != "speedup":
        return None
    if not confirm_winners:
        return winners.not_remeasured
    return winners.remeasure_with(end.spec, test.model, test.example, end.out_dir, records, end.log)


def _export_and_log(
    end: Ending,
    chosen: list[winners.Winner],
    baseline: Baseline,
    test: HeldOut,
    run_ids: dict[int, str],
    labels: dict[int, list[str]],
) -> dict[int, Exported]:
    """Each winner exported once (a front's into ``best/<value>x/``) and recorded."""
    exported: dict[int, Exported] = {}
    for w in chosen:
        if w.result is None or w.result.round in exported:
            continue
        folder = end.out_dir / "best"
        if end.spec.target.is_front:
            folder = folder / winners.target_label(w.value)
        done = export_winner(end.spec, w, baseline, test.model, test.loader, test.example, folder)
        done.best["run_id"] = run_ids.get(w.result.round)
        won = labels.get(w.result.round, [])
        registration.log_winner(end.tracker, end.parent_run_id, done, won)
        if end.spec.tracking.register_model:
            run_id = done.best["run_id"] or end.parent_run_id
            # Aliases only for the targets this winner met: an unmet best never takes one.
            met = [
                winners.target_label(x.value)
                for x in chosen
                if x.met and x.result is not None and x.result.round == w.result.round
            ]
            done.registered = registration.register_winner(
                end.spec, end.tracker, run_id, done, test.example, met, end.log
            )
        exported[w.result.round] = done
    return exported


def _fill_winners(
    end: Ending,
    summary: dict[str, Any],
    chosen: list[winners.Winner],
    exported: dict[int, Exported],
    labels: dict[int, list[str]],
    baseline: Baseline,
) -> None:
    """The summary's ``best`` (the smallest target's winner), its files and version, a
    front's ``targets``, and each winner's warnings; their figures on the job's run."""
    spec, tracker, parent = end.spec, end.tracker, end.parent_run_id
    best = chosen[0].result
    if best is not None:
        top = exported[best.round]
        summary["best"] = dict(top.best)
        summary["artifacts"].update(top.artifacts)
        summary["mlflow"].update(top.registered)
        registration.log_best_metrics(spec, tracker, parent, summary["best"], "best")
        tracker.log_file(parent, baseline.onnx_path, "baseline")
    else:
        end.log(
            f"{nothing_chosen(summary['rounds'])}: nothing to export (see the rounds in MLflow)"
        )
    for r, done in exported.items():
        where = f"at {', '.join(labels[r])}: " if spec.target.is_front else ""
        summary["warnings"] += [where + line for line in done.warnings]
    if spec.target.is_front:
        summary["targets"] = parts.front_entries(spec, chosen, exported, end.out_dir)
        for entry in summary["targets"]:
            if entry["best"] is not None:
                prefix = f"front.{winners.target_label(entry['value'])}"
                registration.log_best_metrics(spec, tracker, parent, entry["best"], prefix)


def _record(
    end: Ending,
    summary: dict[str, Any],
    exported: dict[int, Exported],
    labels: dict[int, list[str]],
) -> None:
    """The summary on record: warnings in the log, counts and the paragraph on the job's
    run and on each registered version, the plots, and ``summary.json``."""
    tracker, parent = end.tracker, end.parent_run_id
    for line in summary["warnings"]:
        end.log(f"warning: {line}")
    counts = {f"rounds.{k}": v for k, v in summary["rounds"].items()}
    tracker.log_metrics(parent, {"target_met": float(summary["target_met"]), **counts})
    screening = summary.get("screening") or {}
    numbers: dict[str, float | None] = {
        f"screening.{k}": float(v) for k, v in screening.items() if isinstance(v, int | float)
    }
    tracker.log_metrics(parent, numbers)
    text = description(summary)
    tracker.describe(parent, text)
    registration.describe_versions(tracker, exported, text, parent, labels)
    for path in write_plots(summary, end.out_dir):
        tracker.log_file(parent, path)
    (end.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    tracker.log_file(parent, end.out_dir / "summary.json")
