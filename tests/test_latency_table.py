"""The per-unit latency table: its arithmetic on hand-made timings, and a real (tiny) build.

No assert here compares a prediction with a measured latency (that is a timing claim:
benchmarks/latency_table.py makes it)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest

from learners.base import ModelInfo
from learners.channel import ChannelPruning
from learners.channel.latency_table import (
    RULES,
    LatencyTable,
    UnitTimings,
    build_table,
    default_ratios,
    non_increasing,
)
from pipeline.job.probe import time_models
from pipeline.measure import LatencySettings
from tests.helpers import example_inputs, tiny_cnn

TIMING = LatencySettings("torch-cpu", batch_size=2, threads=1, warmup=1, repeats=2)
FAST = asdict(TIMING)


def hand_made(rule: str = "calibrated", uniform_power: float = 2.0) -> LatencyTable:
    """Two units with made-up timings (baseline 10 ms); unit ``b`` is noisy (slower at
    0.5 than at 0.25). The uniform settings measure the product of the parts raised to
    ``uniform_power``."""
    units = {
        "a": UnitTimings((0.25, 0.5), (9.0, 8.0), 10.0),
        "b": UnitTimings((0.25, 0.5), (9.0, 9.5), 10.0),
    }
    table = LatencyTable(10.0, units, FAST, rule=rule)
    products = [table.relative("a", r) * table.relative("b", r) for r in units["a"].ratios]
    uniform = UnitTimings((0.25, 0.5), tuple(10.0 * p**uniform_power for p in products), 10.0)
    return LatencyTable(10.0, units, FAST, uniform=uniform, rule=rule)


@pytest.fixture(scope="module")
def tiny():
    learner = ChannelPruning(importances=("l1", "l2"))
    info = ModelInfo(tiny_cnn().eval(), example_inputs())
    return learner, info


@pytest.fixture(scope="module")
def tiny_table(tiny, tmp_path_factory):
    learner, info = tiny
    timed = time_models(info, TIMING, tmp_path_factory.mktemp("table"))
    return build_table(learner, info, timed, FAST, (0.25, 0.5))


def test_default_ratios_spread_over_the_learners_range():
    assert default_ratios(0.0, 0.8) == [0.2, 0.4, 0.6, 0.8]
    assert default_ratios(0.2, 0.8) == [0.2, 0.4, 0.6, 0.8]
    assert default_ratios(0.0, 0.5, 2) == [0.25, 0.5]


def test_non_increasing_pools_violators():
    assert non_increasing([1.0, 0.9, 0.95, 0.7]) == pytest.approx([1.0, 0.925, 0.925, 0.7])
    assert non_increasing([0.9, 0.8]) == [0.9, 0.8]


@pytest.mark.parametrize("rule", RULES)
def test_the_baseline_setting_predicts_the_baseline(rule):
    table = hand_made(rule)
    for params in ({}, {"ratio.a": 0.0, "ratio.b": 0.0}, {"importance": "l2"}):
        assert table.predict_ms(params) == pytest.approx(10.0)
        assert table.predict_speedup(params) == pytest.approx(1.0)


def test_unit_latency_is_interpolated_linearly_and_flat_past_the_last_ratio():
    table = hand_made()
    assert table.relative("a", 0.125) == pytest.approx(0.95)
    assert table.relative("a", 0.375) == pytest.approx(0.85)
    assert table.relative("a", 0.9) == pytest.approx(0.8)
    # b measured 0.9 then 0.95: fitted to 0.925 at both, never rising with the ratio
    assert table.relative("b", 0.25) == table.relative("b", 0.5) == pytest.approx(0.925)


def test_combination_rules():
    params = {"ratio.a": 0.5, "ratio.b": 0.25}
    parts = 0.8 * 0.925
    assert hand_made("multiplicative").predict_ms(params) == pytest.approx(10 * parts)
    assert hand_made("additive").predict_ms(params) == pytest.approx(10 * (1 - 0.2 - 0.075))
    # calibrated: the exponent that maps products onto the uniform settings' timings
    assert hand_made("calibrated", 2.0).exponent == pytest.approx(2.0)
    assert hand_made("calibrated", 2.0).predict_ms(params) == pytest.approx(10 * parts**2)
    assert hand_made("calibrated", 1.5).predict_speedup(params) == pytest.approx(parts**-1.5)
    # a noisy uniform batch (measured slower than the baseline) cannot invert the table
    assert hand_made("calibrated", -1.0).exponent == 0.5


@pytest.mark.parametrize("rule", RULES)
def test_prediction_never_rises_with_a_ratio(rule):
    table = hand_made(rule)
    grid = [i / 20 for i in range(20)]
    for unit in ("a", "b"):
        other = "b" if unit == "a" else "a"
        predicted = [table.predict_ms({f"ratio.{unit}": r, f"ratio.{other}": 0.3}) for r in grid]
        assert all(x >= y for x, y in zip(predicted, predicted[1:], strict=False))
    assert table.predict_ms({"ratio.a": 0.5}) < table.predict_ms({})


def test_a_table_that_can_slow_down_keeps_its_points_as_measured():
    """On onnxruntime a pruned unit can run slower than the baseline (odd widths): that
    table must predict it, where the torch-cpu table's fit hides it."""
    units = {"a": UnitTimings((0.25, 0.5, 0.75), (13.0, 7.0, 8.0), 10.0)}
    fitted = LatencyTable(10.0, units, FAST)
    kept = LatencyTable(10.0, units, FAST, can_slow_down=True)
    assert [fitted.relative("a", r) for r in (0.25, 0.5, 0.75)] == pytest.approx([1.0, 0.75, 0.75])
    assert [kept.relative("a", r) for r in (0.25, 0.5, 0.75)] == pytest.approx([1.3, 0.7, 0.8])
    assert kept.predict_speedup({"ratio.a": 0.25}) == pytest.approx(1 / 1.3)
    assert LatencyTable.from_dict(json.loads(json.dumps(kept.to_dict()))).can_slow_down
    assert not LatencyTable.from_dict(fitted.to_dict()).can_slow_down


def test_unknown_units_and_foreign_parameters_are_errors():
    table = hand_made()
    with pytest.raises(ValueError, match=r"'ratio\.c'.*units: a, b"):
        table.predict_ms({"ratio.c": 0.5})
    # a chain's namespaced parameter would otherwise predict 1x in silence
    with pytest.raises(ValueError, match="channel.ratio.a"):
        table.predict_speedup({"channel.ratio.a": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        table.predict_ms({"ratio.a": 1.5})


def test_invalid_tables_are_refused():
    with pytest.raises(ValueError, match="rule"):
        LatencyTable(10.0, hand_made().units, FAST, rule="magic")
    with pytest.raises(ValueError, match="increasing"):
        UnitTimings((0.5, 0.25), (8.0, 9.0), 10.0)


def test_a_built_table_covers_every_unit_of_the_learner(tiny, tiny_table):
    learner, info = tiny
    assert list(tiny_table.units) == learner.units(info)
    assert all(t.ratios == (0.25, 0.5) and len(t.ms) == 2 for t in tiny_table.units.values())
    assert tiny_table.uniform is not None and len(tiny_table.uniform.ms) == 2
    assert tiny_table.baseline_ms > 0 and tiny_table.build_seconds > 0
    assert tiny_table.settings == FAST
    assert tiny_table.learner_config == learner.config.to_dict()
    assert math.isfinite(tiny_table.exponent)


def test_a_built_table_predicts_the_baseline_for_the_unpruned_setting(tiny, tiny_table):
    learner, info = tiny
    unpruned = learner.uniform_params(info, 0.0)  # every unit at 0, and an importance
    assert "importance" in unpruned
    assert tiny_table.predict_ms(unpruned) == pytest.approx(tiny_table.baseline_ms)


def test_a_built_tables_prediction_never_rises_with_a_ratio(tiny, tiny_table):
    learner, info = tiny
    for ratio in (0.1, 0.3, 0.5):
        here = tiny_table.predict_ms(learner.uniform_params(info, ratio))
        more = tiny_table.predict_ms(learner.uniform_params(info, ratio + 0.2))
        assert more <= here <= tiny_table.baseline_ms


def test_round_trip_through_json(tiny_table):
    data = json.loads(json.dumps(tiny_table.to_dict()))
    again = LatencyTable.from_dict(data)
    assert again.to_dict() == data
    assert again.units == tiny_table.units and again.uniform == tiny_table.uniform
    params = {f"ratio.{u}": 0.4 for u in tiny_table.units}
    assert again.predict_ms(params) == tiny_table.predict_ms(params)


def test_table_ratios_outside_zero_to_one_are_refused(tiny, tmp_path):
    learner, info = tiny
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        build_table(learner, info, time_models(info, TIMING, tmp_path), FAST, (0.0, 0.5))
