"""``import compressflow``: a model object and in-memory data through the same flow and
records as the command line, spec errors as ``compressflow.SpecError``."""

import copy
import json
import os
import signal

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader, TensorDataset

import compressflow
from hpo.space import Real
from learners import registry
from learners.base import LearnerDefaults
from learners.formats.onnx_module import OnnxModule
from pipeline import spec as spec_mod
from pipeline.sources.data import load_digits_arrays
from tests.helpers import TinyNet


def digits_splits():
    x, y = load_digits_arrays(8)
    x, y = x[:400], y[:400]
    cuts = ((0, 240), (240, 320), (320, 400))
    return tuple(TensorDataset(x[a:b], y[a:b]) for a, b in cuts)


def trained_tiny(train) -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet(width=16)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(3):
        for xb, yb in DataLoader(train, batch_size=32, shuffle=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model


def tiny_fields(tmp_path):
    return dict(
        budget={"rounds": 2, "screen": 0},
        finetune={"epochs": 1},
        measure={"batch_size": 8, "repeats": 3},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        output=str(tmp_path / "out"),
    )


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_model_object_is_compressed_to_its_target_and_left_untouched(tmp_path):
    train, val, test = digits_splits()
    model = trained_tiny(train)
    model.train()
    before = copy.deepcopy(model.state_dict())

    result = compressflow.compress(
        model,
        (DataLoader(train, batch_size=32), val, test),
        compressflow.Compression(2, max_accuracy_drop=100),
        **tiny_fields(tmp_path),
    )

    # The user's object: same weights, same mode, no hooks.
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model._forward_pre_hooks

    assert result.met and result.summary["target_met"] is True
    assert result.summary["job"].startswith("tinynet-channel-compression2")
    assert result.summary["baseline"]["accuracy"] > 0.5  # its weights were used, not retrained
    best = result.best
    assert isinstance(best, torch.nn.Module) and best is not model
    assert sum(p.numel() for p in best.parameters()) < sum(p.numel() for p in model.parameters())
    assert best(val[:4][0]).shape == (4, 10)
    assert len(result.candidates) == 2
    assert "MET" in result.report()
    assert result.plot is not None and result.plot.suffix == ".png"

    on_disk = json.loads((result.folder / "summary.json").read_text())
    assert on_disk == result.summary
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"

    again = compressflow.load(result.folder)
    assert again.summary == result.summary
    by_id = compressflow.load(result.mlflow_run_id, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert by_id.summary["best"] == result.summary["best"] and by_id.folder == result.folder


def spec_message(raw) -> str:
    with pytest.raises(spec_mod.SpecError) as err:
        spec_mod.parse(raw)
    return str(err.value)


@pytest.mark.parametrize(
    "fields, raw",
    [
        ({"budget": {"rounds": -1}}, {"budget": {"rounds": -1}}),
        ({"finetune": {"epochs": "many"}}, {"finetune": {"epochs": "many"}}),
        ({"no_such_field": 1}, {"no_such_field": 1}),
    ],
)
def test_spec_errors_carry_the_specs_own_message(fields, raw):
    target = {"speedup": 2}
    expected = spec_message({"target": target, "model": "resnet20", **raw})
    with pytest.raises(compressflow.SpecError) as err:
        compressflow.compress("resnet20", "digits", target, **fields)
    assert str(err.value) == expected


def test_bad_targets_learners_and_inputs_are_spec_errors():
    with pytest.raises(compressflow.SpecError, match="not a registered learner|unknown learner"):
        compressflow.compress("resnet20", "digits", compressflow.Speedup(2), learners="nope")
    with pytest.raises(compressflow.SpecError, match="target must be compressflow.Speedup"):
        compressflow.compress("resnet20", "digits", 2)
    with pytest.raises(compressflow.SpecError, match="runtime"):
        compressflow.compress("resnet20", "digits", compressflow.Speedup(2, runtime="tpu"))
    with pytest.raises(compressflow.SpecError, match=r"missing \['test'\]"):
        compressflow.compress(TinyNet(), {"train": [], "val": []}, compressflow.Speedup(2))
    with pytest.raises(compressflow.SpecError, match="must be a torch.nn.Module"):
        compressflow.compress(object(), "digits", compressflow.Speedup(2))
    with pytest.raises(compressflow.SpecError, match="dask runs candidates in other processes"):
        compressflow.compress(
            TinyNet(), digits_splits(), compressflow.Speedup(2), runner={"kind": "dask"}
        )


def test_preflight_problems_are_spec_errors_too(tmp_path):
    # RGB images for a model whose first convolution takes one channel.
    bad = (TensorDataset(torch.zeros(20, 3, 8, 8), torch.arange(20) % 2),) * 3
    with pytest.raises(compressflow.SpecError, match="channel"):
        compressflow.compress(TinyNet(), bad, compressflow.Compression(2), **tiny_fields(tmp_path))


def test_load_names_what_it_cannot_find(tmp_path):
    with pytest.raises(compressflow.SpecError, match="holds no summary.json"):
        compressflow.load(tmp_path)
    with pytest.raises(compressflow.SpecError, match="neither a job run folder"):
        compressflow.load("0123abcd", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def test_quiet_hides_info_lines_and_download_bars_only_while_the_job_runs(monkeypatch):
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    from compressflow.quiet import quiet

    handler = PrefectConsoleHandler()
    logging.getLogger("prefect").addHandler(handler)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    info = logging.LogRecord("prefect.flow_runs", logging.INFO, "", 0, "round 1", None, None)
    warning = logging.LogRecord("prefect", logging.WARNING, "", 0, "careful", None, None)
    try:
        with quiet(verbose=False):
            assert not handler.filter(info) and handler.filter(warning)
            assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
        assert handler.filter(info)
        assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
        with quiet(verbose=True):
            assert handler.filter(info)
    finally:
        logging.getLogger("prefect").removeHandler(handler)


class InterruptingLearner(LearnerDefaults):
    """Presses Ctrl-C (SIGINT to this process) while its second candidate is built."""

    name = "interrupting"
    calls = 0

    def __init__(self, **options):
        pass

    def space(self, info):
        return [Real("x", 0.0, 1.0)]

    def compress(self, model, params, ctx):
        InterruptingLearner.calls += 1
        if InterruptingLearner.calls == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return copy.deepcopy(model)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_ctrl_c_stops_the_job_writes_the_summary_and_raises(tmp_path):
    train, val, test = digits_splits()
    registry.register("interrupting", InterruptingLearner)
    fields = tiny_fields(tmp_path)
    fields["budget"] = {"rounds": 6, "screen": 0}
    try:
        with pytest.raises(KeyboardInterrupt) as err:
            compressflow.compress(
                trained_tiny(train),
                (train, val, test),
                compressflow.Speedup(50, max_accuracy_drop=100),
                learners="interrupting",
                tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "register_model": False},
                **{k: v for k, v in fields.items() if k != "tracking"},
            )
    finally:
        registry.unregister("interrupting")
    assert isinstance(err.value, compressflow.JobInterrupted)
    result = err.value.result
    assert result is not None and result.summary["rounds"]["total"] < 6
    assert json.loads((result.folder / "summary.json").read_text()) == result.summary
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.mlflow_run_id)
    assert run.info.status == "KILLED"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_an_int8_winner_comes_back_as_an_onnxruntime_module(tmp_path):
    train, val, test = digits_splits()
    fields = tiny_fields(tmp_path)
    fields["tracking"]["register_model"] = False
    result = compressflow.compress(
        trained_tiny(train),
        (train, val, test),
        compressflow.Compression(2, runtime="onnxruntime-cpu", max_accuracy_drop=100),
        learners="int8",
        **fields,
    )
    assert result.met
    for best in (result.best, compressflow.load(result.folder).best):
        assert isinstance(best, OnnxModule)
        assert best(val[:4][0]).shape == (4, 10)


@pytest.mark.usefixtures("prefect_harness")
def test_an_error_mid_search_raises_job_failed_with_what_finished(tmp_path, monkeypatch):
    import errno

    from pipeline.records.tracking import Tracker

    original, calls = Tracker.log_candidate, []

    def store_gone(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Tracker, "log_candidate", store_gone)
    train, val, test = digits_splits()
    fields = {**tiny_fields(tmp_path), "budget": {"rounds": 3, "screen": 0}}
    with pytest.raises(compressflow.JobFailed, match="2 round.s. that finished") as failed:
        compressflow.compress(
            trained_tiny(train), (train, val, test), compressflow.Compression(2), **fields
        )
    assert isinstance(failed.value.__cause__, OSError)
    assert len(failed.value.result.candidates) == 2
