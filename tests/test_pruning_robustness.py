"""Channel pruning that never takes the job down (issue 9, items 5-8).

Groups torch-pruning cannot prune consistently are found before the search and left
alone, named with their reasons; calibration failures are recorded and the search goes
on; a model with nothing prunable ends with a summary that says why (exit 3). Conv1d and
Conv3d models with their BatchNorms prune exactly; ``stage`` granularity cuts a model
that keeps every layer in one Sequential into stages by resolution; channel widths are
rounded to the multiple measured fastest on the job's runtime; the winner is timed on
every runtime and a slower one is called out in words.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from mlflow.tracking import MlflowClient
from torch import nn
from torch_pruning.dependency import index_mapping

from learners.base import Context, ModelInfo
from learners.channel import ROUND_TO, ChannelConfig, ChannelPruning, NothingToPrune, survey
from learners.channel import ops as channel_ops
from learners.channel.ops import PruningError
from pipeline.cli.main import main
from pipeline.job import export, probe
from pipeline.job.settings import build_learners
from pipeline.records.results import CandidateResult
from pipeline.spec import parse
from tests.helpers import TINY_JOB
from tests.helpers_aids import calibrate_with
from tests.helpers_pruning import awkward_net, random_bn_, signal_net, unprunable_net, volume_net

IMAGE = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _widths(model: nn.Module) -> dict[str, int]:
    return {
        n: int(getattr(m, "out_channels", getattr(m, "out_features", 0)))
        for n, m in model.named_modules()
        if isinstance(m, channel_ops.LAYERS)
    }


# -- groups that cannot be pruned ---------------------------------------------------------


def test_the_view_transpose_shuffle_really_breaks_torch_pruning(monkeypatch):
    """Negative control: without the guard, building the graph of the ShuffleNet V2
    units fails as it did on the published model (the whole model, not one group)."""
    guarded = index_mapping.update_reshape_index_mapping
    monkeypatch.setattr(index_mapping, "update_reshape_index_mapping", guarded.__wrapped__)
    with pytest.raises(ZeroDivisionError):
        tp.DependencyGraph().build_dependency(awkward_net().eval(), example_inputs=IMAGE)


def test_torchvisions_shufflenet_v2_prunes_its_branches_and_its_unit_outputs(monkeypatch):
    """torchvision's ShuffleNet V2 (``chunk`` straight into ``cat``, a view/transpose
    shuffle). Its units are rewritten on the learner's copy (a split sized by the branch,
    the shuffle as a stored permutation: ``learners.channel.rewrite``), so the unit
    outputs prune as well as the branch interiors; the final check (the pruned network
    computes the original on the kept channels) passes, and the recorded history replays
    onto the user's unrewritten model. Negative controls: torch-pruning read
    ``torch.chunk``'s one saved size as one output and failed the whole model with
    ``IndexError``; without the rewrite the unit outputs stay whole. (The stage's first
    group, too narrow to lose a channel at the largest ratio, is left alone without the
    depthwise conv it shares with the other unit outputs: ignoring that conv kept every
    unit output of the stage whole.)"""
    from learners.channel import learner as channel_learner
    from tests.foreign_models import tv_shufflenet_v2

    model = tv_shufflenet_v2().eval()
    example = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    learner = ChannelPruning(round_to=None)
    info = ModelInfo(model, example)
    roots = {g.root for g in learner.survey(info).groups}
    assert {"conv1.0", "conv5.0", "stage3.1.branch2.3", "stage3.1.branch2.5"} <= roots
    assert not any("Transpose" in e["reason"] for e in learner.survey(info).excluded)
    pruned, history = learner.prune(model, learner.uniform_params(info, 0.5), example)
    before, after = _widths(model), _widths(pruned)
    assert after["stage3.1.branch2.0"] == before["stage3.1.branch2.0"] // 2
    assert after["stage3.1.branch2.5"] < before["stage3.1.branch2.5"]  # feeds the shuffle
    assert type(model.stage3[1]).__name__ == "TvShuffleUnit"  # the user's model untouched
    replayed = learner.replay(model, {"history": history}, Context(None, None, example, None))
    with torch.no_grad():
        assert torch.allclose(replayed(example), pruned(example), atol=1e-6)
        assert pruned(example).shape == (1, 10)

    monkeypatch.setattr(channel_learner, "prunable_form", lambda model, example: [])
    monkeypatch.setattr(channel_learner, "_surveys", {})
    found = learner.survey(ModelInfo(tv_shufflenet_v2().eval(), example))
    outputs = [e for e in found.excluded if "stage3.1.branch2.5" in e["layers"]]
    assert outputs and "Transpose" in outputs[0]["reason"]

    real = channel_ops.shape_infer.init_shape_information
    monkeypatch.setattr(channel_ops.shape_infer, "init_shape_information", real.__wrapped__)
    fresh = tv_shufflenet_v2().eval()
    with pytest.raises(IndexError):
        channel_ops.StructuredPruner(
            fresh,
            example,
            importance=tp.importance.MagnitudeImportance(),
            ignored_layers=[fresh.fc],
        )


def test_a_unit_shaped_like_shufflenets_but_computing_otherwise_is_not_rewritten():
    """The rewrite is taken only where it computes what the unit computed: a module with
    ``branch1``, ``branch2`` and ``stride`` that adds instead of shuffling keeps its own
    forward (and ShuffleNet's units beside it are still rewritten)."""
    from learners.channel.rewrite import SplitShuffleUnit, prunable_form
    from tests.foreign_models import TvShuffleUnit

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stride = 1
            self.branch1 = nn.Sequential()
            self.branch2 = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())

        def forward(self, x):
            return x + self.branch2(x)

    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), Residual(), TvShuffleUnit(8, 8, 1))
    example = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        expected = model(example)
    assert prunable_form(model, example) == ["2"]
    assert isinstance(model[1], Residual) and isinstance(model[2], SplitShuffleUnit)
    with torch.no_grad():
        assert torch.allclose(model(example), expected, atol=1e-6)


def test_groups_that_break_are_excluded_with_reasons_and_the_rest_prunes():
    model = random_bn_(awkward_net()).eval()
    found = survey(model, IMAGE, ChannelConfig())
    reasons = {e["group"]: e["reason"] for e in found.excluded}
    shuffle = next(g for g, r in reasons.items() if "ZeroDivisionError" in r)
    assert "TransposeBackward0" in reasons[shuffle]  # the channel shuffle's groups
    # The radix softmax: wrong output, or (widths not a multiple of its radix) no output.
    assert any(w in reasons["attend.0"] for w in ("differs from the original", "does not run"))
    kept = {g.root for g in found.groups}
    assert {"stem.0", "head.0"} <= kept and not kept & set(reasons)
    learner = ChannelPruning()
    params = learner.uniform_params(ModelInfo(model, IMAGE), 0.5)
    with pytest.warns(UserWarning, match="skips .*attend.0"):
        pruned, _ = learner.prune(model, params, IMAGE)  # the final check passes
    before, after = _widths(model), _widths(pruned)
    assert after["head.0"] < before["head.0"] and after["stem.0"] < before["stem.0"]
    excluded_layers = {n for e in found.excluded for n in e["layers"]}
    assert all(after[n] == before[n] for n in excluded_layers)
    with torch.no_grad():
        assert pruned(IMAGE).shape == model(IMAGE).shape


def test_a_forward_that_fails_for_some_widths_leaves_nothing_to_prune():
    model = unprunable_net()  # every width feeds a 4-way radix softmax
    # any width: the pruned forward fails (a width that is not a multiple of 4)
    with pytest.raises(NothingToPrune, match="conv1 .*does not run.*conv2|conv2 .*conv1"):
        ChannelPruning(round_to=None).space(ModelInfo(model, IMAGE))
    # widths in multiples of 8: it runs, but computes something else
    with pytest.raises(NothingToPrune, match="differs"):
        ChannelPruning().space(ModelInfo(model, IMAGE))


def test_calibration_records_a_failure_and_keeps_the_last_ratio_that_met(tmp_path, monkeypatch):
    spec = parse({"target": {"compression": 1.2}})
    info = ModelInfo(signal_net().eval(), torch.randn(1, 1, 64))
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the pruned forward fails at this width")
        return 10.0  # every ratio meets the target

    found = calibrate_with(flaky, spec, ChannelPruning(), info, tmp_path)
    assert [("error" in t) for t in found.trail] == [False, True]
    assert "fails at this width" in found.failures[0]["error"]
    assert found.start is not None and set(found.start.values()) >= {0.8}  # the ratio that met
    assert json.loads((tmp_path / "calibration.json").read_text())["trail"] == found.trail
    calls.clear()
    fails = lambda *a: 1 / 0  # noqa: E731 - fails from the first ratio
    failed = calibrate_with(fails, spec, ChannelPruning(), info, tmp_path)
    assert failed.start is None and "failed" in failed.outcome


# -- 1-D and 3-D convolutions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "example"),
    [(signal_net, torch.randn(4, 1, 64)), (volume_net, torch.randn(2, 1, 8, 8, 8))],
    ids=["conv1d", "conv3d"],
)
def test_conv1d_and_conv3d_models_prune_to_the_original_on_kept_channels(factory, example):
    model = random_bn_(factory()).eval()
    learner = ChannelPruning(round_to=None)
    params = learner.uniform_params(ModelInfo(model, example[:1]), 0.5)
    pruned, history = learner.prune(model, params, example[:1])  # checked against a mask
    before, after = _widths(model), _widths(pruned)
    assert all(after[n] < before[n] for n in before if n != "features.20")  # not the head
    with torch.no_grad():
        assert pruned(example).shape == model(example).shape
    replayed = learner.replay(model, {"history": history}, Context(None, None, example[:1], None))
    with torch.no_grad():
        torch.testing.assert_close(replayed(example), pruned(example))


def test_an_unmasked_batchnorm1d_fails_the_check(monkeypatch):
    """Negative control: masking only BatchNorm2d (as before) flags the 1-D model."""
    monkeypatch.setattr(channel_ops, "MASKED", (nn.modules.conv._ConvNd, nn.Linear, nn.BatchNorm2d))
    model = random_bn_(signal_net()).eval()
    example = torch.randn(1, 1, 64)
    learner = ChannelPruning(round_to=None)
    with pytest.raises(PruningError, match="differs"):
        learner.prune(model, learner.uniform_params(ModelInfo(model, example), 0.5), example)


# -- stages for a model with everything in one Sequential ---------------------------------


def test_stage_granularity_cuts_one_sequential_at_each_downsampling():
    model = signal_net().eval()
    example = torch.randn(1, 1, 64)
    learner = ChannelPruning(round_to=None)
    info = ModelInfo(model, example)
    assert learner.units(info) == ["stage1", "stage2", "stage3"]  # 64, 32, 16 samples
    groups = {g.root: (g.stage, g.resolution) for g in learner.survey(info).groups}
    assert groups["features.0"] == groups["features.3"] == ("stage1", "64")
    assert groups["features.12"] == ("stage3", "16")
    pruned, _ = learner.prune(model, {"ratio.stage2": 0.5}, example)
    shrunk = {n for n, w in _widths(pruned).items() if w < _widths(model)[n]}
    assert shrunk == {"features.6", "features.9"}  # stage 2 alone
    # a model with its own blocks keeps them (the zoo's resnet20: conv1, layer1..3)
    assert ChannelPruning().units(ModelInfo(tiny_resnet(), torch.randn(1, 3, 16, 16)))[0] == "conv1"


def tiny_resnet() -> nn.Module:
    from pipeline.sources.zoo import build

    return build("resnet20").eval()


# -- channel multiples -------------------------------------------------------------------


def test_round_to_auto_follows_the_runtime_and_widths_are_multiples():
    assert ChannelConfig(runtimes=("onnxruntime-cpu",)).multiple == ROUND_TO["onnxruntime-cpu"]
    assert ChannelConfig(runtimes=("torch-cpu",)).multiple == ROUND_TO["torch-cpu"]
    assert (
        ChannelConfig(round_to=None).multiple is None and ChannelConfig(round_to=1).multiple is None
    )
    for bad in ({"round_to": 0}, {"round_to": "8x"}, {"runtimes": ("tpu",)}):
        with pytest.raises(ValueError, match="round_to|runtime"):
            ChannelConfig(**bad)
    spec = parse({"target": {"speedup": 2, "runtime": "onnxruntime-cpu"}})
    assert build_learners(spec)[0].config.runtimes == ("onnxruntime-cpu",)
    model = signal_net().eval()
    example = torch.randn(1, 1, 64)
    learner = ChannelPruning(round_to=8)
    pruned, _ = learner.prune(
        model, learner.uniform_params(ModelInfo(model, example), 0.3), example
    )
    widths = [w for n, w in _widths(pruned).items() if n != "features.20"]
    assert all(w % 8 == 0 for w in widths) and widths != [16, 16, 32, 32, 48, 48]


def test_round_to_auto_is_per_layer_on_a_depthwise_and_squeeze_excitation_net():
    """MobileNetV3's pattern: an 8-wide squeeze conv once took the runtime's multiple
    away from every layer (odd widths, 4x slower on onnxruntime). Now each group keeps
    the multiple it can reach max_ratio with, as announced, recorded and applied."""
    from pipeline.sources.models import with_logits_output
    from tests.foreign_models import mobile_se_net

    example = torch.randn(1, 1, 16, 16)
    model = with_logits_output(mobile_se_net(), example, "auto")  # it returns an object
    info = ModelInfo(model, example)
    learner = ChannelPruning(runtimes=("onnxruntime-cpu",))
    multiples = learner.multiples(info)
    widths = {n: _widths(model)[n] for n in multiples}
    assert max(multiples.values()) == ROUND_TO["onnxruntime-cpu"] == 8
    for name, m in multiples.items():  # the largest power of two <= 8 that reaches 0.8
        assert m <= widths[name] * (1 - 0.8) < 2 * m or m == 8 <= widths[name] * (1 - 0.8)
    pruned, _ = learner.prune(model, learner.uniform_params(info, 0.5), example)
    for name, m in multiples.items():
        kept = _widths(pruned)[name]
        assert kept % m == 0 and kept < widths[name] or widths[name] < 2 * m, (name, kept, m)
    assert any(widths[n] >= 40 and m == 8 for n, m in multiples.items())  # wide: fast multiple
    rigid = ChannelPruning(round_to=8).multiples(info)
    assert set(rigid.values()) == {8}  # a set multiple still holds every layer
    ctx = Context(None, None, example, finetune=lambda m: {})  # no fine-tuning
    learner.compress(model, learner.uniform_params(info, 0.5), ctx)
    assert ctx.records["channel"]["multiples"] == multiples  # what the candidate records


def test_kept_widths_round_to_the_nearest_multiple_never_to_zero():
    meta = channel_ops._MetaPruner.__new__(channel_ops._MetaPruner)
    assert meta._round_to(5, 16, 8) == 8  # keep 11 -> 8
    assert meta._round_to(2, 16, 8) == 0  # keep 14 -> 16: nothing goes
    assert meta._round_to(13, 16, 8) == 8  # keep 3 -> 8, not 0 (torch-pruning: all 16)
    assert meta._round_to(2, 4, 8) == 0  # narrower than one multiple: left alone


# -- the report --------------------------------------------------------------------------


def test_a_winner_slower_on_some_runtime_is_called_out_in_words():
    spec = parse({"target": {"speedup": 2}})
    best = CandidateResult(round=3, params={}, learners=["channel"])
    best.records = {"channel": {"excluded": [{"group": "attend.0", "layers": [], "reason": "x"}]}}
    fast = {"torch-cpu": {"speedup": 2.5, "best_ms": 4.0, "baseline_ms": 10.0}}
    slow = {**fast, "onnxruntime-cpu": {"speedup": 0.08, "best_ms": 12.5, "baseline_ms": 1.0}}
    said = export.warnings_for(spec, slow, best)
    assert any("SLOWER than the baseline on onnxruntime-cpu: 0.08x" in w for w in said)
    assert any("attend.0" in w for w in said)
    best.records = {}
    assert export.warnings_for(spec, fast, best) == []  # nothing to say


# -- through the real flow ---------------------------------------------------------------

pytestmark_flow = pytest.mark.usefixtures("prefect_harness")


def _flags(tmp_path, *extra):
    return [
        "run",
        *TINY_JOB,
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--output", str(tmp_path / "out"),
        "--summary-json", str(tmp_path / "summary.json"),
        "--allow-untrained-baseline",
        *extra,
    ]  # fmt: skip


def _artifact(client: MlflowClient, run_id: str, name: str, tmp_path) -> dict:
    return json.loads(Path(client.download_artifacts(run_id, name, str(tmp_path))).read_text())


@pytestmark_flow
def test_a_model_torch_pruning_partly_fails_on_still_yields_a_registered_winner(
    tmp_path, monkeypatch, capsys
):
    def probe_fails(*args):  # the calibration step hits a width that breaks
        raise RuntimeError("forward fails at this width")

    monkeypatch.setattr(probe, "achieved", probe_fails)
    code = main(
        _flags(
            tmp_path,
            "--model",
            "tests.helpers_pruning:awkward_net",
            "--target-compression",
            "1.3",
            "--rounds",
            "2",
        )  # fmt: skip
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code in (0, 3) and summary["best"] is not None
    assert summary["mlflow"]["version"] is not None  # registered
    said = [w for w in summary["warnings"] if w.startswith("channel left")]
    assert said and "attend.0" in said[0]
    assert set(summary["best"]["runtimes"]) == {"torch-cpu", "onnxruntime-cpu"}
    assert f"warning: {said[0]}" in capsys.readouterr().out  # the printed report too
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    parent = summary["mlflow"]["parent_run_id"]
    surveyed = _artifact(client, parent, "channel_survey.json", tmp_path)
    reasons = {e["group"]: e["reason"] for e in surveyed["excluded"]}
    assert "attend.0" in reasons and any("ZeroDivisionError" in r for r in reasons.values())
    assert "forward fails" in surveyed["calibration"]["trail"][0]["error"]  # recorded
    best_run = summary["mlflow"]["best_run_id"]
    records = _artifact(client, best_run, "per_layer_settings.json", tmp_path)
    assert records["channel"]["excluded"] == surveyed["excluded"]


@pytestmark_flow
def test_a_model_with_nothing_prunable_ends_with_a_summary_that_says_why(tmp_path):
    code = main(
        _flags(
            tmp_path,
            "--model",
            "tests.helpers_pruning:unprunable_net",
            "--target-compression",
            "1.3",
            "--rounds",
            "2",
            "--no-register",
        )  # fmt: skip
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 3 and summary["best"] is None and summary["rounds"]["total"] == 0
    assert summary["stop_reason"].startswith("nothing to search: channel pruning: no ")
    assert "conv1" in summary["stop_reason"] and "conv2" in summary["stop_reason"]


@pytestmark_flow
def test_a_conv1d_signal_classifier_in_one_sequential_is_searched_by_stage(tmp_path):
    code = main(
        _flags(
            tmp_path,
            "--model",
            "tests.helpers_pruning:signal_net",
            "--data",
            "tests.helpers_pruning:signals",
            "--target-compression",
            "1.5",
            "--rounds",
            "2",
            "--no-register",
        )  # fmt: skip
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code in (0, 3) and summary["best"] is not None
    assert {k for k in summary["best"]["params"] if "ratio" in k} == {
        f"channel.ratio.stage{i}" for i in (1, 2, 3)
    }
    assert summary["best"]["param_count"] < summary["baseline"]["param_count"]


class SequenceMlp(nn.Module):
    """A transformer's feed-forward block on [batch, sequence, hidden] inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x + self.fc2(self.act(self.fc1(x)))).mean(1))


def test_a_linear_on_three_dimensional_inputs_prunes_its_last_dimension():
    """The post-pruning check once zeroed a Linear's removed features on dimension 1
    (the sequence), so no feed-forward block of a transformer could be pruned."""
    torch.manual_seed(0)
    model, example = SequenceMlp().eval(), torch.randn(2, 5, 32)
    learner = ChannelPruning(round_to=None)
    info = ModelInfo(model, example)
    assert [g.root for g in learner.survey(info).groups] == ["fc1"]  # fc2 feeds the residual
    pruned, _ = learner.prune(model, learner.uniform_params(info, 0.5), example)
    assert (pruned.fc1.out_features, pruned.fc2.in_features) == (32, 32)
    assert pruned(example).shape == (2, 4)
