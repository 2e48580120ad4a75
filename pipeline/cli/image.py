"""``compressflow image build``: build and tag the worker image (docker/Dockerfile, or
docker/Dockerfile.cuda with --cuda) through the Docker engine's API.

The ``docker`` Python package talks to the engine named by DOCKER_HOST (or the local
socket); without a reachable engine this fails with one clear line, before anything
is sent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TAGS = {False: "compressflow-worker:cpu", True: "compressflow-worker:cuda"}


def register(sub) -> None:
    p = sub.add_parser("image", help="build the worker image (needs a Docker engine)")
    actions = p.add_subparsers(dest="image_action", required=True)
    b = actions.add_parser("build", help="build and tag the worker image")
    b.add_argument("--cuda", action="store_true", help="the CUDA image (docker/Dockerfile.cuda)")
    b.add_argument("--tag", help="image tag (default compressflow-worker:cpu or :cuda)")
    b.add_argument(
        "--build-arg", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    b.add_argument("--context", default=str(ROOT), help="build context (the repository root)")
    b.set_defaults(func=build)


def engine():
    """A client for a Docker engine that answers, or a UserError saying there is none."""
    import os

    import docker  # the Docker SDK (the repository's docker/ folder is no package)

    where = os.environ.get("DOCKER_HOST") or "the local Docker socket"
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except docker.errors.DockerException as err:
        raise UserError(
            f"no Docker engine reachable at {where} ({_first_line(err)}); "
            "start Docker or set DOCKER_HOST to a running engine"
        ) from None
    return client


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def build(args: argparse.Namespace) -> int:
    context = Path(args.context).resolve()
    dockerfile = context / "docker" / ("Dockerfile.cuda" if args.cuda else "Dockerfile")
    if not dockerfile.is_file():
        raise UserError(f"{dockerfile} does not exist (is --context the repository root?)")
    build_args = {}
    for item in args.build_arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--build-arg {item!r} must look like KEY=VALUE")
        build_args[key] = value
    tag = args.tag or DEFAULT_TAGS[args.cuda]
    client = engine()
    from docker.errors import BuildError, DockerException  # loaded by engine()

    print(f"building {tag} from {dockerfile.relative_to(context)} in {context}", flush=True)
    try:
        for chunk in client.api.build(
            path=str(context),
            dockerfile=str(dockerfile.relative_to(context)),
            tag=tag,
            buildargs=build_args,
            rm=True,
            decode=True,
        ):
            if "stream" in chunk:
                print(chunk["stream"], end="", flush=True)
            if "error" in chunk:
                raise BuildError(chunk["error"], build_log=[])
    except (BuildError, DockerException) as err:
        print(f"compressflow: image build failed: {_first_line(err)}")
        return 1
    print(f"built {tag}")
    return 0
