"""The job spec is validated once, at the edge: a whole job run through the flow parses
it zero more times (no task, candidate or report re-validates paths or rebuilds the
chain to check it)."""

from __future__ import annotations

import pytest

from pipeline import flows, spec


@pytest.mark.slow
def test_a_job_parses_its_spec_zero_times_after_the_cli(tmp_path, monkeypatch, prefect_harness):
    job = spec.parse(
        {
            "name": "once",
            "model": "tests.helpers:tiny_cnn",
            "data": {"source": "digits", "limit": 300, "image_size": 16},
            "target": {"compression": 1.1, "max_accuracy_drop": 100},
            "allow_untrained_baseline": True,  # this test counts parses, not accuracy
            "budget": {"rounds": 2},
            "finetune": {"pretrain_epochs": 1, "epochs": 1},
            "measure": {"repeats": 3, "warmup": 1},
            "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
            "output": str(tmp_path / "out"),
        }
    )
    calls = []
    real_check = spec._check_chain
    monkeypatch.setattr(spec, "_check_chain", lambda *a: calls.append(a) or real_check(*a))
    real_validate = spec.JobSpec.model_validate
    monkeypatch.setattr(
        spec.JobSpec,
        "model_validate",
        classmethod(lambda cls, *a, **k: calls.append(a) or real_validate.__func__(cls, *a, **k)),
    )
    summary = flows.compress(job)
    assert summary["rounds"]["total"] == 2
    assert calls == []
