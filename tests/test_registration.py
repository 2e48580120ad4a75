"""A winner's registered version, written through ``Tracker`` alone: a ``torch.export``
program where the model exports, its ONNX file where it cannot (an ONNX graph inside),
each loading back without pickle and giving the model's outputs; MLflow's global
tracking URI is never touched."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from learners.formats.export import export_onnx
from learners.formats.onnx_module import OnnxModule
from pipeline.records.mlmodel import saver_without_pickle
from pipeline.records.tracking import Tracker
from pipeline.sources.models import load_registered
from tests.helpers import TinyNet, example_inputs


@pytest.mark.parametrize("inside_onnx, flavour", [(False, "pytorch"), (True, "onnx")])
def test_a_version_loads_back_without_pickle(tmp_path, monkeypatch, inside_onnx, flavour):
    x = example_inputs()
    model = TinyNet(width=4).eval()
    onnx = export_onnx(model, x, tmp_path / "m.onnx")
    if inside_onnx:  # torch.export cannot trace onnxruntime: the ONNX flavour is used
        model = OnnxModule(onnx.read_bytes())
    uri = f"sqlite:///{tmp_path}/reg.db"
    global_uri = mlflow.get_tracking_uri()
    tracker = Tracker(uri, "registration")
    run_id = tracker.start_job("job", {})
    model_id = tracker.log_model(run_id, saver_without_pickle(model, onnx, x))
    version = tracker.register("reg", model_id, run_id, ["speedup-2x"])
    assert mlflow.get_tracking_uri() == global_uri != uri

    found = tracker.client.get_model_version_by_alias("reg", "speedup-2x")
    assert str(found.version) == str(version) and found.run_id == run_id
    logged = tracker.client.get_logged_model(model_id)
    assert logged.experiment_id == tracker.experiment_id and logged.source_run_id == run_id
    assert str(logged.status) == "READY" and "mlflow.user" in logged.tags
    # A models:/ source is read from the registry MLFLOW_TRACKING_URI names (as a job reads it).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    folder = mlflow.artifacts.download_artifacts(f"models:/reg/{version}", dst_path=str(tmp_path))
    meta = yaml.safe_load((Path(folder) / "MLmodel").read_text())
    assert flavour in meta["flavors"] and meta["model_id"] == model_id
    loaded = load_registered("models:/reg@speedup-2x", tracking_uri=uri)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)
