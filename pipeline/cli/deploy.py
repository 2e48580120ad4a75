"""``compressflow deploy``: register the deployments of ``deploy/prefect.yaml`` on the
Prefect server named by PREFECT_API_URL, first creating the work pools they use.

``prefect deploy`` does the registering (the file stays a plain Prefect project file that
works without us); this command adds what it will not do: it creates missing pools from
the file's ``work_pools`` list, runs from the repository root (entrypoints are relative to
it), sets COMPRESSFLOW_HOME for the pull step, and refuses to deploy while a ``{{ $VAR }}``
the file needs is unset, instead of registering the placeholder text.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.cli.errors import UserError

_ENV_PLACEHOLDER = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")


def project_root() -> Path:
    """Where the code and deploy/ live: COMPRESSFLOW_HOME (set in the worker images, whose
    installed package is elsewhere), else the checkout this module is in."""
    return Path(os.environ.get("COMPRESSFLOW_HOME") or Path(__file__).resolve().parents[2])


def register(sub) -> None:
    p = sub.add_parser(
        "deploy", help="register the compress deployments (deploy/prefect.yaml) on a server"
    )
    p.add_argument("--prefect-file", help="default: deploy/prefect.yaml of the project")
    p.add_argument(
        "--name",
        action="append",
        default=[],
        help="deployment to register (repeatable; default: all in the file)",
    )
    p.add_argument(
        "prefect_args",
        nargs=argparse.REMAINDER,
        help="after --, options for `prefect deploy` (e.g. -- --interval 60 --params '{...}')",
    )
    p.set_defaults(func=deploy)


def load_project(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or not data.get("deployments"):
        raise UserError(f"{path} declares no deployments")
    return data


def missing_variables(
    project: dict[str, Any], names: list[str], env: Mapping[str, str] | None = None
) -> list[str]:
    """Environment placeholders the chosen deployments need at deploy time but lack.
    Pull steps are left out: the worker resolves those when a run starts."""
    chosen = [d for d in project["deployments"] if not names or d.get("name") in names]
    text = json.dumps([{k: v for k, v in d.items() if k != "pull"} for d in chosen])
    values = os.environ if env is None else env
    return sorted({v for v in _ENV_PLACEHOLDER.findall(text) if not values.get(v)})


def ensure_pools(client, pools: list[dict[str, Any]], folder: Path) -> list[str]:
    """Create each declared pool that the server lacks; returns the names created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    created = []
    for pool in pools:
        try:
            client.read_work_pool(pool["name"])
            continue
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool["name"],
                    type=pool["type"],
                    base_job_template=base_job_template(pool, folder),
                )
            )
        except ObjectAlreadyExists:
            # A worker started meanwhile creates its pool itself: that one serves.
            continue
        created.append(pool["name"])
    return created


def base_job_template(pool: dict[str, Any], folder: Path) -> dict[str, Any]:
    if pool.get("base_job_template"):
        return json.loads((folder / pool["base_job_template"]).read_text())
    if pool["type"] == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker.get_default_base_job_template()
    raise UserError(
        f"work pool {pool['name']!r} of type {pool['type']!r} needs a base_job_template file"
    )


def deploy(args: argparse.Namespace) -> int:
    from pipeline.cli.submit import server_url

    root = project_root()
    path = Path(args.prefect_file or root / "deploy" / "prefect.yaml").resolve()
    project = load_project(path)
    known = [d.get("name") for d in project["deployments"]]
    unknown = [n for n in args.name if n not in known]
    if unknown:
        raise UserError(f"{path} has no deployment {unknown}; it has {known}")
    env = {"COMPRESSFLOW_HOME": str(root), **os.environ}
    missing = missing_variables(project, args.name, env)
    if missing:
        raise UserError(
            f"{path.name} uses ${', $'.join(missing)}: set "
            f"{'it' if len(missing) == 1 else 'them'} (or deploy others with --name)"
        )
    url = server_url()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
        if problem is not None:
            raise UserError(f"no Prefect server answers at {url}: {problem}")
        for name in ensure_pools(client, project.get("work_pools", []), path.parent):
            print(f"created work pool {name}")
    extra = args.prefect_args[1:] if args.prefect_args[:1] == ["--"] else args.prefect_args
    chosen = [f"--name={n}" for n in args.name] or ["--all"]
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(path)]
    result = subprocess.run([*cmd, *chosen, *extra], cwd=root, env={**env, "PREFECT_API_URL": url})
    if result.returncode != 0:
        print(f"compressflow: `prefect deploy` failed ({result.returncode})", file=sys.stderr)
        return 1
    return 0
