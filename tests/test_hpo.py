import math

import pytest

from hpo import Categorical, Integer, Optimizer, Real, loss, namespaced, shortfall, split_namespace
from hpo.objective import FAILED_LOSS


def branin(p):
    x, y = p["x"], p["y"]
    a, b, c, r, s, t = 1, 5.1 / (4 * math.pi**2), 5 / math.pi, 6, 10, 1 / (8 * math.pi)
    return a * (y - b * x**2 + c * x - r) ** 2 + s * (1 - t) * math.cos(x) + s


DIMS = [Real("x", -5.0, 10.0), Real("y", 0.0, 15.0)]
BRANIN_MIN = 0.397887


def run(opt, f, n):
    for _ in range(n):
        (p,) = opt.ask()
        opt.tell([p], [f(p)])
    return opt.best()


def test_gp_search_finds_branin_minimum_with_fixed_seed():
    best_params, best_value = run(Optimizer(DIMS, seed=0, n_initial_points=8), branin, 30)
    assert best_value < BRANIN_MIN + 0.5
    # the search beats random sampling of the same budget by a wide margin
    random_best = run(Optimizer(DIMS, seed=0, n_initial_points=1000), branin, 30)[1]
    assert best_value < random_best


def test_same_seed_same_proposals():
    a, b = Optimizer(DIMS, seed=7), Optimizer(DIMS, seed=7)
    assert a.ask(3) == b.ask(3)


def test_values_are_plain_python_types():
    opt = Optimizer([Real("r", 0, 1), Integer("i", 1, 4), Categorical("c", ("l1", "l2"))], seed=1)
    (p,) = opt.ask()
    assert type(p["r"]) is float and type(p["i"]) is int and type(p["c"]) is str


def test_batch_ask_gives_distinct_points():
    opt = Optimizer(DIMS, seed=0, n_initial_points=2)
    run(opt, branin, 4)
    batch = opt.ask(4)
    assert len(batch) == 4 and len({(p["x"], p["y"]) for p in batch}) == 4


def test_rebuilt_from_history_continues_the_search():
    original = Optimizer(DIMS, seed=3, n_initial_points=4)
    run(original, branin, 10)
    rebuilt = Optimizer.from_history(DIMS, original.history, seed=3, n_initial_points=4)
    assert rebuilt.history == original.history
    assert rebuilt.best() == original.best()
    # it is past its random phase: proposals come from the fitted surrogate, not a replay
    nxt = rebuilt.ask()[0]
    assert (nxt, branin(nxt)) not in original.history
    run(rebuilt, branin, 10)
    assert rebuilt.best()[1] <= original.best()[1]


def test_rebuilt_early_does_not_repeat_initial_points():
    original = Optimizer(DIMS, seed=5, n_initial_points=6)
    run(original, branin, 2)
    rebuilt = Optimizer.from_history(DIMS, original.history, seed=5, n_initial_points=6)
    assert rebuilt.ask()[0] == original.ask()[0]


def test_an_empty_space_proposes_the_one_empty_point():
    opt = Optimizer([])  # a learner with nothing to tune (e.g. half without choices)
    assert opt.ask(2) == [{}, {}]
    opt.tell([{}], [0.3])
    assert opt.best() == ({}, 0.3)
    assert Optimizer.from_history([], opt.history).best() == ({}, 0.3)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="unique"):
        Optimizer([Real("x", 0, 1), Real("x", 0, 2)])
    with pytest.raises(ValueError, match="losses"):
        Optimizer(DIMS).tell([{"x": 0.0, "y": 0.0}], [])


def test_objective_grades_shortfall_continuously_and_failures_worst():
    assert loss(0.9, 2.5, 2.0) < loss(0.5, 2.1, 2.0)  # among feasible: accuracy decides
    assert loss(0.99, 1.9, 2.0) < loss(0.99, 1.1, 2.0)  # among infeasible: shortfall
    # continuous at the boundary (a GP models that), and steep below it
    assert abs(loss(0.9, 1.9999, 2.0) - loss(0.9, 2.0, 2.0)) < 1e-3
    assert loss(0.99, 1.9, 2.0) > loss(0.8, 2.0, 2.0)
    worst_feasible_or_not = max(loss(0.0, 2.0, 2.0), loss(1.0, 0.0, 2.0))
    assert loss(None, None, 2.0) == FAILED_LOSS > worst_feasible_or_not
    assert shortfall(2.0, 2.0) == 0.0 and shortfall(1.0, 2.0) == 0.5


def test_namespacing_round_trip():
    dims = namespaced("channel", [Real("ratio.layer1", 0, 0.8)])
    assert dims[0].name == "channel.ratio.layer1"
    params = {"channel.ratio.layer1": 0.3, "uniform.bits": 8}
    assert split_namespace(params, "channel") == {"ratio.layer1": 0.3}


def test_suggested_points_come_first_and_are_learned_from():
    opt = Optimizer(DIMS, seed=0, n_initial_points=3)
    opt.suggest({"x": 3.14, "y": 2.27})
    first, second = opt.ask(2)
    assert first == {"x": 3.14, "y": 2.27} and second != first
    with pytest.raises(ValueError, match="lacks"):
        opt.suggest({"x": 1.0})
