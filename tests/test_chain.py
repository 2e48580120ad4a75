import pytest
import torch

from learners import registry
from learners.base import LearnerDefaults, ModelInfo, Stage
from learners.bitwidth import weight_layers
from learners.chain import apply_chain, chain_space, validate_chain
from learners.formats.onnx_module import OnnxModule
from learners.formats.packed import PackedModel, loads_packed
from tests.helpers_learners import example_inputs, make_context, trained_tiny


@pytest.mark.parametrize(
    "names",
    [
        ["sparsity"],
        ["int8"],
        ["qat"],
        ["channel", "int8"],
        ["sparsity", "nonuniform"],
        ["channel", "sparsity", "nonuniform"],
        ["sparsity", "qat"],
    ],
)
def test_valid_chains_pass(names):
    validate_chain(names)


@pytest.mark.parametrize(
    "names, message",
    [
        ([], "at least one learner"),
        (["sparsity", "prune"], r"unknown learner 'prune'.*known learners: .*nonuniform"),
        (["int8", "sparsity"], r"'sparsity' cannot follow 'int8'.*put 'int8' last.*sparsity,int8"),
        (["nonuniform", "channel"], r"'channel' cannot follow 'nonuniform'.*channel,nonuniform"),
        (["qat", "nonuniform"], "only one quantiser"),
        (["qat", "int8"], "only one quantiser"),
        (["sparsity", "channel"], r"'channel' cannot follow 'sparsity'.*channel,sparsity"),
        (["sparsity", "sparsity"], "more than once"),
    ],
)
def test_invalid_chains_say_why_and_what_would_work(names, message):
    with pytest.raises(ValueError, match=message):
        validate_chain(names)


def test_int8_needs_the_onnxruntime_runtime_and_names_the_learners_that_run_anywhere():
    validate_chain(["channel", "int8"], runtime="onnxruntime-cpu")
    with pytest.raises(ValueError, match=r"set target.runtime to 'onnxruntime-cpu'.*qat learner"):
        validate_chain(["channel", "int8"], runtime="torch-cpu")
    validate_chain(["channel", "qat"], runtime="torch-cpu", options={"qat": {"bits": 4}})


class _Fake(LearnerDefaults):
    """A third-party learner: only its declarations matter to the chain rules."""

    name = "fake_sparsity"
    stage = Stage.SPARSITY
    runtimes = ("torch-cpu",)

    def __init__(self, **options):
        self.config = options


def test_a_registered_learner_is_ordered_by_what_it_declares():
    registry.register(_Fake.name, _Fake)
    try:
        validate_chain(["channel", "fake_sparsity", "nonuniform"], runtime="torch-cpu")
        backwards = r"'channel' cannot follow 'fake_sparsity'.*order as channel,fake_sparsity"
        with pytest.raises(ValueError, match=backwards):
            validate_chain(["fake_sparsity", "channel"])
        with pytest.raises(ValueError, match=r"cannot follow 'int8'.*put 'int8' last"):
            validate_chain(["int8", "fake_sparsity"])
        with pytest.raises(ValueError, match=r"runs only on torch-cpu.*'onnxruntime-cpu'"):
            validate_chain(["fake_sparsity", "int8"], runtime="onnxruntime-cpu")
    finally:
        registry.unregister(_Fake.name)
    assert "fake_sparsity" not in registry.known()


def test_apply_chain_checks_the_order_of_the_learners_it_is_given():
    learners = [registry.get("int8"), registry.get("channel")]
    with pytest.raises(ValueError, match="'channel' cannot follow 'int8'"):
        apply_chain(learners, trained_tiny(), {}, make_context())


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
    assert torch.equal(loads_packed(out.packed()[0], out)(x), out(x))


def test_channel_then_int8_gives_a_smaller_int8_graph():
    model = trained_tiny()
    ctx = make_context(epochs=1)
    learners = [registry.get("channel", granularity="layer"), registry.get("int8")]
    params = {f"channel.ratio.{n}": 0.5 for n in ("conv1", "conv3")}
    out = apply_chain(learners, model, {**params, "int8.calibration": "minmax"}, ctx)
    assert isinstance(out, OnnxModule)
    alone = registry.get("int8").compress(model, {"calibration": "minmax"}, make_context())
    assert len(out.onnx_bytes) < len(alone.onnx_bytes)
    assert out(torch.randn(2, 1, 8, 8)).shape == (2, 10)
