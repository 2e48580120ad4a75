"""The search against the fixed rule other tools use: one pruning ratio for every layer
(PocketFlow's 'uniform', Torch-Pruning's examples), at the same measured-speedup target,
from the same baseline, with the same fine-tuning.

    .venv/bin/python benchmarks/search_vs_uniform.py demo/summary.json

The uniform ratio is the smallest one (bisection, 0.01 resolution) whose pruned model
measures >= the target on the job's runtime; both models are then compared on the test
split the job itself used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from learners.channel import ChannelPruning, prunable_units
from learners.finetune import TrainSettings, accuracy, train_
from pipeline import measure, spec
from pipeline.job.modelfile import load_saved
from pipeline.job.settings import splits_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path)
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text())
    job_dir = Path(summary["artifacts"]["best_model"]).parent.parent
    job = spec.parse(json.loads((job_dir / "job.json").read_text()))
    torch.set_num_threads(job.measure.threads)
    splits = splits_for(job)
    train, val, test = splits.loaders(job.finetune.batch_size, job.seed)
    example = splits.example_inputs()
    baseline = load_saved(job_dir / "baseline" / "model.safetensors", job)
    settings = measure.LatencySettings(
        job.target.runtime, job.measure.batch_size, job.measure.threads, 3, job.measure.repeats
    )
    units = [n for n, _ in prunable_units(baseline, example, "stage")]
    learner = ChannelPruning()

    def uniform(r: float):
        return learner.prune(baseline, {f"ratio.{n}": r for n in units}, example)[0]

    lo, hi = 0.0, 0.8
    while hi - lo > 0.01:
        mid = (lo + hi) / 2
        timing = measure.compare_latency(baseline, uniform(mid), example, settings, job_dir)
        lo, hi = (lo, mid) if timing.speedup >= job.target.value else (mid, hi)
    model = uniform(hi)
    timing = measure.compare_latency(baseline, model, example, settings, job_dir)
    torch.manual_seed(job.seed)
    train_(
        model,
        train,
        None,
        TrainSettings(job.finetune.epochs, job.finetune.lr, job.finetune.weight_decay),
    )
    best = summary["best"]
    print(
        f"target {job.target.kind} >= {job.target.value} on {job.target.runtime}, "
        f"{job.finetune.epochs} fine-tune epochs each"
    )
    print("| model | speedup (measured) | val acc | test acc | params |")
    print("|---|---|---|---|---|")
    b = summary["baseline"]
    print(
        f"| baseline | 1.00x | {b['accuracy']:.4f} | {b['test_accuracy']:.4f} | "
        f"{b['param_count']:,} |"
    )
    print(
        f"| uniform ratio {hi:.2f} (fixed rule) | {timing.speedup:.2f}x | "
        f"{accuracy(model, val):.4f} | {accuracy(model, test):.4f} | "
        f"{measure.count_params(model):,} |"
    )
    print(
        f"| searched ({summary['rounds']['total']} rounds) | {best['speedup']:.2f}x | "
        f"{best['accuracy']:.4f} | {best['test_accuracy']:.4f} | {best['param_count']:,} |"
    )


if __name__ == "__main__":
    main()
