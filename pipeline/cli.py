"""The ``compressflow`` command line: one module per subcommand, wired here.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, imported lazily so `compressflow --help` stays fast.
COMMANDS = (
    "pipeline.run_cli",
    "pipeline.profile_cli",
    "pipeline.submit_cli",
    "pipeline.deploy_cli",
    "pipeline.image_cli",
)


class UserError(Exception):
    """Bad input: printed as one clear line, exit code 2, nothing recorded is lost."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compressflow",
        description="Find the most accurate compressed model that meets a measured target.",
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
        print(f"compressflow: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Under `python -m`, this file runs as __main__ while subcommands import pipeline.cli:
    # use that module's main, so its UserError is the one the subcommands raise.
    from pipeline.cli import main as _main

    sys.exit(_main())
