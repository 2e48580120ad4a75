"""Models nobody here wrote, and test models with the patterns that broke on them.

Every function here is a ``package.module:factory`` model source (or a
``package.module:callable`` data source), so the real CLI builds them exactly as a user's
job would. The Hugging Face models are built from configs only: random initialisation,
nothing downloaded, tiny (few layers, narrow widths, small images), trained on the job's
data by the tool itself. They return output objects with ``.logits``; the job's default
``model.output: auto`` picks the logits out.

Patterns (issue 9): Hugging Face MobileNetV2 and EfficientNet keep TensorFlow's BatchNorm
momentum convention (0.997 and 0.99, i.e. the running statistics are nearly the last
batch's), :func:`low_momentum_cnn` has the opposite (0.001: the statistics barely move
from their initial values during training); squeeze-excitation, hardswish, stochastic
depth and an output object are in :func:`mobile_se_net`; a channel shuffle written with
``view``/``transpose``/``flatten`` (on which torch-pruning raised ``ZeroDivisionError``)
in :func:`shuffle_net`; torchvision's ShuffleNet V2 (``chunk`` straight into ``cat``, a
``view``/``transpose`` shuffle; torch-pruning raised ``IndexError``) in
:func:`tv_shufflenet_v2`; Conv1d + BatchNorm1d in :func:`signal_cnn`; integer token ids in
:func:`tiny_bert` with :func:`token_data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


# --- Hugging Face image classifiers (configs only, random init) -------------------------


def hf_resnet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Hugging Face ``ResNetForImageClassification``: basic blocks, 2 stages, 16-32 wide."""
    from transformers import ResNetConfig, ResNetForImageClassification

    _seeded()
    config = ResNetConfig(
        num_channels=in_channels,
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        layer_type="basic",
        num_labels=num_classes,
    )
    return ResNetForImageClassification(config)


def hf_mobilenet_v2(
    num_classes: int = 10, in_channels: int = 1, init_std: float = 0.02
) -> nn.Module:
    """Hugging Face ``MobileNetV2ForImageClassification`` at depth multiplier 0.25 and
    expansion 2 (all 17 inverted-residual blocks); its BatchNorms have momentum 0.997."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    _seeded()
    config = MobileNetV2Config(
        num_channels=in_channels,
        initializer_range=init_std,
        image_size=16,
        depth_multiplier=0.25,
        expand_ratio=2.0,
        output_stride=8,  # 16x16 images: dilated convolutions after the third halving
        classifier_dropout_prob=0.1,
        num_labels=num_classes,
    )
    return MobileNetV2ForImageClassification(config)


def hf_efficientnet(
    num_classes: int = 10, in_channels: int = 1, init_std: float = 0.2
) -> nn.Module:
    """Hugging Face ``EfficientNetForImageClassification``, narrow (width 0.25) and
    shallow (one block per stage): squeeze-excitation, swish, stochastic depth
    (drop_connect 0.2) and BatchNorm momentum 0.99, as published. Its weights are drawn
    with std 0.2 (``init_std``): Hugging Face's 0.02 (meant for fine-tuning) shrinks the
    signal ~20x per layer, so the logits were constant and training stayed at chance."""
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    _seeded()
    config = EfficientNetConfig(
        num_channels=in_channels,
        initializer_range=init_std,
        image_size=16,
        width_coefficient=0.25,
        depth_coefficient=0.1,
        strides=[1, 2, 2, 1, 1, 1, 1],  # 16x16 images: three halvings, not five
        hidden_dim=320,  # must equal round_filters(1280) at this width (HF ties them)
        dropout_rate=0.1,
        num_labels=num_classes,
    )
    return EfficientNetForImageClassification(config)


def hf_convnext(num_classes: int = 10, in_channels: int = 1, init_std: float = 0.2) -> nn.Module:
    """Hugging Face ``ConvNextForImageClassification``: 2 stages (16, 32 wide), patch 2;
    channels-first LayerNorm modules, layer-scale parameters, GELU, no BatchNorm; weights
    drawn with std 0.2 (``init_std``; 0.02 learnt half as fast here)."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    _seeded()
    config = ConvNextConfig(
        num_channels=in_channels,
        initializer_range=init_std,
        patch_size=2,
        num_stages=2,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        drop_path_rate=0.1,
        image_size=16,
        num_labels=num_classes,
    )
    return ConvNextForImageClassification(config)


# --- a BERT-style text classifier on generated token ids ---------------------------------

VOCAB = 32
SEQ_LEN = 12
MARKER = 7  # class 1 = the sequence contains this token


def tiny_bert(num_classes: int = 2) -> nn.Module:
    """Hugging Face ``BertForSequenceClassification``: 1 layer, 32 wide, 2 heads, a
    32-token vocabulary; takes ``(batch, SEQ_LEN)`` int64 token ids (no ``in_channels``:
    its signature does not name it, so the tool does not pass one)."""
    from transformers import BertConfig, BertForSequenceClassification

    _seeded()
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ_LEN,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_classes,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config)


def token_data(n: int = 3000, seed: int = 0) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Train/val/test splits (60/20/20) of random token ids (1..VOCAB-1, never 0, the
    padding id); class 1 where ``MARKER`` appears (in half the sequences), else 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB - 1, (n, SEQ_LEN), generator=g)
    ids[ids >= MARKER] += 1  # no MARKER anywhere yet (values 1..VOCAB-1 minus MARKER)
    labels = torch.arange(n) % 2
    where = torch.randint(0, SEQ_LEN, (n,), generator=g)
    rows = labels.nonzero().flatten()
    ids[rows, where[rows]] = MARKER
    perm = torch.randperm(n, generator=g)
    ids, labels = ids[perm], labels[perm]
    a, b = int(0.6 * n), int(0.8 * n)
    return (
        TensorDataset(ids[:a], labels[:a]),
        TensorDataset(ids[a:b], labels[a:b]),
        TensorDataset(ids[b:], labels[b:]),
    )


# --- a 1-D signal classifier on generated signals ----------------------------------------

SIGNAL_LEN = 64
SIGNAL_CLASSES = 4


def signal_cnn(num_classes: int = SIGNAL_CLASSES, in_channels: int = 1) -> nn.Module:
    """Conv1d + BatchNorm1d + ReLU, three layers (16-32 wide), global pooling, linear."""
    _seeded()
    return nn.Sequential(
        nn.Conv1d(in_channels, 16, 5, padding=2, bias=False),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Conv1d(16, 32, 5, stride=2, padding=2, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Conv1d(32, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


def signal_data(n: int = 800, seed: int = 0) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Noisy sines, ``(1, SIGNAL_LEN)`` each, random phase and amplitude; the class is the
    frequency (2, 4, 7 or 11 cycles per window). Splits 60/20/20."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % SIGNAL_CLASSES
    cycles = torch.tensor([2.0, 4.0, 7.0, 11.0])[labels]
    t = torch.arange(SIGNAL_LEN) / SIGNAL_LEN
    phase = torch.rand(n, 1, generator=g) * 6.2832
    amp = 0.5 + torch.rand(n, 1, generator=g)
    x = amp * torch.sin(6.2832 * cycles[:, None] * t + phase)
    x = (x + 0.5 * torch.randn(n, SIGNAL_LEN, generator=g)).unsqueeze(1)
    perm = torch.randperm(n, generator=g)
    x, labels = x[perm], labels[perm]
    a, b = int(0.6 * n), int(0.8 * n)
    return (
        TensorDataset(x[:a], labels[:a]),
        TensorDataset(x[a:b], labels[a:b]),
        TensorDataset(x[b:], labels[b:]),
    )


# --- our own models with the patterns that broke -----------------------------------------


def low_momentum_cnn(num_classes: int = 10, in_channels: int = 1, momentum: float = 0.001):
    """Conv-BN-ReLU x3 whose BatchNorms have momentum 0.001: after a short training their
    running statistics are still near (0, 1), so an accuracy measured with them is near
    chance although the weights have learnt (issue 9: 0.098 measured, 0.941 re-estimated)."""
    _seeded()

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        bn = nn.BatchNorm2d(cout, momentum=momentum)
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), bn, nn.ReLU()]

    return nn.Sequential(
        *block(in_channels, 16, 1),
        *block(16, 32, 2),
        *block(32, 32, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


@dataclass
class ClassifierOutput:
    """An output object, as many libraries return (the job picks ``.logits``)."""

    logits: torch.Tensor
    features: torch.Tensor


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): drop the whole residual branch per sample."""
    if not training or p == 0.0:
        return x
    keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= p
    return x * keep / (1.0 - p)


class InvertedResidual(nn.Module):
    """MobileNetV3's block: 1x1 expand, depthwise 3x3, squeeze-excitation, 1x1 project,
    hardswish, and (stride 1, same width) a residual with stochastic depth."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int, drop: float) -> None:
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.Hardswish(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.Hardswish(),
            SqueezeExcite(mid, max(8, mid // 4)),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + drop_path(y, self.drop, self.training) if self.residual else y


class MobileSENet(nn.Module):
    """A small MobileNetV3-style network returning a ``ClassifierOutput`` object."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()
        )
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 2, 1, 0.1),
            InvertedResidual(16, 24, 3, 2, 0.0),
            InvertedResidual(24, 24, 3, 1, 0.1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(24, 48), nn.Hardswish(), nn.Linear(48, num_classes))

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        features = self.pool(self.blocks(self.stem(x))).flatten(1)
        return ClassifierOutput(logits=self.head(features), features=features)


def mobile_se_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    _seeded()
    return MobileSENet(num_classes, in_channels)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle as published code writes it: view, transpose, flatten."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).flatten(1, 2)


class ShuffleUnit(nn.Module):
    """ShuffleNet v1 unit (stride 1): grouped 1x1, shuffle, depthwise 3x3, grouped 1x1, add."""

    def __init__(self, channels: int, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups
        mid = channels
        self.gconv1 = nn.Conv2d(channels, mid, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.gconv2 = nn.Conv2d(mid, channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.gconv1(x)))
        y = channel_shuffle(y, self.groups)
        y = self.bn2(self.dw(y))
        y = self.bn3(self.gconv2(y))
        return self.relu(x + y)


class ShuffleNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.stage1 = ShuffleUnit(16)
        self.down = nn.Sequential(
            nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.stage2 = ShuffleUnit(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return (self.fc(x.mean(dim=(2, 3))),)  # a one-tensor tuple: `auto` takes item 0


def shuffle_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    _seeded()
    return ShuffleNet(num_classes, in_channels)


def tv_channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's shuffle: view into groups, transpose, contiguous, view back."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, h, w)


def _tv_conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
    pad = kernel // 2
    return [nn.Conv2d(in_ch, out_ch, kernel, stride, pad, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch)]  # fmt: skip


class TvShuffleUnit(nn.Module):
    """torchvision's ShuffleNet V2 ``InvertedResidual``: ``chunk`` into halves, one half
    straight into ``cat`` (stride 1); both branches on the whole input (stride 2)."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = oup // 2
        self.branch1 = nn.Sequential()
        if stride > 1:
            self.branch1 = nn.Sequential(
                *_tv_conv_bn(inp, inp, 3, stride, groups=inp),
                *_tv_conv_bn(inp, half, 1),
                nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            *_tv_conv_bn(inp if stride > 1 else half, half, 1),
            nn.ReLU(inplace=True),
            *_tv_conv_bn(half, half, 3, stride, groups=half),
            *_tv_conv_bn(half, half, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return tv_channel_shuffle(out, 2)


class TvShuffleNetV2(nn.Module):
    """torchvision's ShuffleNetV2 module layout (conv1, maxpool, stage2-4, conv5, fc)."""

    def __init__(self, repeats, widths, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*_tv_conv_bn(in_channels, widths[0], 3, 2), nn.ReLU(True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = widths[0]
        for i, (n, out) in enumerate(zip(repeats, widths[1:4], strict=True), start=2):
            units = [TvShuffleUnit(channels, out, 2)]
            units += [TvShuffleUnit(out, out, 1) for _ in range(n - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*units))
            channels = out
        self.conv5 = nn.Sequential(*_tv_conv_bn(channels, widths[4], 1), nn.ReLU(True))
        self.fc = nn.Linear(widths[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))  # type: ignore[operator]
        return self.fc(self.conv5(x).mean([2, 3]))


def tv_shufflenet_v2(num_classes: int = 10, in_channels: int = 1, small: bool = True):
    """``small``: (1, 4, 1) units at widths 16-128 for tests (3 chunks in a row: fewer did
    not raise torch-pruning's IndexError); else torchvision's x0.5
    (4, 8, 4 units; 24, 48, 96, 192, 1024)."""
    _seeded()
    if small:
        return TvShuffleNetV2((1, 4, 1), (16, 16, 32, 64, 128), num_classes, in_channels)
    return TvShuffleNetV2((4, 8, 4), (24, 48, 96, 192, 1024), num_classes, in_channels)


def tv_shufflenet_v2_x0_5(num_classes: int = 10, in_channels: int = 1):
    return tv_shufflenet_v2(num_classes, in_channels, small=False)


# --- the matrix: how each model is run, and an independent accuracy check ---------------


@dataclass(frozen=True)
class Case:
    """One foreign model in the matrix: its factory, its data flags, and the pretraining
    epochs that take it clearly above chance (the job refuses a baseline at chance)."""

    model: str
    data: tuple[str, ...]
    pretrain_epochs: int
    pretrain_lr: float | None = None  # where the default 0.1 does not learn

    def flags(self, folder: Path, pretrain_epochs: int | None = None) -> list[str]:
        """The CLI flags; a pretraining learning rate (no flag for it) goes into a job
        file written to ``folder``, which the flags then complete."""
        out = ["--model", f"tests.foreign_models:{self.model}", *self.data]
        out += ["--pretrain-epochs", str(pretrain_epochs or self.pretrain_epochs)]
        if self.pretrain_lr is not None:
            job = Path(folder) / "job.yaml"
            job.write_text(f"finetune:\n  pretrain_lr: {self.pretrain_lr}\n")
            out += ["--job", str(job)]
        return out


DIGITS16 = ("--data", "digits", "--image-size", "16", "--data-limit", "600")

MODELS: dict[str, Case] = {
    "hf_resnet": Case("hf_resnet", DIGITS16, 4),
    "hf_mobilenet_v2": Case("hf_mobilenet_v2", DIGITS16, 8, pretrain_lr=0.05),
    "hf_efficientnet": Case("hf_efficientnet", DIGITS16, 8, pretrain_lr=0.05),
    "hf_convnext": Case("hf_convnext", DIGITS16, 24, pretrain_lr=0.05),
    # Sits at chance for ~100 SGD steps, then jumps to 1.0: 3000 sequences give 28 steps
    # an epoch, so it learns before the divergence guard (chance after 10 epochs) restarts it
    "tiny_bert": Case("tiny_bert", ("--data", "tests.foreign_models:token_data"), 8),
    "signal_cnn": Case("signal_cnn", ("--data", "tests.foreign_models:signal_data"), 4),
    "low_momentum_cnn": Case("low_momentum_cnn", DIGITS16, 6),
    "mobile_se_net": Case("mobile_se_net", DIGITS16, 6),
    "shuffle_net": Case("shuffle_net", DIGITS16, 6),
    "tv_shufflenet_v2": Case("tv_shufflenet_v2", DIGITS16, 6),
}

# Learner chains and their targets: channel pruning against a measured speedup on
# torch-cpu, int8 against a measured speedup on onnxruntime-cpu (the only runtime its
# int8 ONNX graph runs on), sparsity + non-uniform quantisation against file compression.
CHAINS: dict[str, tuple[str, ...]] = {
    "channel": ("--learners", "channel", "--target-speedup", "1.3"),
    "int8": ("--learners", "int8", "--runtime", "onnxruntime-cpu", "--target-speedup", "1.3"),
    "sparsity,nonuniform": ("--learners", "sparsity,nonuniform", "--target-compression", "4"),
}


def reestimated_accuracy(model: nn.Module, train, evaluate, batch_size: int = 64) -> float:
    """Accuracy of ``model`` on the dataset ``evaluate`` after re-estimating its BatchNorm
    statistics afresh on ``train`` (written here, not taken from the tool: every
    BatchNorm reset, momentum None = the cumulative average, one pass in order, no
    gradient, everything else in eval mode)."""
    from torch.utils.data import DataLoader

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    with torch.no_grad():
        if norms:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None
                m.train()
            for x, _ in DataLoader(train, batch_size=batch_size):
                model(x)
            model.eval()
        right = total = 0
        for x, y in DataLoader(evaluate, batch_size=256):
            right += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return right / total


def job_splits(summary: dict):
    """The job's splits, read from the ``job.json`` its run folder holds."""
    import json

    from pipeline.sources.data import load_splits

    run_folder = Path(summary["artifacts"]["baseline_onnx"]).parent.parent
    d = json.loads((run_folder / "job.json").read_text())["data"]
    seed = json.loads((run_folder / "job.json").read_text()).get("seed", 0)
    return load_splits(
        d["source"], d["image_size"], d["val_fraction"], d["test_fraction"], d["limit"],
        seed, d.get("channels"),
    )  # fmt: skip


def baseline_check(summary: dict) -> tuple[float, float, int]:
    """(reported baseline validation accuracy, the same re-estimated here from the saved
    baseline file, validation images): equal within one image when the job measured it
    after re-estimating its BatchNorm statistics."""
    splits = job_splits(summary)
    model = saved_baseline(summary)
    mine = reestimated_accuracy(model, splits.train, splits.val)
    return summary["baseline"]["accuracy"], mine, len(splits.val)


def saved_baseline(summary: dict) -> nn.Module:
    """The baseline as the job saved it in its run folder: a safetensors state rebuilt on
    the job's model source (``baseline/model.safetensors``), or a whole pickled module
    (``baseline/model.pt``, as saved before model files stopped being pickles)."""
    folder = Path(summary["artifacts"]["baseline_onnx"]).parent
    if (folder / "model.safetensors").exists():
        from pipeline.job.modelfile import load_saved

        return load_saved(folder / "model.safetensors")
    return torch.load(folder / "model.pt", map_location="cpu", weights_only=False).eval()
