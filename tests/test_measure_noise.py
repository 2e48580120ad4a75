"""Speedups with their noise: the 95% interval, the stopping rule, pooled measurements.

Timing is faked where the figures must be known (``time_samples`` replaced by draws from
a seeded distribution with a known true speedup), so nothing here asserts on the
machine's own timings.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time

import pytest
import torch
from torch import nn

from learners.formats.onnx_module import OnnxModule
from pipeline import measure
from pipeline.measure import noise
from pipeline.measure.noise import MeasurementPool, architecture_key, speedup_interval
from tests.helpers import TinyNet, example_inputs

TRUE_SPEEDUP = 2.0


def jittered_pairs(rng: random.Random, n: int, spread: float) -> list[tuple[float, float]]:
    """Baseline ~ 10 ms, candidate ~ 5 ms, each with its own multiplicative log-normal
    noise plus rare large spikes (a preempted run): the true median ratio is 2."""

    def noisy(ms: float) -> float:
        spike = 3.0 if rng.random() < 0.05 else 1.0
        return ms * rng.lognormvariate(0, spread) * spike

    return [(noisy(10.0), noisy(10.0 / TRUE_SPEEDUP)) for _ in range(n)]


class FakeClock:
    """Stands in for ``measure.time_samples``: jittered draws with a known true speedup,
    counting how many pairs were 'timed'."""

    def __init__(self, spread: float, seed: int = 0, delay: float = 0.0) -> None:
        self.rng, self.spread, self.delay = random.Random(seed), spread, delay
        self.timed = 0
        self.lock = threading.Lock()

    def __call__(self, runners, warmup, repeats, *_):  # clock, trim: fake time
        assert len(runners) == 2
        time.sleep(self.delay)  # lets a second thread arrive meanwhile
        with self.lock:
            pairs = jittered_pairs(self.rng, repeats, self.spread)
            self.timed += repeats
        return [[b for b, _ in pairs], [c for _, c in pairs]]


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock(spread=0.05)
    monkeypatch.setattr(measure, "time_samples", fake)
    return fake


def compare(model_a, model_b, settings, pool=None, fresh=False, workdir=None):
    x = example_inputs()
    return measure.compare_latency(model_a, model_b, x, settings, workdir, pool, fresh)


# -- the interval ------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "rank"), [(6, 1), (15, 4), (60, 22)])
def test_order_statistic_ranks_match_the_binomial_tables(n, rank):
    # n=15: P(Bin(15, .5) <= 3) = 0.018 <= 0.025 < P(<= 4) = 0.059, so the 4th and 12th
    # of 15 sorted ratios bracket the median; n=60: 22nd and 39th (standard tables).
    assert noise._order_rank(n) == rank


def test_the_interval_covers_the_true_speedup_at_least_95_percent_of_the_time():
    rng = random.Random(1)
    trials, covered, widths = 2000, 0, []
    for _ in range(trials):
        pairs = jittered_pairs(rng, 15, spread=0.15)
        low, high = speedup_interval(pairs)
        covered += low <= TRUE_SPEEDUP <= high
        widths.append((high - low) / 2 / TRUE_SPEEDUP)
    assert covered / trials >= 0.94  # nominal >= 0.965 for n=15; binomial slack
    # ...and it is an interval, not 'anything goes': about the noise's own size
    assert 0.05 < sorted(widths)[trials // 2] < 0.25  # per-pair ratio noise: ~0.21


def test_the_interval_always_contains_the_reported_speedup():
    rng = random.Random(2)
    for n in (1, 2, 5, 6, 7, 15, 40):
        for _ in range(50):
            pairs = jittered_pairs(rng, n, spread=0.4)
            timing = measure.LatencyComparison.from_pairs(pairs)
            assert timing.low <= timing.speedup <= timing.high
            assert timing.speedup == timing.baseline_ms / timing.candidate_ms
            assert timing.pairs == n


def test_a_comparison_built_without_an_interval_is_its_point():
    timing = measure.LatencyComparison(baseline_ms=20.0, candidate_ms=4.0)
    assert (timing.low, timing.speedup, timing.high, timing.pairs) == (5.0, 5.0, 5.0, 0)


def test_too_few_pairs_never_count_as_precise():
    pairs = [(10.0, 5.0)] * 5  # zero spread, but 5 pairs cannot give a 95% interval
    assert not noise.precise_enough(pairs, tolerance=0.5)
    assert noise.precise_enough([(10.0, 5.0)] * 6, tolerance=0.01)


# -- the stopping rule -------------------------------------------------------------------


def test_max_repeats_zero_times_exactly_repeats_pairs(clock):
    timing = compare(TinyNet(), TinyNet(), measure.LatencySettings(repeats=7))
    assert timing.pairs == 7 and clock.timed == 7


def test_adaptive_timing_stops_once_the_interval_is_narrow(clock):
    settings = measure.LatencySettings(repeats=10, max_repeats=400, tolerance=0.03)
    timing = compare(TinyNet(), TinyNet(), settings)
    assert timing.relative_half_width <= 0.03
    assert 10 < timing.pairs < 400 and clock.timed == timing.pairs
    # one chunk fewer would not have been precise enough: it stopped at the first chance
    assert timing.low <= TRUE_SPEEDUP <= timing.high


def test_adaptive_timing_stops_at_the_cap_when_noise_stays_wide(monkeypatch):
    fake = FakeClock(spread=0.8)
    monkeypatch.setattr(measure, "time_samples", fake)
    settings = measure.LatencySettings(repeats=10, max_repeats=33, tolerance=0.01)
    timing = compare(TinyNet(), TinyNet(), settings)
    assert timing.pairs == 33 == fake.timed and timing.relative_half_width > 0.01


def test_settings_refuse_a_nonsense_tolerance():
    with pytest.raises(ValueError, match="tolerance"):
        measure.LatencySettings(tolerance=0.0)
    with pytest.raises(ValueError, match="max_repeats"):
        measure.LatencySettings(max_repeats=-1)


# -- pooling -----------------------------------------------------------------------------


def test_identical_architectures_share_a_key_and_different_ones_do_not():
    a, b = TinyNet(width=8), TinyNet(width=8)
    with torch.no_grad():
        b.conv1.weight.mul_(3.0)  # other weights (a fine-tuned copy), same architecture
    assert architecture_key(a) == architecture_key(b)
    assert architecture_key(a) != architecture_key(TinyNet(width=6))  # pruned narrower
    assert architecture_key(a) != architecture_key(TinyNet(width=8).half())  # dtype
    strided = TinyNet(width=8)
    strided.conv2.stride = (2, 2)  # same shapes, different work
    assert architecture_key(a) != architecture_key(strided)
    # opaque graphs (int8 ONNX) differ by their bytes, though no tensor says so
    assert architecture_key(OnnxModule(b"graph one")) != architecture_key(OnnxModule(b"two"))


def test_the_pool_key_separates_machines_and_software_versions(monkeypatch):
    """A pool folder shared by jobs may be mounted by several machines or outlive an
    upgrade: pairs timed elsewhere, or by other versions, must not join the same key."""
    a, b, x = TinyNet(), TinyNet(width=6), example_inputs()

    def key(runtime="torch-cpu"):
        return noise.pool_key(a, b, x, runtime, 32, 1, "wall")

    here, here_onnx = key(), key("onnxruntime-cpu")
    assert key() == here  # stable on one machine
    monkeypatch.setattr(noise.socket, "gethostname", lambda: "another-host")
    assert key() != here
    monkeypatch.undo()
    monkeypatch.setattr(noise, "_processor_model", lambda: "Another CPU @ 1.0GHz")
    assert key() != here
    monkeypatch.undo()
    monkeypatch.setattr(noise.torch, "__version__", "0.0.1")
    assert key() != here and key("onnxruntime-cpu") != here_onnx
    monkeypatch.undo()
    # onnxruntime's version splits onnxruntime's pairs only (torch does not run it)
    monkeypatch.setattr(noise, "_package_version", lambda name: "0.0.1")
    assert key("onnxruntime-cpu") != here_onnx and key() == here


def test_an_identical_architecture_gets_the_pooled_figure_from_another_pool_object(tmp_path, clock):
    settings = measure.LatencySettings(repeats=10, max_repeats=60, tolerance=0.03)
    base = TinyNet()
    first = compare(base, TinyNet(width=6), settings, MeasurementPool(tmp_path / "pool"))
    assert first.reused == 0 and clock.timed == first.pairs
    # Another job (another pool object, same folder), the same pruned shape, new weights:
    again = compare(TinyNet(), TinyNet(width=6), settings, MeasurementPool(tmp_path / "pool"))
    assert clock.timed == first.pairs  # nothing timed: the pool was precise enough
    assert again.reused == first.pairs and again.speedup == first.speedup
    assert (again.low, again.high) == (first.low, first.high)
    # A different architecture is measured on its own
    other = compare(base, TinyNet(width=4), settings, MeasurementPool(tmp_path / "pool"))
    assert other.reused == 0 and clock.timed == first.pairs + other.pairs


def test_a_pool_tops_up_when_its_pairs_are_too_few_and_stays_within_the_cap(tmp_path, clock):
    pool = MeasurementPool(tmp_path)
    few = measure.LatencySettings(repeats=6)  # fixed: 6 pairs stored
    compare(TinyNet(), TinyNet(width=6), few, pool)
    settings = measure.LatencySettings(repeats=10, max_repeats=24, tolerance=0.001)
    timing = compare(TinyNet(), TinyNet(width=6), settings, pool)
    assert timing.reused == 6 and timing.pairs == 24 and clock.timed == 24  # 6 + 18 new
    assert compare(TinyNet(), TinyNet(width=6), settings, pool).pairs == 24  # at the cap


def test_a_fresh_remeasurement_counts_only_its_own_pairs_and_stores_them(tmp_path, clock):
    pool = MeasurementPool(tmp_path)
    settings = measure.LatencySettings(repeats=8)
    compare(TinyNet(), TinyNet(width=6), settings, pool)
    confirm = compare(TinyNet(), TinyNet(width=6), settings, pool, fresh=True)
    assert confirm.reused == 0 and confirm.pairs == 8 and clock.timed == 16
    key = next(tmp_path.glob("*.pairs.jsonl"))
    assert len(key.read_text().splitlines()) == 16


def test_two_threads_measuring_the_same_models_time_them_once(tmp_path, monkeypatch):
    fake = FakeClock(spread=0.05, delay=0.2)
    monkeypatch.setattr(measure, "time_samples", fake)
    settings = measure.LatencySettings(repeats=10, max_repeats=60, tolerance=0.03)
    results = []

    def job():
        pool = MeasurementPool(tmp_path)  # each thread its own object, one folder
        results.append(compare(TinyNet(), TinyNet(width=6), settings, pool))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = sorted(results, key=lambda r: r.reused)
    assert first.reused == 0 and second.reused == first.pairs
    assert fake.timed == first.pairs and second.speedup == first.speedup


def _child_compare(folder, queue):
    settings = measure.LatencySettings(repeats=10, max_repeats=60, tolerance=0.03)
    timing = compare(TinyNet(), TinyNet(width=6), settings, MeasurementPool(folder))
    queue.put((timing.pairs, timing.reused))


def test_two_processes_share_one_pool_folder(tmp_path, clock):
    context = multiprocessing.get_context("fork")  # the fake clock travels with the fork
    queue = context.Queue()
    procs = [context.Process(target=_child_compare, args=(tmp_path, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    got = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    (pairs_a, reused_a), (pairs_b, reused_b) = got
    assert reused_a == 0 and reused_b == pairs_a == pairs_b  # the second reused the first
    stored = next(tmp_path.glob("*.pairs.jsonl")).read_text().splitlines()
    assert len(stored) == pairs_a


def test_a_line_cut_by_a_crash_is_skipped_not_fatal(tmp_path):
    pool = MeasurementPool(tmp_path)
    with pool.holding("k"):
        pool.add("k", [(10.0, 5.0)])
        (tmp_path / "k.pairs.jsonl").open("a").write("[10.0, 5")  # killed mid-write
        pool.add("k", [(12.0, 6.0)])
        assert pool.load("k") == [(10.0, 5.0), (12.0, 6.0)]
    assert json.loads((tmp_path / "k.pairs.jsonl").read_text().splitlines()[0]) == [10.0, 5.0]


def test_real_timing_gives_an_interval_around_its_speedup(tmp_path):
    """The real clock, no figure asserted: the fields are filled and consistent."""
    settings = measure.LatencySettings(batch_size=2, repeats=6, max_repeats=12)
    timing = measure.compare_latency(
        TinyNet(), nn.Identity(), example_inputs(), settings, tmp_path, MeasurementPool(tmp_path)
    )
    assert 6 <= timing.pairs <= 12 and timing.low <= timing.speedup <= timing.high
