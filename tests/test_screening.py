"""A screening on a tiny trained model: no fine-tune, BatchNorm re-estimated on the
screening samples, scored on the fixed validation subset; checked against the same
steps done by hand, and against a screening without re-estimation."""

import math

import torch

from learners.base import Context
from learners.finetune import accuracy, recalibrate_batchnorm_
from pipeline.job.candidate import compress
from pipeline.job.modelfile import load_baseline, save_baseline
from pipeline.job.screening import screen_batch, screening_loaders
from pipeline.job.settings import build_learners, splits_for
from pipeline.records.results import ScreeningResult
from pipeline.spec import parse
from tests.helpers import tiny_cnn


def job(tmp_path, target, **screening):
    return parse(
        {
            "model": "tests.helpers:tiny_cnn",
            "data": {"source": "digits", "image_size": 8, "limit": 400},
            "target": {**target, "max_accuracy_drop": 100},
            "learners": ["channel"],
            "screening": {"bn_samples": 64, "val_samples": 50, "repeats": 3, **screening},
            "measure": {"batch_size": 8},
            "finetune": {"batch_size": 16},
            "output": str(tmp_path / "out"),
        }
    )


def trained_baseline(spec, folder):
    """A tiny model trained for two epochs (its BatchNorm statistics then matter)."""
    torch.manual_seed(0)
    model = tiny_cnn()
    train, _, _ = splits_for(spec).loaders(16, 0)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(2):
        for x, y in train:
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
    return save_baseline(model.eval(), folder)


def test_a_screening_is_the_pruned_model_with_fresh_batchnorm_on_the_subset(tmp_path):
    spec = job(tmp_path, {"compression": 1.5})
    path = trained_baseline(spec, tmp_path / "baseline")
    unit = next(iter(_units(spec, path)))
    settings = [{f"channel.ratio.{unit}": 0.5}, {f"channel.ratio.{unit}": 0.0}]
    rows = [
        ScreeningResult.from_dict(d)
        for d in screen_batch(spec, "cpu", str(path), 10**6, settings, 7, str(tmp_path / "s"))
    ]
    assert [r.index for r in rows] == [7, 8] and all(r.status == "ok" for r in rows), rows

    # By hand: the same chain, no training, BatchNorm re-estimated on the same samples.
    bn_loader, val_loader = screening_loaders(spec, spec.seed)
    assert len(bn_loader.dataset) == 64 and len(val_loader.dataset) == 50
    baseline = load_baseline(spec, path)
    ctx = Context(bn_loader, val_loader, splits_for(spec).example_inputs(), lambda m, **k: {})
    pruned = compress(build_learners(spec), baseline, settings[0], ctx, 0)
    fresh = recalibrate_batchnorm_(pruned, bn_loader, math.ceil(64 / 16))
    assert fresh > 0
    assert rows[0].accuracy == accuracy(pruned, val_loader)
    # Compression is the deployable file's ratio: pruning half the channels shrinks it.
    assert rows[0].achieved > rows[1].achieved > 0


def test_a_failing_setting_is_recorded_and_the_batch_goes_on(tmp_path):
    spec = job(tmp_path, {"compression": 1.5})
    path = trained_baseline(spec, tmp_path / "baseline")
    unit = next(iter(_units(spec, path)))
    broken = {f"channel.ratio.{unit}": 0.25, "channel.importance": "no-such-criterion"}
    settings = [broken, {f"channel.ratio.{unit}": 0.25}]
    rows = screen_batch(spec, "cpu", str(path), 10**6, settings, 1, str(tmp_path / "s"))
    assert rows[0]["status"] == "failed" and rows[0]["error"]
    assert rows[1]["status"] == "ok" and rows[1]["accuracy"] is not None


def test_a_speedup_screening_measures_latency_and_leaves_no_files(tmp_path):
    spec = job(tmp_path, {"speedup": 1.5})
    path = trained_baseline(spec, tmp_path / "baseline")
    unit = next(iter(_units(spec, path)))
    work = tmp_path / "out" / "screening"
    rows = screen_batch(spec, "cpu", str(path), 1, [{f"channel.ratio.{unit}": 0.5}], 1, str(work))
    assert rows[0]["status"] == "ok" and rows[0]["achieved"] > 0
    assert not list(work.glob("screen-*"))  # scratch removed
    assert list((tmp_path / "out" / "measurements").glob("*.pairs.jsonl"))  # pooled pairs


def _units(spec, path):
    from learners.base import ModelInfo

    channel = build_learners(spec)[0]
    info = ModelInfo(load_baseline(spec, path), splits_for(spec).example_inputs())
    return channel.units(info)


def test_a_few_training_steps_move_the_screening_score_and_nothing_else(tmp_path):
    plain = job(tmp_path, {"compression": 1.5})
    trained = job(tmp_path, {"compression": 1.5}, train_steps=5)
    path = trained_baseline(plain, tmp_path / "baseline")
    unit = next(iter(_units(plain, path)))
    setting = [{f"channel.ratio.{unit}": 0.75}]
    a, b = (
        screen_batch(s, "cpu", str(path), 10**6, setting, 1, str(tmp_path / "s"))[0]
        for s in (plain, trained)
    )
    assert a["status"] == b["status"] == "ok"
    assert a["achieved"] == b["achieved"]  # same architecture, same file size
    assert a["accuracy"] != b["accuracy"]  # the five SGD steps changed the weights
