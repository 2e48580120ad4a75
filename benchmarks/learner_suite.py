"""The learner suite measured on digits: what each learner buys, in bytes, speed and accuracy.

    .venv/bin/python benchmarks/learners.py [--out DIR] [--epochs N]

Sections (markdown on stdout, every number also in DIR/learners.json):

1. int8 post-training quantisation through onnxruntime: fp32 ONNX vs int8 ONNX (QOperator
   and QDQ), test accuracy and latency at batch 1 and 32 (interleaved medians, one
   thread), on resnet20 (32x32) and mobilenet_v2 (width 0.5, 16x16 to fit the time budget).
2. Gradual magnitude sparsity at 50/75/90%, uniform vs global (per-layer) allocation:
   test accuracy, packed-file bytes against the fp32 ONNX file, and the measured
   torch-cpu speed (dense kernels: no speed-up is expected, and none is claimed).
3. Deep Compression (sparsity 90% -> 4-bit k-means sharing -> Huffman): total compression
   against the fp32 ONNX file and accuracy, with a byte breakdown.
4. Distillation on/off at one channel-pruning setting (50% of every stage), same seed and
   fine-tune budget: cross-entropy, KD (T=4, alpha=0.7), KD + attention transfer.
5. Quantisation-aware training (w8a8 without training, w4a8 trained): bytes and accuracy.

Accuracies are on the test split (never used for any decision here); baselines are
trained from scratch by this script. Takes about 8-10 minutes on one CPU thread.
"""

# ruff: noqa: E402  (the path fix below must run before the package imports)
from __future__ import annotations

import sys
from pathlib import Path

# This script is named like the package it measures; run as a file, its own folder would
# come first on the import path and shadow the ``learners`` package: put the repository
# root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse
import copy
import json
import time
from typing import Any

import torch
from torch import nn

from learners.base import Context
from learners.channel import ChannelPruning
from learners.finetune import DistillSettings, TrainSettings, accuracy, make_finetune, train_
from learners.formats import export
from learners.formats.onnx_module import OnnxModule
from learners.formats.packed import PackedModel, TensorCodec
from learners.int8 import Int8
from learners.nonuniform import NonUniformQuantization
from learners.qat import Qat
from learners.sparsity import Sparsity, density
from pipeline import measure
from pipeline.sources.data import Splits, load_splits
from pipeline.sources.zoo import build

MODELS = {
    # name: (zoo name, factory options, image size, pretrain epochs, pretrain lr)
    "resnet20": ("resnet20", {}, 32, 12, 0.1),
    "mobilenet_v2 (x0.5, 16px)": ("mobilenet_v2", {"alpha": 0.5}, 16, 8, 0.05),
}
FINETUNE_LR = 0.05  # the job spec's default fine-tune learning rate


def log(msg: str) -> None:
    print(f"# {msg}", flush=True)


class Bench:
    def __init__(self, name: str, out: Path) -> None:
        zoo_name, options, size, epochs, lr = MODELS[name]
        self.name, self.out = name, out / name.split()[0]
        self.out.mkdir(parents=True, exist_ok=True)
        self.splits: Splits = load_splits("digits", size, 0.2, 0.2, None, 0)
        self.train, self.val, self.test = self.splits.loaders(64, 0)
        self.example = self.splits.example_inputs()
        torch.manual_seed(0)
        self.model = build(zoo_name, num_classes=10, in_channels=1, **options)
        started = time.perf_counter()
        train_(self.model, self.train, None, TrainSettings(epochs=epochs, lr=lr))
        self.model.eval()
        log(f"{name}: baseline trained in {time.perf_counter() - started:.0f} s")
        self.onnx = export.export_onnx(self.model, self.example, self.out / "fp32.onnx")
        self.onnx_bytes = measure.file_bytes(self.onnx)
        self.acc = accuracy(self.model, self.test)

    def ctx(self, epochs: int, distill: DistillSettings | None = None) -> Context:
        """A learner context whose fine-tune runs ``epochs`` of the shared loop."""
        teacher = self.model if distill is not None else None
        settings = TrainSettings(epochs=epochs, lr=FINETUNE_LR)
        return Context(
            train_loader=self.train,
            val_loader=self.val,
            example_inputs=self.example,
            finetune=make_finetune(self.train, self.val, settings, teacher, distill),
            teacher=teacher,
        )

    def deployable_bytes(self, model: nn.Module, tag: str) -> int:
        path = export.save_deployable(model, self.example, self.out / tag)
        return measure.file_bytes(path)


def _latency(models: list[nn.Module], example: torch.Tensor, batch: int, workdir: Path):
    settings = measure.LatencySettings(
        runtime="onnxruntime-cpu", batch_size=batch, threads=1, warmup=5,
        repeats=60 if batch == 1 else 20,
    )  # fmt: skip
    with measure.torch_threads(1):
        runners = [
            measure.make_runner(m, example, settings, workdir, f"lat{i}")
            for i, m in enumerate(models)
        ]
        return measure.time_interleaved(runners, settings.warmup, settings.repeats)


def int8_section(b: Bench) -> list[dict[str, Any]]:
    rows = []
    variants = [("qoperator", "minmax"), ("qdq", "minmax"), ("qoperator", "percentile")]
    candidates = []
    for fmt, calib in variants:
        learner = Int8(quant_format=fmt, calibrations=(calib,))
        q = learner.compress(b.model, {"calibration": calib}, b.ctx(0))
        assert isinstance(q, OnnxModule)
        candidates.append(q)
        rows.append(
            {
                "model": b.name,
                "format": fmt,
                "calibration": calib,
                "accuracy": accuracy(q, b.test),
                "baseline_accuracy": b.acc,
                "bytes": len(q.onnx_bytes),
                "fp32_bytes": b.onnx_bytes,
            }
        )
    timed = [b.model, candidates[0], candidates[1]]  # fp32, QOperator, QDQ
    for batch in (1, 32):
        fp32_ms, qop_ms, qdq_ms = _latency(timed, b.example, batch, b.out)
        for row, ms in ((rows[0], qop_ms), (rows[1], qdq_ms)):
            row[f"fp32_ms_b{batch}"] = fp32_ms
            row[f"int8_ms_b{batch}"] = ms
    return rows


def sparsity_section(b: Bench, epochs: int) -> list[dict[str, Any]]:
    rows, kept = [], {}
    dense_packed = len(PackedModel(b.model, {}).packed()[0])
    for allocation in ("uniform", "global"):
        for target in (0.5, 0.75, 0.9):
            torch.manual_seed(0)
            started = time.perf_counter()
            out = Sparsity(sparsity=target, allocation=allocation).compress(
                b.model, {}, b.ctx(epochs)
            )
            size = b.deployable_bytes(out, f"sparse-{allocation}-{target}")
            rows.append(
                {
                    "allocation": allocation,
                    "target": target,
                    "density": density(out),
                    "accuracy": accuracy(out, b.test),
                    "bytes": size,
                    "vs_onnx": b.onnx_bytes / size,
                    "vs_dense_packed": dense_packed / size,
                    "seconds": time.perf_counter() - started,
                }
            )
            kept[f"{allocation}-{target}"] = out
            log(f"sparsity {allocation} {target}: {rows[-1]['accuracy']:.4f}, {size} bytes")
    settings = measure.LatencySettings("torch-cpu", 32, 1, 3, 20)
    timing = measure.compare_latency(b.model, kept["global-0.9"], b.example, settings, b.out)
    rows.append({"torch_cpu_speedup_at_90": timing.speedup, **timing.__dict__})
    return rows


def deep_compression_section(b: Bench, sparse_epochs: int, epochs: int) -> dict[str, Any]:
    torch.manual_seed(0)
    sparse = Sparsity(sparsity=0.9, allocation="global").compress(b.model, {}, b.ctx(sparse_epochs))
    out = NonUniformQuantization(bits=4).compress(sparse, {}, b.ctx(epochs))
    assert isinstance(out, PackedModel)
    data, stats = out.packed()
    no_huffman = PackedModel(
        out.model,
        {k: TensorCodec(**{**c.to_dict(), "huffman": False}) for k, c in out.codecs.items()},
    ).packed()[1]
    size = b.deployable_bytes(out, "deep-compression")
    assert size == len(data)
    return {
        "accuracy": accuracy(out, b.test),
        "sparse_accuracy": accuracy(sparse, b.test),
        "baseline_accuracy": b.acc,
        "bytes": size,
        "fp32_onnx_bytes": b.onnx_bytes,
        "ratio": b.onnx_bytes / size,
        "ratio_without_huffman": b.onnx_bytes / no_huffman.total,
        "breakdown": {
            "coded weights": stats.coded,
            "raw tensors (BatchNorm, biases)": stats.raw,
            "architecture (pickle, zlib)": stats.architecture,
            "header": stats.header,
        },
        "density": density(out),
    }


def distillation_section(b: Bench, epochs: int) -> list[dict[str, Any]]:
    pruner = ChannelPruning(importances=("l1",))
    params = {"ratio.conv1": 0.5, "ratio.layer1": 0.5, "ratio.layer2": 0.5, "ratio.layer3": 0.5}
    pruned, _ = pruner.prune(b.model, params, b.example)
    variants = [
        ("cross-entropy only", None),
        ("KD (T=4, alpha=0.7)", DistillSettings(temperature=4.0, alpha=0.7)),
        (
            "KD + attention transfer (weight 100)",
            DistillSettings(temperature=4.0, alpha=0.7, feature_weight=100.0),
        ),
    ]
    rows = []
    for label, settings in variants:
        torch.manual_seed(0)
        student = copy.deepcopy(pruned)
        b.ctx(epochs, settings).finetune(student)
        rows.append(
            {
                "fine-tune": label,
                "accuracy": accuracy(student, b.test),
                "params": measure.count_params(student),
                "baseline_params": measure.count_params(b.model),
                "no_finetune_accuracy": accuracy(pruned, b.test),
            }
        )
        log(f"distillation {label}: {rows[-1]['accuracy']:.4f}")
    return rows


def qat_section(b: Bench, epochs: int) -> list[dict[str, Any]]:
    rows = []
    for bits, n_epochs in ((8, 0), (4, epochs)):
        torch.manual_seed(0)
        out = Qat(bits=bits).compress(b.model, {}, b.ctx(n_epochs))
        size = b.deployable_bytes(out, f"qat-w{bits}")
        rows.append(
            {
                "weights": f"w{bits}a8",
                "epochs": n_epochs,
                "accuracy": accuracy(out, b.test),
                "bytes": size,
                "vs_onnx": b.onnx_bytes / size,
            }
        )
    return rows


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def report(results: dict[str, Any]) -> str:
    lines = ["### int8 post-training quantisation (onnxruntime, per-channel weights)", ""]
    lines += [
        "| model | format | calibration | test acc fp32 -> int8 (points) | bytes fp32 -> int8 "
        "| b=1 ms fp32 / int8 (speedup) | b=32 ms fp32 / int8 (speedup) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["int8"]:
        lat = []
        for batch in (1, 32):
            if f"int8_ms_b{batch}" in r:
                f, q = r[f"fp32_ms_b{batch}"], r[f"int8_ms_b{batch}"]
                lat.append(f"{f:.2f} / {q:.2f} ({f / q:.2f}x)")
            else:
                lat.append("-")
        drop = 100 * (r["accuracy"] - r["baseline_accuracy"])
        lines.append(
            f"| {r['model']} | {r['format']} | {r['calibration']} | {pct(r['baseline_accuracy'])}"
            f" -> {pct(r['accuracy'])} ({drop:+.2f}) | {r['fp32_bytes']:,} -> {r['bytes']:,} "
            f"({r['fp32_bytes'] / r['bytes']:.2f}x) | {lat[0]} | {lat[1]} |"
        )
    s = results["sparsity"]
    lines += [
        "",
        f"### Sparsity on resnet20 (baseline test acc {pct(s['baseline_accuracy'])}, fp32 ONNX "
        f"{s['onnx_bytes']:,} bytes; {s['epochs']} fine-tune epochs each)",
        "",
        "| allocation | target | density | test acc | packed bytes | vs fp32 ONNX "
        "| vs dense packed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"][:-1]:
        lines.append(
            f"| {r['allocation']} | {r['target']:.0%} | {r['density']:.3f} | {pct(r['accuracy'])} "
            f"| {r['bytes']:,} | {r['vs_onnx']:.2f}x | {r['vs_dense_packed']:.2f}x |"
        )
    t = s["rows"][-1]
    lines += [
        "",
        f"Measured torch-cpu latency at 90% sparsity (batch 32): {t['baseline_ms']:.1f} ms "
        f"dense vs {t['candidate_ms']:.1f} ms sparse = {t['torch_cpu_speedup_at_90']:.2f}x. "
        "Dense kernels skip nothing; sparsity buys bytes, not speed, here.",
    ]
    d = results["deep_compression"]
    lines += [
        "",
        "### Deep Compression chain on resnet20 (global sparsity 90% -> 4-bit k-means -> "
        f"Huffman; {d['epochs'][0]} + {d['epochs'][1]} fine-tune epochs)",
        "",
        f"- deployable file: {d['bytes']:,} bytes vs fp32 ONNX {d['fp32_onnx_bytes']:,} = "
        f"**{d['ratio']:.1f}x** ({d['ratio_without_huffman']:.1f}x without Huffman)",
        f"- test accuracy: baseline {pct(d['baseline_accuracy'])}, after pruning "
        f"{pct(d['sparse_accuracy'])}, after sharing {pct(d['accuracy'])} "
        f"({100 * (d['accuracy'] - d['baseline_accuracy']):+.2f} points)",
        "- bytes: " + ", ".join(f"{k} {v:,}" for k, v in d["breakdown"].items()),
    ]
    lines += [
        "",
        f"### Distillation at one channel-pruning setting (resnet20, 50% of every stage, "
        f"{results['distillation_epochs']} fine-tune epochs)",
        "",
        "| fine-tune | params | test acc (pruned, before fine-tune -> after) |",
        "|---|---|---|",
    ]
    for r in results["distillation"]:
        lines.append(
            f"| {r['fine-tune']} | {r['params']:,} of {r['baseline_params']:,} | "
            f"{pct(r['no_finetune_accuracy'])} -> {pct(r['accuracy'])} |"
        )
    lines += [
        "",
        "### Quantisation-aware training on resnet20 (bit-packed weights, 8-bit activations)",
        "",
        "| weights | epochs | test acc | packed bytes | vs fp32 ONNX |",
        "|---|---|---|---|---|",
    ]
    for r in results["qat"]:
        lines.append(
            f"| {r['weights']} | {r['epochs']} | {pct(r['accuracy'])} | {r['bytes']:,} "
            f"| {r['vs_onnx']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/compressflow-bench-learners"))
    parser.add_argument("--epochs", type=int, default=2, help="fine-tune epochs per candidate")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    results: dict[str, Any] = {"int8": []}
    benches = {}
    for name in MODELS:
        benches[name] = Bench(name, args.out)
        results["int8"] += int8_section(benches[name])
        log(f"int8 on {name} done")
    b = benches["resnet20"]
    rows = sparsity_section(b, args.epochs)
    results["sparsity"] = {
        "rows": rows,
        "baseline_accuracy": b.acc,
        "onnx_bytes": b.onnx_bytes,
        "epochs": args.epochs,
    }
    results["deep_compression"] = deep_compression_section(b, 2 * args.epochs, args.epochs)
    results["deep_compression"]["epochs"] = [2 * args.epochs, args.epochs]
    log("deep compression done")
    results["distillation_epochs"] = args.epochs + 1
    results["distillation"] = distillation_section(b, args.epochs + 1)
    results["qat"] = qat_section(b, args.epochs)
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learners.json").write_text(json.dumps(results, indent=1, default=str))
    print(report(results))
    print(f"\n(total {results['seconds'] / 60:.1f} min on {torch.get_num_threads()} thread)")


if __name__ == "__main__":
    main()
