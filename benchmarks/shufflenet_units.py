"""torchvision-style ShuffleNet V2 x0.5 pruned at a uniform ratio, with and without the
unit rewrite (``learners.channel.rewrite``): how far can channel pruning take it, on
torch-cpu and on onnxruntime-cpu (issue 21, item 3).

    PYTHONPATH=. .venv/bin/python benchmarks/shufflenet_units.py

The model is ``tests.foreign_models.tv_shufflenet_v2_x0_5`` (torchvision's code pattern,
1 input channel), random weights (speed does not depend on them), 1x32x32, batch 32, one
thread. Every model is timed interleaved with the baseline (``--trials`` rounds of one
call each, after warm-up); the speedup is the ratio of medians. Also printed: FLOPs, and
torch's time per convolution call (profiler), which says how much of the eager model's
time does not shrink with the widths.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings

import onnxruntime as ort
import torch
from torch import nn

import learners.channel.learner as channel_learner
from learners.base import ModelInfo
from learners.channel import ChannelPruning
from pipeline import measure
from tests.foreign_models import tv_shufflenet_v2_x0_5


def pruned(model: nn.Module, ratio: float, example: torch.Tensor, rewrite: bool) -> nn.Module:
    real = channel_learner.prunable_form
    if not rewrite:
        channel_learner.prunable_form = lambda model, example: []
    channel_learner._surveys.clear()
    try:
        learner = ChannelPruning(max_ratio=0.8)
        params = learner.uniform_params(ModelInfo(model, example), ratio)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return learner.prune(model, params, example)[0].eval()
    finally:
        channel_learner.prunable_form = real
        channel_learner._surveys.clear()


def onnx_session(model: nn.Module, batch: torch.Tensor) -> ort.InferenceSession:
    buffer = io.BytesIO()
    torch.onnx.export(model, (batch,), buffer, input_names=["x"], dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def interleaved(calls: dict[str, object], trials: int) -> dict[str, float]:
    """Median seconds per call, every callable timed once per trial in turn."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for call in calls.values():
        for _ in range(3):
            call()  # type: ignore[operator]
    for _ in range(trials):
        for key, call in calls.items():
            start = time.perf_counter()
            call()  # type: ignore[operator]
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def conv_call_us(model: nn.Module, batch: torch.Tensor) -> float:
    """Mean self time of one convolution call in torch's profiler, in microseconds."""
    from torch.profiler import profile

    with torch.no_grad(), profile() as prof:
        for _ in range(5):
            model(batch)
    convs = [e for e in prof.key_averages() if e.key == "aten::mkldnn_convolution"]
    return convs[0].self_cpu_time_total / convs[0].count if convs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--trials", type=int, default=41)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = tv_shufflenet_v2_x0_5().eval()
    batch = torch.randn(32, 1, 32, 32)
    example = batch[:1]
    models = {"baseline": base}
    for ratio in args.ratios:
        for rewrite in (False, True):
            models[f"{ratio} {'rewritten' if rewrite else 'as written'}"] = pruned(
                base, ratio, example, rewrite
            )
    sessions = {k: onnx_session(m, batch) for k, m in models.items()}
    feed = {"x": batch.numpy()}
    with torch.no_grad():
        on_torch = interleaved({k: (lambda m=m: m(batch)) for k, m in models.items()}, args.trials)
    on_ort = interleaved(
        {k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, args.trials
    )
    print(
        "| model | FLOPs | torch-cpu ms | speedup | onnxruntime-cpu ms | speedup "
        "| torch us per conv |"
    )
    print("|---|---|---|---|---|---|---|")
    for key, model in models.items():
        flops = measure.count_flops(model, example)
        print(
            f"| {key} | {flops / 1e6:.2f}M | {on_torch[key] * 1e3:.2f} | "
            f"{on_torch['baseline'] / on_torch[key]:.2f}x | {on_ort[key] * 1e3:.2f} | "
            f"{on_ort['baseline'] / on_ort[key]:.2f}x | {conv_call_us(model, batch):.0f} |"
        )


if __name__ == "__main__":
    main()
