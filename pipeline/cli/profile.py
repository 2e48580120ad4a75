"""``compressflow profile``: where a model's MACs, bytes and measured time go, per layer.

compressflow profile --model shufflenet_v2 --input 3x32x32 --batch 32
compressflow profile --model mypkg.nets:build --runtime onnxruntime-cpu --json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.cli.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "profile",
        help="per-layer parameters, MACs, memory traffic and measured time share",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="zoo name or package.module:factory")
    p.add_argument("--input", default="3x32x32", help="one input's shape, CxHxW (3x32x32)")
    p.add_argument("--runtime", default="torch-cpu", help="torch-cpu | onnxruntime-cpu")
    p.add_argument("--batch", type=int, default=1, help="batch size (costs are per batch)")
    p.add_argument("--repeats", type=int, default=10, help="profiled forward passes")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for the model factory, e.g. width=0.5 (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise UserError(f"--input must look like 3x32x32 (channels x height x width), not {text!r}")
    return shape


def _options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--model-option must be KEY=VALUE, not {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def run(args: argparse.Namespace) -> int:
    from pipeline.measure import profiling
    from pipeline.sources.models import ModelSourceError, build_model

    shape = parse_shape(args.input)
    if args.runtime not in profiling.RUNTIMES:
        raise UserError(
            f"--runtime {args.runtime!r} cannot be profiled; choose from "
            f"{', '.join(profiling.RUNTIMES)}"
        )
    if args.batch < 1 or args.repeats < 1 or args.threads < 1:
        raise UserError("--batch, --repeats and --threads must be at least 1")
    try:
        model, _ = build_model(args.model, args.num_classes, shape[0], _options(args.model_option))
    except (ModelSourceError, TypeError, ValueError) as err:
        raise UserError(f"--model {args.model}: {err}") from None
    try:
        result = profiling.profile_model(
            model, shape, args.runtime, args.batch, args.repeats, args.threads
        )
    except RuntimeError as err:
        raise UserError(
            f"--model {args.model} does not run on a {args.input} input: {err}"
        ) from None
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_table(args.model, result))
    return 0


def human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def format_table(model_name: str, p) -> str:
    header = ("name", "type", "output shape", "params", "MACs", "bytes moved", "time %")
    lines = []
    for row in p.layers:
        lines.append(
            (
                row.name,
                row.type,
                "x".join(str(d) for d in row.output_shape),
                human(row.param_count),
                human(row.macs),
                human(row.bytes_moved),
                f"{100 * p.time_share.get(row.name, 0.0):.1f}",
            )
        )
    t = p.total
    footer = [
        ("total", "", "", human(t.param_count), human(t.macs), human(t.bytes_moved), "100.0"),
        ("", "", "", "", f"(counted {human(t.counted_macs)})", "", ""),
        ("(unattributed time)", "", "", "", "", "", f"{100 * p.unattributed_time_share:.1f}"),
    ]
    widths = [max(len(str(r[i])) for r in [header, *lines, *footer]) for i in range(7)]

    def fmt(r) -> str:
        cells = [
            str(c).ljust(widths[i]) if i < 3 else str(c).rjust(widths[i]) for i, c in enumerate(r)
        ]
        return "  ".join(cells).rstrip()

    title = (
        f"{model_name}: input {p.batch}x{'x'.join(map(str, p.input_shape))} on {p.runtime}, "
        f"median {p.latency_ms:.2f} ms per forward (profiler off). MACs from shapes "
        f"(1 MAC = 2 FLOPs of torch's counter); bytes = inputs + weights + outputs; "
        f"time % = share of the profiled operator time."
    )
    rule = "-" * len(fmt(header))
    return "\n".join([title, fmt(header), rule, *map(fmt, lines), rule, *map(fmt, footer)])
