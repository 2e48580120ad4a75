"""The ``half`` learner: fp16 / bf16 conversion, accuracy in that precision, the
half-precision ONNX file, its place in a chain; the GPU timing skips without CUDA."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from hpo.space import namespaced
from learners import registry
from learners.base import ModelInfo
from learners.chain import apply_chain, validate_chain
from learners.finetune import accuracy
from learners.formats import export
from learners.half import DTYPES, HalfConfig, HalfPrecision, KeepFloat, fold_batchnorm
from pipeline import measure
from pipeline.spec import SpecError, parse
from tests.helpers_learners import (
    TinyNet,
    digits_loaders,
    example_inputs,
    make_context,
    trained_tiny,
)

CUDA = torch.cuda.is_available()


def _half(model, dtype="fp16", **params):
    learner = registry.get("half", dtype=dtype)
    ctx = make_context(epochs=0, n_train=128)
    return learner.compress(model, params, ctx), ctx.records["half"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_and_arithmetic_are_half_and_logits_float(dtype):
    out, record = _half(trained_tiny(), dtype)
    assert isinstance(out, HalfPrecision) and record["dtype"] == dtype
    assert {p.dtype for p in out.parameters()} == {DTYPES[dtype]}
    seen = []
    out.inner.conv1.register_forward_hook(lambda m, args, y: seen.append(args[0].dtype))
    logits = out(torch.randn(3, 1, 8, 8))
    assert seen == [DTYPES[dtype]] and logits.dtype == torch.float32 and logits.shape == (3, 10)


def test_batchnorm_is_folded_into_the_convolutions_without_changing_the_function():
    model = trained_tiny()
    folded, ok = fold_batchnorm(model)
    assert ok and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # input untouched
    x = torch.randn(16, 1, 8, 8)
    torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-4, atol=1e-4)


def test_a_model_that_cannot_be_traced_is_halved_unfolded():
    class Branchy(TinyNet):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return super().forward(x)

    torch.manual_seed(0)
    out, record = _half(Branchy().eval())
    assert record["folded_batchnorm"] is False
    assert any(isinstance(m, nn.BatchNorm2d) for m in out.modules())
    assert out(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_accuracy_in_half_precision_stays_close_to_fp32(dtype):
    model = trained_tiny()
    _, val = digits_loaders()
    reference = accuracy(model, val)
    out, _ = _half(model, dtype)
    assert reference > 0.8  # a trained model, or the comparison says nothing
    assert abs(accuracy(out, val) - reference) <= 0.02


def test_the_search_can_keep_the_first_and_last_layers_in_float():
    model = trained_tiny()
    out, record = _half(model, keep_first_last=True)
    assert record["kept_float"] == ["conv1", "fc"]
    kept = [m for m in out.modules() if isinstance(m, KeepFloat)]
    assert len(kept) == 2 and all(p.dtype == torch.float32 for m in kept for p in m.parameters())
    assert out.inner.conv2.weight.dtype == torch.float16
    _, val = digits_loaders()
    assert abs(accuracy(out, val) - accuracy(model, val)) <= 0.02


def test_the_deployable_file_is_a_half_precision_onnx_of_about_half_the_bytes(tmp_path):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = TinyNet(width=64).eval()  # wide enough that weights dominate the file
    x = example_inputs()
    fp32 = export.save_deployable(model, x, tmp_path / "fp32")
    out, _ = _half(model)
    path = registry.get("half").save(out, x, tmp_path / "half")
    assert path.suffix == ".onnx"
    ratio = measure.file_bytes(path) / measure.file_bytes(fp32)
    assert 0.45 < ratio < 0.6, ratio
    weights = [t for t in onnx.load(str(path)).graph.initializer if len(t.dims) > 1]
    assert weights and {t.data_type for t in weights} == {onnx.TensorProto.FLOAT16}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.randn(5, 1, 8, 8)
    (got,) = session.run(None, {"input": batch.numpy()})
    np.testing.assert_allclose(got, out(batch).detach().numpy(), rtol=1e-2, atol=1e-2)


def test_it_chains_after_channel_pruning_on_the_gpu_runtimes_only():
    for runtime in ("cuda", "cuda-graph"):
        validate_chain(["channel", "half"], runtime=runtime)
    with pytest.raises(ValueError, match="'channel' cannot follow 'half'"):
        validate_chain(["half", "channel"], runtime="cuda")
    with pytest.raises(ValueError, match="only one quantiser per chain"):
        validate_chain(["half", "qat"], runtime="cuda")
    with pytest.raises(ValueError, match="runs only on cuda, cuda-graph.*'torch-cpu'"):
        validate_chain(["channel", "half"], runtime="torch-cpu")
    spec = parse({"target": {"speedup": 2, "runtime": "cuda-graph"}, "learners": "channel,half"})
    assert spec.learners == ["channel", "half"]
    with pytest.raises(SpecError, match="half.dtype must be one of"):
        parse(
            {
                "target": {"speedup": 2, "runtime": "cuda"},
                "learners": "half",
                "learner_options": {"half": {"dtype": "fp8"}},
            }
        )


def test_prune_then_halve_gives_a_smaller_half_model():
    model = trained_tiny()
    chain = [registry.get("channel"), registry.get("half")]
    dims = namespaced("channel", chain[0].space(ModelInfo(model, example_inputs())))
    params = {d.name: 0.5 for d in dims if not hasattr(d, "choices")}
    params["channel.importance"] = "l1"
    ctx = make_context(epochs=1, n_train=128)
    out = apply_chain(chain, model, params, ctx)
    assert isinstance(out, HalfPrecision) and set(ctx.records) == {"channel", "half"}
    assert measure.count_params(out) < measure.count_params(model)
    assert {p.dtype for p in out.parameters()} == {torch.float16}


def test_a_bad_dtype_names_the_choices():
    with pytest.raises(ValueError, match=r"\('fp16', 'bf16'\), got 'fp32'"):
        HalfConfig(dtype="fp32")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("runtime", ["cuda", "cuda-graph"])
def test_a_half_model_is_timed_on_the_gpu_runtimes(runtime, tmp_path):
    model = TinyNet(width=64).eval()
    out, _ = _half(copy.deepcopy(model))
    settings = measure.LatencySettings(runtime=runtime, batch_size=64, warmup=3, repeats=7)
    timing = measure.compare_latency(model, out, example_inputs(), settings, tmp_path)
    assert timing.baseline_ms > 0 and timing.candidate_ms > 0
    x = torch.randn(8, 1, 8, 8)
    on_gpu = copy.deepcopy(out).cuda()(x.cuda()).cpu()
    torch.testing.assert_close(on_gpu, out(x), rtol=2e-2, atol=2e-2)
