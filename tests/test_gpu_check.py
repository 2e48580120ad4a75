"""benchmarks/gpu_check.py, checked without a GPU: its plan is the issue's (ResNet-56 and
MobileNetV2, cuda and cuda-graph at batch 32 and 256, channel,half, a cpu baseline), every
job it would run is a valid job spec, and its table reads summaries right. The script's
``--device cpu`` run (two tiny jobs end to end, minutes here) is in BENCHMARKS.md."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.spec import parse

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


@pytest.mark.parametrize("plan", [gpu_check.gpu_plan, gpu_check.cpu_plan])
def test_every_planned_job_is_a_valid_job_spec(plan, tmp_path):
    for job in plan():
        weights = tmp_path / "w.pt" if job.weights_from else None
        spec = parse(job.spec(tmp_path, weights))
        assert spec.device == job.device and spec.measure.batch_size == job.batch
        assert not spec.tracking.register_model and spec.output.startswith(str(tmp_path))


def test_the_gpu_plan_covers_what_the_check_must_show(tmp_path):
    specs = {job.name: (job, parse(job.spec(tmp_path, None))) for job in gpu_check.gpu_plan()}
    on_gpu = [(j, s) for j, s in specs.values() if s.device == "cuda"]
    assert {s.model.source for _, s in on_gpu} == {"resnet56", "mobilenet_v2"}
    for model in ("resnet56", "mobilenet_v2"):
        timed = {
            (runtime, s.measure.batch_size)
            for _, s in on_gpu
            if s.model.source == model and s.learners == ["channel"]
            for runtime in s.target.runtimes
        }
        assert timed == {(r, b) for r in ("cuda", "cuda-graph") for b in (32, 256)}, model
    half = [s for _, s in on_gpu if s.learners == ["channel", "half"]]
    assert [(s.target.runtime, s.target.speedup, s.measure.batch_size) for s in half] == [
        ("cuda-graph", 2.0, 256)
    ]
    cpu = [(j, s) for j, s in specs.values() if s.device == "cpu"]
    (cpu_job, cpu_spec), cuda_spec = cpu[0], specs["resnet56-channel-b32"][1]
    assert cpu_job.alongside and cpu_job.env["CUDA_VISIBLE_DEVICES"] == ""
    assert cpu_spec.model == cuda_spec.model and cpu_spec.data == cuda_spec.data
    assert cpu_spec.finetune.pretrain_epochs == cuda_spec.finetune.pretrain_epochs
    # only the first job of each model trains a baseline; later ones load it
    loaders = [j for j, _ in on_gpu if j.weights_from]
    assert loaders and all(specs[j.weights_from][1].device == "cuda" for j in loaders)


def test_dry_run_prints_each_job_and_its_command_and_starts_nothing(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for job in gpu_check.gpu_plan():
        assert f"# {job.name} (" in out
        assert f"--job {tmp_path}/jobs/{job.name}.yaml" in out
    blocks = [b.split("\n", 1)[1].rsplit("\n$ ", 1)[0] for b in out.split("\n\n") if b.strip()]
    assert all(parse(yaml.safe_load(b)) for b in blocks)
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing run


def _outcome(job, status="ok", **summary):
    return gpu_check.Outcome(job, status, 10.0, summary or None, 0)


def test_the_table_shows_accuracy_speedups_per_runtime_and_rounds_per_hour():
    job = gpu_check.gpu_plan()[1]
    summary = {
        "baseline": {"accuracy": 0.97, "latency_ms": 1.5},
        "best": {"accuracy": 0.95, "speedups": {"cuda-graph": 2.5, "cuda": 1.25}},
        "target_met": True,
        "candidates": [{"seconds": 4.0}, {"seconds": 6.0}, {"seconds": 5.0}],
    }
    failed = _outcome(gpu_check.gpu_plan()[2], status="failed (exit 1)")
    text = gpu_check.table([_outcome(job, **summary), failed])
    head, _, ok, bad = text.splitlines()
    cells = dict(zip(head.split(" | "), ok.split(" | "), strict=True))
    assert cells["baseline acc (trained on)"] == "0.970 (cuda)" and cells["best acc"] == "0.950"
    assert cells["speedup cuda-graph"] == "2.50x" and cells["speedup cuda"] == "1.25x"
    assert cells["s/round"] == "5.0" and cells["candidates/h"] == "720" and cells["met"] == "yes"
    assert "failed (exit 1)" in bad and "resnet56-channel-b256" in bad


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_the_gpu_plan_without_a_gpu_says_so_and_exits_2(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err
