"""Low-rank factorisation: physical, exact at full rank, Eckart-Young at lower rank,
validated config, replayable record, registered, input untouched."""

import copy
import json

import pytest
import torch
from torch import nn

from learners import registry
from learners.base import LearnerDefaults, ModelInfo, Stage
from learners.lowrank import (
    LowRank,
    LowRankConfig,
    factorise_,
    full_rank,
    plan,
    saves_parameters,
    units,
)
from pipeline import measure
from tests.helpers_learners import TinyNet, example_inputs, make_context, trained_tiny

HALF = {"rank.conv1": 0.5, "rank.conv2": 0.5, "rank.conv3": 0.5}


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_registered_with_its_declarations_and_default_save():
    assert "lowrank" in registry.known()
    learner = registry.get("lowrank", granularity="layer")
    assert isinstance(learner, LowRank) and learner.config == LowRankConfig(granularity="layer")
    assert (learner.stage, learner.keeps_float, learner.runtimes) == (Stage.STRUCTURE, True, None)
    assert LowRank.save is LearnerDefaults.save  # the default: fp32 ONNX
    with pytest.raises(TypeError):
        registry.get("lowrank", no_such_option=1)


def test_space_has_one_fraction_per_unit_and_skips_the_output_layer():
    model, x = TinyNet(), example_inputs()
    stage = LowRank().space(ModelInfo(model, x))
    assert [d.name for d in stage] == ["rank.conv1", "rank.conv2", "rank.conv3"]
    assert all((d.low, d.high) == (0.1, 1.0) for d in stage)
    with_fc = LowRank(exclude_output=False, min_fraction=0.2, max_fraction=0.6)
    dims = with_fc.space(ModelInfo(model, x))
    assert [d.name for d in dims][-1] == "rank.fc" and dims[0].low == 0.2
    assert [d.name for d in LowRank(convolutions="none").space(ModelInfo(model, x))] == []
    assert model.training  # the probing forward pass restored the mode


def test_layer_granularity_names_nested_layers():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 5),
    )
    x = torch.randn(1, 8, 4, 4)
    assert units(model, x, LowRankConfig(granularity="layer")) == {"0.0": ["0.0"], "1.0": ["1.0"]}
    assert units(model, x, LowRankConfig(convolutions="pointwise")) == {"0": ["0.0"]}


def test_compress_is_physical_keeps_output_shape_and_leaves_input_untouched():
    model = trained_tiny()
    state = copy.deepcopy(model.state_dict())
    mode = [m.training for m in model.modules()]
    ctx = make_context(epochs=1, n_train=128)
    out = LowRank().compress(model, HALF, ctx)
    assert out is not model
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == mode
    x = torch.randn(3, 1, 8, 8)
    assert out(x).shape == model(x).shape == (3, 10)
    # really two smaller layers, not a mask: fewer parameters and FLOPs
    assert isinstance(out.conv2, nn.Sequential) and out.conv2[0].out_channels == 4
    assert measure.count_params(out) < measure.count_params(model)
    assert measure.count_flops(out, x[:1]) < measure.count_flops(model, x[:1])
    record = json.loads(json.dumps(ctx.records["lowrank"]))
    assert record["ranks"] == {"conv1": 4, "conv2": 4, "conv3": 8}
    assert LowRankConfig(**record["config"]) == LowRank().config
    assert ctx.curves["lowrank.train_loss"]  # fine-tuned through ctx.finetune


def test_layers_that_would_not_shrink_are_left_alone():
    model, x = TinyNet(), example_inputs()
    # conv1 is 1 -> 8 channels 3x3: 72 weights, full rank 8; through rank 4 the pair holds
    # 4 * (9 + 8) = 68 < 72 weights, through rank 5 it would hold 85: conv1 stays whole
    assert saves_parameters(model.conv1, 4) and not saves_parameters(model.conv1, 5)
    params = {"rank.conv1": 5 / 8, "rank.conv2": 1.0, "rank.conv3": 0.25}
    assert plan(model, params, x, LowRankConfig()) == {"conv3": 4}
    assert plan(model, {}, x, LowRankConfig()) == {}  # no parameter: unit untouched


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.Linear(12, 7), torch.randn(5, 12)),
        (nn.Conv2d(6, 10, 1, bias=False), torch.randn(2, 6, 5, 5)),
        (nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1), torch.randn(2, 4, 9, 9)),
        (nn.Conv2d(3, 5, (3, 1), padding=(1, 0), dilation=(2, 1)), torch.randn(2, 3, 8, 6)),
    ],
    ids=["linear", "conv1x1", "conv3x3-stride", "conv3x1-dilated"],
)
def test_full_rank_reproduces_the_original_layer(layer, x):
    torch.manual_seed(0)
    model = nn.Sequential(layer).eval()
    factorised = factorise_(copy.deepcopy(model), {"0": full_rank(layer)})
    assert isinstance(factorised[0], nn.Sequential)
    torch.testing.assert_close(factorised(x), model(x), rtol=1e-5, atol=1e-5)


def test_full_rank_factorisation_of_a_whole_network_is_exact():
    model = trained_tiny().eval()
    every = {
        n: full_rank(m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    factorised = factorise_(copy.deepcopy(model), every)
    x = torch.randn(16, 1, 8, 8)
    assert all(isinstance(getattr(factorised, n), nn.Sequential) for n in every)
    torch.testing.assert_close(factorised(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_truncation_error_is_the_svd_tail_energy(rank):
    """Eckart-Young: ||W - W_r||_F^2 = sum_{i>r} s_i^2. Feeding the identity (one basis
    vector per row) makes the output difference exactly (W - W_r)^T, bias cancelling."""
    torch.manual_seed(1)
    layer = nn.Linear(9, 8).double()
    model = nn.Sequential(layer)
    factorised = factorise_(copy.deepcopy(model), {"0": rank})
    eye = torch.eye(9, dtype=torch.float64)
    error = (factorised(eye) - model(eye)).pow(2).sum()
    tail = torch.linalg.svdvals(layer.weight.detach())[rank:].pow(2).sum()
    torch.testing.assert_close(error, tail)
    second = factorised[0][1]
    assert tuple(factorised[0][0].weight.shape) == (rank, 9)
    assert tuple(second.weight.shape) == (8, rank) and torch.equal(second.bias, layer.bias)


def test_replay_rebuilds_the_same_shapes_without_training():
    model = trained_tiny()
    ctx = make_context(epochs=1, n_train=128)
    params = {**HALF, "rank.conv2": 0.3}
    learner = LowRank()
    compressed = learner.compress(model, params, ctx)
    record = json.loads(json.dumps(ctx.records["lowrank"]))
    replayed = learner.replay(model, record, make_context(epochs=0, n_train=64))
    assert _shapes(replayed) == _shapes(compressed)
    assert _shapes(model) != _shapes(replayed) and "conv2.weight" in model.state_dict()


def test_factorise_rejects_unknown_layers_and_bad_ranks():
    model = TinyNet()
    with pytest.raises(ValueError, match="'bn1' is not a Linear"):
        factorise_(model, {"bn1": 2})
    with pytest.raises(ValueError, match=r"rank of 'fc' must be in \[1, 10\], got 11"):
        factorise_(model, {"fc": 11})


@pytest.mark.parametrize(
    "options, field, allowed",
    [
        ({"granularity": "block"}, "granularity", "'stage', 'layer'"),
        ({"convolutions": "3x3"}, "convolutions", "'all', 'pointwise', 'none'"),
        ({"min_fraction": 0.0}, "min_fraction", "0 < min_fraction < max_fraction <= 1"),
        ({"max_fraction": 1.5}, "max_fraction", "0 < min_fraction < max_fraction <= 1"),
        ({"min_fraction": 0.6, "max_fraction": 0.5}, "min_fraction", "min_fraction < max"),
        ({"exclude_output": "yes"}, "exclude_output", "True or False"),
    ],
)
def test_config_errors_name_the_field_and_what_is_allowed(options, field, allowed):
    with pytest.raises(ValueError) as err:
        LowRankConfig(**options)
    assert field in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize(
    "config",
    [
        LowRankConfig(),
        LowRankConfig(
            granularity="layer",
            min_fraction=0.2,
            max_fraction=0.8,
            convolutions="pointwise",
            exclude_output=False,
        ),
    ],
)
def test_config_round_trips_through_a_json_dict(config):
    assert LowRankConfig(**json.loads(json.dumps(config.to_dict()))) == config
    assert LowRankConfig(**config.to_dict()) == config
