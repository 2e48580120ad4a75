"""The end of a job: measure the winner once on the test split, export it, register it
from its own child run, mark it in MLflow, plot every candidate against the target, and
write the summary (JSON for machines, a table and a paragraph for people)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from learners.formats import export
from pipeline import measure
from pipeline.job import plots
from pipeline.job.baseline import Baseline
from pipeline.job.modelfile import copy_candidate, load_baseline, load_candidate, recipe_files
from pipeline.job.search import SearchState
from pipeline.job.settings import build_learners, latency_settings, splits_for
from pipeline.job.task import task_for
from pipeline.records.results import CandidateResult
from pipeline.records.tracking import (
    Tracker,
    achieved_key,
    candidate_metrics,
    log_model_without_pickle,
    run_link,
)
from pipeline.spec import JobSpec


def registered_name(spec: JobSpec) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.job_name)


def onnx_speedup(baseline_onnx: str, best_onnx: str, spec: JobSpec, example) -> float:
    """The exported files timed against each other on onnxruntime, as a user would."""
    settings = latency_settings(spec, "onnxruntime-cpu")
    base_ms, best_ms = measure.time_onnx_files(
        [Path(baseline_onnx), Path(best_onnx)], example, settings
    )
    return base_ms / best_ms


def finalize(
    spec: JobSpec,
    baseline: Baseline,
    state: SearchState,
    stop_reason: str,
    tracker: Tracker,
    parent_run_id: str,
    out_dir: Path,
    log=print,
    baseline_run_id: str | None = None,
) -> dict[str, Any]:
    splits = splits_for(spec)
    _, _, test_loader = splits.loaders(spec.finetune.batch_size, spec.seed)
    example = splits.example_inputs()
    base_model = load_baseline(spec, baseline.model_path)
    task = task_for(spec, splits.num_classes)  # the job's metric (accuracy, or the user's)
    base_test = task.measure(base_model, test_loader)
    best = state.best()
    feasible = best is not None and state.feasible(best)
    summary: dict[str, Any] = {
        "job": spec.job_name,
        "target": {
            "kind": spec.target.kind,
            "value": spec.target.value,
            "runtime": spec.target.runtime,
            "also_on": spec.target.also_on,
        },
        "target_met": bool(feasible),
        "stop_reason": stop_reason,
        "baseline": {
            "accuracy": baseline.accuracy,
            "test_accuracy": base_test,
            # From the winner's interleaved timing, like best.speedup (else timed alone).
            "latency_ms": best.baseline_latency_ms
            if best is not None and best.baseline_latency_ms
            else baseline.latency_ms,
            "speedup": 1.0,
            "compression": 1.0,
            achieved_key(spec.target.kind): 1.0,
            "flops": baseline.flops,
            "params": baseline.params,
            "param_count": baseline.params,
            "bytes": baseline.bytes,
            "run_id": baseline_run_id,
        },
        "best": None,
        "rounds": state.counts,
        "mlflow": {
            "tracking_uri": tracker.uri,
            "experiment_id": tracker.experiment_id,
            "parent_run_id": parent_run_id,
            "best_run_id": None,
            "registered_model": None,
            "version": None,
        },
        "artifacts": {"baseline_onnx": baseline.onnx_path, "best_onnx": None, "best_model": None},
        "candidates": [],
        # In words: what a reader must know (a winner slower somewhere, groups left alone).
        "warnings": [],
    }
    if baseline_run_id:
        tracker.log_metrics(baseline_run_id, {"test_accuracy": base_test})
    best_run_id = tracker.mark_best(parent_run_id, best.round) if best is not None else None
    summary["mlflow"]["best_run_id"] = best_run_id
    summary["candidates"] = candidate_rows(state, tracker.child_ids(parent_run_id), best)
    if best is not None:
        summary["best"], best_model = _report_best(
            spec, best, baseline, test_loader, example, out_dir
        )
        summary["best"]["run_id"] = best_run_id
        summary["artifacts"].update(
            best_onnx=summary["best"].pop("onnx_path"), best_model=best.model_path
        )
        timed = time_everywhere(spec, base_model, best_model, example, out_dir / "best")
        summary["best"]["runtimes"] = timed
        summary["warnings"] += warnings_for(spec, timed, best)
        tracker.log_metrics(
            parent_run_id,
            {f"best.speedup.{rt}": t["speedup"] for rt, t in timed.items() if "speedup" in t},
        )
        for line in summary["warnings"]:
            log(f"warning: {line}")
        _log_best(spec, tracker, parent_run_id, summary, best_model, example, log)
    else:
        log(f"{nothing_chosen(state.counts)}: nothing to export (see the rounds in MLflow)")
    tracker.log_metrics(
        parent_run_id,
        {"target_met": float(feasible), **{f"rounds.{k}": v for k, v in state.counts.items()}},
    )
    tracker.describe(parent_run_id, description(summary))
    if summary["mlflow"]["version"] is not None:
        tracker.describe_version(
            summary["mlflow"]["registered_model"],
            summary["mlflow"]["version"],
            description(summary),
            {"best_run_id": best_run_id, "best_round": best.round if best else None,
             "job_run_id": parent_run_id},
        )  # fmt: skip
    for path in write_plots(summary, out_dir):
        tracker.log_file(parent_run_id, path)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    tracker.log_file(parent_run_id, out_dir / "summary.json")
    return summary


def baseline_result(spec: JobSpec, baseline: Baseline, seconds: float) -> CandidateResult:
    """The baseline in a candidate's shape, so its child run has the candidates' keys."""
    return CandidateResult(
        round=0,
        params={},
        learners=[],
        accuracy=baseline.accuracy,
        latency_ms=baseline.latency_ms,
        baseline_latency_ms=baseline.latency_ms,
        speedup=1.0,
        speedups=dict.fromkeys(spec.target.runtimes, 1.0),
        flops=baseline.flops,
        param_count=baseline.params,
        bytes=baseline.bytes,
        compression=1.0,
        curves=baseline.pretrain_curve,
        seconds=seconds,
    )


def candidate_rows(
    state: SearchState, run_ids: dict[int, str], best: CandidateResult | None
) -> list[dict[str, Any]]:
    """Every round as logged to MLflow (the same metrics), for the summary and the plots."""
    rows = []
    for r in sorted(state.results, key=lambda r: r.round):
        feasible = state.feasible(r)
        rows.append(
            {
                "round": r.round,
                "run_id": run_ids.get(r.round),
                "status": r.status,
                "learners": r.learners,
                "params": r.params,
                **candidate_metrics(r, state.target_kind, feasible),
                "is_best": float(best is not None and r.round == best.round),
            }
        )
    return rows


def dataset_facts(spec: JobSpec) -> dict[str, Any]:
    """The job's data for ``mlflow.log_input``: name, digest (of the split tensors where
    the source yields tensors, else of its definition), source and split sizes."""
    splits = splits_for(spec)
    d = spec.data
    source = {
        "source": d.source,
        "image_size": d.image_size,
        "limit": d.limit,
        "val_fraction": d.val_fraction,
        "test_fraction": d.test_fraction,
        "seed": spec.seed,
    }
    h = hashlib.sha256(json.dumps(source, sort_keys=True).encode())
    sizes = {}
    for name in ("train", "val", "test"):
        ds = getattr(splits, name)
        sizes[name] = len(ds)
        for t in getattr(ds, "tensors", ()):
            h.update(t.contiguous().numpy().tobytes())
    return {
        "name": d.source.split(":")[0] if ":" in d.source else d.source,
        "digest": h.hexdigest()[:16],
        "source": source,
        "profile": {
            "splits": sizes,
            "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape),
        },
    }


def write_plots(summary: dict[str, Any], out_dir: Path, stem: str = "candidates") -> list[Path]:
    """``candidates.png`` and ``candidates.html`` (nothing when no round was run)."""
    if not summary.get("candidates"):
        return []
    png, html = out_dir / f"{stem}.png", out_dir / f"{stem}.html"
    plots.draw_png(summary, png)
    plots.draw_html(summary, html)
    return [png, html]


def description(summary: dict[str, Any]) -> str:
    """One paragraph for the parent run and the model version: target, met or not, the
    winner's accuracy and achieved figure."""
    t, b, w, r = summary["target"], summary["baseline"], summary["best"], summary["rounds"]
    where = " and ".join([t["runtime"], *t.get("also_on", [])])
    verdict = "met" if summary["target_met"] else "NOT met"
    text = f"compressflow job `{summary['job']}`: target {t['kind']} >= {t['value']:g}"
    text += f" on {where}, {verdict}. "
    if w:
        key = achieved_key(t["kind"])
        achieved = w.get(key)
        text += (
            f"Chosen: round {w['round']} ({'+'.join(w['learners'])}), validation accuracy "
            f"{w['accuracy']:.4f} (baseline {b['accuracy']:.4f}), test accuracy "
            f"{w['test_accuracy']:.4f} (baseline {b['test_accuracy']:.4f}), "
            f"{key} {achieved:.2f}x, speedup on {t['runtime']} {w['speedup'] or 0:.2f}x, "
            f"compression {w['compression'] or 0:.2f}x. "
        )
    else:
        text += nothing_chosen(r).capitalize() + ". "
    text += (
        f"{r['total']} rounds ({r['feasible']} feasible, {r['failed']} failed); "
        f"stopped: {summary['stop_reason']}."
    )
    return text


def result_markdown(summary: dict[str, Any]) -> str:
    """The result for Prefect's UI: the paragraph, the table and the MLflow run link."""
    m = summary["mlflow"]
    link = run_link(m["tracking_uri"], m["experiment_id"], m["parent_run_id"])
    lines = [f"# {summary['job']}", "", description(summary), "", "```", table(summary), "```"]
    lines += ["", f"MLflow run: [{m['parent_run_id']}]({link})"]
    if m.get("best_run_id"):
        best = run_link(m["tracking_uri"], m["experiment_id"], m["best_run_id"])
        lines.append(f"Chosen candidate: [{m['best_run_id']}]({best})")
    return "\n".join(lines)


def rounds_table(kind: str, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One short row per round, for Prefect's table artifact and the terminal report."""
    key = achieved_key(kind)
    out = []
    for row in candidates:
        out.append(
            {
                "round": row["round"],
                "status": row["status"],
                "accuracy": _round(row.get("accuracy"), 4),
                key: _round(row.get(key), 3),
                "compression": _round(row.get("compression"), 3),
                "feasible": bool(row.get("feasible")),
                "best": bool(row.get("is_best")),
                "seconds": _round(row.get("seconds"), 1),
            }
        )
    return out


def rounds_text(summary: dict[str, Any]) -> str:
    """The rounds as an aligned text table (``compressflow report``)."""
    rows = rounds_table(summary["target"]["kind"], summary.get("candidates", []))
    if not rows:
        return "no rounds recorded"
    cells = [list(rows[0])] + [
        ["-" if v is None else ("yes" if v is True else "" if v is False else str(v))
         for v in row.values()]
        for row in rows
    ]  # fmt: skip
    width = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(width[i]) for i, c in enumerate(r)) for r in cells)


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)


def runtimes_here() -> list[str]:
    """Every runtime the tool can time on this machine (the GPU ones only with CUDA)."""
    gpu = torch.cuda.is_available()
    return [r for r in measure.RUNTIMES if gpu or r not in measure.GPU_RUNTIMES]


def time_everywhere(
    spec: JobSpec, base_model, model, example, workdir: Path
) -> dict[str, dict[str, Any]]:
    """The winner against the baseline on every runtime here its chain runs on
    (interleaved, the job's measurement settings): ``{runtime: {baseline_ms, best_ms,
    speedup}}``, or ``{"error": ...}`` where timing failed (the report goes on)."""
    allowed = [x.runtimes for x in build_learners(spec) if x.runtimes is not None]
    out: dict[str, dict[str, Any]] = {}
    for runtime in runtimes_here():
        if any(runtime not in r for r in allowed):
            continue
        try:
            t = measure.compare_latency(
                base_model, model, example, latency_settings(spec, runtime), workdir
            )
        except Exception as err:  # noqa: BLE001 - a report, not a reason to fail the job
            out[runtime] = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}
            continue
        out[runtime] = {
            "baseline_ms": t.baseline_ms,
            "best_ms": t.candidate_ms,
            "speedup": t.speedup,
        }
    return out


def warnings_for(
    spec: JobSpec, timed: dict[str, dict[str, Any]], best: CandidateResult
) -> list[str]:
    """What the reader must not miss, in words: a winner slower than the baseline on any
    runtime, and channel groups the pruner had to leave alone."""
    out = []
    for runtime, t in timed.items():
        if t.get("speedup", 1.0) < 1.0:
            out.append(
                f"the chosen model is SLOWER than the baseline on {runtime}: "
                f"{t['speedup']:.2f}x ({t['best_ms']:.2f} ms against {t['baseline_ms']:.2f} ms "
                f"per batch of {spec.measure.batch_size})"
            )
        elif "error" in t:
            out.append(f"the chosen model could not be timed on {runtime}: {t['error']}")
    excluded = (best.records or {}).get("channel", {}).get("excluded") or []
    if excluded:
        names = ", ".join(e["group"] for e in excluded[:8]) + (" ..." if len(excluded) > 8 else "")
        out.append(
            f"channel pruning left {len(excluded)} dependency group(s) unpruned because "
            f"torch-pruning cannot prune them consistently: {names} (reasons in the "
            "candidates' per_layer_settings.json and channel_survey.json)"
        )
    return out


def nothing_chosen(counts: dict[str, int]) -> str:
    """Why no candidate is reported: none completed, or every one that did is at chance
    accuracy (a model at chance is never the answer, not even the closest one)."""
    completed = counts["total"] - counts["failed"]
    if completed == 0:
        return "no candidate completed"
    return f"no candidate is reported: all {completed} completed ones are at chance accuracy"


def _report_best(spec, best: CandidateResult, baseline: Baseline, test_loader, example, out_dir):
    folder = out_dir / "best"
    folder.mkdir(parents=True, exist_ok=True)
    assert best.model_path is not None, "the best candidate is a completed one"
    model = load_candidate(spec, best.model_path, load_baseline(spec, baseline.model_path))
    best.model_path = str(copy_candidate(best.model_path, folder))
    onnx_path = export.export_onnx(model, example, folder / "model.onnx")
    deployable = None
    if best.deployable_path and not best.deployable_path.endswith(".onnx"):
        deployable = shutil.copy(best.deployable_path, folder / Path(best.deployable_path).name)
    check = onnx_speedup(baseline.onnx_path, str(onnx_path), spec, example)
    report = {
        "round": best.round,
        "accuracy": best.accuracy,
        "test_accuracy": task_for(spec, 0).measure(model, test_loader),
        "latency_ms": best.latency_ms,
        achieved_key(spec.target.kind): best.achieved(spec.target.kind),
        "speedup": best.speedup,
        "speedups": best.speedups,
        "compression": best.compression,
        "onnx_speedup": check,
        "flops": best.flops,
        # The issue asks for best.params as the chosen settings; the count is param_count.
        "params": best.params,
        "param_count": best.param_count,
        "bytes": best.bytes,
        "learners": best.learners,
        "deployable": str(deployable) if deployable else str(onnx_path),
        "onnx_path": str(onnx_path),
    }
    return report, model


def _log_best(spec, tracker: Tracker, parent_run_id: str, summary, model, example, log) -> None:
    best = summary["best"]
    tracker.log_metrics(
        parent_run_id,
        {
            f"best.{k}": best[k]
            for k in (
                "accuracy",
                "test_accuracy",
                achieved_key(spec.target.kind),
                "speedup",
                "compression",
                "onnx_speedup",
                "latency_ms",
                "flops",
                "param_count",
                "bytes",
            )
        },
    )
    best_run_id = summary["mlflow"]["best_run_id"]
    if best_run_id:  # measured once, for the winner only
        tracker.log_metrics(
            best_run_id,
            {"test_accuracy": best["test_accuracy"], "onnx_speedup": best["onnx_speedup"]},
        )
    tracker.log_file(parent_run_id, summary["artifacts"]["best_onnx"], "best")
    tracker.log_file(parent_run_id, summary["artifacts"]["baseline_onnx"], "baseline")
    if not spec.tracking.register_model:
        return
    import mlflow

    mlflow.set_tracking_uri(tracker.uri)
    # The logged model belongs to the job's experiment (else MLflow files it under the
    # default experiment, in ./mlruns of whatever folder the job ran from).
    mlflow.set_experiment(experiment_id=tracker.experiment_id)
    name = registered_name(spec)
    try:
        # Logged to the winning child run (without reopening it), so the registered
        # version's source run is the round that produced it.
        # pt2 (a torch.export program) or ONNX: a registered model loads without pickle.
        # + the rebuild recipe, so a models:/ source rebuilds it as a prunable module.
        recipe = recipe_files(summary["artifacts"]["best_model"])
        info = log_model_without_pickle(
            model,
            summary["artifacts"]["best_onnx"],
            example,
            best_run_id or parent_run_id,
            name,
            recipe,
        )
        summary["mlflow"].update(
            registered_model=name, version=info.registered_model_version, model_uri=info.model_uri
        )
    except Exception as err:  # registration must not cost the job its result
        log(f"warning: registering the best model failed: {err}")
        summary["mlflow"]["registration_error"] = str(err)


def table(summary: dict[str, Any]) -> str:
    t = summary["target"]
    rows = [("", "baseline", "best")]
    b, w = summary["baseline"], summary["best"] or {}

    def fmt(v, spec="{:.4f}"):
        return "-" if v is None else spec.format(v)

    rows += [
        ("val accuracy", fmt(b["accuracy"]), fmt(w.get("accuracy"))),
        ("test accuracy", fmt(b["test_accuracy"]), fmt(w.get("test_accuracy"))),
        (
            f"latency ms ({t['runtime']})",
            fmt(b["latency_ms"], "{:.2f}"),
            fmt(w.get("latency_ms"), "{:.2f}"),
        ),
        ("speedup (measured)", "1.00x", fmt(w.get("speedup"), "{:.2f}x")),
        ("speedup onnxruntime", "1.00x", fmt(w.get("onnx_speedup"), "{:.2f}x")),
        ("compression (file)", "1.00x", fmt(w.get("compression"), "{:.2f}x")),
        ("FLOPs", f"{b['flops']:,}", f"{w['flops']:,}" if w.get("flops") else "-"),
        ("params", f"{b['param_count']:,}", f"{w.get('param_count') or 0:,}"),
        ("bytes", f"{b['bytes']:,}", f"{w['bytes']:,}" if w.get("bytes") else "-"),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(width[i]) for i, c in enumerate(r)) for r in rows]
    r = summary["rounds"]
    verdict = "MET" if summary["target_met"] else "NOT MET"
    where = " and ".join([t["runtime"], *t.get("also_on", [])])
    head = f"target {t['kind']} >= {t['value']:g} on {where}: {verdict}"
    tail = f"rounds: {r['total']} ({r['feasible']} feasible, {r['failed']} failed)"
    warned = [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join([head, *lines, tail, *warned])
