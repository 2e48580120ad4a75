"""A job with alternative chains, end to end on a real (tiny) model and real data: every
chain's rule start is fully evaluated first, each candidate is built by its own chain and
recorded with it, the winner rebuilds from its files, and jobs/auto.yaml runs."""

import json
from pathlib import Path

import mlflow
import pytest

from pipeline.cli.main import main
from pipeline.job.modelfile import load_saved
from tests.helpers import TINY_JOB

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path, *flags):
    code = main(
        [
            "run", *TINY_JOB,
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--output", str(tmp_path / "out"),
            "--summary-json", str(tmp_path / "summary.json"),
            "--no-register", *flags,
        ]
    )  # fmt: skip
    return code, json.loads((tmp_path / "summary.json").read_text())


def test_each_chains_rule_first_then_the_search_across_chains(tmp_path):
    code, summary = run(
        tmp_path, "--learners", "channel;lowrank", "--target-compression", "2",
        "--rounds", "4", "--screen", "16",
    )  # fmt: skip
    assert code in (0, 3)
    rows = summary["candidates"]
    assert [r["source"] for r in rows[:2]] == ["rule:channel", "rule:lowrank"]
    for r in rows:  # built by the chain it names, recorded with the choice
        assert r["learners"] == r["params"]["chain"].split(",")
        assert r["source"] in ("search", f"rule:{r['params']['chain']}")
    per_chain = summary["chains"]
    assert set(per_chain) == {"channel", "lowrank"}
    assert sum(c["screenings"] for c in per_chain.values()) == summary["screening"]["evaluated"]
    assert sum(c["full_evaluations"] for c in per_chain.values()) == len(rows)
    assert all(c["screenings"] > 0 for c in per_chain.values())
    best = summary["best"]
    assert best["learners"] == best["params"]["chain"].split(",")
    # the winner's files rebuild the winner's own chain (its records name it)
    model = load_saved(best["deployable"].rsplit("/", 1)[0] + "/model.safetensors")
    assert sum(p.numel() for p in model.parameters()) == best["param_count"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = summary["mlflow"]["parent_run_id"]
    kind = "tags.`compressflow.kind` = 'candidate'"
    runs = client.search_runs(
        [summary["mlflow"]["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and {kind}",
    )
    assert {r.data.params["chain"] for r in runs} == {"channel", "lowrank"}


@pytest.mark.slow
def test_the_auto_job_file_runs(tmp_path):
    code, summary = run(
        tmp_path, "--job", str(ROOT / "jobs" / "auto.yaml"), "--model", "tests.helpers:tiny_cnn",
        "--rounds", "3", "--screen", "12", "--minutes", "10",
    )  # fmt: skip
    assert code in (0, 3)
    chains = {r["params"]["chain"] for r in summary["candidates"]}
    assert len(chains) >= 2 and summary["target"]["runtime"] == "onnxruntime-cpu"


def test_a_front_over_alternatives_resumes_where_it_stopped(tmp_path):
    job = tmp_path / "front.yaml"
    job.write_text(
        "target: {compression: [1.5, 3.0]}\n"
        "learners: [[channel], [lowrank]]\n"
        "budget: {rounds: 3, screen: 12}\n"
    )
    code, first = run(tmp_path, "--job", str(job))
    assert code in (0, 3) and first["rounds"]["total"] == 3
    entries = first["targets"]
    assert [e["value"] for e in entries] == [1.5, 3.0]
    for e in entries:  # each target's winner names the chain it won with
        if e["best"]:
            assert e["best"]["learners"] == e["best"]["params"]["chain"].split(",")
    parent = first["mlflow"]["parent_run_id"]
    code, second = run(tmp_path, "--job", str(job), "--rounds", "5", "--resume", parent)
    assert second["mlflow"]["parent_run_id"] == parent and second["rounds"]["total"] == 5
    rows = second["candidates"]
    assert [r["params"] for r in rows[:3]] == [r["params"] for r in first["candidates"]]
    assert all(r["params"]["chain"] in ("channel", "lowrank") for r in rows)
    assert sum(c["full_evaluations"] for c in second["chains"].values()) == 5
