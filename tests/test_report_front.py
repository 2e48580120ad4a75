"""The end of a job with a list target (a front) and with the confirmation step: one
winner per target, each exported and registered under its own alias; a winner is
declared only once a fresh re-measurement confirms it, else the next best takes its
place. Built from a real tiny baseline and saved candidates with made-up figures, so
which candidate must win is known in advance."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from learners.base import Context, ModelInfo
from learners.chain import chain_space
from learners.formats import export
from pipeline import measure
from pipeline.job import plots, registration, render, report, winners
from pipeline.job.baseline import Baseline
from pipeline.job.candidate import compress
from pipeline.job.modelfile import load_baseline, save_baseline, save_candidate
from pipeline.job.search import SearchState
from pipeline.job.settings import build_learners, splits_for
from pipeline.records.results import CandidateResult
from pipeline.records.tracking import Tracker
from pipeline.spec import JobSpec, parse
from tests.helpers import tiny_cnn

# Round -> (validation accuracy, recorded speedup interval on torch-cpu, source).
FIGURES = {
    1: (0.90, [1.7, 1.9], "rule:channel"),  # feasible at 1.5x only (the rule's start)
    2: (0.85, [3.2, 3.6], "search"),  # feasible at 1.5x and 3x (screened first)
    3: (0.80, [3.1, 3.9], "search"),  # feasible at both, less accurate
}


def job_spec(root: Path, speedup: float | list[float], name: str) -> JobSpec:
    return parse(
        {
            "name": name,
            "model": "tests.helpers:tiny_cnn",
            "data": {"source": "digits", "limit": 200, "image_size": 8},
            "target": {"speedup": speedup},
            "learners": ["channel"],
            "measure": {"batch_size": 4, "repeats": 3, "max_repeats": 0, "warmup": 1},
            "tracking": {"uri": f"sqlite:///{root}/mlflow.db", "experiment": "front"},
            "output": str(root / "out"),
        }
    )


def prepared(root: Path, spec: JobSpec) -> tuple[Baseline, SearchState, Path]:
    """A job folder as the flow leaves it before the report: job.json, the baseline's
    files, three saved candidates, and a search state holding their results."""
    out = root / "out" / spec.job_name / "run"
    out.mkdir(parents=True)
    (out / "job.json").write_text(json.dumps(spec.to_dict()))
    splits = splits_for(spec)
    example = splits.example_inputs()
    base_path = save_baseline(tiny_cnn().eval(), out / "baseline")
    base = load_baseline(spec, base_path)
    onnx = export.export_onnx(base, example, out / "baseline" / "model.onnx")
    baseline = Baseline(
        model_path=str(base_path),
        onnx_path=str(onnx),
        deployable_path=str(onnx),
        accuracy=0.92,
        latency_ms=1.0,
        flops=measure.count_flops(base, example),
        param_count=measure.count_params(base),
        bytes=measure.file_bytes(onnx),
        trained_here=False,
        pretrain_curve={},
    )
    train, val, _ = splits.loaders(16, 0)
    learners = build_learners(spec)
    dims = chain_space(learners, ModelInfo(base, example))
    params = {d.name: d.choices[0] if hasattr(d, "choices") else d.high for d in dims}
    ctx = Context(train, val, example, finetune=lambda *a, **k: {}, seed=0)
    model = compress(learners, base, params, ctx, 0).eval()
    state = SearchState("speedup", spec.target.value, chance=0.1, targets=spec.target.values)
    results = []
    for round_, (accuracy, interval, source) in FIGURES.items():
        path = save_candidate(model, ctx.records, out / "rounds" / f"round-{round_:03d}")
        point = sum(interval) / 2
        results.append(
            CandidateResult(
                round=round_,
                params=params,
                learners=["channel"],
                accuracy=accuracy,
                latency_ms=1.0 / point,
                baseline_latency_ms=1.0,
                speedup=point,
                speedups={"torch-cpu": point},
                speedup_intervals={"torch-cpu": interval},
                param_count=measure.count_params(model),
                bytes=baseline.bytes // 2,
                compression=2.0,
                model_path=str(path),
                source=source,
                screening_score=accuracy - 0.3 if round_ == 2 else None,
            )
        )
    state.add(results)
    return baseline, state, out


def confirm_as(monkeypatch, intervals: dict[int, list[float]]) -> list[int]:
    """Re-measurements that give each round the interval asked (default: its recorded
    one); returns the rounds re-measured, in order."""
    asked: list[int] = []

    def remeasure_with(spec, base_model, example, out_dir, records, log):
        def remeasure(r: CandidateResult, value: float) -> dict[str, list[float]]:
            asked.append(r.round)
            found = {"torch-cpu": intervals.get(r.round, r.speedup_intervals["torch-cpu"])}
            records.append({"round": r.round, "intervals": found})
            return found

        return remeasure

    monkeypatch.setattr(winners, "remeasure_with", remeasure_with)
    return asked


def finalize(spec, baseline, state, out, screening=None):
    tracker = Tracker(spec.tracking.uri, spec.tracking.experiment)
    parent = tracker.start_job(spec.job_name, spec.to_dict())
    for r in state.results:
        tracker.log_candidate(parent, r, state.feasible(r))
    summary = report.finalize(
        spec, baseline, state, "round budget spent (3)", tracker, parent, out,
        log=lambda _: None, screening=screening,
    )  # fmt: skip
    return summary, MlflowClient(spec.tracking.uri)


def test_a_front_has_one_registered_winner_per_target(tmp_path, monkeypatch):
    spec = job_spec(tmp_path, [3, 1.5], "front-job")
    baseline, state, out = prepared(tmp_path, spec)
    asked = confirm_as(monkeypatch, {})
    screening = {"evaluated": 40, "skipped": 7, "failed": 1, "promoted": 3, "spearman": 0.5}
    summary, client = finalize(spec, baseline, state, out, screening)

    assert asked == [1, 2]  # each winner re-measured once, best-first
    assert summary["target_met"] is True
    assert summary["screening"] == screening
    entries = summary["targets"]
    assert [(e["value"], e["met"], e["best"]["round"]) for e in entries] == [
        (1.5, True, 1),
        (3.0, True, 2),
    ]
    assert [e["best"]["source"] for e in entries] == ["rule:channel", "search"]
    assert [e["best"]["learners"] for e in entries] == [["channel"], ["channel"]]
    assert entries[1]["best"]["confirmed"] == {"torch-cpu": [3.2, 3.6]}
    # The top-level best is the smallest target's winner, in today's shape.
    assert summary["best"]["round"] == 1 and summary["best"]["source"] == "rule:channel"
    assert summary["best"]["learners"] == ["channel"]
    assert "chains" not in summary  # one chain searched: the summary keeps its shape
    assert summary["mlflow"]["version"] == entries[0]["mlflow"]["version"]

    name = registration.registered_name(spec)
    for entry, alias in zip(entries, ("speedup-1_5x", "speedup-3x"), strict=True):
        m = entry["mlflow"]
        assert m["alias"] == alias and m["registered_model"] == name
        version = client.get_model_version_by_alias(name, alias)
        assert str(version.version) == str(m["version"])
        assert version.run_id == entry["best"]["run_id"] == m["run_id"]
        folder = out / "best" / winners.target_label(entry["value"])
        assert Path(entry["artifacts"]["best_onnx"]).parent == folder
        assert (folder / "model.onnx").is_file() and (folder / "model.safetensors").is_file()
    assert entries[0]["mlflow"]["version"] != entries[1]["mlflow"]["version"]

    runs = {
        int(r.data.params["round"]): r
        for r in client.search_runs(
            [summary["mlflow"]["experiment_id"]],
            filter_string=f"tags.mlflow.parentRunId = '{summary['mlflow']['parent_run_id']}'",
        )
    }
    assert runs[1].data.tags["best_for"] == "1.5x" and runs[2].data.tags["best_for"] == "3x"
    assert "best" not in runs[3].data.tags and runs[3].data.metrics["is_best"] == 0.0
    rows = {row["round"]: row for row in summary["candidates"]}
    assert rows[2]["best_for"] == ["3x"] and rows[2]["is_best"] == 1.0

    pts = plots.points(summary)
    marks = plots.chosen(summary, pts)
    assert sorted((c.point.round, c.label) for c in marks) == [
        (1, "chosen for 1.5x: round 1"),
        (2, "chosen for 3x: round 2"),
    ]
    assert plots.target_values(summary) == [1.5, 3.0]
    assert plots.legend_label(summary, "feasible", "x") == "meets 1.5x"
    assert (out / "candidates.png").is_file() and (out / "candidates.html").is_file()
    text = render.table(summary)
    assert "at 3x: MET" in text and "@speedup-3x" in text and "screened 40 settings" in text


def test_a_rejected_confirmation_makes_the_next_best_the_winner(tmp_path, monkeypatch):
    spec = job_spec(tmp_path, 3, "single-job")
    baseline, state, out = prepared(tmp_path, spec)
    # Round 2 is the most accurate at 3x, but re-measured its interval's low end misses.
    asked = confirm_as(monkeypatch, {2: [2.7, 3.3]})
    global_uri = mlflow.get_tracking_uri()
    summary, client = finalize(spec, baseline, state, out)
    # Registered through the job's own client: MLflow's global state is left as it was,
    # and the logged model belongs to the job's experiment.
    assert mlflow.get_tracking_uri() == global_uri != spec.tracking.uri
    model_id = summary["mlflow"]["model_uri"].removeprefix("models:/")
    assert client.get_logged_model(model_id).experiment_id == summary["mlflow"]["experiment_id"]
    # A count is param_count; params are settings (the baseline has none).
    assert "params" not in summary["baseline"]
    assert summary["baseline"]["param_count"] == baseline.param_count
    assert summary["best"]["params"] == state.results[0].params

    assert asked == [2, 3]
    assert "targets" not in summary  # a single target keeps its shape
    assert summary["target_met"] is True
    assert summary["best"]["round"] == 3 and summary["best"]["source"] == "search"
    assert summary["best"]["confirmed"] == {"torch-cpu": [3.1, 3.9]}
    assert [c["round"] for c in summary["confirmation"]] == [2, 3]
    winner = client.get_run(summary["mlflow"]["best_run_id"])
    assert winner.data.params["round"] == "3" and winner.data.tags["best"] == "true"
    version = client.get_model_version_by_alias(registration.registered_name(spec), "speedup-3x")
    assert str(version.version) == str(summary["mlflow"]["version"])


def test_no_confirmed_candidate_is_reported_but_not_met():
    state = SearchState("speedup", 3.0, chance=0.1, targets=[1.5, 3.0])
    state.add(
        [
            CandidateResult(round=r, params={}, learners=["channel"], accuracy=a,
                            speedups={"torch-cpu": sum(i) / 2},
                            speedup_intervals={"torch-cpu": i})
            for r, (a, i, _) in FIGURES.items()
        ]
    )  # fmt: skip
    asked = []

    def remeasure(r, value):
        asked.append(r.round)
        return {"torch-cpu": [1.6, 2.9]}  # every one holds 1.5x, none 3x

    chosen = winners.choose_winners(state, remeasure)
    assert [(w.value, w.result.round, w.met) for w in chosen] == [(1.5, 1, True), (3.0, 2, False)]
    assert asked == [1, 2, 3]  # round 1 is not re-measured again for 3x (not feasible there)
    assert chosen[1].confirmed == {"torch-cpu": [1.6, 2.9]}
    # A stopped job re-measures nothing: its feasible winners are reported, none met.
    stopped = winners.choose_winners(state, winners.not_remeasured)
    assert [(w.result.round, w.met) for w in stopped] == [(1, False), (2, False)]
    # Without re-measurement (a compression target): the state's own choice.
    plain = winners.choose_winners(state, None)
    assert [(w.result.round, w.met, w.confirmed) for w in plain] == [
        (1, True, None),
        (2, True, None),
    ]


@pytest.mark.parametrize("value, alias", [(3.0, "speedup-3x"), (1.5, "speedup-1_5x")])
def test_aliases_are_names_mlflow_accepts(value, alias):
    assert registration.target_alias("speedup", value) == alias


def test_the_remeasurement_is_the_confirmation_step_timing_afresh(tmp_path):
    """``finalize``'s re-measurement is ``pipeline.job.confirm`` on one candidate: fresh
    pairs on every target runtime, its check recorded with the target it was tried for."""
    spec = job_spec(tmp_path, 3, "remeasure-job")
    baseline, state, out = prepared(tmp_path, spec)
    base_model = load_baseline(spec, baseline.model_path)
    example = splits_for(spec).example_inputs()
    records: list[dict] = []
    remeasure = winners.remeasure_with(spec, base_model, example, out, records, lambda _: None)
    intervals = remeasure(state.results[0], 1e6)  # no model is a million times faster
    (low, high) = intervals["torch-cpu"]
    assert 0 < low <= high
    (check,) = records
    assert check["round"] == 1 and check["target"] == 1e6 and check["met"] is False
    assert check["runtimes"]["torch-cpu"]["pairs"] >= spec.measure.repeats
    assert "trace" not in check
    # The same candidate missed a million: the winners' rule rejects it on that interval.
    assert winners.low_end(intervals) < 1e6


def test_a_baseline_saved_with_the_older_count_key_still_reads():
    fields = {
        "model_path": "m", "onnx_path": "o", "deployable_path": "d", "accuracy": 0.9,
        "latency_ms": 1.0, "flops": 10, "bytes": 5, "trained_here": False, "pretrain_curve": {},
    }  # fmt: skip
    older = Baseline.from_dict({**fields, "params": 123})
    assert older.param_count == 123 and "params" not in older.to_dict()
    assert Baseline.from_dict(older.to_dict()) == older
