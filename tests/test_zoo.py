"""The model zoo: every model builds, runs, exports, and matches the published sizes."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pipeline.sources.zoo import build, names
from pipeline.sources.zoo.mobilenet import make_divisible
from pipeline.sources.zoo.shufflenet import ChannelShuffle, ShuffleNetV1, shuffle_permutation

LIGHTWEIGHT = ("mobilenet_v1", "mobilenet_v2", "shufflenet_v1", "shufflenet_v2")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_lightweight_networks():
    assert set(LIGHTWEIGHT) | {"resnet20", "resnet32", "resnet44", "resnet56"} <= set(names())


# ImageNet variants (1000 classes, 224x224) against published counts. The papers round
# to 0.1M; the exact figures are the reference implementations' (source in each row).
PUBLISHED = [
    # MobileNets paper Table 8: 4.2M. Exact: TF-slim mobilenet_v1_1.0_224 / Keras
    # MobileNet trainable params / osmr imgclsmob "MobileNet x1.0", 4,231,976.
    ("mobilenet_v1", {}, 4_231_976, 4.2e6),
    # Table 8 rows 0.75 / 0.5 (2.6M, 1.3M); imgclsmob 2,585,560 / 1,331,592.
    ("mobilenet_v1", {"alpha": 0.75}, 2_585_560, 2.6e6),
    ("mobilenet_v1", {"alpha": 0.5}, 1_331_592, 1.3e6),
    # MobileNetV2 paper Table 4 says 3.4M; TF-slim's table 3.47M; torchvision
    # mobilenet_v2 and Keras MobileNetV2 (trainable) have exactly 3,504,872.
    ("mobilenet_v2", {}, 3_504_872, 3.47e6),
    # ShuffleNet 1x (g=3): megvii-model/ShuffleNet-Series README 1.9M (its FC has no
    # bias); imgclsmob "ShuffleNet x1.0 (g=3)" 1,865,728. g=8: 2.4M / 2,434,768.
    ("shufflenet_v1", {"groups": 3}, 1_865_728, 1.9e6),
    ("shufflenet_v1", {"groups": 8}, 2_434_768, 2.4e6),
    # ShuffleNet V2 paper Table 5: 2.3M (1x), 1.4M (0.5x), 3.5M (1.5x), 7.4M (2x);
    # torchvision shufflenet_v2_x1_0 / x0_5 / x1_5 / x2_0 exactly.
    ("shufflenet_v2", {}, 2_278_604, 2.3e6),
    ("shufflenet_v2", {"width": 0.5}, 1_366_792, 1.4e6),
    ("shufflenet_v2", {"width": 1.5}, 3_503_624, 3.5e6),
    ("shufflenet_v2", {"width": 2.0}, 7_393_996, 7.4e6),
]


@pytest.mark.parametrize(("name", "kwargs", "exact", "paper"), PUBLISHED)
def test_imagenet_variants_have_the_published_parameter_count(name, kwargs, exact, paper):
    model = build(name, num_classes=1000, stem="imagenet", **kwargs)
    count = n_params(model)
    assert count == exact  # the reference implementation, to the parameter
    # within 1% of the published figure, or of its rounding when the paper rounds to 0.1M
    assert abs(count - paper) <= max(0.01 * paper, 0.05e6)


@pytest.mark.parametrize("name", LIGHTWEIGHT)
def test_imagenet_stem_takes_224_and_cifar_stem_takes_32(name):
    x224 = torch.randn(1, 3, 224, 224)
    x32 = torch.randn(2, 3, 32, 32)
    imagenet = build(name, num_classes=7, stem="imagenet").eval()
    cifar = build(name, num_classes=7, stem="cifar").eval()
    with torch.no_grad():
        assert imagenet(x224).shape == (1, 7)
        assert cifar(x32).shape == (2, 7)
        # the cifar stem keeps resolution longer: the last feature map is not 1x1
        shapes = []
        last = [m for m in cifar.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.register_forward_hook(lambda m, i, o: shapes.append(o.shape) and None)
        cifar(x32)
    assert shapes[0][-1] >= 2


@pytest.mark.parametrize("name", sorted(names()))
def test_every_zoo_model_takes_other_class_and_channel_counts(name):
    model = build(name, num_classes=3, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name", sorted(names()))
def test_every_zoo_model_exports_to_onnx_and_runs_the_same(name):
    import onnxruntime as ort

    model = build(name).eval()
    x = torch.randn(2, 3, 32, 32)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_channel_shuffle_is_the_papers_reshape_transpose():
    x = torch.randn(2, 12, 3, 3)
    for groups in (2, 3, 4):
        shuffle = ChannelShuffle(12, groups)
        assert torch.equal(shuffle(x), F.channel_shuffle(x, groups))
        reference = x.view(2, groups, 12 // groups, 3, 3).transpose(1, 2).reshape(2, 12, 3, 3)
        assert torch.equal(shuffle(x), reference)
    assert sorted(shuffle_permutation(12, 3).tolist()) == list(range(12))
    with pytest.raises(ValueError, match="groups"):
        shuffle_permutation(10, 3)


def test_shufflenet_v1_structure_follows_the_paper():
    model = ShuffleNetV1(num_classes=1000, groups=3, stem="imagenet")
    first, second = model.stage2[0], model.stage2[1]
    assert first.compress[0].groups == 1  # stage 2's first 1x1 is not grouped (sec. 3.3)
    assert isinstance(first.shuffle, torch.nn.Identity)
    assert second.compress[0].groups == 3 and isinstance(second.shuffle, ChannelShuffle)
    assert second.compress[0].out_channels == 240 // 4  # bottleneck = 1/4 of the output
    # a downsampling unit concatenates the pooled input with a (out - in)-wide branch
    assert first.expand[0].out_channels == 240 - 24
    assert [len(getattr(model, f"stage{i}")) for i in (2, 3, 4)] == [4, 8, 4]


def test_shufflenet_v2_splits_half_and_half():
    model = build("shufflenet_v2", num_classes=1000, stem="imagenet")
    unit = model.stage3[1]
    assert unit.branch2[0].in_channels == 232 // 2 == unit.branch2[-3].out_channels
    assert unit.shuffle.perm.numel() == 232


def test_mobilenet_v2_rounds_widths_like_the_reference():
    assert [make_divisible(c * 0.35) for c in (32, 16, 24)] == [16, 8, 8]
    model = build("mobilenet_v2", alpha=0.5, stem="imagenet")
    assert model.head[0].out_channels == 1280  # kept at 1280 for alpha <= 1
    skips = [b.use_skip for stage in ("stage2", "stage3") for b in getattr(model, stage)]
    assert skips == [False, True, False, True, True]


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("mobilenet_v1", {"stem": "mnist"}, "stem"),
        ("mobilenet_v2", {"alpha": 0}, "alpha"),
        ("shufflenet_v1", {"groups": 5}, "groups"),
        ("shufflenet_v2", {"width": 0.75}, "width"),
    ],
)
def test_bad_options_are_rejected_with_the_valid_choices(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(name, **kwargs)
