import copy

import pytest
import torch

from learners.base import ModelInfo
from learners.bitwidth import weight_layers
from learners.formats.packed import PackedModel, TensorCodec, loads_packed
from learners.sparsity import (
    Sparsity,
    SparsityConfig,
    allocate,
    density,
    magnitude_mask,
    zhu_gupta,
)
from tests.helpers_learners import example_inputs, make_context, trained_tiny

SCHEDULE = dict(initial=0.1, final=0.8, start=10, end=110, frequency=10)


def test_schedule_follows_the_cubic_and_steps_only_at_mask_updates():
    values = [zhu_gupta(t, **SCHEDULE) for t in range(0, 130)]
    assert values[:10] == [0.0] * 10
    assert values[10] == pytest.approx(0.1) and values[110] == pytest.approx(0.8)
    assert values[-1] == pytest.approx(0.8)
    assert all(b >= a for a, b in zip(values[10:], values[11:], strict=False))
    assert len(set(values[10:20])) == 1  # held between updates
    # Halfway through the ramp: s_f + (s_i - s_f) (1 - 1/2)^3.
    assert values[60] == pytest.approx(0.8 + (0.1 - 0.8) * 0.5**3)


def test_allocation_meets_the_global_target_and_respects_the_cap():
    sizes = {"a": 100, "b": 1000, "c": 10000}
    for scores in ({"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 0.2, "b": 0.5, "c": 1.0}):
        s = allocate(sizes, scores, 0.8, cap=0.95)
        mean = sum(sizes[k] * s[k] for k in sizes) / sum(sizes.values())
        assert mean == pytest.approx(0.8, abs=1e-6)
        assert max(s.values()) <= 0.95 + 1e-12
    uniform = allocate(sizes, {"a": 1.0, "b": 1.0, "c": 1.0}, 0.6, cap=0.95)
    assert uniform == pytest.approx({k: 0.6 for k in sizes})
    ranked = allocate(sizes, {"a": 0.2, "b": 0.5, "c": 1.0}, 0.5, cap=0.95)
    assert ranked["a"] < ranked["b"] < ranked["c"]
    with pytest.raises(ValueError, match="target"):
        allocate(sizes, {"a": 1.0, "b": 1.0, "c": 1.0}, 0.97, cap=0.95)


def test_magnitude_mask_keeps_the_largest_weights():
    w = torch.randn(64, 16)
    mask = magnitude_mask(w, 0.75)
    assert int(mask.sum()) == 256
    assert w[mask].abs().min() >= w[~mask].abs().max()


@pytest.fixture(scope="module")
def pruned():
    model = trained_tiny()
    before = copy.deepcopy(model.state_dict())
    ctx = make_context(epochs=2)
    out = Sparsity(allocation="uniform").compress(model, {"sparsity": 0.75}, ctx)
    return model, before, ctx, out


def test_learner_reaches_the_target_holds_masks_and_leaves_the_input_alone(pruned):
    model, before, ctx, out = pruned
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert isinstance(out, PackedModel)
    record = ctx.records["sparsity"]
    assert record["schedule"]["completed"]
    for name, m in weight_layers(out.model):
        n = m.weight.numel()
        assert abs(float((m.weight == 0).float().mean()) - 0.75) <= 1.0 / n + 1e-9, name
        assert record["sparsity"][name] == pytest.approx(0.75, abs=1.0 / n + 1e-9)
    assert ctx.curves["sparsity.train_loss"]
    x = torch.randn(4, 1, 8, 8)
    assert out(x).shape == model(x).shape


def test_packed_file_shrinks_with_the_density_and_reloads_identically(pruned):
    model, _, _, out = pruned
    dense_total = PackedModel(model, {}).packed()[1].total
    data, stats = out.packed()
    layers = weight_layers(out.model)
    weights = sum(m.weight.numel() for _, m in layers)
    nnz = sum(int((m.weight != 0).sum()) for _, m in layers)
    # Coded weights cost their float32 values plus positions of at most a bitmap.
    assert 4 * nnz <= stats.coded <= 4 * nnz + sum(-(-m.weight.numel() // 8) for _, m in layers)
    assert stats.coded < 4 * weights * (density(out) + 1 / 32) + len(layers)
    # The file shrinks by the dropped weights, less a little header per coded tensor.
    assert stats.total <= dense_total - 4 * weights + stats.coded + 64 * len(layers)
    back = loads_packed(data, out)
    x = torch.randn(8, 1, 8, 8)
    assert torch.equal(back(x), out(x))


def test_global_allocation_differs_per_layer_but_meets_the_target():
    ctx = make_context(epochs=1)
    out = Sparsity(allocation="global").compress(trained_tiny(), {"sparsity": 0.6}, ctx)
    per_layer = ctx.records["sparsity"]["sparsity"]
    sizes = {n: m.weight.numel() for n, m in weight_layers(out.model)}
    mean = sum(per_layer[k] * sizes[k] for k in sizes) / sum(sizes.values())
    assert mean == pytest.approx(0.6, abs=0.01)
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05


def test_layer_allocation_adds_shares_to_the_space_and_uses_them():
    model = trained_tiny()
    learner = Sparsity(allocation="layer")
    names = [d.name for d in learner.space(ModelInfo(model, example_inputs()))]
    assert names == ["sparsity", "share.conv1", "share.conv2", "share.conv3", "share.fc"]
    ctx = make_context(epochs=1)
    params = {"sparsity": 0.5, "share.conv1": 0.1, "share.conv2": 1.0, "share.conv3": 1.0}
    learner.compress(model, {**params, "share.fc": 0.1}, ctx)
    s = ctx.records["sparsity"]["sparsity"]
    assert s["conv1"] < s["conv2"] and s["fc"] < s["conv3"]


def test_short_budget_still_reaches_the_final_sparsity():
    ctx = make_context(epochs=1, n_train=128)
    learner = Sparsity(sparsity=0.9, end_step=1000, frequency=1)
    out = learner.compress(trained_tiny(), {}, ctx)
    assert not ctx.records["sparsity"]["schedule"]["completed"]
    assert density(out) == pytest.approx(0.1, abs=0.01)


def test_replay_applies_the_recorded_sparsity_to_a_fresh_model(pruned):
    _, _, ctx, out = pruned
    again = Sparsity().replay(trained_tiny(), ctx.records["sparsity"], ctx)
    assert density(again) == pytest.approx(density(out), abs=1e-6)
    assert set(again.codecs) == set(out.codecs)
    assert all(c == TensorCodec(sparse=True) for c in again.codecs.values())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"allocation": "random"}, "allocation"),
        ({"min_sparsity": 0.9, "max_sparsity": 0.5}, "min_sparsity"),
        ({"sparsity": 0.99}, "sparsity must be"),
        ({"start_step": 10, "end_step": 5}, "end_step"),
        ({"frequency": 0}, "frequency"),
    ],
)
def test_config_errors_say_what_is_allowed(options, message):
    with pytest.raises(ValueError, match=message):
        SparsityConfig(**options)
