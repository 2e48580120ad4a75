"""A winner's record in MLflow: its figures on its own run and on the job's run, its ONNX
file beside the job's summary, and (when the job registers models) a registered version
logged from its own run, with an alias per target it won. Everything goes through
``Tracker`` (explicit run ids, no global MLflow state)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from pipeline.job.export import Exported
from pipeline.job.modelfile import recipe_files
from pipeline.job.winners import target_label
from pipeline.records.mlmodel import saver_without_pickle
from pipeline.records.tracking import Tracker, achieved_key
from pipeline.spec import JobSpec

# A winner's figures logged on the job's run as ``<prefix>.<figure>``.
BEST_METRICS = (
    "accuracy",
    "test_accuracy",
    "speedup",
    "compression",
    "onnx_speedup",
    "latency_ms",
    "flops",
    "param_count",
    "bytes",
)


def registered_name(spec: JobSpec) -> str:
    """The job's name as a registered model name (MLflow refuses most punctuation)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.job_name)


def target_alias(kind: str, value: float) -> str:
    """The registered version's alias for a target (MLflow allows letters, digits, _ and
    - only): ``speedup-3x``, ``speedup-1_5x``."""
    return f"{kind}-{value:g}x".replace(".", "_")


def log_best_metrics(
    spec: JobSpec, tracker: Tracker, parent_run_id: str, best: dict[str, Any], prefix: str
) -> None:
    """A winner's figures on the parent run as ``<prefix>.<figure>`` (``best.accuracy``;
    a front's ``front.3x.accuracy``), with its speedup on every runtime it was timed on."""
    keys = (*BEST_METRICS, achieved_key(spec.target.kind))
    metrics = {f"{prefix}.{k}": best.get(k) for k in keys}
    timed = best.get("runtimes") or {}
    metrics.update(
        {f"{prefix}.speedup.{rt}": t["speedup"] for rt, t in timed.items() if "speedup" in t}
    )
    tracker.log_metrics(parent_run_id, metrics)


def log_winner(tracker: Tracker, parent_run_id: str, done: Exported, won: list[str]) -> None:
    """A winner's figures measured at the end (test accuracy, exported speedup) on its own
    run, and its ONNX file on the job's run (``best/``, a front's ``best/<value>x/`` for
    the first target in ``won``)."""
    best = done.best
    if best["run_id"]:  # measured once, for the winners only
        tracker.log_metrics(
            best["run_id"],
            {"test_accuracy": best["test_accuracy"], "onnx_speedup": best["onnx_speedup"]},
        )
    folder = f"best/{won[0]}" if won else "best"
    tracker.log_file(parent_run_id, str(done.artifacts["best_onnx"]), folder)


def register_winner(
    spec: JobSpec,
    tracker: Tracker,
    run_id: str,
    done: Exported,
    example: torch.Tensor,
    met: list[str],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """A registered version of the winner, logged to ``run_id`` (its own child run, so
    the version's source run is the round that produced it), with an alias per target it
    met (labels in ``met``; ``speedup-3x``) and none for a target it did not, so an alias
    never leaves a version that met it for one that did not:
    ``{registered_model, version, model_uri, aliases}``, or ``{registration_error}``
    (registering must not cost the job its result)."""
    name = registered_name(spec)
    aliases = [target_alias(spec.target.kind, v) for v in spec.target.values
               if target_label(v) in met]  # fmt: skip
    try:
        # The rebuild recipe goes along, so a models:/ source rebuilds a prunable module.
        recipe = recipe_files(str(done.artifacts["best_model"]))
        save = saver_without_pickle(done.model, str(done.artifacts["best_onnx"]), example, recipe)
        model_id = tracker.log_model(run_id, save)
        version = tracker.register(name, model_id, run_id, aliases)
    except Exception as err:  # noqa: BLE001 - the job's result stands without a version
        log(f"warning: registering the model of round {done.best['round']} failed: {err}")
        return {"registration_error": str(err)}
    return {
        "registered_model": name,
        "version": version,
        "model_uri": f"models:/{model_id}",
        "aliases": aliases,
    }


def describe_versions(
    tracker: Tracker,
    exported: dict[int, Exported],
    text: str,
    parent_run_id: str,
    labels: dict[int, list[str]],
) -> None:
    """Each registered winner's version: the job's paragraph and tags linking it to its
    runs and the targets it won."""
    for r, done in exported.items():
        if done.registered.get("version") is None:
            continue
        tags = {
            "best_run_id": done.best["run_id"],
            "best_round": r,
            "job_run_id": parent_run_id,
            "targets": ",".join(labels.get(r, [])) or None,
        }
        tracker.describe_version(
            done.registered["registered_model"], done.registered["version"], text, tags
        )
