import copy

import pytest
import torch

from learners.base import ModelInfo
from learners.bitwidth import weight_layers
from learners.finetune import accuracy
from learners.formats.packed import PackedModel, loads_packed
from learners.qat import ActQuant, Qat, QatConfig, fake_quantize_weight, prepare_
from learners.sparsity import Sparsity
from tests.helpers_learners import example_inputs, make_context, snr_db, trained_tiny

# 8-bit weights and activations must keep the float model's logits this close.
QAT8_MIN_SNR_DB = 25.0


def test_straight_through_estimator_passes_gradients():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    q = fake_quantize_weight(w, 4)
    assert q.detach().unique().numel() <= 4 * 15
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_qat_declares_a_last_place_that_runs_anywhere_and_one_width_per_layer():
    learner = Qat()
    assert learner.runtimes is None and not learner.keeps_float
    names = [d.name for d in learner.space(ModelInfo(trained_tiny(), example_inputs()))]
    assert names == ["bits.conv1", "bits.conv2", "bits.conv3", "bits.fc"]
    assert Qat(bits=4).space(ModelInfo(trained_tiny(), example_inputs())) == []


def test_qat_at_8_bits_stays_close_to_the_float_model():
    model = trained_tiny()
    ctx = make_context(epochs=0)
    out = Qat(bits=8).compress(model, {}, ctx)
    x = next(iter(ctx.val_loader))[0]
    assert snr_db(model(x), out(x)) >= QAT8_MIN_SNR_DB


def test_qat_packs_weights_in_their_bits_and_reloads_bit_exact():
    model = trained_tiny()
    before = copy.deepcopy(model.state_dict())
    ctx = make_context(epochs=1)
    params = {"bits.conv1": 8, "bits.conv2": 4, "bits.conv3": 2, "bits.fc": 3}
    out = Qat().compress(model, params, ctx)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert isinstance(out, PackedModel)
    bits = ctx.records["qat"]["bits"]
    assert bits == {k.removeprefix("bits."): v for k, v in params.items()}
    stats = out.packed()[1]
    for name, m in weight_layers(out.model):
        levels = (1 << (bits[name] - 1)) - 1
        codes = m.weight / m.weight_scale.reshape(-1, *[1] * (m.weight.dim() - 1))
        assert codes.round().abs().max() <= levels
        expected = -(-m.weight.numel() * bits[name] // 8)
        assert stats.per_tensor[f"{name}.weight"] == expected, name
    back = loads_packed(out.packed()[0], out)
    x = torch.randn(8, 1, 8, 8)
    assert torch.equal(back(x), out(x))
    assert any(isinstance(m, ActQuant) and m.frozen for m in back.modules())


def test_qat_bits_obey_the_average_budget():
    model = trained_tiny()
    ctx = make_context(epochs=0)
    Qat(avg_bits=4.0).compress(model, {f"bits.{n}": 8 for n, _ in weight_layers(model)}, ctx)
    assert ctx.records["qat"]["avg_bits"] <= 4.0


def test_qat_training_recovers_accuracy_lost_at_2_bits():
    model = trained_tiny()
    untrained = Qat(bits=2).compress(model, {}, make_context(epochs=0))
    ctx = make_context(epochs=2)
    trained = Qat(bits=2).compress(model, {}, ctx)
    assert accuracy(trained, ctx.val_loader) > accuracy(untrained, ctx.val_loader) + 0.05


def test_qat_after_sparsity_holds_the_zeros():
    ctx = make_context(epochs=1)
    sparse = Sparsity(sparsity=0.7).compress(trained_tiny(), {}, ctx)
    out = Qat(bits=4).compress(sparse, {}, ctx)
    for name, m in weight_layers(out.model):
        assert torch.equal(m.weight == 0, sparse.model.get_submodule(name).weight == 0)
        assert out.codecs[f"{name}.weight"].sparse
    assert out.packed()[1].coded < sparse.packed()[1].coded
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(loads_packed(out.packed()[0], out)(x), out(x))


def test_qat_replay_quantises_to_the_recorded_bits():
    model = trained_tiny()
    ctx = make_context(epochs=0)
    Qat(bits=3).compress(model, {}, ctx)
    again = Qat().replay(model, ctx.records["qat"], make_context())
    assert all(c.bits == 3 for c in again.codecs.values())


def test_prepare_refuses_bits_outside_2_to_8():
    with pytest.raises(ValueError, match="bits must be in"):
        prepare_(trained_tiny(), {"conv1": 1})


@pytest.mark.parametrize(
    "options, message",
    [
        ({"min_bits": 1}, "min_bits"),
        ({"avg_bits": 9.0}, "avg_bits"),
        ({"granularity": "tensor"}, "granularity"),
        ({"calibration_batches": 0}, "calibration_batches"),
    ],
)
def test_config_errors_say_what_is_allowed(options, message):
    with pytest.raises(ValueError, match=message):
        QatConfig(**options)
