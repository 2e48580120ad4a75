"""Every registered learner (found through ``registry.known()``, so a new one is covered by
adding its file) declares the interface of ``learners.base``, has a config that
round-trips through its dict (what MLflow logs), leaves its input alone, records JSON,
and replays that record to the same architecture; the other configs round-trip too."""

import copy
import inspect
import json

import pytest
import torch

from hpo.space import Categorical, Dimension, Integer, Real
from learners import registry
from learners.base import Learner, ModelInfo, Stage
from learners.distill import DistillConfig
from learners.finetune import DistillSettings, TrainSettings, recalibrate_batchnorm_
from learners.formats.packed import PackedModel, TensorCodec
from tests.helpers_learners import example_inputs, make_context, trained_tiny

LEARNERS = registry.known()

OTHER_CONFIGS = [
    DistillConfig(),
    DistillConfig(feature_weight=(1.0, 10.0), feature_layers=("layer1",)),
    DistillSettings(temperature=2.0, alpha=0.1, feature_weight=3.0, feature_layers=("a",)),
    TrainSettings(epochs=1, lr=0.01),
    TensorCodec(sparse=True, values="uniform", bits=3, scale="fc.weight_scale", huffman=True),
]


def _round_trips(config) -> None:
    as_json = json.loads(json.dumps(config.to_dict()))
    assert type(config)(**as_json) == config  # lists from JSON become tuples again
    assert type(config)(**config.to_dict()) == config


@pytest.mark.parametrize("name", LEARNERS)
def test_learner_config_round_trips_through_a_json_dict(name):
    _round_trips(registry.get(name).config)


@pytest.mark.parametrize("config", OTHER_CONFIGS, ids=lambda c: type(c).__name__)
def test_config_round_trips_through_a_json_dict(config):
    _round_trips(config)


@pytest.mark.parametrize("name", LEARNERS)
def test_learner_declares_the_interface_and_takes_its_config_fields(name):
    learner = registry.get(name)
    assert isinstance(learner, Learner) and learner.name == name
    assert isinstance(learner.stage, Stage) and isinstance(learner.keeps_float, bool)
    assert learner.runtimes is None or all(isinstance(r, str) for r in learner.runtimes)
    assert list(inspect.signature(learner.replay).parameters) == ["model", "record", "ctx"]
    assert list(inspect.signature(learner.save).parameters) == ["model", "example_inputs", "stem"]
    assert registry.get(name, **learner.config.to_dict()).config == learner.config
    with pytest.raises(TypeError):
        registry.get(name, no_such_option=1)


def _middle(dims: list[Dimension]) -> dict:
    """A proposal from the middle of a search space (first choice of a categorical)."""
    params = {}
    for d in dims:
        if isinstance(d, Real):
            params[d.name] = (d.low + d.high) / 2
        elif isinstance(d, Integer):
            params[d.name] = (d.low + d.high) // 2
        elif isinstance(d, Categorical):
            params[d.name] = d.choices[0]
    return params


def _settled(model: torch.nn.Module, ctx) -> torch.nn.Module:
    """A copy with BatchNorm statistics re-estimated on the (unshuffled) validation data."""
    model = copy.deepcopy(model)
    recalibrate_batchnorm_(model, ctx.val_loader)
    return model.eval()


def _compress(name: str, epochs: int):
    model = trained_tiny()
    learner = registry.get(name)
    params = _middle(learner.space(ModelInfo(model, example_inputs())))
    ctx = make_context(epochs=epochs, n_train=128)
    return model, learner, ctx, learner.compress(model, params, ctx)


@pytest.mark.parametrize("name", LEARNERS)
def test_learner_never_mutates_its_input_and_records_json(name):
    before = trained_tiny()
    state = copy.deepcopy(before.state_dict())
    hooks = [len(m._forward_pre_hooks) for m in before.modules()]
    model, learner, ctx, out = _compress(name, epochs=1)
    assert out is not model
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [len(m._forward_pre_hooks) for m in model.modules()] == hooks
    record = json.loads(json.dumps(ctx.records[name]))
    assert type(learner.config)(**record["config"]) == learner.config
    assert out(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name", LEARNERS)
def test_replay_rebuilds_the_compressed_architecture_and_save_writes_a_file(name, tmp_path):
    """Without fine-tuning, replay gives the same weights, and the same outputs once both
    have BatchNorm statistics from the same batches (compress may re-estimate them)."""
    model, learner, ctx, out = _compress(name, epochs=0)
    record = json.loads(json.dumps(ctx.records[name]))
    again = registry.get(name).replay(model, record, make_context(epochs=0, n_train=128))
    assert type(again) is type(out)
    shapes = {k: v.shape for k, v in out.state_dict().items()}
    assert {k: v.shape for k, v in again.state_dict().items()} == shapes
    if isinstance(out, PackedModel):
        assert again.codecs == out.codecs
    params = dict(again.named_parameters())
    for key, value in out.named_parameters():
        torch.testing.assert_close(params[key], value, msg=key)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(_settled(again, ctx)(x), _settled(out, ctx)(x))
    path = learner.save(out, example_inputs(), tmp_path / name)
    assert path.is_file() and path.stat().st_size > 0
