"""Time a finished job's exported ONNX files against each other on onnxruntime, the way
a user would check the summary's claim (independent of the search's own timing).

    .venv/bin/python benchmarks/onnx_check.py demo/summary.json

Prints, for batch 1 and the job's batch: median ms of baseline and best (interleaved,
1 thread, 50 repeats) and their ratio, beside the target and the summary's own figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx
import torch

from pipeline.measure import LatencySettings, time_onnx_files


def input_shape(path: str) -> tuple[int, ...]:
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text())
    base, best = summary["artifacts"]["baseline_onnx"], summary["artifacts"]["best_onnx"]
    example = torch.zeros(1, *input_shape(base))
    target = summary["target"]
    where = " and ".join([target["runtime"], *target.get("also_on", [])])
    print(f"target: {target['kind']} >= {target['value']} on {where}")
    print(
        f"summary: speedup {summary['best']['speedup']:.2f}x (search, {target['runtime']}), "
        f"onnx_speedup {summary['best']['onnx_speedup']:.2f}x"
    )
    print("| batch | baseline ONNX ms | best ONNX ms | speedup |")
    print("|---|---|---|---|")
    for batch in sorted({1, 32}):
        settings = LatencySettings("onnxruntime-cpu", batch, args.threads, 5, args.repeats)
        base_ms, best_ms = time_onnx_files([Path(base), Path(best)], example, settings)
        print(f"| {batch} | {base_ms:.3f} | {best_ms:.3f} | {base_ms / best_ms:.2f}x |")


if __name__ == "__main__":
    main()
