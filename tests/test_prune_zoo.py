"""Every zoo model prunes structurally: physically smaller, same output shape, computing
exactly what the original computes on the kept channels, replayable, and faster.

The reference (tests/helpers_zoo.py) is independent of the pruner's bookkeeping, so a
broken split/shuffle pairing, concat offset or group layout fails these tests; the
negative controls below show that it does.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from learners import channel
from learners.base import Context
from learners.channel import ChannelPruning
from learners.channel import ops as channel_ops
from learners.channel.ops import PermutationPruner, PruningError, StructuredPruner
from pipeline import measure
from pipeline.sources.zoo import build, names
from pipeline.sources.zoo.shufflenet import ChannelShuffle
from tests.helpers_zoo import (
    RATIO_FOR_2X,
    ViewShuffleNet,
    conv_widths,
    masked_reference,
    randomize_bn,
    uniform_ratios,
)

EXAMPLE = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
BATCH = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _prune(name: str, ratio: float, **kwargs):
    torch.manual_seed(0)
    model = randomize_bn(build(name, **kwargs)).eval()
    params = {**uniform_ratios(model, EXAMPLE, ratio), "importance": "l1"}
    pruned, history = ChannelPruning().prune(model, params, EXAMPLE)
    return model, pruned, history


@pytest.mark.parametrize("name", sorted(names()))
def test_every_zoo_model_prunes_to_a_smaller_correct_replayable_model(name):
    model, pruned, history = _prune(name, RATIO_FOR_2X[name])
    with torch.no_grad():
        out = pruned.eval()(BATCH)
        assert out.shape == model(BATCH).shape == (4, 10)
    # physically smaller: fewer parameters, and convolutions really lost filters
    assert _n_params(pruned) < 0.6 * _n_params(model)
    before, after = conv_widths(model), conv_widths(pruned)
    assert sum(o for _, o in after.values()) < 0.75 * sum(o for _, o in before.values())
    # exactly the original on the kept channels (independent reference)
    expected = masked_reference(model, pruned, BATCH)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    # the recorded history rebuilds the same network from the unpruned model
    replay_ctx = Context(None, None, EXAMPLE, finetune=None)  # replay needs only the input
    rebuilt = ChannelPruning().replay(model, {"history": history}, replay_ctx)
    assert conv_widths(rebuilt) == after
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(BATCH), out)


@pytest.mark.parametrize("name", sorted(names()))
def test_pruned_zoo_model_is_measurably_faster(name):
    """Loose property check (shared 2-core machine, batch 16); the 2x figures at batch 32
    are measured in benchmarks/zoo.py and recorded in BENCHMARKS.md."""
    model, pruned, _ = _prune(name, RATIO_FOR_2X[name])
    settings = measure.LatencySettings(batch_size=16, repeats=7, warmup=2)
    timing = measure.compare_latency(model, pruned, EXAMPLE, settings, workdir=None)
    assert timing.speedup > 1.4


def _grouped(model):
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels
    ]


@pytest.mark.parametrize("groups", [2, 3, 8])
def test_shufflenet_v1_keeps_group_divisibility_and_prunes_inside_and_across_units(groups):
    model, pruned, _ = _prune("shufflenet_v1", 0.5, groups=groups)
    for name, conv in _grouped(pruned):
        assert conv.in_channels % conv.groups == 0 and conv.out_channels % conv.groups == 0, name
    before, after = conv_widths(model), conv_widths(pruned)
    # the bottleneck (1x1 group conv -> shuffle -> depthwise -> 1x1 group conv) shrank ...
    assert after["stage3.2.depthwise.0"][1] < before["stage3.2.depthwise.0"][1]
    assert after["stage3.2.expand.0"][0] < before["stage3.2.expand.0"][0]
    # ... and so did the residual trunk the units share
    assert after["stage3.2.expand.0"][1] < before["stage3.2.expand.0"][1]
    torch.testing.assert_close(pruned(BATCH), masked_reference(model, pruned, BATCH))


def test_shufflenet_v2_split_and_shuffle_stay_paired():
    model, pruned, _ = _prune("shufflenet_v2", 0.5)
    for name, unit in pruned.named_modules():
        if isinstance(unit, ChannelShuffle):
            perm = unit.perm.tolist()
            assert sorted(perm) == list(range(len(perm))), f"{name} is not a permutation"
    before, after = conv_widths(model), conv_widths(pruned)
    # channels that pass through the split and the shuffle (branch outputs) were pruned
    assert after["stage3.3.branch2.5"][1] < before["stage3.3.branch2.5"][1]
    assert after["stage3.4.branch2.0"][0] < before["stage3.4.branch2.0"][0]
    torch.testing.assert_close(pruned(BATCH), masked_reference(model, pruned, BATCH))


def test_without_the_shuffle_mapping_the_check_refuses_the_broken_model(monkeypatch):
    """Negative control: DepGraph's own view of a shuffle (identity) breaks the pairing;
    the built-in check must catch it instead of returning the model."""
    monkeypatch.setattr(channel_ops, "install_mappings", lambda graph: [])
    model = randomize_bn(build("shufflenet_v2", width=0.5)).eval()
    trial = copy.deepcopy(model)
    with pytest.raises((PruningError, IndexError)):
        StructuredPruner(
            trial,
            EXAMPLE,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=0.5,
            ignored_layers=[trial.fc],
        ).step()
    # The channel learner's survey sees the same failures and leaves those groups alone.
    monkeypatch.setattr(channel.learner, "_surveys", {})  # surveyed afresh, with the broken mapping
    found = channel.survey(model, EXAMPLE, channel.ChannelConfig())
    assert any("PruningError" in e["reason"] or "IndexError" in e["reason"] for e in found.excluded)


def test_without_balanced_selection_group_divisibility_breaks(monkeypatch):
    """Negative control: choose channels by position, ignoring the group layouts."""
    monkeypatch.setattr(channel_ops, "select_balanced", lambda graph, full, imp, n: list(range(n)))
    model = randomize_bn(build("shufflenet_v1", groups=3)).eval()
    with pytest.raises((PruningError, RuntimeError)):
        ChannelPruning().prune(model, uniform_ratios(model, EXAMPLE, 0.5), EXAMPLE)


def test_permutation_pruner_keeps_the_permutation_of_the_kept_channels():
    shuffle = ChannelShuffle(12, 3)
    x = torch.randn(2, 12, 2, 2)
    full = shuffle(x)
    drop_out = [1, 6, 11]
    dropped_in = {int(shuffle.perm[o]) for o in drop_out}
    kept_in = [c for c in range(12) if c not in dropped_in]
    PermutationPruner().prune_out_channels(shuffle, drop_out)
    kept_out = [o for o in range(12) if o not in drop_out]
    assert torch.equal(shuffle(x[:, kept_in]), full[:, kept_out])


def test_layers_behind_an_unmappable_shuffle_are_skipped_safely():
    torch.manual_seed(0)
    model = randomize_bn(ViewShuffleNet()).eval()
    with pytest.warns(UserWarning, match="skips"):
        pruned, _ = ChannelPruning().prune(
            model, {"ratio.stem": 0.5, "ratio.gconv": 0.5, "ratio.after": 0.5}, EXAMPLE
        )
    widths = conv_widths(pruned)
    assert widths["gconv.0"][1] == 12  # feeds the reshape-transpose shuffle: untouched
    assert widths["after.0"][0] == 12
    assert widths["stem.0"][1] < 12 and widths["after.0"][1] < 16  # the rest is pruned
    assert widths["gconv.0"][0] % 3 == 0
    torch.testing.assert_close(pruned(BATCH), masked_reference(model, pruned, BATCH))


def test_structured_pruner_check_catches_a_tampered_result():
    import torch_pruning as tp

    model = copy.deepcopy(build("resnet20")).eval()
    pruner = StructuredPruner(
        model,
        EXAMPLE,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.3,
        ignored_layers=[model.fc],
    )
    pruner.step()  # passes its own check
    with torch.no_grad():  # swap two kept filters: same shapes, wrong function
        w = model.layer1[0].conv1.weight
        w[[0, 1]] = w[[1, 0]]
    with pytest.raises(PruningError, match="differs"):
        pruner.check()


@pytest.mark.parametrize("name", ["shufflenet_v1", "shufflenet_v2"])
def test_pruned_shufflenets_export_to_onnx_and_run_the_same(name, tmp_path):
    import onnxruntime as ort

    from learners.formats.export import export_onnx

    _, pruned, _ = _prune(name, 0.5)
    path = export_onnx(pruned, EXAMPLE, tmp_path / "pruned.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": BATCH.numpy()})[0]
    with torch.no_grad():
        expected = pruned(BATCH).numpy()
    assert abs(got - expected).max() <= 1e-4 * abs(expected).max()
