"""The analytic cost model: textbook formulas, per-layer rows, and totals that agree with
torch's own FlopCounterMode (2 FLOPs per MAC) on every zoo model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.measure import costmodel
from pipeline.sources.zoo import build, names
from pipeline.sources.zoo.shufflenet import ChannelShuffle


def test_conv_formulas_are_the_textbook_ones():
    H = W = 14
    N, M, K, G = 32, 64, 3, 4
    assert costmodel.conv_macs(1, H * W, N, M, K * K) == H * W * N * K**2 * M
    assert costmodel.conv_macs(1, H * W, N, M, K * K, groups=G) == H * W * N * K**2 * M // G
    assert costmodel.depthwise_macs(1, H * W, N, K * K) == H * W * K**2 * N
    assert costmodel.pointwise_macs(1, H * W, N, M) == H * W * N * M
    assert costmodel.conv_macs(8, H * W, N, M, K * K) == 8 * H * W * N * K**2 * M
    assert costmodel.linear_macs(5, N, M) == 5 * N * M
    # the depthwise-separable saving: (dw + pw) / standard = 1/M + 1/K^2
    separable = costmodel.depthwise_macs(1, H * W, N, K * K) + costmodel.pointwise_macs(
        1, H * W, N, M
    )
    standard = costmodel.conv_macs(1, H * W, N, M, K * K)
    assert separable / standard == pytest.approx(1 / M + 1 / K**2)
    with pytest.raises(ValueError, match="groups"):
        costmodel.conv_macs(1, 1, 10, 12, 1, groups=4)


@pytest.mark.parametrize(
    ("layer", "macs"),
    [
        (nn.Conv2d(16, 32, 3, padding=1, bias=False), 8 * 8 * 16 * 9 * 32),
        (nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), 4 * 4 * 16 * 9 * 32),
        (nn.Conv2d(16, 32, 1, groups=4, bias=False), 8 * 8 * 16 * 32 // 4),
        (nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), 8 * 8 * 9 * 16),
        (nn.Conv2d(16, 32, 1), 8 * 8 * 16 * 32),
    ],
)
def test_a_conv_row_has_the_formula_macs_and_reads_input_weights_writes_output(layer, macs):
    x = torch.randn(2, 16, 8, 8)
    (row,) = costmodel.layer_costs(layer, x)
    out = layer(x)
    assert row.macs == 2 * macs  # batch of 2
    weights = sum(p.numel() for p in layer.parameters())
    assert row.param_count == weights
    assert row.bytes_moved == 4 * (x.numel() + weights + out.numel())
    assert row.output_shape == tuple(out.shape)


def test_memory_only_layers_cost_no_macs_and_views_move_nothing():
    x = torch.randn(2, 12, 4, 4)
    model = nn.Sequential(ChannelShuffle(12, 3), nn.ReLU(inplace=True), nn.Flatten())
    rows = {r.name: r for r in costmodel.layer_costs(model, x)}
    shuffle, relu, flatten = rows["0"], rows["1"], rows["2"]
    tensor = 4 * x.numel()
    # channel shuffle: zero arithmetic, one full read and one full write (+ its index)
    assert shuffle.macs == 0
    assert shuffle.bytes_moved == 2 * tensor + 8 * 12
    assert relu.macs == 0 and relu.bytes_moved == 2 * tensor  # in place: read + write
    assert flatten.bytes_moved == 0  # a view
    assert flatten.output_shape == (2, 12 * 16)


def test_ops_a_block_runs_itself_get_their_own_row():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 1, bias=False)

        def forward(self, x):
            return torch.cat((x, self.conv(x) + x), 1)

    x = torch.randn(1, 8, 4, 4)
    rows = {r.name: r for r in costmodel.layer_costs(Block(), x)}
    own = rows["(model)"]
    assert own.ops == ["add", "cat"] and own.macs == 0
    tensor = 4 * x.numel()
    assert own.bytes_moved == 3 * tensor + 4 * tensor  # add: 2 reads 1 write; cat: 2+2
    assert own.output_shape == (1, 16, 4, 4)


@pytest.mark.parametrize("name", sorted(names()))
def test_totals_equal_torchs_flop_counter_on_every_zoo_model(name):
    stems = [("cifar", 32)] if name.startswith("resnet") else [("cifar", 32), ("imagenet", 224)]
    for stem, size in stems:
        kwargs = {} if name.startswith("resnet") else {"stem": stem}
        model = build(name, **kwargs)
        x = torch.randn(1, 3, size, size)
        rows = costmodel.layer_costs(model, x)
        totals = costmodel.totals(model, x, rows)
        assert totals.macs == totals.counted_macs > 0
        assert totals.param_count == sum(r.param_count for r in rows)
        assert all(r.macs == 0 for r in rows if not isinstance(_module(model, r.name), _MAC))
        # every conv/linear row is exactly its formula
        for r in rows:
            module = _module(model, r.name)
            if isinstance(module, nn.Conv2d):
                _, _, h, w = r.output_shape
                assert r.macs == costmodel.conv_macs(
                    1, h * w, module.in_channels, module.out_channels,
                    module.kernel_size[0] * module.kernel_size[1], module.groups,
                )  # fmt: skip


_MAC = (nn.Conv2d, nn.Linear)


def _module(model: nn.Module, row_name: str) -> nn.Module:
    return model if row_name == "(model)" else model.get_submodule(row_name)


def test_the_mac_flop_factor_is_stated_once():
    assert costmodel.MAC_PER_FLOP == 0.5
    model = nn.Linear(10, 20)
    x = torch.randn(3, 10)
    assert costmodel.counted_macs(model, x) == 3 * 10 * 20
