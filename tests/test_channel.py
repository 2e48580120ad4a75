import copy
import math

import pytest
import torch

from learners import get
from learners.base import Context, ModelInfo
from learners.channel import ChannelConfig, ChannelPruning
from pipeline import measure
from pipeline.sources.zoo import build
from tests.helpers import example_inputs, tiny_cnn

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


def conv_widths(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def test_pruning_every_stage_by_70_percent_cuts_every_conv_and_the_flops():
    model = build("resnet20").eval()
    example = torch.randn(1, 3, 32, 32)
    # any width (round_to None): the kept counts are exactly 30%
    pruned, _ = ChannelPruning(round_to=None).prune(model, dict.fromkeys(HALF, 0.7), example)
    before, after = conv_widths(model), conv_widths(pruned)
    assert after.keys() == before.keys()
    assert all(after[n] <= math.ceil(0.3 * before[n]) for n in before)
    # Input and output channels both shrink (only the stem's 3 inputs stay): FLOPs fall
    # below the kept fraction. A masked model would count the same FLOPs as the original.
    assert measure.count_flops(pruned, example) < 0.3 * measure.count_flops(model, example)
    assert pruned(example).shape == model(example).shape
    # The speedup this buys is measured by benchmarks/channel_speedup.py (BENCHMARKS.md).


def test_history_replays_onto_a_fresh_model():
    model = tiny_cnn()
    x = example_inputs()
    pruned, history = ChannelPruning().prune(model, {"ratio.conv1": 0.5, "ratio.conv3": 0.25}, x)
    replayed = ChannelPruning().replay(model, {"history": history}, _ctx(x, []))
    assert torch.allclose(replayed(x), pruned(x))
    assert replayed.conv1.out_channels == pruned.conv1.out_channels == 8  # 16 * (1 - 0.5)
    assert replayed.conv3.out_channels == pruned.conv3.out_channels == 24  # 32 * (1 - 0.25)


def test_classifier_width_is_never_pruned():
    model = tiny_cnn(num_classes=3)
    pruned, _ = ChannelPruning().prune(
        model, {"ratio.conv1": 0.75, "ratio.conv3": 0.75}, example_inputs()
    )
    assert pruned.fc.out_features == 3


@pytest.mark.parametrize("importance", ["l1", "l2", "lamp", "bn_scale", "fpgm"])
def test_every_importance_criterion_prunes(importance):
    model = tiny_cnn()
    pruned, _ = ChannelPruning(importances=(importance,)).prune(
        model, {"ratio.conv1": 0.5, "importance": importance}, example_inputs()
    )
    assert pruned.conv1.out_channels == pruned.conv2.out_channels == 8  # tied by the residual


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
