import pytest
import torch

from learners.base import ModelInfo
from learners.finetune import accuracy
from learners.formats.onnx_module import OnnxModule
from learners.int8 import Int8, Int8Config, even_batches
from pipeline.sources.models import with_logits_output
from tests.foreign_models import hf_efficientnet
from tests.helpers_learners import example_inputs, make_context, trained_tiny

# Stated tolerance for post-training int8 on the tiny digits model (validation split).
INT8_MAX_DROP = 0.02


@pytest.fixture(scope="module")
def int8():
    model = trained_tiny()
    ctx = make_context()
    out = Int8().compress(model, {"calibration": "minmax"}, ctx)
    return model, ctx, out


def test_int8_onnx_is_within_the_stated_accuracy_drop(int8):
    model, ctx, out = int8
    assert isinstance(out, OnnxModule)
    assert accuracy(out, ctx.val_loader) >= accuracy(model, ctx.val_loader) - INT8_MAX_DROP


def test_int8_graph_really_is_int8(int8):
    import onnx

    _, ctx, out = int8
    graph = onnx.load_from_string(out.onnx_bytes).graph
    ops = {n.op_type for n in graph.node}
    assert ops & {"QLinearConv", "ConvInteger", "QuantizeLinear"}
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8_weights
    record = ctx.records["int8"]
    assert record["format"] == "qoperator" and record["kept_float"] == []


def test_int8_keeps_first_and_last_float_when_asked_and_replays():
    model = trained_tiny()
    ctx = make_context()
    learner = Int8(quant_format="qdq")
    out = learner.compress(model, {"calibration": "percentile", "keep_float": "first_last"}, ctx)
    record = ctx.records["int8"]
    assert record["kept_float"] == sorted([record["weight_nodes"][0], record["weight_nodes"][-1]])
    again = Int8().replay(model, record, make_context())
    assert isinstance(again, OnnxModule)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(again(x), out(x))


def test_int8_declares_its_runtime_place_and_space():
    info = ModelInfo(trained_tiny(), example_inputs())
    learner = Int8()
    assert learner.runtimes == ("onnxruntime-cpu",)
    assert not learner.keeps_float
    assert [d.name for d in learner.space(info)] == ["calibration", "keep_float"]
    assert [d.name for d in Int8(keep_float=("none",)).space(info)] == ["calibration"]
    searched = Int8(search_format=True, search_activation=True, modes=("static", "dynamic"))
    assert [d.name for d in searched.space(info)] == [
        "mode",
        "calibration",
        "keep_float",
        "format",
        "activation",
    ]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"quant_format": "qlinear"}, "quant_format"),
        ({"calibrations": ("kl",)}, "calibration"),
        ({"activation_type": "int4"}, "activation_type"),
        ({"modes": ("weight_only",)}, "modes"),
        ({"op_sets": ("conv",)}, "op_sets"),
        ({"keep_float": ("middle",)}, "keep_float"),
        ({"calibration_batches": 0}, "calibration_batches"),
        ({"threads": 0}, "threads"),
    ],
)
def test_config_errors_say_what_is_allowed(options, message):
    with pytest.raises(ValueError, match=message):
        Int8Config(**options)


def test_choices_given_as_one_comma_separated_option_are_split():
    config = Int8Config(keep_float="none,last,first_last", modes="dynamic")
    assert config.keep_float == ("none", "last", "first_last") and config.modes == ("dynamic",)
    assert Int8Config(**config.to_dict()) == config


def test_calibration_batches_are_made_even_for_onnxruntime():
    ragged = [torch.randn(64, 1, 8, 8), torch.randn(64, 1, 8, 8), torch.randn(52, 1, 8, 8)]
    chunks = even_batches(ragged, 32)
    assert {len(c) for c in chunks} == {32} and len(chunks) == 5
    assert len(even_batches([torch.randn(20, 1, 8, 8)], 32)[0]) == 20


def test_a_graph_qoperator_rejects_falls_back_to_qdq_and_replays():
    # Hugging Face EfficientNet's padding makes onnxruntime's QOperator writer fail
    # ("Invalid model with unknown initializers"); the same graph quantises as QDQ.
    ctx = make_context()
    model = with_logits_output(hf_efficientnet(), ctx.example_inputs, "auto")
    learner = Int8()
    out = learner.compress(model, {"calibration": "minmax"}, ctx)
    record = ctx.records["int8"]
    assert record["format"] == "qdq" and record["fallback_from"] == "qoperator"
    assert "initializer" in record["fallback_reason"]
    again = learner.replay(model, record, ctx)
    # This random network's logits are ~1e-24 and calibration batches come from a shuffled
    # loader, so the replay is compared by what it is (the same QDQ graph), not by value.
    assert _op_types(again) == _op_types(out) and "QuantizeLinear" in _op_types(out)
    x = ctx.example_inputs
    assert again(x).shape == out(x).shape


def _op_types(module: OnnxModule) -> list[str]:
    import onnx

    return sorted({n.op_type for n in onnx.load_from_string(module.onnx_bytes).graph.node})


# int8 against float logits on a random-init encoder: 33-36 dB measured for every mode.
BERT_SNR_FLOOR_DB = 25.0


def test_transformer_int8_modes_keep_outputs_close_and_never_fail(capfd):
    """Every mode/op-set choice the search offers a token-id model gives a working int8
    graph close to the float one: embedding gathers stay float, and a QOperator graph
    onnxruntime cannot load (static, all ops) falls back to QDQ instead of failing."""
    from torch.utils.data import DataLoader

    from learners.base import Context
    from tests.foreign_models import tiny_bert, token_data
    from tests.helpers_learners import snr_db

    train, val, _ = token_data(n=300)
    ids = val.tensors[0]
    model = with_logits_output(tiny_bert(num_classes=4), ids[:1], "auto").eval()
    ctx = Context(
        DataLoader(train, batch_size=32), DataLoader(val, batch_size=64), ids[:1], lambda m, **k: {}
    )
    learner = Int8()
    space = {d.name: d.choices for d in learner.space(ModelInfo(model, ids[:1]))}
    assert space["mode"] == ("dynamic", "static") and space["ops"] == ("matmul", "all")
    with torch.no_grad():
        want = model(ids)
    for mode in space["mode"]:
        for ops in space["ops"]:
            out = learner.compress(model, {"mode": mode, "ops": ops}, ctx)
            record = ctx.records["int8"]
            assert record["mode"] == mode and "Gather" not in record["op_types"]
            assert snr_db(want, out(ids)) >= BERT_SNR_FLOOR_DB, (mode, ops)
            again = learner.replay(model, record, ctx)
            assert _op_types(again) == _op_types(out)
    assert "WARNING" not in capfd.readouterr().err  # the quantiser's warnings are recorded
