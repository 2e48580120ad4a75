"""Learner ``channel``: structured channel pruning, with its own search aids.

``learner`` is the learner (survey, space, prune, compress, replay), ``ops`` the pruning
operations on torch-pruning's dependency graph, ``calibrate`` the fixed rule's start (a
bisection on one uniform ratio) and ``latency_table`` the per-unit latency predictor.
The package's public names are the learner's.
"""

from learners.channel.learner import (
    IMPORTANCES,
    LEARNER,
    PRUNABLE,
    ROUND_TO,
    ChannelConfig,
    ChannelPruning,
    NothingToPrune,
    Survey,
    layer_multiples,
    output_layers,
    prunable_units,
    rounding,
    survey,
)

__all__ = [
    "IMPORTANCES",
    "LEARNER",
    "PRUNABLE",
    "ROUND_TO",
    "ChannelConfig",
    "ChannelPruning",
    "NothingToPrune",
    "Survey",
    "layer_multiples",
    "output_layers",
    "prunable_units",
    "rounding",
    "survey",
]
