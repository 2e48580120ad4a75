"""The GPU runtimes (``cuda`` eager, ``cuda-graph`` captured) and the GPU preflight.

What can run without a GPU runs here: which runner a runtime gets, settings validation,
the cuDNN autotuner switch being restored, and the errors (exit 2 at preflight, one line)
when a job asks for CUDA on a machine without it. Tests marked ``gpu`` need CUDA and skip
cleanly without it; ``benchmarks/gpu_check.py`` runs whole jobs on a GPU.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline import measure, spec
from pipeline.cli.main import main
from pipeline.job import preflight
from tests.helpers import TINY_JOB, TinyNet, example_inputs

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
no_gpu = pytest.mark.skipif(CUDA, reason="checks the errors of a machine without CUDA")
TARGET = {"target": {"speedup": 2}}


def test_the_spec_and_measure_agree_on_the_runtimes():
    assert spec.RUNTIMES is measure.RUNTIMES  # one tuple, in learners.base
    assert measure.GPU_RUNTIMES == ("cuda", "cuda-graph")
    parsed = spec.parse({"target": {"speedup": 2, "runtime": "cuda-graph", "also_on": ["cuda"]}})
    assert parsed.target.runtimes == ["cuda-graph", "cuda"]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"runtime": "tensorrt"}, "unknown runtime 'tensorrt'"),
        ({"batch_size": 0}, "batch_size >= 1"),
        ({"repeats": 0}, "repeats >= 1"),
        ({"warmup": -1}, "warmup >= 0"),
    ],
)
def test_latency_settings_are_validated_when_made(fields, message):
    with pytest.raises(ValueError, match=message):
        measure.LatencySettings(**fields)


def test_each_runtime_gets_its_runner_on_the_current_gpu(monkeypatch, tmp_path):
    """Runner selection, with CUDA faked: eager on ``cuda``, a captured graph on
    ``cuda-graph``, both on torch's current device (the worker's ``cuda:i``)."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(measure, "_torch_runner", lambda m, b, d: chosen.append(("eager", d)))
    monkeypatch.setattr(measure, "_cuda_graph_runner", lambda m, b, d: chosen.append(("graph", d)))
    for runtime in ("torch-cpu", "cuda", "cuda-graph"):
        settings = measure.LatencySettings(runtime=runtime, batch_size=2)
        measure.make_runner(TinyNet(), example_inputs(), settings, tmp_path, "m")
    assert chosen == [("eager", "cpu"), ("eager", "cuda:3"), ("graph", "cuda:3")]


def test_the_cudnn_autotuner_is_on_only_while_timing_a_gpu_runtime(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    with measure.runtime_flags(measure.LatencySettings(runtime="torch-cpu")):
        assert torch.backends.cudnn.benchmark is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with measure.runtime_flags(measure.LatencySettings(runtime="cuda-graph")):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is False


@no_gpu
@pytest.mark.parametrize("runtime", measure.GPU_RUNTIMES)
def test_a_gpu_runtime_without_cuda_is_a_clear_error(runtime, tmp_path):
    model = TinyNet()
    before = measure.fingerprint(model)
    settings = measure.LatencySettings(runtime=runtime)
    with pytest.raises(RuntimeError, match=f"runtime '{runtime}' was declared but no CUDA"):
        measure.latency_ms(model, example_inputs(), settings, tmp_path)
    assert measure.fingerprint(model) == before


@no_gpu
@pytest.mark.parametrize(
    "fields, where",
    [
        ({"device": "cuda"}, "device 'cuda'"),
        ({"device": "cuda:1"}, "device 'cuda:1'"),
        ({"target": {"speedup": 2, "runtime": "cuda-graph"}}, "runtime 'cuda-graph'"),
        ({"target": {"speedup": 2, "also_on": ["cuda"]}}, "runtime 'cuda'"),
    ],
)
def test_preflight_refuses_cuda_without_a_gpu(fields, where):
    job = spec.parse({**TARGET, **fields})
    with pytest.raises(preflight.PreflightError, match=f"{where} needs a CUDA GPU"):
        preflight.check_device(job)
    preflight.check_device(spec.parse(TARGET))  # a CPU job passes


@no_gpu
def test_a_cuda_job_without_a_gpu_exits_2_with_one_line_and_records_nothing(tmp_path):
    """The whole CLI, as a user runs it: exit 2 from preflight (before Prefect starts or
    anything trains), one line on stderr, no traceback, no tracking store written."""
    store = tmp_path / "mlflow.db"
    cmd = [sys.executable, "-m", "pipeline", "run", *TINY_JOB, "--target-speedup", "2"]
    cmd += ["--device", "cuda", "--tracking-uri", f"sqlite:///{store}"]
    cmd += ["--output", str(tmp_path / "out")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and "device 'cuda' needs a CUDA GPU" in lines[0], lines
    assert "Traceback" not in done.stdout + done.stderr
    assert not store.exists() and not (tmp_path / "out").exists()


@no_gpu
def test_a_cuda_graph_job_without_a_gpu_exits_2(tmp_path, capsys):
    flags = [*TINY_JOB, "--target-speedup", "2", "--runtime", "cuda-graph"]
    flags += ["--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--output", str(tmp_path)]
    assert main(["run", *flags]) == 2
    assert "runtime 'cuda-graph' needs a CUDA GPU" in capsys.readouterr().err


# ---- on a GPU ---------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("runtime", measure.GPU_RUNTIMES)
def test_gpu_timing_leaves_a_cpu_model_on_the_cpu_in_its_mode(runtime, tmp_path):
    baseline, candidate = TinyNet().train(), TinyNet(width=4).train()
    before = measure.fingerprint(baseline), measure.fingerprint(candidate)
    settings = measure.LatencySettings(runtime=runtime, batch_size=8, warmup=2, repeats=5)
    timing = measure.compare_latency(baseline, candidate, example_inputs(), settings, tmp_path)
    assert timing.baseline_ms > 0 and timing.candidate_ms > 0
    assert (measure.fingerprint(baseline), measure.fingerprint(candidate)) == before
    # and the next CPU step still works (what broke on the GPU before)
    assert measure.count_flops(baseline, example_inputs()) > 0


@gpu
def test_a_replayed_graph_computes_what_eager_mode_computes():
    model = TinyNet().eval()
    batch = torch.randn(8, 1, 8, 8)
    run = measure._cuda_graph_runner(model, batch, "cuda")
    run()
    with torch.no_grad():
        expected = model.cuda()(batch.cuda())
    torch.testing.assert_close(run.output, expected, rtol=1e-3, atol=1e-3)


@gpu
def test_a_model_that_syncs_with_the_host_cannot_be_captured_and_says_so():
    class Syncs(nn.Module):
        def forward(self, x):
            return x * float(x.sum().item())

    with pytest.raises(RuntimeError, match="cannot be captured as a CUDA graph.*'cuda'"):
        measure._cuda_graph_runner(Syncs(), torch.randn(2, 3), "cuda")


# ---- loaders for training on a GPU --------------------------------------------------------


def test_loaders_pin_memory_only_when_asked_and_use_no_workers_for_in_memory_tensors():
    from pipeline.sources.data import load_splits

    splits = load_splits("digits", image_size=8, limit=200)
    default = splits.loaders(32)
    assert [(ld.pin_memory, ld.num_workers) for ld in default] == [(False, 0)] * 3
    pinned = splits.loaders(32, pin_memory=True)
    assert [(ld.pin_memory, ld.num_workers) for ld in pinned] == [(True, 0)] * 3
    # the same seeded batches either way
    torch.testing.assert_close(next(iter(default[0]))[0], next(iter(pinned[0]))[0])


def test_datasets_that_work_per_item_get_loader_workers_when_training_on_a_gpu(monkeypatch):
    from torch.utils.data import Dataset

    from pipeline.sources import data

    class Decoded(Dataset):  # e.g. a callable source that decodes or augments per item
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(1, 4, 4), i % 2

    monkeypatch.setattr(data.os, "cpu_count", lambda: 16)
    splits = data.Splits(Decoded(), Decoded(), Decoded(), 2, (1, 4, 4))
    assert splits.workers_for(pin_memory=True) == 4
    assert splits.workers_for(pin_memory=False) == 0
    train, *_ = splits.loaders(4, pin_memory=True, workers=0)  # an explicit count wins
    assert train.num_workers == 0


# ---- mixed precision while training -------------------------------------------------------


def test_autocast_is_a_validated_spec_field_that_reaches_the_training_settings():
    from learners.finetune import TrainSettings
    from pipeline.job.settings import pretrain_settings, train_settings

    job = spec.parse({**TARGET, "finetune": {"autocast": "bf16"}})
    assert train_settings(job).autocast == pretrain_settings(job).autocast == "bf16"
    assert train_settings(spec.parse(TARGET)).autocast == "none"
    with pytest.raises(spec.SpecError, match="finetune.autocast 'fp16' is unknown"):
        spec.parse({**TARGET, "finetune": {"autocast": "fp16"}})
    with pytest.raises(ValueError, match="autocast must be one of"):
        TrainSettings(autocast="fp16")


def test_autocast_applies_on_cuda_devices_only():
    from learners.finetune import TrainSettings, autocast_for

    bf16 = TrainSettings(autocast="bf16")
    with autocast_for(bf16, "cpu"):  # CPU training stays fp32
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32
    assert isinstance(autocast_for(bf16, "cuda:0"), torch.autocast)
    assert not isinstance(autocast_for(TrainSettings(), "cuda:0"), torch.autocast)


@gpu
def test_bf16_autocast_trains_on_the_gpu_in_bf16_with_fp32_weights():
    from learners.finetune import TrainSettings, train_
    from tests.helpers_learners import digits_loaders

    train, val = digits_loaders(n_train=256)
    model = TinyNet()
    curve = train_(model, train, val, TrainSettings(epochs=2, autocast="bf16"), device="cuda")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert curve["train_loss"][-1] < curve["train_loss"][0]
