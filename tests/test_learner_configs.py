"""Every learner config round-trips through its dict (what MLflow logs), every learner
is registered, leaves its input alone, and records JSON that its replay accepts."""

import copy
import json

import pytest
import torch

from learners import registry
from learners.distill import DistillConfig
from learners.finetune import DistillSettings, TrainSettings
from learners.formats.packed import TensorCodec
from learners.nonuniform import NonUniformConfig
from learners.sparsity import SparsityConfig
from learners.uniform import UniformConfig
from tests.helpers_learners import make_context, trained_tiny

CONFIGS = [
    SparsityConfig(),
    SparsityConfig(sparsity=0.5, allocation="global", end_step=40, exclude=("fc",)),
    NonUniformConfig(),
    NonUniformConfig(bits=5, granularity="layer", inits=("density", "random"), avg_bits=4.0),
    UniformConfig(),
    UniformConfig(mode="qat", bits=4, huffman=True, calibrations=("entropy",)),
    DistillConfig(),
    DistillConfig(feature_weight=(1.0, 10.0), feature_layers=("layer1",)),
    DistillSettings(temperature=2.0, alpha=0.1, feature_weight=3.0, feature_layers=("a",)),
    TrainSettings(epochs=1, lr=0.01),
    TensorCodec(sparse=True, values="uniform", bits=3, scale="fc.weight_scale", huffman=True),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_config_round_trips_through_a_json_dict(config):
    as_json = json.loads(json.dumps(config.to_dict()))
    assert type(config)(**as_json) == config  # lists from JSON become tuples again
    assert type(config)(**config.to_dict()) == config


@pytest.mark.parametrize(
    "name, cls", [("sparsity", SparsityConfig), ("uniform", UniformConfig),
                  ("nonuniform", NonUniformConfig)],
)  # fmt: skip
def test_learners_are_registered_and_take_their_config_fields_as_options(name, cls):
    assert name in registry.known()
    learner = registry.get(name)
    assert learner.name == name and learner.config == cls()
    assert type(registry.get(name, exclude=["fc"]).config.exclude) is tuple
    with pytest.raises(TypeError):
        registry.get(name, no_such_option=1)


LEARNERS = [
    ("sparsity", {}, {"sparsity": 0.5}),
    ("nonuniform", {"bits": 3}, {}),
    ("uniform", {}, {"calibration": "minmax"}),
    ("uniform", {"mode": "qat"}, {"bits.conv1": 4}),
]


@pytest.mark.parametrize("name, options, params", LEARNERS, ids=lambda v: str(v))
def test_learner_never_mutates_its_input_and_records_json(name, options, params):
    model = trained_tiny()
    state = copy.deepcopy(model.state_dict())
    hooks = [len(m._forward_pre_hooks) for m in model.modules()]
    ctx = make_context(epochs=1, n_train=128)
    learner = registry.get(name, **options)
    out = learner.compress(model, params, ctx)
    assert out is not model
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [len(m._forward_pre_hooks) for m in model.modules()] == hooks
    record = json.loads(json.dumps(ctx.records[name]))
    assert type(learner.config)(**record["config"]) == learner.config
    assert out(torch.randn(2, 1, 8, 8)).shape == (2, 10)
