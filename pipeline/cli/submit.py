"""``compressflow submit``: hand a job to a Prefect server, where a worker of the
deployment's work pool runs it (the team / cluster path; ``run`` is the local one).

The job is validated here, before it is queued, with the same flags and file as ``run``;
the flow run gets it as its ``spec`` parameter (Prefect validates it into a JobSpec on the
worker). The server is the one named by PREFECT_API_URL; without one, Prefect would
quietly start a temporary local API, which no worker watches, so that is refused.
"""

from __future__ import annotations

import argparse
import logging
import time
from datetime import timedelta
from typing import Any
from uuid import UUID

from pipeline.cli.errors import UserError
from pipeline.cli.run import add_job_arguments, spec_from_args
from pipeline.cli.secrets import without_passwords

DEFAULT_DEPLOYMENT = "compress/team"


def register(sub) -> None:
    p = sub.add_parser("submit", help="queue a job on the Prefect server named by PREFECT_API_URL")
    add_job_arguments(p)
    p.add_argument(
        "--deployment",
        default=DEFAULT_DEPLOYMENT,
        help=f"FLOW/DEPLOYMENT or a deployment of the compress flow (default {DEFAULT_DEPLOYMENT})",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="follow the run's state and logs; exit 1 unless it completes",
    )
    p.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    p.set_defaults(func=submit)


def deployment_name(name: str) -> str:
    return name if "/" in name else f"compress/{name}"


def server_url() -> str:
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise UserError(
            "PREFECT_API_URL is not set: submit needs a Prefect server, e.g. "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api "
            "(or run the job here with `compressflow run`)"
        )
    return url


def ui_url(flow_run_id: UUID | str) -> str:
    """The run's page in the Prefect UI (PREFECT_UI_URL, else derived from the API URL)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    base = settings.ui_url or (settings.api.url or "").rstrip("/").removesuffix("/api")
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"


def find_deployment(client, name: str, url: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        known = sorted(
            f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments()
        )
        raise UserError(
            f"deployment {name!r} does not exist on {url} "
            f"(known: {', '.join(known) or 'none'}); register them with `compressflow deploy`"
        ) from None


def submit(args: argparse.Namespace) -> int:
    spec = without_passwords(spec_from_args(args), here=False)
    url = server_url()
    from prefect.client.orchestration import get_client

    name = deployment_name(args.deployment)
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
        if problem is not None:
            raise UserError(f"no Prefect server answers at {url}: {problem}")
        deployment = find_deployment(client, name, url)
        run = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"spec": spec.to_dict()},
            name=spec.job_name,
            tags=["compressflow"],
        )
        print(f"flow run {run.id} ({run.name}) queued on deployment {name}", flush=True)
        print(f"UI: {ui_url(run.id)}", flush=True)
        if not args.wait:
            return 0
        try:
            state = follow(client, run.id, args.poll)
        except KeyboardInterrupt:
            print(f"stopped following; the run goes on: {ui_url(run.id)}")
            return 130
    print(f"flow run {run.name}: {state.name}" + (f" ({state.message})" if state.message else ""))
    return 0 if state.is_completed() else 1


def follow(client, flow_run_id: UUID, poll: float, out=print) -> Any:
    """Print the run's state changes and log lines until it reaches a final state."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
    from prefect.client.schemas.sorting import LogSort

    seen: set[UUID] = set()
    since = None
    last_state = None

    def drain() -> None:
        nonlocal since
        while True:
            # Workers send logs in batches, so a window a little before the newest line
            # seen catches late arrivals; ids keep each line printed once.
            window = LogFilterTimestamp(after_=since - timedelta(seconds=30)) if since else None
            logs = client.read_logs(
                log_filter=LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]), timestamp=window
                ),
                sort=LogSort.TIMESTAMP_ASC,
                limit=200,
            )
            fresh = [log for log in logs if log.id not in seen]
            for log in fresh:
                seen.add(log.id)
                out(f"{log.timestamp:%H:%M:%S} {logging.getLevelName(log.level):<7} {log.message}")
                since = max(since, log.timestamp) if since else log.timestamp
            if len(logs) < 200 or not fresh:
                return

    while True:
        run = client.read_flow_run(flow_run_id)
        if run.state_name != last_state:
            out(f"state: {run.state_name}")
            last_state = run.state_name
        drain()
        if run.state is not None and run.state.is_final():
            time.sleep(min(poll, 2.0))  # the last log batch may still be on its way
            drain()
            return run.state
        time.sleep(poll)
