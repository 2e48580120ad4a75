"""ShuffleNet V1 and V2, each with a 32x32 ("cifar") and a 224x224 ("imagenet") stem.

V1: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices", CVPR 2018. The layer list and the per-group widths are Table 1
(stages of 4, 8 and 4 units after a 24-channel 3x3 stem and a max pool); each unit is
Fig. 2(b)/(c): 1x1 group conv (bottleneck = 1/4 of the output), channel shuffle, 3x3
depthwise (stride 2 in the first unit of a stage), 1x1 group conv, then a residual add
or, when downsampling, a concat with a 3x3 average pool of the input. The first 1x1 of
stage 2 is not grouped (section 3.3: too few input channels); no shuffle follows it.
"ShuffleNet s x" scales every width by s (Table 2), rounded so that groups divide.

V2: Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018. The layer list and the 0.5x-2x widths are Table 5; the units are
Fig. 3(c) (channel split, a 1x1-dw3x3-1x1 branch on one half, concat, shuffle) and
Fig. 3(d) (downsampling: two branches on the whole input, concat, shuffle).

The "cifar" stem is a stride-1 3x3 convolution without max pool, so a 32x32 input ends
at 4x4. Stages are top-level children so per-stage pruning ratios have names.

Channel shuffle is a stored permutation applied with one gather (``index_select``): the
same single read and write of the tensor as reshape-transpose-reshape, one ONNX Gather,
and a form that stays exact when a pruner removes channels (learners/channel/ops.py).
The V2 split is sized by the branch's input width, so a pruned unit keeps working
whatever number of channels each side keeps.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

STEMS = ("cifar", "imagenet")
V1_WIDTHS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960),
             4: (272, 544, 1088), 8: (384, 768, 1536)}  # fmt: skip
V2_WIDTHS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024),
             1.5: (176, 352, 704, 1024), 2.0: (244, 488, 976, 2048)}  # fmt: skip
REPEATS = (4, 8, 4)


def shuffle_permutation(channels: int, groups: int) -> Tensor:
    """Output channel o of a shuffle reads input channel perm[o]: the input, seen as
    (groups, channels/groups), transposed (V1 paper, Fig. 1(c))."""
    if channels % groups:
        raise ValueError(f"{channels} channels do not split into {groups} groups")
    return torch.arange(channels).view(groups, channels // groups).t().reshape(-1)


class ChannelShuffle(nn.Module):
    """``out[:, o] = x[:, perm[o]]``. Starts as the shuffle of ``channels`` into
    ``groups``; a channel pruner may shorten ``perm`` (it stays a bijection)."""

    channel_permutation = True  # the marker learners/channel/ops.py looks for
    perm: Tensor  # a buffer: saved with the model, follows it between devices

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.register_buffer("perm", shuffle_permutation(channels, groups))

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.perm)

    def extra_repr(self) -> str:
        return f"channels={self.perm.numel()}, groups={self.groups}"


def _check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]


def _stem(in_channels: int, out: int, stem: str) -> nn.Sequential:
    _check_stem(stem)
    if stem == "cifar":
        return nn.Sequential(*_conv_bn(in_channels, out, 3), nn.ReLU(inplace=True))
    return nn.Sequential(
        *_conv_bn(in_channels, out, 3, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
    )


class ShuffleV1Unit(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int, stride: int, group_first: bool):
        super().__init__()
        mid = out_ch // 4
        branch_out = out_ch - in_ch if stride == 2 else out_ch
        first_groups = groups if group_first else 1
        self.stride = stride
        self.compress = nn.Sequential(
            *_conv_bn(in_ch, mid, 1, groups=first_groups), nn.ReLU(inplace=True)
        )
        self.shuffle = ChannelShuffle(mid, groups) if first_groups > 1 else nn.Identity()
        self.depthwise = nn.Sequential(*_conv_bn(mid, mid, 3, stride, groups=mid))
        self.expand = nn.Sequential(*_conv_bn(mid, branch_out, 1, groups=groups))
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(self.depthwise(self.shuffle(self.compress(x))))
        if self.stride == 1:
            return F.relu(x + out)
        return torch.cat((self.pool(x), F.relu(out)), 1)


class ShuffleNetV1(nn.Module):
    # Added by name in __init__ (stage2..stage4, as in the papers).
    stage2: nn.Sequential
    stage3: nn.Sequential
    stage4: nn.Sequential

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        groups: int = 3,
        width: float = 1.0,
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        if groups not in V1_WIDTHS:
            raise ValueError(f"groups must be one of {sorted(V1_WIDTHS)}, got {groups}")
        if not 0.0 < width <= 4.0:
            raise ValueError(f"width must be in (0, 4], got {width}")
        # Widths rounded so that the bottleneck (1/4) and every branch divide by groups.
        widths = [_round_to(c * width, 4 * groups) for c in V1_WIDTHS[groups]]
        channels = _round_to(24 * width, groups) if width != 1.0 else 24
        self.stem = _stem(in_channels, channels, stem)
        for i, (out, repeats) in enumerate(zip(widths, REPEATS, strict=True), start=2):
            units = []
            for j in range(repeats):
                units.append(
                    ShuffleV1Unit(channels, out, groups, 2 if j == 0 else 1, (i, j) != (2, 0))
                )
                channels = out
            self.add_module(f"stage{i}", nn.Sequential(*units))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


class ShuffleV2Unit(nn.Module):
    """Fig. 3(c) when ``stride == 1`` (split, branch on the second part, concat, shuffle);
    Fig. 3(d) when ``stride == 2`` (both branches see the whole input)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = out_ch // 2
        branch_in = in_ch if stride == 2 else in_ch - half
        if stride == 2:
            self.branch1 = nn.Sequential(
                *_conv_bn(in_ch, in_ch, 3, 2, groups=in_ch),
                *_conv_bn(in_ch, half, 1),
                nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            *_conv_bn(branch_in, half, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(half, half, 3, stride, groups=half),
            *_conv_bn(half, half, 1),
            nn.ReLU(inplace=True),
        )
        self.shuffle = ChannelShuffle(2 * half, 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 2:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        else:
            # The branch takes the last ``k`` channels; the rest pass through. ``k`` is read
            # from the branch itself so a pruned unit splits where its branch expects.
            k = cast(nn.Conv2d, self.branch2[0]).in_channels
            passed, branched = torch.split(x, [x.shape[1] - k, k], dim=1)
            out = torch.cat((passed, self.branch2(branched)), 1)
        return self.shuffle(out)


class ShuffleNetV2(nn.Module):
    # Added by name in __init__ (stage2..stage4, as in the papers).
    stage2: nn.Sequential
    stage3: nn.Sequential
    stage4: nn.Sequential

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, stem: str = "cifar"
    ) -> None:
        super().__init__()
        if width not in V2_WIDTHS:
            raise ValueError(f"width must be one of {sorted(V2_WIDTHS)}, got {width}")
        *stages, last = V2_WIDTHS[width]
        channels = 24
        self.stem = _stem(in_channels, channels, stem)
        for i, (out, repeats) in enumerate(zip(stages, REPEATS, strict=True), start=2):
            units = []
            for j in range(repeats):
                units.append(ShuffleV2Unit(channels, out, 2 if j == 0 else 1))
                channels = out
            self.add_module(f"stage{i}", nn.Sequential(*units))
        self.conv5 = nn.Sequential(*_conv_bn(channels, last, 1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stem(x))))
        return self.fc(self.pool(self.conv5(x)).flatten(1))


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def shufflenet_v1(
    num_classes: int = 10,
    in_channels: int = 3,
    groups: int = 3,
    width: float = 1.0,
    stem: str = "cifar",
) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes, in_channels, groups, width, stem)


def shufflenet_v2(
    num_classes: int = 10, in_channels: int = 3, width: float = 1.0, stem: str = "cifar"
) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, in_channels, width, stem)
