"""``compressflow report``: the result table and the plots of a finished job, from its
``summary.json`` (a path or an s3:// URI) or from its MLflow parent run id, so results
can be shared without opening a UI."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

from pipeline.cli.errors import UserError

RUN_ID = re.compile(r"[0-9a-f]{32}")


def register(sub) -> None:
    p = sub.add_parser("report", help="print a finished job's results and write its plots")
    p.add_argument(
        "source", help="the job's summary.json (path or s3:// URI) or its MLflow parent run id"
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow store holding the run (default: $MLFLOW_TRACKING_URI, else the summary's "
        "own, else sqlite:///mlflow.db)",
    )
    p.add_argument("--out", default=".", help="folder for <job>-candidates.png and .html")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # MLflow and matplotlib only when a report is asked for: every other command (and
    # each bad-input error) starts seconds faster without them.
    from pipeline.job.plots import write_plots
    from pipeline.job.render import rounds_text, table

    summary = load(args.source, args.tracking_uri)
    print(table(summary))
    print()
    print(rounds_text(summary))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in write_plots(summary, out, stem=f"{summary['job']}-candidates"):
        print(f"plot: {path}")
    return 0


def load(source: str, tracking_uri: str | None) -> dict[str, Any]:
    """The summary, with its ``candidates`` rows (read from MLflow when it lacks them)."""
    from pipeline.records import storage
    from pipeline.records.store import open_store, recorded_rounds, recorded_summary

    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        if RUN_ID.fullmatch(source) and not Path(source).exists():
            uri = tracking_uri or env_uri or "sqlite:///mlflow.db"
            client = open_store(uri)
            summary = recorded_summary(client, source)
        else:
            summary = json.loads(storage.fetch(source).read_text())
            client = None
        if not summary.get("candidates"):
            uri = tracking_uri or env_uri or summary["mlflow"]["tracking_uri"]
            summary["candidates"] = recorded_rounds(client or open_store(uri), summary)
    except (OSError, ValueError, KeyError, storage.StorageError) as err:
        raise UserError(f"cannot read the job's record from {source!r}: {err}") from None
    except Exception as err:  # MLflow's own errors (unknown run, unreachable server)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cannot read the job's record from {source!r}: {first}") from None
    return summary
