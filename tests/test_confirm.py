"""Confirmation re-measures the preferred candidate before it is declared, and a round's
speedups carry their intervals from the job's pool.

Timing is faked (``make_runner`` tags each runner with its model's size, ``time_samples``
draws jittered pairs around a true speedup chosen per model), so the verdicts are known.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from learners.base import Context, ModelInfo
from learners.chain import chain_space
from pipeline import measure
from pipeline.job.candidate import MEASUREMENTS_FOLDER, compress, evaluate, measurement_pool
from pipeline.job.confirm import confirm
from pipeline.job.modelfile import load_baseline, save_baseline, save_candidate
from pipeline.job.settings import build_learners, splits_for
from pipeline.measure.noise import MeasurementPool, pool_key
from pipeline.records.results import CandidateResult
from pipeline.spec import parse
from tests.helpers import tiny_cnn


def job(tmp_path: Path, target: dict, pool: str | None = None, output: str = "out"):
    return parse(
        {
            "model": "tests.helpers:tiny_cnn",
            "data": {"source": "digits", "limit": 200, "image_size": 8},
            "target": target,
            "learners": ["channel"],
            "finetune": {"epochs": 1},
            "measure": {
                "batch_size": 4,
                "repeats": 10,
                "max_repeats": 40,
                "warmup": 0,
                "pool": pool,
            },
            "output": str(tmp_path / output),
        }
    )


class SizedClock:
    """Fake timing: the candidate's true speedup is ``truth[param count]``."""

    def __init__(self, truth: dict[int, float]) -> None:
        self.truth, self.rng, self.timed = truth, random.Random(0), 0

    def make_runner(self, model, example_inputs, settings, workdir, tag):
        def run():
            raise AssertionError("a fake runner is never run")

        run.size = measure.count_params(model)  # type: ignore[attr-defined]
        return run

    def time_samples(self, runners, warmup, repeats, *_):  # clock, trim: fake time
        speedup = self.truth[runners[1].size]
        self.timed += repeats
        jitter = [self.rng.lognormvariate(0, 0.02) for _ in range(2 * repeats)]
        return [
            [10.0 * j for j in jitter[:repeats]],
            [10.0 / speedup * j for j in jitter[repeats:]],
        ]


@pytest.fixture
def saved(tmp_path):
    """The baseline and two saved candidates of a tiny job: 'wide' (pruned at the
    smallest ratio) and 'narrow' (the largest), as a job's rounds leave them."""
    spec = job(tmp_path, {"speedup": 1.5})
    run = tmp_path / "run"
    baseline = load_baseline(spec, save_baseline(tiny_cnn().eval(), run / "baseline"))
    splits = splits_for(spec)
    train, val, _ = splits.loaders(16, 0)
    learners = build_learners(spec)
    dims = chain_space(learners, ModelInfo(baseline, splits.example_inputs()))
    out = {}
    for round_, (name, pick) in enumerate((("wide", "low"), ("narrow", "high")), start=1):
        ctx = Context(train, val, splits.example_inputs(), finetune=lambda *a, **k: {}, seed=0)
        params = {d.name: d.choices[0] if hasattr(d, "choices") else getattr(d, pick) for d in dims}
        model = compress(learners, baseline, params, ctx, 0).eval()
        path = save_candidate(model, ctx.records, run / "rounds" / f"round-{round_:03d}")
        result = CandidateResult(round_, params, ["channel"], model_path=str(path))
        out[name] = (result, measure.count_params(model), model)
    return spec, baseline, splits.example_inputs(), run, out


def fake_clock(monkeypatch, truth):
    clock = SizedClock(truth)
    monkeypatch.setattr(measure, "make_runner", clock.make_runner)
    monkeypatch.setattr(measure, "time_samples", clock.time_samples)
    return clock


def test_a_candidate_whose_remeasured_interval_misses_is_passed_over(saved, monkeypatch):
    spec, baseline, example, run, c = saved
    (wide, wide_size, wide_model), (narrow, narrow_size, _) = c["wide"], c["narrow"]
    # Its round measured the wide one lucky (2.0x, in the pool); truly it is 1.3x.
    pool = MeasurementPool(run / MEASUREMENTS_FOLDER)
    key = pool_key(baseline, wide_model, example, "torch-cpu", 4, 1, "cpu")
    with pool.holding(key):
        pool.add(key, [(10.0, 5.0)] * 40)
    clock = fake_clock(monkeypatch, {wide_size: 1.3, narrow_size: 1.8})
    lines = []
    found = confirm(spec, baseline, [wide, narrow], example, run / "confirmation", lines.append)
    assert found.confirmed is narrow
    first, second = found.checks
    assert first["round"] == wide.round and not first["met"]
    assert first["runtimes"]["torch-cpu"]["low"] < 1.5  # fresh pairs, not the lucky pool
    assert abs(first["runtimes"]["torch-cpu"]["speedup"] - 1.3) < 0.05
    assert second["met"] and second["runtimes"]["torch-cpu"]["low"] >= 1.5
    assert "MISSES speedup 1.5" in lines[0] and "holds speedup 1.5" in lines[1]
    assert clock.timed == sum(t["runtimes"]["torch-cpu"]["pairs"] for t in found.checks)
    with pool.holding(key):  # the re-measurement went into the job's pool as well
        assert len(pool.load(key)) == 40 + first["runtimes"]["torch-cpu"]["pairs"]
    json.dumps(found.to_dict())  # a record the report can write as it is


def test_no_candidate_holding_up_confirms_none(saved, monkeypatch):
    spec, baseline, example, run, c = saved
    fake_clock(monkeypatch, {c["wide"][1]: 1.2, c["narrow"][1]: 1.45})
    lines = []
    found = confirm(
        spec, baseline, [c["narrow"][0], c["wide"][0]], example, run / "confirmation", lines.append
    )
    assert found.confirmed is None and [x["met"] for x in found.checks] == [False, False]
    assert "none of 2 candidate(s) held speedup 1.5" in lines[-1]


def test_every_target_runtime_must_hold(saved, monkeypatch):
    spec, baseline, example, run, c = saved
    spec = job(run, {"speedup": 1.5, "also_on": ["onnxruntime-cpu"]})
    size = c["narrow"][1]
    clock = fake_clock(monkeypatch, {size: 1.8})
    real_time_samples = clock.time_samples

    def slower_on_onnx(runners, warmup, repeats, *_):  # 1.8x on torch, 1.4x on onnxruntime
        onnx = getattr(runners[1], "runtime", None) == "onnxruntime-cpu"
        clock.truth[size] = 1.4 if onnx else 1.8
        return real_time_samples(runners, warmup, repeats)

    def tagged_runner(model, example_inputs, settings, workdir, tag):
        run_ = clock.make_runner(model, example_inputs, settings, workdir, tag)
        run_.runtime = settings.runtime
        return run_

    monkeypatch.setattr(measure, "make_runner", tagged_runner)
    monkeypatch.setattr(measure, "time_samples", slower_on_onnx)
    found = confirm(spec, baseline, [c["narrow"][0]], example, run / "confirmation", print)
    (check,) = found.checks
    assert (
        check["runtimes"]["torch-cpu"]["low"] >= 1.5 > check["runtimes"]["onnxruntime-cpu"]["low"]
    )
    assert found.confirmed is None


def test_an_unloadable_candidate_is_recorded_and_the_next_one_tried(saved, monkeypatch):
    spec, baseline, example, run, c = saved
    fake_clock(monkeypatch, {c["narrow"][1]: 1.8})
    missing = CandidateResult(7, {}, ["channel"], model_path=str(run / "nowhere.safetensors"))
    unsaved = CandidateResult(8, {}, ["channel"])
    found = confirm(
        spec, baseline, [missing, unsaved, c["narrow"][0]], example, run / "confirmation", print
    )
    assert found.confirmed is c["narrow"][0]
    assert (
        "FileNotFoundError" in found.checks[0]["error"]
        and "no saved model" in (found.checks[1]["error"])
    )


def test_a_compression_target_is_confirmed_by_its_exact_figure(saved, monkeypatch):
    spec, baseline, example, run, c = saved
    spec = job(run, {"compression": 2.0})
    clock = fake_clock(monkeypatch, {})
    short = CandidateResult(1, {}, ["channel"], compression=1.9)
    enough = CandidateResult(2, {}, ["channel"], compression=2.4)
    found = confirm(spec, baseline, [short, enough], example, run / "confirmation", print)
    assert found.confirmed is enough and clock.timed == 0  # nothing timed


def test_a_rounds_speedups_carry_intervals_from_the_jobs_pool(saved, monkeypatch):
    spec, baseline, example, run, c = saved
    clock = SizedClock({})
    clock.truth = _AnySize(1.7)
    monkeypatch.setattr(measure, "time_samples", clock.time_samples)
    monkeypatch.setattr(measure, "make_runner", clock.make_runner)
    params = c["narrow"][0].params
    result = evaluate(
        spec, "cpu", str(run / "baseline" / "model.safetensors"), 1, params, 5, str(run / "rounds")
    )
    assert result["status"] == "ok", result["error"]
    low, high = result["speedup_intervals"]["torch-cpu"]
    assert low <= result["speedups"]["torch-cpu"] <= high and low < 1.7 < high
    _pooled_per_runtime(run / MEASUREMENTS_FOLDER, clock)


def test_the_pool_is_the_runs_own_folder_unless_the_spec_names_a_shared_one(tmp_path):
    own = measurement_pool(job(tmp_path, {"speedup": 1.5}), tmp_path / "run" / "rounds")
    assert own.folder == tmp_path / "run" / MEASUREMENTS_FOLDER
    shared = job(tmp_path, {"speedup": 1.5}, pool=str(tmp_path / "shared"))
    for work in ("rounds", "calibration", "confirmation", "screening"):
        assert measurement_pool(shared, tmp_path / "run" / work).folder == tmp_path / "shared"


def test_two_jobs_naming_one_pool_share_a_rounds_measurement(saved, monkeypatch):
    """Two jobs (their own output and run folders) evaluate the same setting: the second
    reuses the first's pairs from the shared folder instead of drawing its own figure,
    and neither writes pairs into its run's own folder."""
    _, _, _, run, c = saved
    clock = SizedClock({})
    clock.truth = _AnySize(1.7)
    monkeypatch.setattr(measure, "time_samples", clock.time_samples)
    monkeypatch.setattr(measure, "make_runner", clock.make_runner)
    shared = run.parent / "shared-pool"
    baseline_uri = str(run / "baseline" / "model.safetensors")
    results, timed = [], []
    for name in ("job-a", "job-b"):
        spec = job(run.parent, {"speedup": 1.5}, pool=str(shared), output=name)
        work = run.parent / name / "rounds"
        results.append(evaluate(spec, "cpu", baseline_uri, 1, c["narrow"][0].params, 1, str(work)))
        timed.append(clock.timed)
        assert not (run.parent / name / MEASUREMENTS_FOLDER).exists()
    first, second = results
    assert first["status"] == second["status"] == "ok", (first["error"], second["error"])
    assert timed[0] > 0 and timed[1] == timed[0]  # the second job timed nothing
    _pooled_per_runtime(shared, clock)
    assert second["speedups"] == first["speedups"]  # one pooled figure, not a new draw
    assert second["speedup_intervals"] == first["speedup_intervals"]


def test_a_confirmation_adds_its_fresh_pairs_to_the_shared_pool(saved, monkeypatch):
    _, baseline, example, run, c = saved
    spec = job(run, {"speedup": 1.5}, pool=str(run.parent / "shared-pool"))
    clock = fake_clock(monkeypatch, {c["narrow"][1]: 1.8})
    found = confirm(spec, baseline, [c["narrow"][0]], example, run / "confirmation", print)
    assert found.confirmed is c["narrow"][0]
    stored = list((run.parent / "shared-pool").glob("*.pairs.jsonl"))
    assert len(stored) == 1 and len(stored[0].read_text().splitlines()) == clock.timed
    assert not (run / MEASUREMENTS_FOLDER).exists()


def _pooled_per_runtime(folder: Path, clock: SizedClock) -> None:
    """A torch-cpu speedup round is also checked on onnxruntime-cpu (onnx_not_slower):
    one pool file per runtime, holding every pair the clock timed between them."""
    stored = sorted(folder.glob("*.pairs.jsonl"))
    assert [p.name.split("-b")[0] for p in stored] == ["onnxruntime-cpu", "torch-cpu"]
    assert sum(len(p.read_text().splitlines()) for p in stored) == clock.timed


class _AnySize(dict):
    def __init__(self, speedup: float) -> None:
        super().__init__()
        self.speedup = speedup

    def __missing__(self, key: int) -> float:
        return self.speedup
