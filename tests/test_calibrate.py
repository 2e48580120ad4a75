from learners.base import ModelInfo
from learners.channel import ChannelPruning
from learners.formats import export
from pipeline import measure
from pipeline.job import calibrate
from pipeline.job.calibrate import achieved, uniform_start
from pipeline.spec import parse
from tests.helpers import example_inputs, tiny_cnn


def _setup(tmp_path, target):
    spec = parse({"target": {"compression": target}})
    model, x = tiny_cnn(width=32), example_inputs()
    base_bytes = measure.file_bytes(export.save_deployable(model, x, tmp_path / "base"))
    return spec, ChannelPruning(), ModelInfo(model, x), base_bytes


def test_uniform_start_is_the_smallest_ratio_meeting_the_target(tmp_path):
    spec, learner, info, base_bytes = _setup(tmp_path, 3.0)
    start = uniform_start(spec, learner, info, base_bytes, tmp_path, log=lambda m: None)
    ratios = {v for k, v in start.items() if k.startswith("ratio.")}
    assert len(ratios) == 1  # one ratio for every stage
    (ratio,) = ratios

    def value(r):
        pruned, _ = learner.prune(info.model, learner.uniform_params(info, r), info.example_inputs)
        return achieved(spec, info.model, pruned, info.example_inputs, base_bytes, tmp_path)

    assert value(ratio) >= 3.0 * 1.10
    assert value(ratio - 0.05) < 3.0 * 1.10  # a clearly smaller ratio would not do


def test_unreachable_target_gives_no_start(tmp_path):
    spec, learner, info, base_bytes = _setup(tmp_path, 1000.0)
    assert uniform_start(spec, learner, info, base_bytes, tmp_path, log=lambda m: None) is None


def params_ratio(spec, baseline, candidate, example, baseline_bytes, workdir):
    """A stand-in for measured speedup: deterministic, and rising with the pruning ratio."""
    return measure.count_params(baseline) / measure.count_params(candidate)


def test_bisection_picks_the_smallest_ratio_meeting_a_speedup_target(tmp_path, monkeypatch):
    monkeypatch.setattr(calibrate, "achieved", params_ratio)
    spec = parse({"target": {"speedup": 3.0}})
    learner, model, x = ChannelPruning(), tiny_cnn(width=32), example_inputs()
    info = ModelInfo(model, x)
    start = uniform_start(spec, learner, info, 1, tmp_path, resolution=0.02, log=lambda m: None)
    (chosen,) = {v for k, v in start.items() if k.startswith("ratio.")}

    def value(r):
        pruned, _ = learner.prune(model, learner.uniform_params(info, r), x)
        return params_ratio(spec, model, pruned, x, 1, tmp_path)

    # Independently: scan the ratios on a grid finer than the bisection's resolution.
    goal, step = 3.0 * 1.10, 0.005
    grid = [learner.config.min_ratio + i * step for i in range(1, 161)]
    smallest = next(r for r in grid if r <= learner.config.max_ratio and value(r) >= goal)
    assert value(chosen) >= goal
    assert smallest - step < chosen <= smallest + 0.02


def test_a_speedup_is_measured_on_every_runtime_and_the_worst_one_counts(tmp_path, monkeypatch):
    spec = parse(
        {
            "target": {"speedup": 2.0, "also_on": ["onnxruntime-cpu"]},
            "measure": {"batch_size": 4, "repeats": 12},
        }
    )
    measured = []

    def fake_compare_latency(baseline, candidate, example, settings, workdir):
        measured.append(settings)
        candidate_ms = {"torch-cpu": 4.0, "onnxruntime-cpu": 8.0}[settings.runtime]
        return measure.LatencyComparison(baseline_ms=20.0, candidate_ms=candidate_ms)

    monkeypatch.setattr(measure, "compare_latency", fake_compare_latency)
    model = tiny_cnn()
    assert achieved(spec, model, model, example_inputs(), 1, tmp_path) == 2.5  # 20 / 8
    assert [s.runtime for s in measured] == ["torch-cpu", "onnxruntime-cpu"]
    # Calibration probes are timed with fewer repeats than the search's candidates.
    assert all(s.batch_size == 4 and s.repeats == 6 for s in measured)
