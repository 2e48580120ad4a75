import pytest

from learners.aids import Reached
from learners.base import ModelInfo
from learners.channel import ChannelPruning
from learners.formats import export
from pipeline import measure
from pipeline.job.probe import achieved
from pipeline.spec import parse
from tests.helpers import example_inputs, tiny_cnn
from tests.helpers_aids import calibrate_with


def uniform_start(spec, learner, info, base_bytes, workdir):
    """The rule's start, calibrated on real file sizes (compression targets)."""

    def measured(model):
        return achieved(spec, info.model, model, info.example_inputs, base_bytes, workdir)

    return calibrate_with(measured, spec, learner, info, workdir).start


def _setup(tmp_path, target):
    spec = parse({"target": {"compression": target}})
    model, x = tiny_cnn(width=32), example_inputs()
    base_bytes = measure.file_bytes(export.save_deployable(model, x, tmp_path / "base"))
    return spec, ChannelPruning(), ModelInfo(model, x), base_bytes


def test_uniform_start_is_the_smallest_ratio_meeting_the_target(tmp_path):
    spec, learner, info, base_bytes = _setup(tmp_path, 3.0)
    start = uniform_start(spec, learner, info, base_bytes, tmp_path)
    ratios = {v for k, v in start.items() if k.startswith("ratio.")}
    assert len(ratios) == 1  # one ratio for every stage
    (ratio,) = ratios

    def value(r):
        pruned, _ = learner.prune(info.model, learner.uniform_params(info, r), info.example_inputs)
        got = achieved(spec, info.model, pruned, info.example_inputs, base_bytes, tmp_path)
        assert got.low == got.value == got.high  # file bytes are exact: no margin needed
        return got.value

    assert value(ratio) >= 3.0
    assert value(ratio - 0.05) < 3.0  # a clearly smaller ratio would not do


def test_unreachable_target_gives_no_start(tmp_path):
    spec, learner, info, base_bytes = _setup(tmp_path, 1000.0)
    assert uniform_start(spec, learner, info, base_bytes, tmp_path) is None


def test_bisection_picks_the_smallest_ratio_meeting_a_speedup_target(tmp_path):
    spec = parse({"target": {"speedup": 3.0}})
    learner, model, x = ChannelPruning(), tiny_cnn(width=32), example_inputs()
    info = ModelInfo(model, x)

    def params_ratio(candidate):
        """A stand-in for measured speedup: deterministic, rising with the pruning ratio."""
        return measure.count_params(model) / measure.count_params(candidate)

    start = calibrate_with(params_ratio, spec, learner, info, tmp_path).start
    (chosen,) = {v for k, v in start.items() if k.startswith("ratio.")}

    def value(r):
        pruned, _ = learner.prune(model, learner.uniform_params(info, r), x)
        return params_ratio(pruned)

    # Independently: scan the ratios on a grid finer than the bisection's resolution.
    goal, step = 3.0 * 1.10, 0.005
    grid = [learner.config.min_ratio + i * step for i in range(1, 161)]
    smallest = next(r for r in grid if r <= learner.config.max_ratio and value(r) >= goal)
    assert value(chosen) >= goal
    assert smallest - step < chosen <= smallest + 0.02


@pytest.mark.parametrize("shared", [False, True])
def test_a_speedup_is_measured_on_every_runtime_and_the_worst_one_counts(
    tmp_path, monkeypatch, shared
):
    pool_folder = str(tmp_path / "shared-pool") if shared else None
    spec = parse(
        {
            "target": {"speedup": 2.0, "also_on": ["onnxruntime-cpu"]},
            "measure": {"batch_size": 4, "repeats": 12, "pool": pool_folder},
        }
    )
    measured = []

    pools = []

    def fake_compare_latency(baseline, candidate, example, settings, workdir, pool=None):
        measured.append(settings)
        pools.append(pool.folder)
        candidate_ms, low, high = {
            "torch-cpu": (4.0, 4.0, 6.5),  # 5x, interval 4-6.5
            "onnxruntime-cpu": (8.0, 2.4, 2.6),  # 2.5x
        }[settings.runtime]
        return measure.LatencyComparison(20.0, candidate_ms, low=low, high=high)

    monkeypatch.setattr(measure, "compare_latency", fake_compare_latency)
    model = tiny_cnn()
    got = achieved(spec, model, model, example_inputs(), 1, tmp_path / "calibration")
    # the worst runtime's figure, and each end of the interval at its worst
    assert (got.value, got.low, got.high) == (2.5, 2.4, 2.6)
    assert [s.runtime for s in measured] == ["torch-cpu", "onnxruntime-cpu"]
    # the job's pool, shared with rounds; or the pool shared across jobs when named
    expected = tmp_path / ("shared-pool" if shared else "measurements")
    assert pools == [expected] * 2
    # Calibration probes are timed with fewer repeats than the search's candidates.
    assert all(s.batch_size == 4 and s.repeats == 6 for s in measured)


def _speedups_by_ratio(intervals):
    """A stand-in for measured speedup: the interval of the largest listed ratio not
    above the probed one (the stand-in reads the ratio from the pruned width)."""

    def fake(candidate):
        ratio = 1 - measure.count_params(candidate) ** 0.5 / measure.count_params(baseline) ** 0.5
        key = max((r for r in intervals if r <= ratio + 1e-9), default=min(intervals))
        value, low, high = intervals[key]
        return Reached(value, low, high)

    baseline = tiny_cnn(width=32)
    return baseline, fake


def test_a_ratio_meets_the_target_only_when_its_interval_low_end_does(tmp_path):
    # Every ratio's point figure reaches 3x, but only from 0.6 on does the low end.
    intervals = {0.0: (3.1, 2.5, 3.6), 0.6: (3.3, 3.05, 3.5)}
    baseline, fake = _speedups_by_ratio(intervals)
    spec = parse({"target": {"speedup": 3.0}})
    info = ModelInfo(baseline, example_inputs())
    found = calibrate_with(fake, spec, ChannelPruning(), info, tmp_path)
    (chosen,) = {v for k, v in found.start.items() if k.startswith("ratio.")}
    accepted = [t for t in found.trail if t["low"] >= 3.0]
    assert chosen == min(t["ratio"] for t in accepted)
    assert all(t["achieved"] >= 3.0 for t in found.trail)  # the point alone met everywhere
    assert any(t["low"] < 3.0 and t["ratio"] < chosen for t in found.trail)


def test_unreachable_means_even_the_largest_ratios_high_end_misses(tmp_path):
    spec = parse({"target": {"speedup": 3.0}})
    info = ModelInfo(tiny_cnn(width=32), example_inputs())
    for high, unreachable in ((2.9, True), (3.1, False)):
        reached = Reached(2.7, 2.5, high)
        found = calibrate_with(lambda m, r=reached: r, spec, ChannelPruning(), info, tmp_path)
        assert found.unreachable is unreachable and found.start is None
