"""The search-quality benchmark's pure helpers on fake results: the paired McNemar test,
the resumable results file and the summary table (no model is built)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from pipeline.spec import parse

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "search_quality", ROOT / "benchmarks/search_quality.py"
)
sq = sys.modules["search_quality"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sq)
append_row, key_of, mcnemar, read_rows, summarize = (
    sq.append_row, sq.key_of, sq.mcnemar, sq.read_rows, sq.summarize
)  # fmt: skip


def test_mcnemar_counts_discordant_pairs_and_gives_the_exact_binomial_p():
    # reference right / other wrong on 2 images, the reverse on 8
    reference = "1100000000" + "1111"
    other = "0011111111" + "1111"
    b, c, p = mcnemar(reference, other)
    assert (b, c) == (2, 8)
    exact = 2 * sum(math.comb(10, k) for k in range(3)) / 2**10  # P(X <= 2), X ~ B(10, 1/2)
    assert p == pytest.approx(exact) == pytest.approx(0.109375)


def test_mcnemar_is_one_without_discordant_pairs_and_refuses_other_test_sets():
    assert mcnemar("1010", "1010") == (0, 0, 1.0)
    assert mcnemar("10", "01")[2] == 1.0  # one each way: no evidence
    with pytest.raises(ValueError, match="different test sets"):
        mcnemar("101", "10")


def test_results_file_is_appended_and_read_back(tmp_path):
    path = tmp_path / "r.jsonl"
    assert read_rows(path) == []
    row = {"model": "m", "target": 3, "seed": 0, "method": "rule", "status": "ok"}
    append_row(path, row)
    append_row(path, {**row, "method": "gp"})
    rows = read_rows(path)
    assert [key_of(r) for r in rows] == [("m", 3.0, 0, "rule"), ("m", 3.0, 0, "gp")]
    assert json.loads(path.read_text().splitlines()[0]) == row


def _row(method: str, seed: int, correct: str, speedup: float = 3.2) -> dict:
    return {
        "model": "tiny", "target": 3.0, "seed": seed, "method": method, "status": "ok",
        "correct": correct, "test_accuracy": correct.count("1") / len(correct),
        "speedup": speedup, "seconds": 60.0, "evaluations": 1,
    }  # fmt: skip


def test_summary_reports_means_spread_mcnemar_and_the_verdict():
    n = 100
    rows = [
        _row("rule", 0, "1" * 80 + "0" * 20),
        _row("rule", 1, "1" * 82 + "0" * 18),
        # two-fidelity: 10 more images right on each seed, all where the rule was wrong
        _row("two_fidelity", 0, "1" * 90 + "0" * 10),
        _row("two_fidelity", 1, "1" * 92 + "0" * 8, speedup=2.9),
        _row("random", 0, "1" * 81 + "0" * 19),
        _row("random", 1, "1" * 83 + "0" * 17),
        _row("global", 0, "1" * 70 + "0" * 30),
        _row("global", 1, "1" * 72 + "0" * 28),
        {"model": "tiny", "target": 3.0, "seed": 2, "method": "gp", "status": "failed"},
    ]
    text = summarize(rows)
    assert f"{n} images, one image = 1.00 points" in text
    line = next(x for x in text.splitlines() if x.startswith("| two_fidelity"))
    assert "91.00 [90.00-92.00]" in line  # mean [min-max] in percent
    assert "+10.00" in line  # against the rule's mean 81
    assert "1/2 / 2/2" in line  # one seed re-measured below 3x, none by its own figure
    assert "s0: 0.002 (10+/0-)" in line  # McNemar: 10 discordant pairs, all one way
    assert "| yes |" in line  # 10 points against a 2-point seed spread
    assert "| gp " not in text  # failed rows are left out
    assert "- seed 1: rule 82.00, global 72.00, random 83.00, two_fidelity 92.00" in text
    verdict = text.splitlines()[-1]
    assert "goal REACHED" in verdict and "best rule (random)" in verdict
    assert "+9.00 points" in verdict  # 91 against random's 82, over seeds 0 and 1
    # global lost 10 images on each seed, all where the rule was right
    assert "worse than the rule by McNemar: global seed 0 (p=0.002)" in verdict
    assert "two_fidelity seed" not in verdict


def test_summary_flags_a_method_worse_than_the_rule():
    rows = [
        _row("rule", 0, "1" * 90 + "0" * 10),
        _row("two_fidelity", 0, "1" * 70 + "0" * 30),
        _row("global", 0, "1" * 90 + "0" * 10),
    ]
    text = summarize(rows)
    verdict = text.splitlines()[-1]
    assert "goal not reached" in verdict
    # one seed has no spread to compare with: never "beyond" it
    assert "n/a (one seed)" in next(x for x in text.splitlines() if x.startswith("| two_f"))
    assert "two_fidelity seed 0" in verdict


@pytest.mark.parametrize("model", ["resnet56", "mobilenet_v2", "shufflenet_v2"])
def test_the_shared_job_is_a_valid_spec_at_32_px(model):
    args = argparse.Namespace(epochs=3, pretrain_epochs=15, max_ratio=["4:0.9"])
    spec = parse(sq.raw_spec(model, 4.0, 2, args))
    assert spec.data.image_size == 32 and spec.target.value == 4.0 and spec.seed == 2
    assert spec.finetune.epochs == 3 and spec.measure.threads == 1
    assert spec.learner_options["channel"]["max_ratio"] == 0.9  # 4x: past the default 0.8
    assert sq.raw_spec(model, 3.0, 2, args)["learner_options"]["channel"]["max_ratio"] == 0.8


def test_a_finished_job_is_reused_only_with_the_same_text_and_a_newer_summary(tmp_path):
    import os

    job, summary = tmp_path / "job.yaml", tmp_path / "summary.json"
    assert not sq.finished_before(job, summary, "a")
    job.write_text("a")
    summary.write_text("{}")
    os.utime(job, (1000, 1000))
    assert sq.finished_before(job, summary, "a")
    assert not sq.finished_before(job, summary, "b")  # other settings: run again
    os.utime(summary, (10, 10))
    assert not sq.finished_before(job, summary, "a")  # summary of an earlier run
