"""A winner's files and figures: copied out of its round's folder, exported to ONNX,
measured once on the test split and timed against the baseline on every runtime this
machine has, with what a reader must not miss said in words."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learners.formats.export import export_onnx
from pipeline import measure
from pipeline.job.baseline import Baseline
from pipeline.job.chains import for_chain
from pipeline.job.modelfile import copy_candidate, load_candidate
from pipeline.job.settings import build_learners, latency_settings
from pipeline.job.task import task_for
from pipeline.job.winners import Winner
from pipeline.records.results import CandidateResult
from pipeline.records.tracking import achieved_key
from pipeline.spec import JobSpec


@dataclass
class Exported:
    """A winner as the report saw it: its ``best`` entry for the summary, the loaded
    model, its files, warnings and where it is registered (filled on registration)."""

    best: dict[str, Any]
    model: Any
    artifacts: dict[str, str | None]
    warnings: list[str]
    registered: dict[str, Any] = field(default_factory=dict)


def export_winner(
    spec: JobSpec,
    w: Winner,
    baseline: Baseline,
    base_model: nn.Module,
    test_loader: Any,
    example: torch.Tensor,
    folder: Path,
) -> Exported:
    """The winner into ``folder`` (its files, ONNX export), measured once on the test
    split and timed against the baseline on every runtime here."""
    best = w.result
    if best is None or best.model_path is None:
        raise ValueError("only a completed candidate with a saved model can be exported")
    folder.mkdir(parents=True, exist_ok=True)
    model = load_candidate(spec, best.model_path, base_model)
    model_path = copy_candidate(best.model_path, folder)
    onnx_path = export_onnx(model, example, folder / "model.onnx")
    deployable = None
    if best.deployable_path and not best.deployable_path.endswith(".onnx"):
        deployable = shutil.copy(best.deployable_path, folder / Path(best.deployable_path).name)
    report = {
        "round": best.round,
        "accuracy": best.accuracy,
        "test_accuracy": task_for(spec, 0).measure(model, test_loader),
        "latency_ms": best.latency_ms,
        achieved_key(spec.target.kind): best.achieved(spec.target.kind),
        "speedup": best.speedup,
        "speedups": best.speedups,
        "speedup_intervals": best.speedup_intervals,
        "compression": best.compression,
        "onnx_speedup": onnx_speedup(baseline.onnx_path, str(onnx_path), spec, example),
        "flops": best.flops,
        "params": best.params,  # the chosen settings; the count is param_count
        "param_count": best.param_count,
        "bytes": best.bytes,
        "learners": best.learners,
        # Where the setting came from: the fixed rule (the seed), the search, a screening.
        "source": best.source,
        "screening_score": best.screening_score,
        # The re-measurement that declared it (speedup targets): runtime -> [low, high].
        "confirmed": w.confirmed,
        "deployable": str(deployable) if deployable else str(onnx_path),
        "run_id": None,
    }
    # Where the winner's own chain runs (a job with alternatives: the chain it won with).
    own = for_chain(spec, best.learners) if best.learners else spec
    timed = time_everywhere(own, base_model, model, example, folder)
    report["runtimes"] = timed
    artifacts: dict[str, str | None] = {"best_onnx": str(onnx_path), "best_model": str(model_path)}
    return Exported(report, model, artifacts, warnings_for(spec, timed, best))


def onnx_speedup(baseline_onnx: str, best_onnx: str, spec: JobSpec, example: torch.Tensor) -> float:
    """The exported files timed against each other on onnxruntime, as a user would."""
    settings = latency_settings(spec, "onnxruntime-cpu")
    base_ms, best_ms = measure.time_onnx_files(
        [Path(baseline_onnx), Path(best_onnx)], example, settings
    )
    return base_ms / best_ms


def runtimes_here() -> list[str]:
    """Every runtime the tool can time on this machine (the GPU ones only with CUDA)."""
    gpu = torch.cuda.is_available()
    return [r for r in measure.RUNTIMES if gpu or r not in measure.GPU_RUNTIMES]


def time_everywhere(
    spec: JobSpec, base_model: nn.Module, model: nn.Module, example: torch.Tensor, workdir: Path
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
    runtime, and groups of layers a learner had to leave alone (a learner lists them
    under ``excluded`` in its records)."""
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
    for name, records in (best.records or {}).items():
        excluded = records.get("excluded") if isinstance(records, dict) else None
        if excluded:
            names = ", ".join(e["group"] for e in excluded[:8])
            more = " ..." if len(excluded) > 8 else ""
            out.append(
                f"{name} left {len(excluded)} group(s) of layers unchanged because it cannot "
                f"change them consistently: {names}{more} (reasons in the candidate's "
                "per_layer_settings.json)"
            )
    return out
