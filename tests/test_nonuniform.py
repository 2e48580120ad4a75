import copy

import pytest
import torch
from torch.nn.utils import parametrize

from learners.base import ModelInfo
from learners.bitwidth import weight_layers
from learners.formats.packed import PackedModel, TensorCodec, loads_packed
from learners.nonuniform import (
    INITS,
    NonUniformConfig,
    NonUniformQuantization,
    _SharedWeights,
    assign,
    init_centroids,
    kmeans_1d,
)
from learners.sparsity import Sparsity
from tests.helpers_learners import example_inputs, make_context, trained_tiny


@pytest.mark.parametrize("method", INITS)
def test_inits_give_k_sorted_values_inside_the_weight_range(method):
    values = torch.randn(1000)
    c = init_centroids(values, 16, method)
    assert c.numel() == 16 and torch.all(c[1:] >= c[:-1])
    assert values.min() <= c.min() and c.max() <= values.max()


def test_kmeans_is_a_fixed_point_nearest_centroid_and_cluster_means():
    values = torch.cat([torch.randn(500) * 0.1 - 1, torch.randn(500) * 0.1 + 1]).double()
    c, idx = kmeans_1d(values, init_centroids(values, 4, "linear"))
    brute = (values[:, None] - c[None, :]).abs().argmin(dim=1)
    assert torch.equal(idx, brute) and torch.equal(assign(values, c), idx)
    for k in range(4):
        members = values[idx == k]
        if members.numel():
            assert c[k].item() == pytest.approx(members.mean().item(), abs=1e-9)


def test_codebook_gradient_is_the_sum_of_member_gradients():
    torch.manual_seed(0)
    layer = torch.nn.Linear(20, 10)
    codebook = torch.linspace(-0.3, 0.3, 8)
    index = assign(layer.weight.detach().double(), codebook.double())
    mask = torch.rand(10, 20) > 0.3
    shared = _SharedWeights(codebook.clone(), index, mask)
    parametrize.register_parametrization(layer, "weight", shared, unsafe=True)
    x = torch.randn(5, 20)
    layer(x).pow(2).sum().backward()
    # Reference: gradient w.r.t. a dense weight, summed per cluster over kept positions.
    dense = torch.where(mask, codebook[index], torch.zeros(()))
    dense.requires_grad_(True)
    torch.nn.functional.linear(x, dense, layer.bias).pow(2).sum().backward()
    expected = torch.zeros(8).index_add_(0, index[mask], dense.grad[mask])
    torch.testing.assert_close(shared.codebook.grad, expected)


@pytest.fixture(scope="module")
def shared():
    model = trained_tiny()
    before = copy.deepcopy(model.state_dict())
    ctx = make_context(epochs=1)
    out = NonUniformQuantization(bits=3).compress(model, {}, ctx)
    return model, before, ctx, out


def test_each_layer_uses_at_most_2_to_the_b_values_and_reloads_bit_exact(shared):
    model, before, ctx, out = shared
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert isinstance(out, PackedModel)
    for name, m in weight_layers(out.model):
        assert m.weight.unique().numel() <= 8, name
        assert out.codecs[f"{name}.weight"] == TensorCodec(values="codebook", bits=3, huffman=True)
    data, _ = out.packed()
    back = loads_packed(data, out)
    for key, value in out.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[key], value), key
    x = torch.randn(8, 1, 8, 8)
    assert torch.equal(back(x), out(x))
    assert ctx.records["nonuniform"]["bits"] == {n: 3 for n, _ in weight_layers(model)}


def test_indices_cost_about_b_bits_each(shared):
    _, _, _, out = shared
    fixed = PackedModel(out.model, {k: TensorCodec(values="codebook", bits=3) for k in out.codecs})
    stats = fixed.packed()[1]
    weights = sum(m.weight.numel() for _, m in weight_layers(out.model))
    codebooks = 4 * 8 * len(out.codecs)
    assert stats.coded <= weights * 3 / 8 + codebooks + len(out.codecs)
    assert out.packed()[1].coded <= stats.coded  # Huffman is used only when it is smaller


def test_replay_clusters_a_fresh_model_with_the_recorded_bits(shared):
    _, _, ctx, _ = shared
    again = NonUniformQuantization().replay(trained_tiny(), ctx.records["nonuniform"], ctx)
    for _, m in weight_layers(again.model):
        assert m.weight.unique().numel() <= 8


def test_after_sparsity_zeros_stay_and_huffman_codes_positions_too():
    ctx = make_context(epochs=1)
    sparse = Sparsity(sparsity=0.8).compress(trained_tiny(), {}, ctx)
    out = NonUniformQuantization(bits=4).compress(sparse, {}, ctx)
    for name, m in weight_layers(out.model):
        zeros_before = sparse.model.get_submodule(name).weight == 0
        assert torch.equal(m.weight == 0, zeros_before), name
        assert m.weight[m.weight != 0].unique().numel() <= 16
        assert out.codecs[f"{name}.weight"].sparse
    data, stats = out.packed()
    assert stats.total < sparse.packed()[1].total
    back = loads_packed(data, out)
    x = torch.randn(8, 1, 8, 8)
    assert torch.equal(back(x), out(x))


def test_space_and_budget():
    model = trained_tiny()
    info = ModelInfo(model, example_inputs())
    assert [d.name for d in NonUniformQuantization().space(info)] == ["bits"]
    per_layer = NonUniformQuantization(granularity="layer", inits=INITS).space(info)
    assert [d.name for d in per_layer][-1] == "init"
    assert len(per_layer) == 1 + len(weight_layers(model))
    ctx = make_context(epochs=0)
    learner = NonUniformQuantization(granularity="layer", avg_bits=3.0)
    learner.compress(model, {f"bits.{n}": 8 for n, _ in weight_layers(model)}, ctx)
    bits = ctx.records["nonuniform"]["bits"]
    sizes = {n: m.weight.numel() for n, m in weight_layers(model)}
    assert sum(bits[n] * sizes[n] for n in sizes) / sum(sizes.values()) <= 3.0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"min_bits": 0}, "min_bits"),
        ({"bits": 9}, "bits"),
        ({"inits": ("kmeans++",)}, "init"),
        ({"granularity": "channel"}, "granularity"),
        ({"avg_bits": 1.0}, "avg_bits"),
    ],
)
def test_config_errors_say_what_is_allowed(options, message):
    with pytest.raises(ValueError, match=message):
        NonUniformConfig(**options)
