"""A target's alias on the registered model points only at a version that met that
target: a later job (or round) that did not meet it registers its version without the
alias and leaves the alias where it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.job import registration
from pipeline.job.export import Exported
from pipeline.records.tracking import Tracker
from pipeline.spec import parse


@pytest.fixture
def light(monkeypatch):
    """Registration without exporting a real model: a one-file logged model."""

    def saver(model, onnx, example, recipe):
        def save(folder, metadata):
            Path(folder).mkdir(parents=True, exist_ok=True)
            Path(folder, "MLmodel").write_text("flavors: {}\n")

        return save

    monkeypatch.setattr(registration, "recipe_files", lambda path: [])
    monkeypatch.setattr(registration, "saver_without_pickle", saver)


def _register(tracker: Tracker, spec, met: list[str]) -> dict:
    run = tracker.start_job(spec.job_name, spec.to_dict())
    done = Exported(
        best={"round": 1, "run_id": run},
        model=None,
        artifacts={"best_model": "m", "best_onnx": "m.onnx"},
        warnings=[],
    )
    return registration.register_winner(spec, tracker, run, done, None, met, print)


def test_an_unmet_winner_never_takes_the_targets_alias(tmp_path, light):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "aliases")
    spec = parse({"name": "shared", "target": {"speedup": 1.5}})
    first = _register(tracker, spec, met=["1.5x"])
    assert first["aliases"] == ["speedup-1_5x"]
    second = _register(tracker, spec, met=[])
    assert second["aliases"] == [] and second["version"] != first["version"]
    model = tracker.client.get_registered_model("shared")
    assert {k: str(v) for k, v in model.aliases.items()} == {"speedup-1_5x": str(first["version"])}


def test_a_front_winner_takes_only_the_aliases_of_the_targets_it_met(tmp_path, light):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "aliases")
    spec = parse({"name": "front", "target": {"speedup": [1.5, 2, 3]}})
    got = _register(tracker, spec, met=["1.5x", "2x"])
    assert got["aliases"] == ["speedup-1_5x", "speedup-2x"]
