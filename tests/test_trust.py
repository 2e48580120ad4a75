"""Loading a file never runs code unless the user said so (issue 12, item 3).

Each crafted file holds a pickle whose ``__reduce__`` writes a marker file. Every
documented way a file enters a job must refuse it without the marker appearing, naming
the flag that would allow it; with the flag, a pickled model loads (and the crafted one
does run: the negative control that shows the crafted files are live)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from learners.formats.modelfile import TRUST_FLAG, UntrustedModelError, load_model_file
from pipeline.sources.models import ModelSourceError, build_model
from tests.helpers import TinyNet, example_inputs, tiny_cnn

ROOT = Path(__file__).resolve().parents[1]


class Boom:
    """Unpickling this writes ``marker``: what a crafted model file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def crafted(tmp_path: Path, name: str = "model.pt") -> tuple[Path, Path]:
    marker = tmp_path / f"marker-{name}"
    path = tmp_path / name
    torch.save(Boom(marker), path)
    return path, marker


def test_a_crafted_model_file_is_refused_and_names_the_flag(tmp_path):
    path, marker = crafted(tmp_path)
    with pytest.raises(ModelSourceError, match=re.escape(TRUST_FLAG)):
        build_model(str(path), 10, 1)
    assert not marker.exists()


def test_a_crafted_weights_file_is_refused(tmp_path):
    path, marker = crafted(tmp_path, "weights.pt")
    with pytest.raises(ModelSourceError, match="weights_only"):
        build_model("tests.helpers:tiny_cnn", 10, 1, weights=str(path))
    assert not marker.exists()


def test_with_the_flag_a_pickled_model_loads_and_the_crafted_one_runs(tmp_path):
    model = TinyNet(width=5)
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(UntrustedModelError):
        load_model_file(tmp_path / "whole.pt")  # a plain module is refused too
    loaded, trained = build_model(str(tmp_path / "whole.pt"), 10, 1, trust_pickled=True)
    assert trained and loaded.conv1.out_channels == 5
    path, marker = crafted(tmp_path)
    with pytest.raises(ModelSourceError):
        build_model(str(path), 10, 1, trust_pickled=True)  # Boom is no module...
    assert marker.read_text() == "ran"  # ...but its code ran: the crafted file is live


def test_a_state_dict_as_model_file_says_where_it_belongs(tmp_path):
    torch.save(TinyNet().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ModelSourceError, match="model.weights"):
        build_model(str(tmp_path / "sd.pt"), 10, 1)


def _export(tmp_path: Path) -> tuple[TinyNet, Path]:
    model = TinyNet(width=4).eval()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (example_inputs(),)), str(path))
    return model, path


def test_torch_export_and_onnx_sources_load_without_the_flag(tmp_path):
    model, path = _export(tmp_path)
    loaded, trained = build_model(str(path), 10, 1)
    x = example_inputs()
    assert trained and torch.allclose(loaded(x), model(x), atol=1e-6)
    from learners.formats.export import export_onnx
    from learners.formats.onnx_module import OnnxModule

    onnx = export_onnx(model, x, tmp_path / "m.onnx")
    graph, _ = build_model(str(onnx), 10, 1)
    assert isinstance(graph, OnnxModule)
    assert torch.allclose(graph(x), model(x), atol=1e-4)


def _rewrite(path: Path, out: Path, edit) -> None:
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = edit(name, src.read(name))
            if data is not None:
                dst.writestr(name, data)


def test_a_torch_export_archive_with_pickled_parts_runs_nothing(tmp_path):
    _, path = _export(tmp_path)
    marker = tmp_path / "marker-pt2"
    evil = tmp_path / "evil.pickle"
    torch.save(Boom(marker), evil)

    def pickled_weight(name, data):  # a weight marked use_pickle, holding the crafted pickle
        if name.endswith("weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config)
        if name.endswith("/data/weights/weight_0"):
            return evil.read_bytes()
        return data

    def evil_sample_inputs(name, data):  # torch.load falls back to weights_only=False
        return evil.read_bytes() if name.endswith("sample_inputs/model.pt") else data

    _rewrite(path, tmp_path / "a.pt2", pickled_weight)
    with pytest.raises(ModelSourceError, match=re.escape(TRUST_FLAG)):
        build_model(str(tmp_path / "a.pt2"), 10, 1)
    _rewrite(path, tmp_path / "b.pt2", evil_sample_inputs)
    with pytest.raises(ModelSourceError):
        build_model(str(tmp_path / "b.pt2"), 10, 1)
    assert not marker.exists()


def _cli(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "pipeline", "run", "--data", "digits", "--data-limit", "200"]
    args += ["--model", "tests.helpers:tiny_cnn", "--target-compression", "2", "--rounds", "1"]
    args += ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--output", str(tmp_path)]
    return subprocess.run([*args, *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_cli_refuses_a_crafted_model_and_teacher_with_exit_2(tmp_path):
    model, model_marker = crafted(tmp_path, "model.pt")
    teacher, teacher_marker = crafted(tmp_path, "teacher.pt")
    job = tmp_path / "job.yaml"
    job.write_text(f"distillation:\n  enabled: true\n  teacher: {teacher}\n")
    for flags, marker in (
        (["--model", str(model)], model_marker),
        (["--job", str(job)], teacher_marker),
    ):
        done = _cli(tmp_path, *flags)
        assert done.returncode == 2, done.stderr[-2000:]
        assert TRUST_FLAG in done.stderr + done.stdout
        assert "Traceback" not in done.stderr
        assert not marker.exists()


def test_no_unflagged_pickle_load_is_left_in_the_code():
    """``weights_only=False`` and ``pickle.load`` only where the flag (or a data format
    that is pickled by definition, CIFAR's python batches) is checked."""
    allowed = {
        "learners/formats/modelfile.py",  # the trusted branch of load_model_file
        "pipeline/sources/data.py",  # CIFAR-10's python batches (a data format)
    }
    offenders = []
    for folder in ("pipeline", "learners", "hpo"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text()
            if rel not in allowed and re.search(
                r"weights_only\s*=\s*False|pickle\.loads?\(|serialization_format=\"pickle\"",
                text,
            ):
                offenders.append(rel)
    assert offenders == []


def test_a_packed_file_with_a_pickled_architecture_runs_nothing(tmp_path):
    import struct
    import zlib

    from learners.formats.packed import MAGIC, PackedModel, TensorCodec, load_packed

    model = TinyNet().eval()
    packed = PackedModel(model, {"conv1.weight": TensorCodec(sparse=True)})
    good = packed.save_packed(tmp_path / "good.cfpk")
    data = good.read_bytes()
    version, header_len, arch_len = struct.unpack_from("<BII", data, 4)
    assert arch_len == 0  # what the job writes holds no pickle
    marker = tmp_path / "marker-cfpk"
    evil, start = zlib.compress(__import__("pickle").dumps(Boom(marker))), 4 + 9
    crafted_bytes = (
        MAGIC
        + struct.pack("<BII", version, header_len, len(evil))
        + data[start : start + header_len]
        + evil
        + data[start + header_len :]
    )
    (tmp_path / "evil.cfpk").write_bytes(crafted_bytes)
    with pytest.raises(ValueError, match="pickled architecture"):
        load_packed(tmp_path / "evil.cfpk", TinyNet())
    assert not marker.exists()
    back = load_packed(good, TinyNet())  # the template's architecture, the file's tensors
    x = example_inputs()
    assert torch.equal(back(x), packed(x))


class BoomNet(TinyNet):
    """A module that, unpickled, writes a marker (MLflow's pickle flavour pickles it)."""

    marker = ""

    def __reduce__(self):
        return (exec, (f"open({BoomNet.marker!r}, 'w').write('ran')",))


def test_registered_models_load_without_pickle_and_pickled_ones_are_refused(tmp_path, monkeypatch):
    import mlflow
    import mlflow.pytorch

    from learners.formats.export import export_onnx
    from pipeline.records.mlmodel import saver_without_pickle
    from pipeline.records.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/reg.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model, x = TinyNet(width=4).eval(), example_inputs()
    onnx = export_onnx(model, x, tmp_path / "m.onnx")
    tracker = Tracker(uri, "trust")  # the job's own way: explicit run ids, no global state
    run_id = tracker.start_job("trust", {})
    model_id = tracker.log_model(run_id, saver_without_pickle(model, onnx, x))
    assert tracker.register("safe", model_id, run_id, ["chosen"]) == 1
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("trust")
    with mlflow.start_run():
        BoomNet.marker = str(tmp_path / "marker-registry")
        mlflow.pytorch.log_model(
            BoomNet(width=4),
            name="pickled",
            registered_model_name="pickled",
            serialization_format="pickle",
            pip_requirements=["torch"],
        )
    loaded, _ = build_model("models:/safe/1", 10, 1)
    assert not isinstance(loaded, TinyNet)  # a torch.export program, not the class
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert loaded(torch.randn(3, 1, 8, 8)).shape == (3, 10)  # the batch stays dynamic
    with pytest.raises(ModelSourceError, match=re.escape(TRUST_FLAG)):
        build_model("models:/pickled/1", 10, 1)
    assert not Path(BoomNet.marker).exists()


@pytest.mark.parametrize("chain", [["channel"], ["lowrank"], ["sparsity", "nonuniform"]])
def test_a_candidate_rebuilds_from_records_and_safetensors(tmp_path, chain):
    """What the job saves for a candidate reloads to the same outputs, strictly."""
    from pipeline import spec as spec_mod
    from pipeline.job.candidate import compress
    from pipeline.job.modelfile import load_baseline, load_candidate, save_baseline, save_candidate
    from pipeline.job.settings import build_learners, splits_for

    job = spec_mod.parse(
        {
            "model": "tests.helpers:tiny_cnn",
            "data": {"source": "digits", "limit": 200, "image_size": 8},
            "target": {"compression": 2},
            "learners": chain,
        }
    )
    splits = splits_for(job)
    train, val, _ = splits.loaders(16, 0)
    base = load_baseline(job, save_baseline(tiny_cnn().eval(), tmp_path / "baseline"))
    from learners.base import Context, ModelInfo
    from learners.chain import chain_space

    ctx = Context(train, val, splits.example_inputs(), finetune=lambda *a, **k: {}, seed=3)
    learners = build_learners(job)
    dims = chain_space(learners, ModelInfo(base, splits.example_inputs()))

    # The strongest setting each dimension allows: the largest pruning ratio or sparsity,
    # the smallest rank fraction (a categorical: its first choice).
    def strongest(d):
        if hasattr(d, "choices"):
            return d.choices[0]
        return d.low if d.name.startswith("lowrank.") else d.high

    params = {d.name: strongest(d) for d in dims}
    model = compress(learners, base, params, ctx, 0).eval()
    if chain[0] != "sparsity":  # the architecture changed: a plain load would not fit
        assert sum(p.numel() for p in model.parameters()) < sum(
            p.numel() for p in base.parameters()
        )
    path = save_candidate(model, ctx.records, tmp_path / "rounds" / "round-001")
    again = load_candidate(job, path, base, seed=3)
    x = splits.example_inputs()
    assert torch.equal(again(x), model(x))
    assert not list(tmp_path.rglob("*.pt"))  # nothing pickled written


@pytest.mark.usefixtures("prefect_harness")
def test_a_registered_winner_is_no_pickle_and_rebuilds_as_a_prunable_source(tmp_path, monkeypatch):
    """The real job registers its winner (pt2 or ONNX + the rebuild recipe); a later job's
    ``models:/`` source rebuilds it as a module learners can edit, outputs unchanged."""
    from mlflow.tracking import MlflowClient

    from pipeline.cli.main import main
    from pipeline.job.modelfile import load_saved, source_model
    from pipeline.spec import parse
    from tests.helpers import TINY_JOB

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = main(
        [
            "run", *TINY_JOB, "--tracking-uri", uri, "--output", str(tmp_path / "out"),
            "--summary-json", str(tmp_path / "summary.json"),
            "--target-compression", "2", "--rounds", "2",
        ]
    )  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code in (0, 3) and summary["mlflow"].get("version"), summary["mlflow"]
    out = tmp_path / "out"
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))
    # MLflow resolves a run's logged model through the global tracking URI only; an
    # earlier test's mlflow.set_tracking_uri would win over the variable, so set both.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", uri)
    client = MlflowClient(uri)
    version = client.get_model_version(summary["mlflow"]["registered_model"], "1")
    files = [f.path for f in client.list_artifacts(version.run_id, "best_model")]
    assert files and not any(f.endswith((".pth", ".pkl")) for f in files), files
    source = f"models:/{summary['mlflow']['registered_model']}/1"
    spec = parse({"model": source, "data": "digits", "target": {"compression": 2}})
    rebuilt, trained = source_model(spec, 10, 1)
    assert trained and any(isinstance(m, torch.nn.Conv2d) for m in rebuilt.modules())
    best = load_saved(summary["artifacts"]["best_model"])
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(rebuilt(x), best(x))
    direct, _ = build_model(source, 10, 1)  # without the recipe: the pt2/ONNX model
    assert torch.allclose(direct(x), best(x), atol=1e-4)


def test_graph_sources_are_limited_to_int8_at_preflight(tmp_path):
    from pipeline.job.modelfile import check_source_learners
    from pipeline.spec import parse

    _, path = _export(tmp_path)
    graph, _ = build_model(str(path), 10, 1)
    job = {"model": str(path), "data": "digits", "target": {"compression": 2}}
    with pytest.raises(
        ModelSourceError, match="learners channel cannot edit it: use learners int8"
    ):
        check_source_learners(parse({**job, "learners": ["channel"]}), graph)
    int8 = {**job, "learners": ["int8"], "target": {"speedup": 1.5, "runtime": "onnxruntime-cpu"}}
    check_source_learners(parse(int8), graph)  # allowed
    check_source_learners(parse({**job, "learners": ["channel"]}), TinyNet())  # a module: any
