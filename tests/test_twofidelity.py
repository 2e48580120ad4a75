"""The two-fidelity loop with fake screenings and fake full evaluations: budgets, the
rule's start, promotion by screening score, the latency table's skips, a front of
targets, resume without repeating, and the summary's rank correlation."""

import math
import sys

import pytest

from hpo.space import Categorical, Real
from pipeline.job.search import state_for
from pipeline.job.twofidelity import TwoFidelity, distance, screening_budget, spearman
from pipeline.records.results import CandidateResult, ScreeningResult
from pipeline.spec import parse

DIMS = [Real("x", 0.0, 1.0), Real("y", 0.0, 1.0)]


def job(target=2.0, **budget):
    return parse({"target": {"speedup": target}, "budget": {"patience": 50, **budget}})


def speed(p):
    return 1 + 3 * p["x"]  # x buys speed


def true_accuracy(p):
    """Fine-tuned accuracy: x costs accuracy; y is a second knob that costs a little."""
    return 0.95 - 0.2 * p["x"] ** 2 - 0.1 * p["y"]


def fake_screen(calls):
    def screen(settings, first):
        calls.append(len(settings))
        rows = []
        for i, p in enumerate(settings):
            # before fine-tuning: lower, same order (a monotone map of the true accuracy)
            acc = true_accuracy(p) - 0.3
            rows.append(ScreeningResult(first + i, p, accuracy=acc, achieved=speed(p)).to_dict())
        return rows

    return screen


def fake_evaluate(calls):
    def evaluate(proposals, first):
        calls.append(list(proposals))
        out = []
        for i, p in enumerate(proposals):
            r = CandidateResult(round=first + i, params=p, learners=["fake"])
            r.accuracy, r.speedup, r.compression = true_accuracy(p), speed(p), 1.0
            r.speedups = {"torch-cpu": r.speedup}
            r.speedup_intervals = {"torch-cpu": [r.speedup * 0.98, r.speedup * 1.02]}
            out.append(r.to_dict())
        return out

    return evaluate


def search(spec, start=None, predict=None, screenings=None, state=None, veto=None):
    screens, fulls, recorded = [], [], []
    state = state or state_for(spec, 0.95, 10)
    tf = TwoFidelity(
        spec=spec,
        state=state,
        dims=DIMS,
        baseline_accuracy=0.95,
        screen=fake_screen(screens),
        evaluate=fake_evaluate(fulls),
        on_screen=recorded.extend,
        on_result=lambda r, feasible: None,
        predict=predict,
        veto=veto,
        starts=[start] if start else [],
        screenings=screenings or [],
        log=lambda line: None,
    )
    reason = tf.run()
    return tf, reason, screens, fulls, recorded


def test_budgets_screenings_and_full_evaluations():
    spec = job(rounds=4, screen=40)
    tf, reason, screens, fulls, recorded = search(spec)
    assert "round budget" in reason
    assert len(tf.state.results) == 4 and sum(len(b) for b in fulls) == 4
    assert tf.built == sum(screens) == 40 and len(recorded) == 40
    assert [r.index for r in tf.screenings] == list(range(1, 41))
    # every optimiser was told every screening and every full evaluation but the last,
    # which rides with the next chunk of screenings (one GP fit per chunk)
    assert all(len(opt.history) == 43 for opt in tf.optimizers.values())


def test_promotes_the_best_screening_that_meets_the_target():
    tf, *_ = search(job(rounds=3, screen=30))  # 10 screenings, then one promotion, x3
    for r in tf.state.results:
        row = next(s for s in tf.screenings if s.promoted_round == r.round)
        assert r.screening_score == row.accuracy and r.source == "search"
        assert row.achieved >= 2.0
        earlier = [x.params for x in tf.state.results if x.round < r.round]
        rivals = [
            s
            for s in tf.screenings[: 10 * r.round]  # what had been screened by then
            if s is not row
            and (s.promoted_round is None or s.promoted_round > r.round)
            and s.achieved >= 2.0 * 1.03
            and all(distance(s.params, p, DIMS) >= 0.05 for p in earlier)
        ]
        assert all(s.accuracy <= row.accuracy for s in rivals)


def test_the_fixed_rule_is_screened_and_fully_evaluated_first():
    rule = {"x": 0.5, "y": 0.5}
    tf, *_ = search(job(rounds=3, screen=30), start=rule)
    assert tf.screenings[0].params == rule
    first = tf.state.results[0]
    assert first.params == rule and first.source == "rule" and first.round == 1
    assert all(r.source == "search" for r in tf.state.results[1:])


def test_settings_predicted_far_below_the_target_are_not_built():
    tf, _, screens, *_ = search(job(rounds=2, screen=30), predict=speed)
    skipped = [r for r in tf.screenings if r.status == "skipped"]
    assert skipped and all(r.predicted < 0.8 * 2.0 and "predicted" in r.error for r in skipped)
    assert tf.built == sum(screens) == 30  # skipped ones are not built nor counted
    assert all(r.predicted is not None for r in tf.screenings)


def test_a_rule_start_predicted_short_is_still_built_and_evaluated(monkeypatch):
    """Every setting predicted far below the target (int8 on a tiny graph): the others are
    skipped, but the rule start is screened and fully evaluated, so the job ends with a
    measured candidate on record instead of none."""
    rule = {"x": 0.5, "y": 0.5}
    tf, _, screens, fulls, _ = search(job(rounds=2, screen=10), start=rule, predict=lambda p: 0.5)
    assert tf.screenings[0].params == rule and tf.screenings[0].status != "skipped"
    assert all(r.status == "skipped" for r in tf.screenings[1:])
    assert tf.state.results and tf.state.results[0].params == rule
    assert tf.state.results[0].source == "rule"
    # int8's space is a few categories: the GP proposes the rule again and again, and it
    # is built once (it was screened 60 times in one job).
    two = [Categorical("x", (0.0, 1.0)), Categorical("y", (0.0, 1.0))]
    monkeypatch.setattr(sys.modules[__name__], "DIMS", two)
    rule = {"x": 0.0, "y": 0.0}
    tf, *_ = search(job(rounds=2, screen=30), start=rule, predict=lambda p: 0.5)
    built = [r for r in tf.screenings if r.status != "skipped"]
    assert [r.params for r in built] == [rule] and len(tf.screenings) > 10


def slow_on_onnx(p):
    """A fake veto: settings with y above 0.6 predicted far slower on onnxruntime."""
    if p["y"] <= 0.6:
        return None
    return "predicted 0.62x on onnxruntime-cpu, where the ONNX file ships; below 0.80x"


def test_settings_the_veto_names_are_skipped_and_told_as_infeasible():
    tf, _, screens, *_ = search(job(rounds=2, screen=30), predict=speed, veto=slow_on_onnx)
    vetoed = [r for r in tf.screenings if r.vetoed]
    assert vetoed and all(r.status == "skipped" and r.params["y"] > 0.6 for r in vetoed)
    assert all(r.error == slow_on_onnx(r.params) for r in vetoed)
    built = [r for r in tf.screenings if r.status != "skipped"]
    assert all(r.params["y"] <= 0.6 for r in built) and tf.built == sum(screens) == 30
    assert all(r.params["y"] <= 0.6 for r in tf.state.results)
    # told as reaching nothing at the baseline's accuracy: no better than any predicted
    # shortfall, nor than any measured candidate short of the target
    short = [r for r in tf.screenings if r.status == "skipped" and not r.vetoed]
    for t in tf.optimizers:
        worst = max(tf._screen_loss(r, t) for r in [*short, *built])
        assert all(tf._screen_loss(r, t) == pytest.approx(0.05 + 5.0) for r in vetoed)
        assert all(tf._screen_loss(r, t) >= worst for r in vetoed)
        # resumed from its record, it is told the same
        again = ScreeningResult.from_dict(vetoed[0].to_dict())
        assert tf._screen_loss(again, t) == tf._screen_loss(vetoed[0], t)


def test_a_vetoed_rule_start_is_still_built_once():
    rule = {"x": 0.5, "y": 0.9}
    tf, *_ = search(job(rounds=2, screen=10), start=rule, veto=slow_on_onnx)
    first = tf.screenings[0]
    assert first.params == rule and first.status == "ok" and not first.vetoed
    assert tf.state.results[0].params == rule and tf.state.results[0].source == "rule"
    again = [r for r in tf.screenings[1:] if r.params == rule]
    assert all(r.vetoed for r in again)  # proposed again, it is skipped as any other


def test_a_front_gets_a_winner_per_target():
    front = {"speedup": [1.5, 2.5, 3.5], "max_accuracy_drop": 30}  # 3.5x costs ~15 points
    spec = parse({"target": front, "budget": {"rounds": 6, "screen": 60}})
    tf, *_ = search(spec)
    assert set(tf.optimizers) == {1.5, 2.5, 3.5}
    for t in (1.5, 2.5, 3.5):
        best = tf.state.best_feasible(t)
        assert best is not None and best.speedup * 0.98 >= t


def test_resume_does_not_repeat_recorded_work():
    spec = job(rounds=4, screen=40)
    first, *_ = search(job(rounds=2, screen=20))
    recorded = [ScreeningResult.from_dict(r.to_dict()) for r in first.screenings]
    for row in recorded:  # as recorded: before promotion
        row.promoted_round = None
    state = state_for(spec, 0.95, 10)
    state.add([CandidateResult.from_dict(r.to_dict()) for r in first.state.results])
    tf, _, screens, fulls, _ = search(spec, screenings=recorded, state=state)
    assert sum(screens) == 20 and sum(len(b) for b in fulls) == 2
    assert [r.index for r in tf.screenings] == list(range(1, 41))
    promoted_again = {r.round for r in tf.state.results}
    assert promoted_again == {1, 2, 3, 4}
    # the two recorded promotions are found again, not promoted twice
    assert sum(r.promoted_round in (1, 2) for r in tf.screenings) == 2


def test_summary_reports_spearman_over_promoted_candidates():
    tf, *_ = search(job(rounds=5, screen=40))
    summary = tf.summary()
    assert summary["evaluated"] == 40 and summary["promoted"] == 5
    # the fake's screening score is the fine-tuned accuracy minus 0.3: same ranks
    assert summary["spearman"] == pytest.approx(1.0)
    assert summary["fine_tune_gap"] == pytest.approx(0.3)


def test_spearman_matches_a_hand_computed_value():
    assert spearman([1, 2, 3], [1, 2, 3]) is None  # fewer than 4 pairs
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x: 1,2,3,4,5 ; y: 2,1,4,3,5 -> d^2 = 1+1+1+1+0 = 4; 1 - 6*4/(5*24) = 0.8
    assert spearman([10, 20, 30, 40, 50], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # ties get average ranks
    assert math.isfinite(spearman([1, 1, 2, 3], [1, 2, 2, 3]))


def test_default_screening_budget_is_fifteen_per_round():
    assert screening_budget(job(rounds=8)) == 120
    assert screening_budget(job(rounds=8, screen=0)) == 0


def test_ask_many_spreads_one_gp_fit_over_a_batch():
    from hpo.optimizer import Optimizer

    opt = Optimizer(DIMS, seed=0, n_initial_points=5, acq_optimizer="sampling")
    opt.suggest({"x": 0.5, "y": 0.5})
    first = opt.ask_many(5)
    assert first[0] == {"x": 0.5, "y": 0.5} and len(first) == 5  # the suggestion first
    opt.tell(first, [(p["x"] - 0.3) ** 2 for p in first])
    batch = opt.ask_many(12)
    assert len(batch) == 12 and all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in batch)
    pairs = [(a, b) for i, a in enumerate(batch) for b in batch[i + 1 :]]
    assert all(distance(a, b, DIMS) >= 0.05 for a, b in pairs)  # spread, not one point 12x


def test_when_no_screening_meets_the_target_the_closest_are_still_fine_tuned():
    tf, reason, _, fulls, _ = search(job(target=9.0, rounds=3, screen=30))  # speed <= 4
    assert "round budget" in reason and sum(len(b) for b in fulls) == 3
    assert tf.state.best_feasible() is None and tf.state.best() is not None
