"""The Docker and deployment files, checked without a Docker engine (none runs here or on
CI): they parse, and everything they name exists in the repository or in each other."""

import inspect
import json
import re
import shlex
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from pipeline.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ["docker/Dockerfile", "docker/Dockerfile.cuda", "docker/Dockerfile.mlflow"]


def torch_pin() -> str:
    """The exact torch the images install: constraints/cpu.txt's pin (pyproject.toml gives
    a range, so the package installs next to any supported torch)."""
    return re.search(r"^torch==([\d.]+)$", (ROOT / "constraints/cpu.txt").read_text(), re.M)[1]


def gpu_template() -> dict:
    return json.loads((ROOT / "deploy/k8s-gpu-job-template.json").read_text())


def compose():
    return yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())


def project():
    return yaml.safe_load((ROOT / "deploy/prefect.yaml").read_text())


def dockerignore():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(path: str) -> bool:
    return any(fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in dockerignore())


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    rows = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [tuple(ln.split(None, 1)) for ln in rows]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copy_source_exists_and_reaches_the_build_context(dockerfile):
    copies = [args.split() for op, args in instructions(dockerfile) if op == "COPY"]
    assert copies or dockerfile.endswith("mlflow")
    for *sources, _dest in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} is not in the repo"
            assert not ignored(source), f"{dockerfile}: COPY {source} is excluded by .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES[:2])
def test_worker_images_install_the_pinned_torch_and_start_a_declared_pool(dockerfile):
    ops = instructions(dockerfile)
    pinned = torch_pin()
    assert any(op == "RUN" and f"torch=={pinned}" in args for op, args in ops)
    assert ("ENV" in dict(ops)) and "COMPRESSFLOW_HOME=/opt/compressflow" in dict(ops)["ENV"]
    cmd = json.loads(dict(ops)["CMD"])
    pool = cmd[cmd.index("--pool") + 1]
    assert pool in {p["name"] for p in project()["work_pools"]}


def test_the_compose_stack_has_its_services_and_their_files():
    stack = compose()
    assert {"postgres", "minio", "minio-init", "prefect-server", "mlflow", "worker"} <= set(
        stack["services"]
    )
    for name, service in stack["services"].items():
        build = service.get("build")
        if build:
            context = (ROOT / "deploy" / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / "deploy" / source).is_file(), f"{name}: {source}"
            else:
                assert source in stack["volumes"], f"{name}: volume {source}"
        for dep in service.get("depends_on", {}):
            assert dep in stack["services"], f"{name} depends on unknown {dep}"


def test_mlflow_uses_postgres_and_the_bucket_that_minio_init_creates():
    services = compose()["services"]
    command = " ".join(services["mlflow"]["command"])
    bucket = re.search(r"mc mb --ignore-existing local/(\S+)", services["minio-init"]["command"][0])
    assert "--backend-store-uri=postgresql://" in command
    assert f"--artifacts-destination=s3://{bucket.group(1)}/" in command
    init = (ROOT / "deploy/postgres-init.sql").read_text()
    assert "CREATE DATABASE mlflow" in init and "CREATE DATABASE prefect" in init
    assert services["prefect-server"]["environment"][
        "PREFECT_API_DATABASE_CONNECTION_URL"
    ].startswith("postgresql+asyncpg://")


def test_the_worker_command_is_one_our_cli_and_prefect_accept():
    script = compose()["services"]["worker"]["command"][-1]
    deploy, worker = (shlex.split(part) for part in script.split("&&"))
    assert deploy[0] == "compressflow"
    args = build_parser().parse_args(deploy[1:])
    assert set(args.name) <= {d["name"] for d in project()["deployments"]}
    assert worker[:3] == ["prefect", "worker", "start"]
    assert worker[worker.index("--pool") + 1] in {p["name"] for p in project()["work_pools"]}


def test_deployments_point_at_the_compress_flow_and_at_declared_pools():
    from pipeline.flows import compress

    data = project()
    pools = {p["name"]: p for p in data["work_pools"]}
    assert {p["type"] for p in pools.values()} == {"process", "kubernetes"}
    assert list(inspect.signature(compress.fn).parameters)[0] == "spec"
    assert data["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == (
        "{{ $COMPRESSFLOW_HOME }}"
    )
    for d in data["deployments"]:
        assert d["entrypoint"] == "pipeline/flows.py:compress"
        assert d["work_pool"]["name"] in pools


def test_the_gpu_deployment_asks_for_a_gpu_the_pool_template_can_express():
    import jsonschema

    data = project()
    gpu = next(d for d in data["deployments"] if d["name"] == "gpu")
    variables = gpu["work_pool"]["job_variables"]
    assert variables["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "cuda" in variables["image"]
    pool = next(p for p in data["work_pools"] if p["name"] == "gpu")
    template = json.loads((ROOT / "deploy" / pool["base_job_template"]).read_text())
    jsonschema.validate(variables, template["variables"])
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["resources"] == "{{ resources }}" and container["image"] == "{{ image }}"


def test_the_nightly_deployment_is_a_valid_job_on_a_cron_schedule():
    from pipeline.spec import parse

    nightly = next(d for d in project()["deployments"] if d["name"] == "nightly")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    text = json.dumps(nightly["parameters"]["spec"])
    text = text.replace("{{ $MLFLOW_TRACKING_URI }}", "http://mlflow:5000")
    text = text.replace("{{ $COMPRESSFLOW_OUTPUT }}", "s3://compressflow/nightly")
    spec = parse(json.loads(text))
    assert spec.model.source.startswith("models:/") and spec.tracking.register_model
    env = nightly["work_pool"]["job_variables"]["env"]
    assert env["MLFLOW_TRACKING_URI"] == "{{ $MLFLOW_TRACKING_URI }}"  # the registry to read


def test_building_an_image_without_a_docker_engine_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    assert main(["image", "build"]) == 2
    err = capsys.readouterr().err
    assert f"no Docker engine reachable at unix://{tmp_path}/no-docker.sock" in err
    assert "start Docker or set DOCKER_HOST" in err


def test_the_cuda_image_carries_a_driver_independent_cuda_torch_and_keeps_it():
    """No CUDA toolkit base image: the torch wheel from a cuXXX index brings the CUDA
    runtime, so the host needs only a driver; the build fails if torch is a CPU build,
    before or after the project's dependencies are installed (constrained to it)."""
    ops = instructions("docker/Dockerfile.cuda")
    assert ops[0][0] == "FROM" and ops[0][1].startswith("python:"), ops[0]
    index = dict(ops)["ARG"]
    assert re.fullmatch(r"TORCH_INDEX=https://download\.pytorch\.org/whl/cu1\d\d", index)
    runs = [args for op, args in ops if op == "RUN"]
    install = next(r for r in runs if "--index-url ${TORCH_INDEX}" in r)
    assert f'"torch=={torch_pin()}"' in install and "torch.version.cuda" in install
    project = next(r for r in runs if '".[dask,postgres]"' in r)
    assert "-c /tmp/torch-cuda.txt" in project and "torch.version.cuda" in project
    assert runs.index(install) < runs.index(project)
    env = dict(ops)["ENV"]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute" in env
    cpu = dict(instructions("docker/Dockerfile"))["ARG"]
    assert cpu == "TORCH_INDEX=https://download.pytorch.org/whl/cpu"  # and not the other way


def test_the_gpu_job_template_asks_for_one_gpu_tolerates_gpu_nodes_and_gives_shared_memory():
    import jsonschema

    template = gpu_template()
    variables = template["variables"]["properties"]
    assert variables["resources"]["default"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in variables[
        "tolerations"
    ]["default"]
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = pod["containers"][0]["volumeMounts"]
    assert mount["mountPath"] == "/dev/shm"
    assert volumes[mount["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "{{ shm_size }}"}
    # every {{ placeholder }} of the job configuration is a declared variable
    used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
    assert "shm_size" in used and used <= set(variables), used - set(variables)
    defaults = {k: v["default"] for k, v in variables.items() if "default" in v}
    jsonschema.validate(defaults, template["variables"])
