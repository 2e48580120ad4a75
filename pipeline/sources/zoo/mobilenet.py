"""MobileNet V1 and V2, each with a 32x32 ("cifar") and a 224x224 ("imagenet") stem.

V1: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", 2017. The layer list is Table 1 (a 3x3 stem then 13 depthwise-separable
blocks, 1024 channels, average pool, FC); the width multiplier alpha thins every layer
(section 3.3). The ImageNet model at alpha=1 has 4.2M parameters (Table 8).

V2: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
The layer list is Table 2 (rows t, c, n, s); each block is Table 1's inverted residual:
1x1 expansion (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection, with a skip when
the stride is 1 and the width is unchanged. Widths are rounded to multiples of 8 as in
the authors' code; the last 1x1 layer keeps 1280 channels for alpha <= 1 (section 6.1).

The "cifar" stem follows the usual CIFAR adaptation: the stem convolution has stride 1
(and, for V2, the first stride-2 row too) so that a 32x32 input ends at 2x2 (V1) or 4x4
(V2) instead of 1x1. Each stage is a top-level child so that per-stage pruning ratios
have names (``ratio.stage3``).
"""

from __future__ import annotations

from torch import Tensor, nn

STEMS = ("cifar", "imagenet")


def _check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha <= 4.0:
        raise ValueError(f"width multiplier alpha must be in (0, 4], got {alpha}")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` without losing more than 10%
    (the rule of the MobileNetV2 reference code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn_act(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: type = nn.ReLU
) -> nn.Sequential:
    """Convolution (no bias: the BatchNorm carries it), BatchNorm, activation."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        act(inplace=True),
    )


class DepthwiseSeparable(nn.Sequential):
    """One row pair of V1's Table 1: 3x3 depthwise + BN + ReLU, then 1x1 + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__(
            conv_bn_act(in_ch, in_ch, 3, stride, groups=in_ch),
            conv_bn_act(in_ch, out_ch, 1),
        )


# (output channels, stride) of V1's 13 depthwise-separable blocks, grouped by resolution.
V1_STAGES = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),  # Table 1 prints s2 on the last dw layer; 7x7 in/out means s1
)


class MobileNetV1(nn.Module):
    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, alpha: float = 1.0, stem: str = "cifar"
    ) -> None:
        super().__init__()
        _check_stem(stem)
        _check_alpha(alpha)

        def width(c: int) -> int:
            return max(8, int(c * alpha))

        channels = width(32)
        self.stem = conv_bn_act(in_channels, channels, 3, 2 if stem == "imagenet" else 1)
        for i, rows in enumerate(V1_STAGES, start=1):
            blocks = []
            for out, stride in rows:
                blocks.append(DepthwiseSeparable(channels, width(out), stride))
                channels = width(out)
            self.add_module(f"stage{i}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(1, len(V1_STAGES) + 1):
            x = getattr(self, f"stage{i}")(x)
        return self.fc(self.pool(x).flatten(1))


class InvertedResidual(nn.Module):
    """V2's bottleneck (Table 1): expand (t), depthwise, linear projection, skip if shapes
    allow. ``t == 1`` has no expansion layer (the first row of Table 2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(in_ch, hidden, 1, act=nn.ReLU6))
        layers.append(conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6))
        layers += [nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
        self.conv = nn.Sequential(*layers)
        self.use_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_skip else out


# Table 2 of the V2 paper: expansion t, output channels c, repeats n, first stride s.
V2_ROWS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


class MobileNetV2(nn.Module):
    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, alpha: float = 1.0, stem: str = "cifar"
    ) -> None:
        super().__init__()
        _check_stem(stem)
        _check_alpha(alpha)
        cifar = stem == "cifar"
        channels = make_divisible(32 * alpha)
        self.stem = conv_bn_act(in_channels, channels, 3, 1 if cifar else 2, act=nn.ReLU6)
        for i, (t, c, n, s) in enumerate(V2_ROWS, start=1):
            out = make_divisible(c * alpha)
            if cifar and i == 2:
                s = 1  # keep 32x32 for one more row: the last feature map is 4x4, not 1x1
            blocks = []
            for j in range(n):
                blocks.append(InvertedResidual(channels, out, s if j == 0 else 1, t))
                channels = out
            self.add_module(f"stage{i}", nn.Sequential(*blocks))
        last = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
        self.head = conv_bn_act(channels, last, 1, act=nn.ReLU6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(1, len(V2_ROWS) + 1):
            x = getattr(self, f"stage{i}")(x)
        return self.fc(self.pool(self.head(x)).flatten(1))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def mobilenet_v1(
    num_classes: int = 10, in_channels: int = 3, alpha: float = 1.0, stem: str = "cifar"
) -> MobileNetV1:
    return MobileNetV1(num_classes, in_channels, alpha, stem)


def mobilenet_v2(
    num_classes: int = 10, in_channels: int = 3, alpha: float = 1.0, stem: str = "cifar"
) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, alpha, stem)
