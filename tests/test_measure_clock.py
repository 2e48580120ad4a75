"""The timing clock (``measure.clock``), pinning, trimming of preempted rounds, and the
noise benchmark's own load processes."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from learners.formats.export import export_onnx, ort_session
from pipeline import measure
from pipeline.measure import clocks
from pipeline.measure.noise import MeasurementPool, pool_key
from pipeline.spec import SpecError, parse
from tests.helpers import TinyNet, example_inputs

ROOT = Path(__file__).resolve().parents[1]


# -- which clock -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clock", "runtime", "threads", "resolved"),
    [
        ("auto", "torch-cpu", 1, "cpu"),
        ("auto", "onnxruntime-cpu", 1, "cpu"),
        ("auto", "torch-cpu", 2, "wall"),
        ("auto", "onnxruntime-cpu", 4, "wall"),
        ("auto", "cuda", 1, "wall"),
        ("auto", "cuda-graph", 1, "wall"),
        ("wall", "torch-cpu", 1, "wall"),
        ("wall", "torch-cpu", 3, "wall"),
        ("cpu", "onnxruntime-cpu", 1, "cpu"),
    ],
)
def test_auto_is_cpu_only_where_the_forward_runs_on_the_timing_thread(
    clock, runtime, threads, resolved
):
    assert clocks.resolve_clock(clock, runtime, threads) == resolved


def test_the_cpu_clock_is_refused_with_the_reason_where_it_would_miss_work():
    with pytest.raises(ValueError, match=r"needs threads: 1 \(got 2\)"):
        measure.LatencySettings(clock="cpu", threads=2)
    with pytest.raises(ValueError, match="runs on the device"):
        measure.LatencySettings(runtime="cuda", clock="cpu")
    with pytest.raises(ValueError, match="unknown clock 'sundial'"):
        measure.LatencySettings(clock="sundial")
    with pytest.raises(SpecError, match=r"measure.clock: clock 'cpu' needs threads: 1"):
        parse({"target": {"speedup": 2}, "measure": {"clock": "cpu", "threads": 2}})
    with pytest.raises(SpecError, match="runs on the device"):
        parse({"target": {"speedup": 2, "also_on": ["cuda"]}, "measure": {"clock": "cpu"}})
    assert parse({"target": {"speedup": 2}, "measure": {"threads": 2}}).measure.clock == "auto"


def test_the_job_records_what_the_clock_resolved_to_per_runtime():
    from pipeline.job.settings import measured_by

    spec = parse({"target": {"speedup": 2, "also_on": ["cuda"]}})
    assert measured_by(spec) == {"torch-cpu": "cpu", "cuda": "wall"}
    assert parse({"target": {"speedup": 2}, "measure": {"clock": "wall"}}).measure.clock == "wall"


class Sleepy(nn.Module):
    def forward(self, x):
        time.sleep(0.01)
        return x


def test_the_cpu_clock_leaves_out_time_the_thread_did_not_run():
    sleepy = Sleepy()
    by_wall = measure.latency_ms(
        sleepy, torch.randn(1, 2), measure.LatencySettings(clock="wall"), None
    )
    by_cpu = measure.latency_ms(
        sleepy, torch.randn(1, 2), measure.LatencySettings(clock="cpu"), None
    )
    assert by_wall >= 10.0 and by_cpu < 2.0


def conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
    ).eval()  # fmt: skip


def thread_share(run, seconds: float = 0.4) -> float:
    """The calling thread's share of the whole process's CPU time while ``run`` repeats:
    1 when all the work is on this thread, whatever else the machine does (time taken
    by other processes is in neither figure, so load cannot fake or hide it)."""
    run()  # warm-up (thread pools start, kernels chosen)
    thread0, process0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        run()
    return (time.thread_time() - thread0) / (time.process_time() - process0)


needs_two_cores = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="a second intra-op thread needs a second core"
)


@pytest.mark.parametrize("threads", [1, pytest.param(2, marks=needs_two_cores)])
def test_torch_runs_the_forward_on_the_calling_thread_only_with_one_thread(threads):
    model, batch = conv_net(), torch.randn(8, 3, 32, 32)

    def run():
        with torch.inference_mode():
            model(batch)

    with measure.torch_threads(threads):
        share = thread_share(run)
    assert share > 0.9 if threads == 1 else share < 0.8


@pytest.mark.parametrize("threads", [1, pytest.param(2, marks=needs_two_cores)])
def test_onnxruntime_runs_on_the_calling_thread_only_with_one_thread(tmp_path, threads):
    path = export_onnx(conv_net(), torch.randn(1, 3, 32, 32), tmp_path / "conv.onnx")
    session = ort_session(path, threads)
    feed = {session.get_inputs()[0].name: torch.randn(8, 3, 32, 32).numpy()}
    share = thread_share(lambda: session.run(None, feed))
    assert share > 0.9 if threads == 1 else share < 0.8


# -- the pool key ------------------------------------------------------------------------


def test_the_pool_keeps_pairs_of_each_clock_apart(tmp_path):
    x = example_inputs()
    a, b = TinyNet(), TinyNet(width=6)
    keys = {clock: pool_key(a, b, x, "torch-cpu", 4, 1, clock) for clock in ("wall", "cpu")}
    assert keys["wall"] != keys["cpu"] and "-cpu-" in keys["cpu"]
    pool = MeasurementPool(tmp_path)
    for clock in ("wall", "cpu"):
        settings = measure.LatencySettings(batch_size=4, repeats=6, clock=clock)
        timing = measure.compare_latency(a, b, x, settings, tmp_path, pool)
        assert timing.reused == 0  # the other clock's pairs are not this measurement
    again = measure.compare_latency(a, b, x, settings, tmp_path, pool)
    assert again.reused == 6


# -- pinning -----------------------------------------------------------------------------


pinnable = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="pinning needs sched_setaffinity and more than one allowed core",
)


@pinnable
def test_pinning_holds_one_core_while_timing_and_restores_after_even_on_error():
    before = os.sched_getaffinity(0)
    with clocks.pinned(True):
        assert len(os.sched_getaffinity(0)) == 1
    assert os.sched_getaffinity(0) == before
    with pytest.raises(RuntimeError, match="boom"), clocks.pinned(True):
        raise RuntimeError("boom")
    assert os.sched_getaffinity(0) == before
    with clocks.pinned(False):
        assert os.sched_getaffinity(0) == before


@pinnable
def test_a_comparison_that_fails_mid_timing_leaves_the_thread_unpinned(monkeypatch):
    before = os.sched_getaffinity(0)
    seen = []

    def failing(*args, **kwargs):
        seen.append(os.sched_getaffinity(0))
        raise RuntimeError("runner broke")

    monkeypatch.setattr(measure, "time_samples", failing)
    settings = measure.LatencySettings(batch_size=2, repeats=6, pin=True)
    with pytest.raises(RuntimeError, match="runner broke"):
        measure.compare_latency(TinyNet(), TinyNet(), example_inputs(), settings, None)
    assert len(seen[0]) == 1 and os.sched_getaffinity(0) == before


# -- trimming ----------------------------------------------------------------------------


def test_rounds_preempted_more_than_the_median_round_are_dropped():
    assert clocks.quiet_rounds([0, 3, 0, 1, 5]) == [0, 2, 3]
    assert clocks.quiet_rounds([2, 2, 2]) == [0, 1, 2]  # evenly busy: all kept
    assert clocks.quiet_rounds([]) == []
    counts = [7, 1, 9, 4, 4, 0, 12, 3]
    assert len(clocks.quiet_rounds(counts)) >= len(counts) / 2


def test_trimming_drops_a_disturbed_round_from_every_runner(monkeypatch):
    # switch counter readings: round 2 (the third) was preempted 5 times, the rest none
    readings = iter([0, 0, 0, 0, 0, 5, 5, 5])
    monkeypatch.setattr(measure, "involuntary_switches", lambda: next(readings))
    calls = iter(range(100))
    runners = [lambda: next(calls), lambda: next(calls)]
    kept = measure.time_samples(runners, warmup=0, repeats=4, clock="wall", trim=True)
    assert [len(s) for s in kept] == [3, 3]
    readings = iter([0, 0, 0, 0, 0, 5, 5, 5])
    untrimmed = measure.time_samples(runners, warmup=0, repeats=4, clock="wall")
    assert [len(s) for s in untrimmed] == [4, 4]


# -- the benchmark's load ----------------------------------------------------------------


def _benchmark():
    path = ROOT / "benchmarks" / "measurement_noise.py"
    spec = importlib.util.spec_from_file_location("measurement_noise", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_load_processes_run_while_asked_and_are_stopped_after_even_on_error():
    noise = _benchmark()
    with noise.busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(KeyboardInterrupt), noise.busy_processes(1) as procs:
        raise KeyboardInterrupt
    assert all(p.poll() is not None for p in procs)


def test_a_variant_is_a_clock_with_known_steadiers():
    noise = _benchmark()
    assert noise.parse_variant("cpu+pin+trim") == {"clock": "cpu", "pin": True, "trim": True}
    assert noise.parse_variant("wall") == {"clock": "wall", "pin": False, "trim": False}
    with pytest.raises(Exception, match="a clock"):
        noise.parse_variant("cpu+turbo")
