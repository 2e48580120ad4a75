"""One channel multiple for the whole network, or one per layer: what ``round_to: auto``
costs and gains on onnxruntime-cpu and torch-cpu (issue 21).

    PYTHONPATH=/tmp/tv .venv/bin/python benchmarks/layer_widths.py

(torchvision, for MobileNetV3-small and EfficientNet-B0, installed apart:
``pip install --no-deps --target /tmp/tv torchvision==0.28.0``; without it only the zoo's
models run.)

Each model is pruned with one ratio for every stage under four width rules:

- ``any``: ``round_to: null``, every width allowed;
- ``one for all``: the rule ``auto`` had before: the runtime's multiple (8) halved until
  the narrowest prunable layer could still reach ``max_ratio`` (0.8), then held for every
  layer: 1 (any width) on a network with an 8-wide squeeze conv;
- ``per layer``: ``auto`` now (``learners.channel.ops.layer_multiple``);
- ``x8``: ``round_to: 8`` for every layer (narrower layers stay whole).

The baseline and the four variants are timed together (batch 32, one thread, interleaved
in one ``measure.time_interleaved`` call per trial, so machine noise falls on all alike);
speedup = baseline median / variant median, median over trials. The FLOP cut (baseline
FLOPs / variant FLOPs) differs between rules (rounding moves how many channels go), so
the table gives both and the efficiency (speedup / FLOP cut): how much of the cut turns
into time.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from int8_speed import torchvision_models
from round_to import odd_share, time_all
from torch import nn

from learners.channel import PRUNABLE, ChannelPruning, output_layers, prunable_units
from pipeline import measure
from pipeline.sources.zoo import build

RUNTIMES = ("onnxruntime-cpu", "torch-cpu")
MAX_RATIO = 0.8


def model_named(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name in ("mobilenet_v3_small", "efficientnet_b0"):
        return getattr(torchvision_models(), name)(num_classes=10).eval()
    return build(name).eval()


def one_for_all(model: nn.Module, example: torch.Tensor, multiple: int = 8) -> int | None:
    """The multiple ``round_to: auto`` used before per-layer widths (for comparison)."""
    outputs = {id(o) for o in output_layers(model, example)}
    widths = [
        int(getattr(m, "out_channels", getattr(m, "out_features", 0)))
        for m in model.modules()
        if isinstance(m, PRUNABLE) and id(m) not in outputs
    ]
    keep = min(w for w in widths if w > 0) * (1 - MAX_RATIO)
    while multiple > 1 and multiple > keep:
        multiple //= 2
    return multiple if multiple > 1 else None


def variants(model: nn.Module, ratio: float, example: torch.Tensor) -> dict[str, nn.Module]:
    units = [unit for unit, _ in prunable_units(model, example, "stage")]
    params = {f"ratio.{u}": ratio for u in units}
    rules = {
        "any": {"round_to": None},
        "one for all": {"round_to": one_for_all(model, example)},
        "per layer": {"round_to": "auto", "runtimes": ("onnxruntime-cpu",)},
        "x8": {"round_to": 8},
    }
    out = {"baseline": model}
    for key, options in rules.items():
        learner = ChannelPruning(importances=("l1",), max_ratio=MAX_RATIO, **options)
        out[key] = learner.prune(model, params, example)[0].eval()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="mobilenet_v3_small,efficientnet_b0,mobilenet_v2,resnet20"
    )
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9, help="interleaved, per trial")
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    example = torch.randn(1, 3, 32, 32)
    print(
        f"load average {os.getloadavg()[0]:.2f}; batch {args.batch}, 1 thread, {args.trials} "
        f"trials of {args.repeats} interleaved repeats; speedup (median of trials) / "
        "efficiency (speedup per FLOP cut)"
    )
    print()
    print(f"| model | ratio | widths | one multiple | FLOP cut | not x8 | {' | '.join(RUNTIMES)} |")
    print("|---|---|---|---|---|---|" + "---|" * len(RUNTIMES))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = model_named(name)
            for ratio in map(float, args.ratios.split(",")):
                models = variants(model, ratio, example)
                found = {
                    rt: time_all(models, example, rt, args.batch, args.repeats, args.trials, tmp)
                    for rt in RUNTIMES
                }
                base = measure.count_flops(model, example)
                for key in list(models)[1:]:
                    cut = base / measure.count_flops(models[key], example)
                    cells = [
                        f"{found[rt][key]:.2f}x / {found[rt][key] / cut:.2f}" for rt in RUNTIMES
                    ]
                    multiple = one_for_all(model, example) if key == "one for all" else "-"
                    print(
                        f"| {name} | {ratio:g} | {key} | {multiple} | {cut:.2f}x | "
                        f"{odd_share(models[key]):.0%} | {' | '.join(cells)} |"
                    )
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
