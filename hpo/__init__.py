"""Search spaces and the scikit-optimize-backed optimiser (ask/tell), resumable from history."""

from hpo.objective import loss, shortfall
from hpo.optimizer import Optimizer
from hpo.space import Categorical, Dimension, Integer, Real, namespaced, split_namespace

__all__ = [
    "Categorical",
    "Dimension",
    "Integer",
    "Optimizer",
    "Real",
    "loss",
    "namespaced",
    "shortfall",
    "split_namespace",
]
