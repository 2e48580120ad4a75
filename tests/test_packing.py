import copy
import io

import numpy as np
import pytest
import torch

from learners.bitwidth import average_bits, fit_bits_to_budget, weight_layers
from learners.formats import packed as packing
from learners.formats.bitpack import pack_uint, packed_bytes, unpack_uint
from learners.formats.onnx_module import OnnxModule
from learners.formats.packed import PackedModel, TensorCodec, loads_packed
from tests.helpers_learners import TinyNet, example_inputs


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 13])
def test_fixed_width_packing_round_trips_in_exactly_n_bits(bits):
    values = np.random.default_rng(bits).integers(0, 1 << bits, 1001)
    data = pack_uint(values, bits)
    assert len(data) == packed_bytes(values.size, bits)
    assert np.array_equal(unpack_uint(data, bits, values.size), values)
    with pytest.raises(ValueError, match="lie in"):
        pack_uint(np.array([1 << bits]), bits)


def _vector(mask: np.ndarray) -> torch.nn.Module:
    """A one-tensor model whose weight is non-zero exactly where ``mask`` is."""
    layer = torch.nn.Linear(mask.size, 1, bias=False)
    values = torch.rand(mask.size, generator=torch.Generator().manual_seed(0)) + 0.5
    with torch.no_grad():
        layer.weight.copy_((values * torch.from_numpy(mask)).reshape(1, -1))
    return layer


def _sparse_round_trip(mask: np.ndarray, use_huffman: bool) -> int:
    """Pack ``mask``'s sparse weight, check it decodes exactly, return its coded bytes."""
    layer = _vector(mask)
    data, stats = packing.pack(layer, {"weight": TensorCodec(sparse=True, huffman=use_huffman)})
    state, _ = packing.unpack_state(data)
    assert torch.equal(state["weight"], layer.weight.detach())
    return stats.per_tensor["weight"] - 4 * int(mask.sum())  # the positions' share


@pytest.mark.parametrize("gap", [0, 1, 2, 6, 14, 30, 62, 126, 254, 1000])
def test_sparse_positions_decode_exactly_whatever_the_gaps(gap):
    """Regular gaps of each size make a different gap-symbol width the cheapest."""
    mask = np.zeros(20_000, dtype=bool)
    mask[:: gap + 1] = True
    _sparse_round_trip(mask, use_huffman=False)


def test_long_runs_of_zeros_decode_exactly():
    mask = np.zeros(10_000, dtype=bool)
    mask[[0, 1, 5, 300, 301, 2000, 9999]] = True
    for use_huffman in (False, True):
        assert _sparse_round_trip(mask, use_huffman) < packed_bytes(mask.size, 1) / 10


@pytest.mark.parametrize("use_huffman", [False, True])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.3, 0.9, 1.0])
def test_positions_pick_the_cheaper_encoding_and_decode_exactly(density, use_huffman):
    mask = np.random.default_rng(0).random(5000) < density
    assert _sparse_round_trip(mask, use_huffman) <= packed_bytes(mask.size, 1)  # <= a bitmap


def _sparse_tiny(density: float) -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():
        for _, m in weight_layers(model):
            m.weight.mul_(torch.rand_like(m.weight) < density)
    return model


def test_packed_model_reloads_bit_identical_onto_a_template():
    model = _sparse_tiny(0.3)
    codecs = {f"{n}.weight": TensorCodec(sparse=True) for n, _ in weight_layers(model)}
    packed = PackedModel(model, codecs)
    data, stats = packed.packed()
    assert stats.total == len(data) == stats.header + stats.architecture + stats.coded + stats.raw
    assert stats.architecture == 0  # no pickle: the architecture is the template
    back = loads_packed(data, TinyNet())  # a fresh model: its weights are not used
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(back(x), packed(x))
    assert back.codecs == codecs
    for key, value in model.state_dict().items():
        assert torch.equal(back.model.state_dict()[key], value), key


def test_packed_file_loads_onto_a_fresh_template():
    model = _sparse_tiny(0.5)
    data, stats = packing.pack(model, {"conv2.weight": TensorCodec(sparse=True)})
    assert stats.architecture == 0
    back = loads_packed(data, template=TinyNet())
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(back(x), model(x))


def test_codecs_must_name_real_tensors_and_weights_must_fit_their_codec():
    model = TinyNet().eval()
    with pytest.raises(ValueError, match="does not have"):
        PackedModel(model, {"nope.weight": TensorCodec()})
    codebook = {"conv2.weight": TensorCodec(values="codebook", bits=2)}
    with pytest.raises(ValueError, match="distinct values"):
        packing.pack(model, codebook)
    with pytest.raises(ValueError, match="magic"):
        loads_packed(b"not a packed file at all", TinyNet())


def test_the_wrapper_keeps_the_inner_mode_and_deep_copies():
    model = TinyNet().eval()
    packed = PackedModel(model, {})
    assert not packed.training
    clone = copy.deepcopy(packed)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(clone(x), packed(x))


def test_bit_budget_lowers_the_widest_layers_until_it_is_met():
    sizes = {"a": 100, "b": 1000, "c": 10}
    bits = fit_bits_to_budget({"a": 8, "b": 8, "c": 8}, sizes, 4.0, 2)
    assert average_bits(bits, sizes) <= 4.0
    assert all(2 <= b <= 8 for b in bits.values())
    assert fit_bits_to_budget({"a": 3, "b": 3, "c": 3}, sizes, 4.0, 2) == {"a": 3, "b": 3, "c": 3}
    with pytest.raises(ValueError, match="below min_bits"):
        fit_bits_to_budget({"a": 3}, {"a": 1}, 1.5, 2)


def test_onnx_module_runs_pickles_and_exports_its_own_bytes(tmp_path):
    from learners.formats.export import export_onnx

    model = TinyNet().eval()
    path = export_onnx(model, example_inputs(), tmp_path / "fp32.onnx")
    wrapped = OnnxModule(path.read_bytes())
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(wrapped(x), model(x), atol=1e-5, rtol=1e-4)
    buf = io.BytesIO()
    torch.save(wrapped, buf)
    again = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert torch.equal(again(x), wrapped(x))
    assert torch.equal(copy.deepcopy(wrapped)(x), wrapped(x))
    out = export_onnx(wrapped, example_inputs(), tmp_path / "again.onnx")
    assert out.read_bytes() == path.read_bytes()
