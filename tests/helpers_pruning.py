"""Models that reproduce what broke channel pruning on models nobody here wrote, and the
generated data they train on (model sources ``tests.helpers_pruning:<factory>``, data
source ``tests.helpers_pruning:signals``).

- ``channel_shuffle``: ShuffleNet's channel shuffle written with view/transpose/flatten,
  as published models write it; torch-pruning 1.6.1 raised ``ZeroDivisionError`` in
  ``update_reshape_index_mapping`` while building the graph of a ShuffleNet V2 unit.
- ``RadixSoftmax``: ResNeSt's split-attention softmax (``view`` into ``radix`` groups,
  softmax across them): its forward fails for widths that are not a multiple of the
  radix, and pruning any channel changes the kept channels' output.
- ``signal_net``/``volume_net``: Conv1d + BatchNorm1d and Conv3d + BatchNorm3d, every
  layer in one ``features`` Sequential (no top-level blocks to call stages).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).flatten(1, 2)


def cbr(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class ShuffleUnit(nn.Module):
    """ShuffleNet V2's units: channel split, a branch, concat, shuffle; the downsampling
    unit (``down``) runs two branches on the whole input and doubles the width."""

    def __init__(self, channels: int, down: bool = False) -> None:
        super().__init__()
        self.down = down
        c = channels if down else channels // 2

        def branch(stride: int) -> nn.Sequential:
            return nn.Sequential(
                cbr(c, c),
                nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False),
                nn.BatchNorm2d(c),
                cbr(c, c),
            )

        if down:
            self.left = nn.Sequential(
                nn.Conv2d(c, c, 3, 2, 1, groups=c, bias=False), nn.BatchNorm2d(c), cbr(c, c)
            )
        self.branch = branch(2 if down else 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.down:
            out = torch.cat([self.left(x), self.branch(x)], 1)
        else:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch(x2)], 1)
        return channel_shuffle(out, 2)


class RadixSoftmax(nn.Module):
    """ResNeSt's rSoftMax over ``radix`` channel groups (shape-preserving here)."""

    def __init__(self, radix: int = 4) -> None:
        super().__init__()
        self.radix = radix

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.radix, c // self.radix, h, w).softmax(1).view(b, c, h, w)


class AwkwardNet(nn.Module):
    """Both patterns next to ordinary layers: ShuffleNet V2 units, a radix-softmax block
    and plain convolutions that prune fine."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = cbr(in_channels, 16, 3)
        self.units = nn.Sequential(ShuffleUnit(16, down=True), ShuffleUnit(32), ShuffleUnit(32))
        self.attend = nn.Sequential(nn.Conv2d(32, 32, 1), RadixSoftmax(4))
        self.head = cbr(32, 48, 3)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.units(self.stem(x))
        x = self.head(self.attend(x))
        return self.fc(x.mean((2, 3)))


class Unprunable(nn.Module):
    """Every prunable width feeds a radix softmax: no group can be pruned."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.soft = RadixSoftmax(4)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.soft(self.conv1(x))
        x = self.soft(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def awkward_net(num_classes: int = 10, in_channels: int = 1) -> AwkwardNet:
    torch.manual_seed(0)
    return AwkwardNet(num_classes, in_channels)


def unprunable_net(num_classes: int = 10, in_channels: int = 1) -> Unprunable:
    torch.manual_seed(0)
    return Unprunable(num_classes, in_channels)


def _block(dims: int, cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    norm = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1]
    return [conv(cin, cout, 3, stride, 1, bias=False), norm(cout), nn.ReLU()]


class FeaturesNet(nn.Module):
    """A 1-, 2- or 3-D CNN with every layer in one ``features`` Sequential: two
    downsamplings, so three resolutions."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1, dims: int = 1) -> None:
        super().__init__()
        pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[dims - 1]
        self.features = nn.Sequential(
            *_block(dims, in_channels, 16),
            *_block(dims, 16, 16),
            *_block(dims, 16, 32, stride=2),
            *_block(dims, 32, 32),
            *_block(dims, 32, 48, stride=2),
            *_block(dims, 48, 48),
            pool(1),
            nn.Flatten(),
            nn.Linear(48, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def signal_net(num_classes: int = 4, in_channels: int = 1) -> FeaturesNet:
    torch.manual_seed(0)
    return FeaturesNet(num_classes, in_channels, dims=1)


def volume_net(num_classes: int = 4, in_channels: int = 1) -> FeaturesNet:
    torch.manual_seed(0)
    return FeaturesNet(num_classes, in_channels, dims=3)


def random_bn_(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms (fresh ones are identities, which
    would hide a BatchNorm that is not masked)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model


def signals(n: int = 480, length: int = 64, classes: int = 4, batch: int = 32):
    """The data source ``tests.helpers_pruning:signals``: noisy sines, the class is the
    frequency (1, 2, 3 or 4 cycles per window), random phase; 60/20/20 split."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    t = torch.arange(length) / length
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    x = torch.sin(2 * math.pi * (y[:, None] + 1) * t + phase)
    x = (x + 0.3 * torch.randn(n, length, generator=g)).unsqueeze(1)
    a, b = int(0.6 * n), int(0.8 * n)
    parts = [(0, a), (a, b), (b, n)]
    return tuple(
        DataLoader(TensorDataset(x[i:j], y[i:j]), batch_size=batch, shuffle=k == 0)
        for k, (i, j) in enumerate(parts)
    )
