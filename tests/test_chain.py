import pytest
import torch

from learners import registry
from learners.base import ModelInfo
from learners.bitwidth import weight_layers
from learners.chain import apply_chain, chain_space, validate_chain
from learners.formats.onnx_module import OnnxModule
from learners.formats.packed import PackedModel, loads_packed
from tests.helpers_learners import example_inputs, make_context, trained_tiny


@pytest.mark.parametrize(
    "names",
    [
        ["sparsity"],
        ["uniform"],
        ["channel", "uniform"],
        ["sparsity", "nonuniform"],
        ["channel", "sparsity", "nonuniform"],
        ["sparsity", "uniform"],
    ],
)
def test_valid_chains_pass(names):
    validate_chain(names)


@pytest.mark.parametrize(
    "names, message",
    [
        ([], "at least one learner"),
        (["sparsity", "prune"], r"unknown learner 'prune'.*known learners: .*nonuniform"),
        (["uniform", "sparsity"], r"'sparsity' cannot follow 'uniform'.*put the quantiser last"),
        (["nonuniform", "channel"], r"'channel' cannot follow 'nonuniform'"),
        (["uniform", "nonuniform"], "only one quantiser"),
        (["sparsity", "channel"], r"'channel' cannot follow 'sparsity'.*channel,sparsity"),
        (["sparsity", "sparsity"], "more than once"),
    ],
)
def test_invalid_chains_say_why_and_what_would_work(names, message):
    with pytest.raises(ValueError, match=message):
        validate_chain(names)


def test_int8_needs_the_onnxruntime_runtime_unless_it_trains_instead():
    validate_chain(["channel", "uniform"], runtime="onnxruntime-cpu")
    with pytest.raises(ValueError, match=r"onnxruntime-cpu.*mode: qat"):
        validate_chain(["channel", "uniform"], runtime="torch-cpu")
    validate_chain(["uniform"], runtime="torch-cpu", options={"uniform": {"mode": "qat"}})


def test_deep_compression_chain_namespaces_params_and_packs_everything():
    model = trained_tiny()
    learners = [registry.get("sparsity"), registry.get("nonuniform", bits=4)]
    dims = chain_space(learners, ModelInfo(model, example_inputs()))
    assert [d.name for d in dims] == ["sparsity.sparsity"]
    ctx = make_context(epochs=1)
    out = apply_chain(learners, model, {"sparsity.sparsity": 0.8, "nonuniform.bits": 7}, ctx)
    assert isinstance(out, PackedModel)
    assert set(ctx.records) == {"sparsity", "nonuniform"}
    assert ctx.records["sparsity"]["params"] == {"sparsity": 0.8}
    for name, m in weight_layers(out.model):
        codec = out.codecs[f"{name}.weight"]
        assert codec.sparse and codec.values == "codebook" and codec.huffman
        assert m.weight[m.weight != 0].unique().numel() <= 16
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(loads_packed(out.packed()[0])(x), out(x))


def test_channel_then_int8_gives_a_smaller_int8_graph():
    model = trained_tiny()
    ctx = make_context(epochs=1)
    learners = [registry.get("channel", granularity="layer"), registry.get("uniform")]
    params = {f"channel.ratio.{n}": 0.5 for n in ("conv1", "conv3")}
    out = apply_chain(learners, model, {**params, "uniform.calibration": "minmax"}, ctx)
    assert isinstance(out, OnnxModule)
    alone = registry.get("uniform").compress(model, {"calibration": "minmax"}, make_context())
    assert len(out.onnx_bytes) < len(alone.onnx_bytes)
    assert out(torch.randn(2, 1, 8, 8)).shape == (2, 10)
