"""int8 modes on a BERT-family encoder: accuracy kept and onnxruntime speed.

    .venv/bin/python benchmarks/int8_transformer.py

A 6-layer, 384-wide BERT encoder (12 heads, feed-forward 1536: MiniLM-L6's shape) built
from a ``transformers`` config, trained from random weights with the shared loop
(AdamW at ``ADAMW_DEFAULTS["pretrain_lr"]``, the learner's defaults) on a generated
4-topic token task: each sequence mixes common tokens with tokens of its topic's own
vocabulary, so the class is in the words, not in one marker. Then every mode and op set
the ``int8`` learner offers a token-id model is applied, and the test split's accuracy
and the onnxruntime latency (batch 32, one thread, fp32 ONNX and int8 graphs timed
round-robin; CPU time of the calling thread, see int8_speed.py) are compared with the
fp32 model's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from learners.base import Context
from learners.finetune import ADAMW_DEFAULTS, TrainSettings, accuracy, train_
from learners.formats.export import export_onnx, ort_session
from learners.int8 import Int8
from pipeline.sources.models import with_logits_output

CLASSES = 4


def topic_data(n: int, seq: int, vocab: int, seed: int) -> TensorDataset:
    """Token ids: 70% common tokens (ids 1..vocab/2), 30% from the class's own quarter of
    the other half; labels 0..3."""
    g = torch.Generator().manual_seed(seed)
    half = vocab // 2
    per_topic = half // CLASSES
    labels = torch.arange(n) % CLASSES
    common = torch.randint(1, half, (n, seq), generator=g)
    topical = (
        half + labels[:, None] * per_topic + torch.randint(0, per_topic, (n, seq), generator=g)
    )
    pick = torch.rand(n, seq, generator=g) < 0.3
    return TensorDataset(torch.where(pick, topical, common), labels)


def encoder(vocab: int, seq: int, layers: int, hidden: int) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        intermediate_size=4 * hidden,
        max_position_embeddings=seq,
        num_labels=CLASSES,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config)


def timed(graphs: dict[str, bytes], batch: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median CPU seconds per run of each graph (one intra-op thread: the calling thread
    runs the graph), round-robin."""
    sessions = {k: ort_session(v, threads=1) for k, v in graphs.items()}
    feed = {"input": batch.numpy()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, feed)
    for _ in range(repeats):
        for k, s in sessions.items():
            start = time.thread_time()
            s.run(None, feed)
            times[k].append(time.thread_time() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared machine: one core for training too
    print(f"load average at start: {os.getloadavg()}", flush=True)
    train = topic_data(args.train, args.seq, args.vocab, seed=0)
    val = topic_data(1000, args.seq, args.vocab, seed=1)
    test = topic_data(1000, args.seq, args.vocab, seed=2)
    ids = test.tensors[0][:1]
    model = with_logits_output(encoder(args.vocab, args.seq, args.layers, args.hidden), ids, "auto")
    train_loader = DataLoader(
        train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    val_loader, test_loader = DataLoader(val, batch_size=100), DataLoader(test, batch_size=100)
    settings = TrainSettings(
        epochs=args.epochs,
        lr=ADAMW_DEFAULTS["pretrain_lr"],
        weight_decay=ADAMW_DEFAULTS["weight_decay"],
        optimizer="adamw",
    )
    start = time.perf_counter()
    curve = train_(model, train_loader, val_loader, settings)
    print(f"trained in {time.perf_counter() - start:.0f} s: {curve}", flush=True)
    model.eval()
    fp32_acc = accuracy(model, test_loader)
    ctx = Context(train_loader, val_loader, ids, finetune=lambda m, **k: {})
    learner = Int8()
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {"fp32": export_onnx(model, ids, Path(tmp) / "fp32.onnx").read_bytes()}
    accs = {"fp32": fp32_acc}
    for mode in ("dynamic", "static"):
        for ops in ("matmul", "all"):
            name = f"{mode} {ops}"
            try:
                out = learner.compress(model, {"mode": mode, "ops": ops}, ctx)
            except RuntimeError as err:
                print(f"{name}: failed: {err}")
                continue
            graphs[name] = out.onnx_bytes
            accs[name] = accuracy(out, test_loader)
            record = ctx.records["int8"]
            print(f"{name}: format {record['format']}, op types {record['op_types']}", flush=True)
    medians = timed(graphs, test.tensors[0][:32], args.repeats)
    print(f"\nBERT {args.layers} layers, hidden {args.hidden}, seq {args.seq}, batch 32, 1 thread")
    print("| graph | test accuracy | drop (points) | CPU ms per batch | speedup |")
    print("|---|---|---|---|---|")
    for name, seconds in medians.items():
        drop = 100 * (fp32_acc - accs[name])
        print(
            f"| {name} | {accs[name]:.3f} | {drop:+.1f} | {seconds * 1e3:.1f} | "
            f"{medians['fp32'] / seconds:.2f}x |"
        )
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
