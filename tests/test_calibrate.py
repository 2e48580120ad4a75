from learners.base import ModelInfo
from learners.channel import ChannelPruning
from learners.formats import export
from pipeline import measure
from pipeline.job.calibrate import achieved, uniform_start
from pipeline.spec import parse
from tests.helpers import TinyCNN, tiny_cnn


def _setup(tmp_path, target):
    spec = parse({"target": {"compression": target}})
    model, x = tiny_cnn(width=32), TinyCNN.example_inputs()
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


def test_speedup_is_measured_not_estimated(tmp_path):
    spec = parse({"target": {"speedup": 2.0}, "measure": {"batch_size": 4, "repeats": 3}})
    model = tiny_cnn()
    same = achieved(spec, model, model, TinyCNN.example_inputs(), 1, tmp_path)
    assert 0.5 < same < 2.0  # a model against itself: about 1, noise aside
