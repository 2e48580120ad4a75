"""The ``compressflow`` command line: one module per subcommand, wired here.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from pipeline.cli.errors import UserError

# Subcommand modules, imported lazily so `compressflow --help` stays fast.
COMMANDS = (
    "pipeline.cli.run",
    "pipeline.cli.profile",
    "pipeline.cli.submit",
    "pipeline.cli.deploy",
    "pipeline.cli.image",
    "pipeline.cli.report",
    "pipeline.cli.spec",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compressflow",
        description="Find the most accurate compressed model that meets a measured target.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="print the full traceback of an input error"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        if args.debug:
            traceback.print_exc()
        print(f"compressflow: error: {err}", file=sys.stderr)
        return 2
