import copy

import pytest
import torch

from learners import get
from learners.base import Context, ModelInfo
from learners.channel import ChannelConfig, ChannelPruning, replay
from pipeline import measure
from pipeline.sources.zoo import build
from tests.helpers import TinyCNN, tiny_cnn

HALF = {"ratio.conv1": 0.5, "ratio.layer1": 0.5, "ratio.layer2": 0.5, "ratio.layer3": 0.5}


def _ctx(example, finetuned):
    def finetune(model, **_):
        finetuned.append(model)
        return {"train_loss": [1.0], "val_accuracy": [0.5]}

    return Context(train_loader=None, val_loader=None, example_inputs=example, finetune=finetune)


def test_space_has_one_ratio_per_stage_and_the_importance():
    model = build("resnet20")
    dims = ChannelPruning().space(ModelInfo(model, torch.randn(1, 3, 32, 32)))
    names = [d.name for d in dims]
    assert names == ["ratio.conv1", "ratio.layer1", "ratio.layer2", "ratio.layer3", "importance"]
    layer_dims = ChannelPruning(granularity="layer").space(
        ModelInfo(model, torch.randn(1, 3, 32, 32))
    )
    assert len(layer_dims) == 1 + sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def test_pruning_is_physical_keeps_output_shape_and_leaves_input_untouched():
    model = build("resnet20").eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    finetuned = []
    ctx = _ctx(x[:1], finetuned)
    pruned = get("channel").compress(model, {**HALF, "importance": "l1"}, ctx)
    assert pruned is not model and finetuned == [pruned]
    assert pruned(x).shape == model(x).shape == (4, 10)
    assert measure.count_params(pruned) < 0.4 * measure.count_params(model)
    assert pruned.layer1[0].conv1.weight.shape[0] == 8  # really fewer filters, not masked
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert ctx.records["channel"]["out_channels"]["layer1.0.conv1"] == 8


def test_pruned_model_is_faster_when_measured():
    model = build("resnet20").eval()
    example = torch.randn(1, 3, 32, 32)
    ratios = dict.fromkeys(HALF, 0.7)
    pruned, _ = ChannelPruning().prune(model, ratios, example)
    settings = measure.LatencySettings(batch_size=16, repeats=9)
    timing = measure.compare_latency(model, pruned, example, settings, workdir=None)
    assert timing.speedup > 1.3  # loose property; the figures live in BENCHMARKS.md


def test_history_replays_onto_a_fresh_model():
    model = tiny_cnn()
    x = TinyCNN.example_inputs()
    pruned, history = ChannelPruning().prune(model, {"ratio.stage1": 0.5, "ratio.stage2": 0.25}, x)
    replayed = replay(model, history, x)
    assert torch.allclose(replayed(x), pruned(x))
    assert replayed.stage2[0].out_channels == pruned.stage2[0].out_channels == 24


def test_classifier_width_is_never_pruned():
    model = tiny_cnn(num_classes=3)
    pruned, _ = ChannelPruning().prune(
        model, {"ratio.stage1": 0.75, "ratio.stage2": 0.75}, TinyCNN.example_inputs()
    )
    assert pruned.fc.out_features == 3


@pytest.mark.parametrize("importance", ["l1", "l2", "lamp", "bn_scale", "fpgm"])
def test_every_importance_criterion_prunes(importance):
    model = tiny_cnn()
    pruned, _ = ChannelPruning(importances=(importance,)).prune(
        model, {"ratio.stage1": 0.5, "importance": importance}, TinyCNN.example_inputs()
    )
    assert pruned.stage1[0].out_channels == 8


def test_config_validates_and_round_trips():
    cfg = ChannelConfig(max_ratio=0.6, importances=("l2",))
    assert ChannelConfig(**cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="granularity"):
        ChannelConfig(granularity="block")
    with pytest.raises(ValueError, match="min_ratio < max_ratio"):
        ChannelConfig(max_ratio=1.0)
    with pytest.raises(ValueError, match="choose from"):
        ChannelConfig(importances=("magic",))


def test_unknown_learner_lists_the_known_ones():
    with pytest.raises(ValueError, match="known learners: .*channel"):
        get("nope")


def test_uniform_params_apply_one_ratio_everywhere():
    info = ModelInfo(build("resnet20"), torch.randn(1, 3, 32, 32))
    params = ChannelPruning().uniform_params(info, 0.3)
    assert params == {**dict.fromkeys(HALF, 0.3), "importance": "l1"}
