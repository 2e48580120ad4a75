"""``target.onnx_not_slower``: a speedup candidate timed on torch-cpu is also timed on
onnxruntime-cpu, where its deployable ONNX file runs, and one slower than the baseline
there (``CandidateResult.onnx_check`` < 1) is infeasible at any target (issue 21). The
screening knows it: channel pruning's second latency table, measured on onnxruntime-cpu,
vetoes the settings predicted well below 1x there before they are built."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hpo import Real
from learners.aids import NotSlowerOn, Probe, Target
from learners.base import ModelInfo
from learners.channel import ChannelPruning
from learners.channel.aids import shipped_table_file
from learners.compose import chain_aids
from pipeline import flows
from pipeline.cli.main import main
from pipeline.job.probe import probe_for
from pipeline.job.resume import results_from_history
from pipeline.job.search import SearchState, told_factor
from pipeline.records.results import CandidateResult
from pipeline.records.tracking import ONNX_CHECK_KEY, candidate_metrics
from pipeline.spec import parse
from tests.helpers import TINY_JOB, example_inputs, tiny_cnn


def result(round_, speedup, accuracy, onnx_check=None):
    return CandidateResult(
        round=round_,
        params={"x": 0.5},
        learners=["fake"],
        accuracy=accuracy,
        speedup=speedup,
        speedups={"torch-cpu": speedup},
        speedup_intervals={"torch-cpu": [speedup - 0.05, speedup + 0.05]},
        onnx_check=onnx_check,
    )


# -- feasibility -------------------------------------------------------------------------
def test_a_candidate_slower_on_onnxruntime_is_not_feasible_at_any_target():
    fast_on_torch = result(1, 2.5, 0.95, onnx_check=0.6)  # the more accurate one
    fine_on_ort = result(2, 2.1, 0.90, onnx_check=1.3)
    state = SearchState("speedup", 2.0, targets=[1.5, 2.0], floor=0.5)
    state.add([fast_on_torch, fine_on_ort])
    for target in (1.5, 2.0):
        assert not state.feasible(fast_on_torch, target)
        assert state.feasible(fine_on_ort, target)
        assert state.best(target) is fine_on_ort
    assert state.counts["feasible"] == 1
    assert state.verdict(fast_on_torch) == (
        "slower than the baseline on onnxruntime (0.60x), where its ONNX file ships"
    )
    assert state.verdict(fine_on_ort) == "meets 1.5x, 2x"


def test_the_optimiser_is_told_a_vetoed_candidate_is_short_of_every_target():
    """Fast on torch-cpu, slower on onnxruntime: its loss carries the onnxruntime
    shortfall, so the GP does not steer towards it (it was told a good loss before)."""
    state = SearchState("speedup", 2.0, floor=0.5)
    vetoed, unchecked = result(1, 2.5, 0.95, onnx_check=0.6), result(2, 2.5, 0.95)
    assert told_factor(vetoed, "speedup") == 0.6
    assert told_factor(result(3, 2.5, 0.95, onnx_check=1.2), "speedup") == 2.5
    assert state.loss(vetoed) > state.loss(unchecked) + 1.0


def test_when_none_is_feasible_the_closest_is_one_that_does_not_slow_onnxruntime():
    vetoed = result(1, 1.8, 0.95, onnx_check=0.7)  # closer and more accurate, but slower
    kept = result(2, 1.7, 0.90, onnx_check=1.2)
    state = SearchState("speedup", 2.0, floor=0.5)
    state.add([vetoed, kept])
    assert state.best() is kept and state.best_feasible() is None
    only_vetoed = SearchState("speedup", 2.0, floor=0.5)
    only_vetoed.add([vetoed])
    assert only_vetoed.best() is vetoed  # still on record: the best so far is never lost


def test_no_check_is_no_veto_and_exactly_1_passes():
    state = SearchState("speedup", 2.0)
    unchecked, even = result(1, 2.5, 0.95), result(2, 2.5, 0.9, onnx_check=1.0)
    state.add([unchecked, even])
    assert state.feasible(unchecked) and state.feasible(even)
    assert state.verdict(unchecked) == "meets target"
    assert state.best() is unchecked


def test_a_veto_does_not_hide_a_missed_accuracy_floor_nor_apply_to_compression():
    state = SearchState("speedup", 2.0, floor=0.9)
    low = result(1, 2.5, 0.5, onnx_check=1.2)
    assert state.verdict(low) == "below the accuracy floor"
    squeezed = CandidateResult(round=2, params={}, learners=["fake"], accuracy=0.95)
    squeezed.compression = 4.0
    assert SearchState("compression", 2.0).feasible(squeezed)  # never checked: None


# -- records -------------------------------------------------------------------------
def test_the_figure_round_trips_and_an_older_record_without_it_loads():
    r = result(3, 2.2, 0.9, onnx_check=0.8)
    data = json.loads(json.dumps(r.to_dict()))
    assert data["onnx_check"] == 0.8
    assert CandidateResult.from_dict(data) == r
    del data["onnx_check"]  # written before the check existed
    old = CandidateResult.from_dict(data)
    assert old.onnx_check is None
    assert SearchState("speedup", 2.0).feasible(old)


def test_the_metric_is_logged_only_when_checked_and_a_resume_restores_it():
    checked, unchecked = result(1, 2.5, 0.9, onnx_check=0.7), result(2, 2.5, 0.9)
    assert candidate_metrics(checked, "speedup", False)[ONNX_CHECK_KEY] == 0.7
    assert ONNX_CHECK_KEY not in candidate_metrics(unchecked, "speedup", True)

    def run(r, feasible):
        metrics = {
            k: v for k, v in candidate_metrics(r, "speedup", feasible).items() if v is not None
        }
        return {
            "params": {"x": "0.5", "round": str(r.round)},
            "metrics": metrics,
            "tags": {"status": "ok"},
        }

    resumed = results_from_history([run(checked, False), run(unchecked, True)], [Real("x", 0, 1)])
    assert [r.onnx_check for r in resumed] == [0.7, None]
    state = SearchState("speedup", 2.0)
    assert [state.feasible(r) for r in resumed] == [False, True]  # judged as when it ran


# -- the spec ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target, checks",
    [
        ({"speedup": 2}, True),  # torch-cpu by default
        ({"speedup": [1.5, 2]}, True),
        ({"speedup": 2, "runtime": "onnxruntime-cpu"}, False),  # timed there already
        ({"speedup": 2, "also_on": ["onnxruntime-cpu"]}, False),
        ({"speedup": 2, "onnx_not_slower": False}, False),
        ({"speedup": 2, "runtime": "cuda"}, False),
        ({"speedup": 2, "runtime": "cuda-graph"}, False),
        ({"compression": 2}, False),
    ],
)
def test_which_targets_check_onnxruntime(target, checks):
    job = parse({"target": target})
    assert job.target.onnx_not_slower is target.get("onnx_not_slower", True)
    assert job.target.checks_onnx is checks
    # the screening's veto is lent on the same condition as the candidates' check
    info = ModelInfo(tiny_cnn().eval(), example_inputs())
    probe = probe_for(job, info, 1000, Path("unused"), start=False, predictor=True)
    lent = probe.not_slower_on
    assert (lent is not None) is checks
    if lent is not None:
        assert lent.runtime == lent.timing["runtime"] == "onnxruntime-cpu"
        assert lent.skip_below == job.screening.skip_below


# -- the screening's veto: a latency table on onnxruntime ----------------------------------
RATIOS = 4  # channel pruning's table points on tiny_cnn: 0.2, 0.4, 0.6, 0.8
ON_TORCH = [9.0, 8.0, 7.0, 6.0]  # ms at each ratio, baseline 10 ms: pruning pays
ON_ONNX = [14.0, 13.0, 8.0, 6.0]  # odd widths at small cuts: slower than the baseline


def timed(ms):
    """A fake ``time_models``: the baseline at 10 ms, the models at ``ms`` in ratio order
    (each unit's batch and the uniform batch alike)."""
    calls = []

    def time_models(models, tag):
        assert len(models) == RATIOS
        calls.append(tag)
        return 10.0, ms[: len(models)]

    return time_models, calls


def channel_aids(tmp_path, lines, onnx_time_models, torch_time_models=None):
    torch_time_models = torch_time_models or timed(ON_TORCH)[0]
    probe = Probe(
        Target("speedup", 1.5),
        achieved=lambda model: 1.0,
        workdir=tmp_path,
        time_models=torch_time_models,
        timing={"runtime": "torch-cpu"},
        start=False,
        log=lines.append,
        not_slower_on=NotSlowerOn(
            "onnxruntime-cpu", onnx_time_models, {"runtime": "onnxruntime-cpu"}, 0.8
        ),
    )
    info = ModelInfo(tiny_cnn().eval(), example_inputs())
    return chain_aids([ChannelPruning()], info, probe)


def test_a_table_on_onnxruntime_vetoes_settings_predicted_slower_there(tmp_path):
    lines = []
    onnx, calls = timed(ON_ONNX)
    aids = channel_aids(tmp_path, lines, onnx)
    saved = tmp_path / shipped_table_file("onnxruntime-cpu")
    assert saved.is_file() and saved in aids.files and (tmp_path / "latency_table.json").is_file()
    assert any(line.startswith("latency table on onnxruntime-cpu") for line in lines)
    assert aids.veto is not None and aids.predict is not None
    small = {"channel.ratio.conv1": 0.2, "channel.ratio.conv3": 0.2}
    large = {"channel.ratio.conv1": 0.8, "channel.ratio.conv3": 0.8}
    why = aids.veto(small)
    assert why is not None and "on onnxruntime-cpu, where the ONNX file ships" in why
    assert aids.predict(small) > 1.0  # torch-cpu alone would build it
    assert aids.veto(large) is None and aids.veto({}) is None  # faster, or the baseline
    # resumed: the recorded table is reused (nothing timed again), with its veto
    again = channel_aids(tmp_path, [], timed(ON_ONNX)[0], torch_time_models=None)
    assert again.veto is not None and again.veto(small) == why and len(calls) == 3


def test_without_a_table_on_onnxruntime_the_search_goes_on_without_the_veto(tmp_path):
    def fails(models, tag):
        raise RuntimeError("no onnxruntime here")

    lines = []
    aids = channel_aids(tmp_path, lines, fails)
    assert aids.veto is None and aids.predict is not None
    assert any("onnxruntime-cpu failed" in line and "no onnxruntime here" in line for line in lines)
    assert not (tmp_path / shipped_table_file("onnxruntime-cpu")).exists()


# -- a real job ----------------------------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_a_torch_cpu_job_times_every_candidate_on_onnxruntime_too(tmp_path):
    summary_path = tmp_path / "s.json"
    code = main([
        "run", *TINY_JOB,
        "--target-speedup", "1.2", "--rounds", "2", "--screen", "0", "--no-register",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--output", str(tmp_path / "out"),
        "--summary-json", str(summary_path),
    ])  # fmt: skip
    assert code in (0, 3)  # 3: target not met, still a full record
    summary = json.loads(summary_path.read_text())
    ok = [c for c in summary["candidates"] if c["status"] == "ok"]
    assert ok
    for row in ok:
        assert isinstance(row[ONNX_CHECK_KEY], float) and row[ONNX_CHECK_KEY] > 0
        if row[ONNX_CHECK_KEY] < 1.0:
            assert row["feasible"] == 0.0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for row in ok:
        metrics = client.get_run(row["run_id"]).data.metrics
        assert metrics[ONNX_CHECK_KEY] == pytest.approx(row[ONNX_CHECK_KEY])


@pytest.mark.usefixtures("prefect_harness")
def test_a_screened_torch_cpu_job_measures_its_latency_table_on_onnxruntime_too(
    tmp_path, monkeypatch
):
    lines: list[str] = []
    log = flows._log
    monkeypatch.setattr(flows, "_log", lambda line: (lines.append(line), log(line)))
    code = main([
        "run", *TINY_JOB,
        "--target-speedup", "1.2", "--rounds", "1", "--screen", "3", "--no-register",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--output", str(tmp_path / "out"),
        "--summary-json", str(tmp_path / "s.json"),
    ])  # fmt: skip
    assert code in (0, 3)
    assert list((tmp_path / "out").rglob(shipped_table_file("onnxruntime-cpu")))
    assert list((tmp_path / "out").rglob("latency_table.json"))
    built = "latency table on onnxruntime-cpu (latency_table_onnxruntime-cpu.json)"
    assert any(line.startswith(built) for line in lines)
    summary = json.loads((tmp_path / "s.json").read_text())
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    attached = {a.path for a in client.list_artifacts(summary["mlflow"]["parent_run_id"])}
    assert {"latency_table.json", shipped_table_file("onnxruntime-cpu")} <= attached
