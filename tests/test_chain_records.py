"""The records of a job that searched several chains: the summary's ``chains`` block
(counted per chain label), the rounds table's ``chain`` column, one line per chain in the
report, and the candidates plot coloured by chain; a one-chain job keeps today's shape.
Built from made-up candidate results, so every count is known in advance."""

from __future__ import annotations

from typing import Any

import matplotlib.colors as mcolors
import pytest

from pipeline.job import plots, render
from pipeline.job import summary as parts
from pipeline.job.search import SearchState
from pipeline.records.results import CandidateResult

CHAINS = [["channel"], ["int8"], ["channel", "int8"]]
SCREENED = {"channel": 10, "int8": 5, "channel,int8": 12}


def result(round_: int, chain: str | None, accuracy: float, interval: list[float], **extra):
    params: dict[str, Any] = {"channel.ratio": 0.3}
    if chain is not None:
        params["chain"] = chain
    point = sum(interval) / 2
    return CandidateResult(
        round=round_,
        params=params,
        learners=(chain or "channel").split(","),
        accuracy=accuracy,
        speedup=point,
        speedups={"torch-cpu": point},
        speedup_intervals={"torch-cpu": interval},
        compression=1.5,
        **extra,
    )


def searched() -> SearchState:
    """Target 2x: channel has 2 rounds (1 feasible), int8 none, channel,int8 3 (2
    feasible, 1 failed); the most accurate feasible of all is round 3."""
    state = SearchState("speedup", 2.0, floor=0.8, chance=0.1)
    state.add(
        [
            result(1, "channel", 0.90, [2.2, 2.4], source="rule:channel"),
            result(2, "channel", 0.95, [1.5, 1.7]),  # more accurate, short of 2x
            result(3, "channel,int8", 0.93, [2.5, 2.9]),
            result(4, "channel,int8", 0.0, [0.0, 0.0], status="failed", error="boom"),
            result(5, "channel,int8", 0.91, [3.0, 3.2], source="rule:channel,int8"),
        ]
    )
    return state


def summary_of(state: SearchState, chains: list[list[str]] = CHAINS) -> dict[str, Any]:
    best = state.best()
    assert best is not None
    return {
        "job": "chains",
        "target": {"kind": "speedup", "value": 2.0, "runtime": "torch-cpu", "also_on": []},
        "target_met": True,
        "stop_reason": "round budget spent",
        "baseline": {
            "accuracy": 0.96, "test_accuracy": 0.95, "latency_ms": 2.0, "flops": 1000,
            "param_count": 5000, "bytes": 20000, "achieved_speedup": 1.0,
        },
        "best": {
            "round": best.round, "accuracy": best.accuracy, "test_accuracy": 0.92,
            "latency_ms": 1.0, "speedup": best.speedup, "achieved_speedup": best.speedup,
            "compression": 1.5, "flops": 500, "param_count": 4000, "bytes": 9000,
            "learners": best.learners, "source": best.source,
        },
        "rounds": state.counts,
        "candidates": parts.candidate_rows(state, {}, best),
        "chains": parts.chains_entry(state, chains, SCREENED),
    }  # fmt: skip


def test_the_chains_block_counts_each_chain_on_its_own():
    block = parts.chains_entry(searched(), CHAINS, SCREENED)
    assert block is not None and list(block) == ["channel", "int8", "channel,int8"]
    channel, int8, both = block["channel"], block["int8"], block["channel,int8"]
    assert channel["learners"] == ["channel"] and both["learners"] == ["channel", "int8"]
    assert [c["screenings"] for c in (channel, int8, both)] == [10, 5, 12]
    assert [c["full_evaluations"] for c in (channel, int8, both)] == [2, 0, 3]
    assert [c["feasible"] for c in (channel, int8, both)] == [1, 0, 2]
    # Each chain's best is the most accurate feasible of its own rounds.
    assert channel["best"] == {
        "round": 1, "accuracy": 0.90, "achieved_speedup": pytest.approx(2.3),
        "feasible": True, "source": "rule:channel",
    }  # fmt: skip
    assert both["best"]["round"] == 3 and both["best"]["source"] == "search"
    assert int8["best"] is None


def test_the_chains_block_is_only_for_several_chains_and_says_unknown_counts():
    one = SearchState("compression", 1.2, chance=0.1)
    one.add([result(1, None, 0.9, [2.2, 2.4])])
    assert parts.chains_entry(one, [["channel"]], {}) is None
    # Screening counts not given: unknown (None), not zero; a chain only a candidate
    # names (e.g. left out of a narrowed spec) is still counted.
    block = parts.chains_entry(searched(), [["channel"]])
    assert block is not None and list(block) == ["channel", "channel,int8"]
    assert block["channel"]["screenings"] is None
    assert block["channel,int8"]["screenings"] is None
    assert block["channel,int8"]["full_evaluations"] == 3


def test_the_rounds_table_has_a_chain_column_only_with_several_chains():
    summary = summary_of(searched())
    rows = render.rounds_table("speedup", summary["candidates"])
    assert [r["chain"] for r in rows] == ["channel"] * 2 + ["channel,int8"] * 3
    assert list(rows[0])[:3] == ["round", "chain", "status"]
    text = render.rounds_text(summary).splitlines()
    assert text[0].split()[:3] == ["round", "chain", "status"]
    assert text[3].split()[:2] == ["3", "channel,int8"]

    one = SearchState("speedup", 2.0, chance=0.1)
    one.add([result(1, None, 0.9, [2.2, 2.4]), result(2, None, 0.8, [2.2, 2.4])])
    plain = render.rounds_table("speedup", parts.candidate_rows(one, {}, one.best()))
    assert "chain" not in plain[0]


def test_the_report_prints_one_line_per_chain_and_the_rule_in_words():
    summary = summary_of(searched())
    lines = render.chain_lines(summary)
    assert lines == [
        "chain channel: 10 screened, 2 fine-tuned (1 feasible), best 0.9000 at 2.30x "
        "(round 1, its fixed rule)",
        "chain int8: 5 screened, 0 fine-tuned (0 feasible), nothing completed",
        "chain channel,int8: 12 screened, 3 fine-tuned (2 feasible), best 0.9300 at 2.70x "
        "(round 3, the chosen one)",
    ]
    text = render.table(summary)
    assert all(line in text for line in lines)
    assert "search" in next(line for line in text.splitlines() if line.startswith("setting from"))
    summary["best"]["source"] = "rule:channel,int8"
    assert "from the fixed rule of channel,int8" in render.description(summary)
    del summary["chains"]
    assert "chain " not in render.table(summary)


def colours(collection) -> set[str]:
    return {mcolors.to_hex(c) for c in collection.get_facecolors()}


def test_the_png_colours_points_by_chain_and_names_each_chain():
    summary = summary_of(searched())
    fig = plots.figure_png(summary, {})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"chain channel", "chain channel,int8"} <= set(labels)
    assert "chain int8" not in labels  # no point of its own to colour
    assert "feasible (meets target)" in labels and "short of target" in labels
    # Every drawn candidate group has one colour, and each chain has its own.
    by_chain: dict[str, set[str]] = {}
    for g in plots.groups(summary, plots.points(summary)):
        if g.category != "baseline":
            by_chain.setdefault(g.points[0].chain, set()).add(g.colour)
    assert len(by_chain) == 2 and all(len(c) == 1 for c in by_chain.values())
    assert by_chain["channel"] != by_chain["channel,int8"]
    drawn = [colours(c) for c in ax.collections if len(c.get_offsets()) > 0]
    assert set.union(*by_chain.values()) <= set.union(*drawn)


def test_the_html_groups_each_chain_under_its_legend_entry():
    fig = plots.figure_html(summary_of(searched()))
    named = [t.name for t in fig.data if t.showlegend is not False]
    assert "chain channel" in named and "chain channel,int8" in named
    groups = {t.legendgroup for t in fig.data if t.x and t.x[0] is not None and t.legendgroup}
    assert groups == {"chain channel", "chain channel,int8"}


def test_a_one_chain_plot_keeps_its_look():
    one = SearchState("speedup", 2.0, chance=0.1)
    one.add([result(1, None, 0.9, [2.2, 2.4]), result(2, None, 0.8, [1.2, 1.4])])
    summary = summary_of(one, [["channel"]])
    assert summary["chains"] is None
    fig = plots.figure_png(summary, {})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert not any(label.startswith("chain") for label in labels)
    assert labels[:3] == ["baseline", "feasible (meets target)", "short of target"]
    pts = plots.points(summary)
    assert [g.colour for g in plots.groups(summary, pts)] == [
        plots.STYLE[c][1] for c in ("baseline", "feasible", "infeasible")
    ]
