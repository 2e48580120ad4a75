"""Models nobody here wrote, through the real flow (issue 9, item 10).

Each model of ``tests.foreign_models.MODELS`` (Hugging Face ResNet, MobileNetV2,
EfficientNet, ConvNeXt and BERT built from configs, a Conv1d + BatchNorm1d signal
classifier, and our own models with BatchNorm momentum 0.001, squeeze-excitation +
hardswish + stochastic depth + an output object, and a view/transpose/flatten channel
shuffle) runs as a user's job would: ``compressflow run`` in-process under the session's
temporary Prefect API, with ``channel`` (speedup on torch-cpu), ``int8`` (speedup on
onnxruntime-cpu) and ``sparsity,nonuniform`` (file compression). For each job:

- it finishes: exit 0 (met) or 3 (not met) and a summary;
- the baseline accuracy it reports equals, within one validation image, the accuracy
  recomputed here from the saved baseline file after re-estimating its BatchNorm
  statistics afresh (a measurement with stale statistics is caught: see the negative
  control below);
- the verdict is honest: recounted from the summary's own candidate rows, "met" exactly
  when some round reached the target within ``max_accuracy_drop`` (5 points) of the
  baseline and above chance, and the winner then satisfies all three.

Plus the non-float input path on its own: the latency batch for token ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpo.objective import at_chance
from pipeline import measure
from pipeline.cli.main import main
from tests.foreign_models import (
    CHAINS,
    MODELS,
    baseline_check,
    job_splits,
    saved_baseline,
    token_data,
)

MAX_DROP = 0.05  # the default max_accuracy_drop (5 points), which these jobs keep
# Images by which the reported baseline may differ from this file's own re-estimation:
# the job averages per-batch statistics over shuffled batches, this file over batches in
# order, and per-batch variances depend on the batches. hf_mobilenet_v2 (50% accuracy,
# 97 images, transformers 5.24) differed by 2 images, already at the session-start
# commit. Stale statistics (the negative control below) are off by more than 10.
SAME_STATISTICS = 2

MATRIX = [(model, chain) for model in MODELS for chain in CHAINS]


def run_job(tmp_path: Path, model: str, chain: str) -> tuple[int, dict]:
    flags = [
        "run", *MODELS[model].flags(tmp_path), *CHAINS[chain],
        "--rounds", "2", "--screen", "6", "--epochs", "1",
        "--measure-batch", "8", "--repeats", "3", "--no-register",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--output", str(tmp_path / "out"),
        "--summary-json", str(tmp_path / "summary.json"),
    ]  # fmt: skip
    code = main(flags)
    path = tmp_path / "summary.json"
    assert path.exists(), f"{model} with {chain}: exit {code} and no summary"
    return code, json.loads(path.read_text())


def meets(row: dict, summary: dict, chance: float) -> bool:
    """Whether a round (a summary candidate row, or the winner) counts as meeting the
    target, judged here from its recorded figures: the low end of its speedup interval
    (README: the feasibility rule), or its exact compression."""
    kind, value = summary["target"]["kind"], summary["target"]["value"]
    achieved = row.get(f"achieved_{kind}_low", row.get(f"achieved_{kind}"))
    accuracy = row.get("accuracy")
    return (
        row.get("status", "ok") == "ok"
        and achieved is not None
        and accuracy is not None
        and achieved >= value
        and accuracy >= summary["baseline"]["accuracy"] - MAX_DROP - 1e-9
        and not at_chance(accuracy, chance)
    )


def assert_honest(code: int, summary: dict, chance: float) -> None:
    assert code == (0 if summary["target_met"] else 3), (code, summary["target_met"])
    recounted = any(meets(row, summary, chance) for row in summary["candidates"])
    # A speedup winner is declared only once its re-measurement confirms it.
    confirmed = summary["target"]["kind"] != "speedup" or any(
        c.get("met") for c in summary.get("confirmation", [])
    )
    assert summary["target_met"] == (recounted and confirmed), summary["candidates"]
    if summary["target_met"]:
        assert meets(summary["best"], summary, chance), summary["best"]
        assert summary["best"]["test_accuracy"] > chance  # not at chance on unseen data


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("model, chain", MATRIX, ids=[f"{m}-{c}" for m, c in MATRIX])
def test_a_foreign_model_is_compressed_and_reported_right(tmp_path, model, chain):
    code, summary = run_job(tmp_path, model, chain)
    assert code in (0, 3)
    reported, recomputed, n = baseline_check(summary)
    assert abs(reported - recomputed) <= SAME_STATISTICS / n + 1e-9, (reported, recomputed, n)
    chance = 1 / job_splits(summary).num_classes
    assert not at_chance(reported, chance)  # the job refuses an untrained baseline
    assert_honest(code, summary, chance)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_stale_batchnorm_statistics_would_be_caught(tmp_path):
    """Negative control for the accuracy check: the low-momentum model's saved baseline,
    scored with the statistics its BatchNorms (momentum 0.001) had after training (near
    their initial values; here reset to them), is far from the reported accuracy, while
    the fresh re-estimation matches it."""
    code, summary = run_job(tmp_path, "low_momentum_cnn", "int8")
    assert code in (0, 3)
    reported, recomputed, n = baseline_check(summary)
    assert abs(reported - recomputed) <= SAME_STATISTICS / n + 1e-9
    splits = job_splits(summary)
    model = saved_baseline(summary)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
    right = sum(int((model(x[None]).argmax(1) == y).sum()) for x, y in splits.val)
    stale = right / len(splits.val)
    assert abs(stale - reported) > 10 / n, (stale, reported)


def test_token_ids_are_timed_on_token_ids():
    """The latency batch follows a non-float example: ids from the example's own rows (a
    random float batch fails in an embedding, random ids may lie past the vocabulary)."""
    train, _, _ = token_data(n=20)
    example = train.tensors[0][:1]
    batch = measure.timing_batch(example, 5)
    assert batch.dtype == torch.int64 and batch.shape == (5, example.shape[1])
    assert torch.equal(batch, example.repeat(5, 1))
    floats = measure.timing_batch(torch.zeros(1, 1, 8, 8), 4)
    assert floats.dtype == torch.float32 and floats.shape == (4, 1, 8, 8)
    assert floats.std() > 0.5  # random values, as before, for float inputs


def test_int8_calibrates_and_runs_on_token_ids():
    """int8 on a text model: calibration batches and the int8 graph's input stay int64
    token ids (both were cast to float, which onnxruntime refused: int64 expected), and
    the int8 model agrees with the float one."""
    from learners.formats.onnx_module import OnnxModule
    from learners.int8 import quantize_int8
    from pipeline.sources.models import with_logits_output
    from tests.foreign_models import tiny_bert

    train, val, _ = token_data(n=200)
    ids = val.tensors[0]
    model = with_logits_output(tiny_bert(), ids[:1], "auto")
    data, _ = quantize_int8(model, ids[:1], [train.tensors[0][:64], train.tensors[0][64:128]])
    int8 = OnnxModule(data)
    with torch.no_grad():
        want, got = model(ids), int8(ids)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert (got - want).abs().max() < 0.1 * want.abs().max() + 1e-3
