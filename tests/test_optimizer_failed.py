"""A setting that failed is not proposed again (it would fail again)."""

from hpo.objective import FAILED_LOSS
from hpo.optimizer import Optimizer
from hpo.space import Categorical


def _asks(opt: Optimizer, rounds: int, batch: bool) -> list[dict]:
    seen = []
    for _ in range(rounds):
        params = opt.ask_many(3) if batch else opt.ask()
        opt.tell(params, [0.5] * len(params))
        seen += params
    return seen


def test_a_failed_setting_is_never_proposed_again():
    dims = [
        Categorical("calibration", ("minmax", "percentile", "entropy")),
        Categorical("keep", (False, True)),
    ]
    for batch in (False, True):
        opt = Optimizer(dims, seed=0, n_initial_points=10)
        bad = {"calibration": "percentile", "keep": False}
        opt.tell([bad], [FAILED_LOSS])
        assert bad not in _asks(opt, 8, batch)
    # Control: without the failure on record, random draws do propose it.
    control = Optimizer(dims, seed=0, n_initial_points=10)
    assert bad in _asks(control, 8, False) + _asks(control, 8, True)


def test_a_space_with_nothing_else_left_still_proposes():
    opt = Optimizer([Categorical("mode", ("static",))], seed=0)
    opt.tell([{"mode": "static"}], [FAILED_LOSS])
    assert opt.ask() == [{"mode": "static"}]
