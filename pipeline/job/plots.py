"""The comparison plot: validation accuracy against the figure compared with the target
(``achieved_speedup`` or ``achieved_compression``, exactly the logged metric), for the
baseline and every candidate, with the target, the Pareto frontier and the winner; for a
list target (a front), a line per target and each target's winner marked.

Drawn from a summary's ``candidates`` rows, which hold the metrics as logged to MLflow, so
the PNG, the interactive HTML and MLflow's own charts show the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.job.render import row_chain
from pipeline.records.tracking import achieved_key

# 12 x 7.5 inches at 100 dpi: 1200 px wide, readable without zooming.
FIGSIZE, DPI = (12, 7.5), 100

STYLE = {  # category -> (label, colour, matplotlib marker, plotly symbol)
    "baseline": ("baseline", "black", "D", "diamond"),
    "feasible": ("feasible (meets target)", "#2ca02c", "o", "circle"),
    "infeasible": ("short of target", "#ff7f0e", "v", "triangle-down"),
    "failed": ("failed", "#7f7f7f", "X", "x"),
}


@dataclass(frozen=True)
class Point:
    label: str  # "baseline" or "round-003"
    round: int  # 0 for the baseline
    category: str  # baseline | feasible | infeasible | failed
    accuracy: float | None
    achieved: float | None
    is_best: bool
    run_id: str | None = None
    chain: str = ""  # the chain's label ("" for the baseline)

    @property
    def drawable(self) -> bool:
        return self.accuracy is not None and self.achieved is not None


def points(summary: dict[str, Any]) -> list[Point]:
    """The baseline and every candidate of a summary, as the plot draws them."""
    key = achieved_key(summary["target"]["kind"])
    b = summary["baseline"]
    out = [
        Point("baseline", 0, "baseline", b.get("accuracy"), b.get(key, 1.0), False, b.get("run_id"))
    ]
    for row in summary.get("candidates", []):
        if row["status"] != "ok":
            category = "failed"
        else:
            category = "feasible" if row.get("feasible") else "infeasible"
        out.append(
            Point(
                f"round-{row['round']:03d}",
                row["round"],
                category,
                row.get("accuracy"),
                row.get(key),
                bool(row.get("is_best")),
                row.get("run_id"),
                row_chain(row),
            )
        )
    return out


def pareto(pts: list[Point]) -> list[Point]:
    """The points no other point beats on both accuracy and the achieved figure, by x
    (drawn as a staircase: the best accuracy recorded at or beyond each achieved figure)."""
    ok = sorted(
        (p for p in pts if p.drawable and p.category != "failed"),
        key=lambda p: (-(p.achieved or 0.0), -(p.accuracy or 0.0)),
    )
    frontier, best_acc = [], float("-inf")
    for p in ok:
        if (p.accuracy or 0.0) > best_acc:
            frontier.append(p)
            best_acc = p.accuracy or 0.0
    return sorted(frontier, key=lambda p: p.achieved or 0.0)


def axis_label(summary: dict[str, Any]) -> str:
    t = summary["target"]
    key = achieved_key(t["kind"])
    if t["kind"] == "compression":
        return f"achieved compression, deployable file bytes ratio (metric {key})"
    runtimes = [t["runtime"], *t.get("also_on", [])]
    where = runtimes[0] if len(runtimes) == 1 else "worst of " + ", ".join(runtimes)
    return f"achieved speedup, {where} (metric {key})"


def _title(summary: dict[str, Any]) -> str:
    t = summary["target"]
    entries = summary.get("targets")
    if entries:
        values = ", ".join(f"{e['value']:g}" for e in entries)
        met = sum(bool(e["met"]) for e in entries)
        return f"{summary['job']}: targets {t['kind']} >= {values} ({met} of {len(entries)} met)"
    verdict = "met" if summary.get("target_met") else "not met"
    return f"{summary['job']}: target {t['kind']} >= {t['value']:g} ({verdict})"


@dataclass(frozen=True)
class Chosen:
    """A winner as the plot marks it: its point and the legend's words."""

    point: Point
    label: str


def chosen(summary: dict[str, Any], pts: list[Point]) -> list[Chosen]:
    """The winners to mark: the one ``is_best`` point of a single target; for a front,
    each target's winner (one mark per round, naming every target it won, "not met"
    where it was only the closest)."""
    drawable = {p.round: p for p in pts if p.drawable and p.category != "baseline"}
    entries = summary.get("targets")
    if not entries:
        best = next((p for p in pts if p.is_best and p.drawable), None)
        return [] if best is None else [Chosen(best, f"chosen: round {best.round}")]
    won: dict[int, list[str]] = {}
    for e in entries:
        if e.get("best") is not None and e["best"]["round"] in drawable:
            mark = f"{e['value']:g}x" + ("" if e["met"] else " (not met)")
            won.setdefault(e["best"]["round"], []).append(mark)
    return [Chosen(drawable[r], f"chosen for {', '.join(m)}: round {r}") for r, m in won.items()]


def target_values(summary: dict[str, Any]) -> list[float]:
    """Every target value to draw a line at (one, or each of a front's)."""
    t = summary["target"]
    return [float(v) for v in t.get("values") or [t["value"]]]


def legend_label(summary: dict[str, Any], category: str, label: str) -> str:
    """A front's feasible / short points are judged at its smallest target: say which."""
    if not summary.get("targets") or category not in ("feasible", "infeasible"):
        return label
    smallest = f"{min(target_values(summary)):g}x"
    return f"meets {smallest}" if category == "feasible" else f"short of {smallest}"


# Winner marks in turn (a front has several): colour, and each target line's dash.
MARK_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
# A job that searched several chains: each chain's points in turn get one of these.
CHAIN_COLOURS = ("#2ca02c", "#ff7f0e", "#1f77b4", "#9467bd", "#8c564b", "#17becf", "#bcbd22")
NEUTRAL = "#999999"  # the marker shapes' own legend entries, with chains coloured


@dataclass(frozen=True)
class Group:
    """Points drawn alike: one colour and the marker of their category; ``label`` is
    their legend entry ("" where a separate ``legend_entries`` entry names them)."""

    label: str
    colour: str
    category: str
    points: tuple[Point, ...]


def chain_names(pts: list[Point]) -> list[str]:
    """The candidates' chains, each once, in the order they first appear."""
    return list(dict.fromkeys(p.chain for p in pts if p.category != "baseline"))


def groups(summary: dict[str, Any], pts: list[Point]) -> list[Group]:
    """What to draw: one group per category (coloured by category) for a job with one
    chain; with several, the baseline, then per chain one group per category, in the
    chain's colour (the category still by marker)."""
    names = chain_names(pts)
    if len(names) < 2:
        out = []
        for category, (label, colour, _, _) in STYLE.items():
            members = tuple(p for p in pts if p.category == category)
            if members:
                label = _unplaced(legend_label(summary, category, label), members)
                out.append(Group(label, colour, category, members))
        return out
    out = [Group("baseline", STYLE["baseline"][1], "baseline", tuple(pts[:1]))]
    for i, name in enumerate(names):
        for category in list(STYLE)[1:]:
            members = tuple(p for p in pts if p.chain == name and p.category == category)
            if members:
                out.append(Group("", CHAIN_COLOURS[i % len(CHAIN_COLOURS)], category, members))
    return out


def legend_entries(summary: dict[str, Any], pts: list[Point]) -> list[tuple[str, str, str]]:
    """With several chains, the legend's own entries as ``(label, colour, category)``:
    each chain (its colour) and each category's marker (neutral grey); none for one."""
    names = chain_names(pts)
    if len(names) < 2:
        return []
    out = [
        (f"chain {name}", CHAIN_COLOURS[i % len(CHAIN_COLOURS)], "feasible")
        for i, name in enumerate(names)
    ]
    for category, (label, _, _, _) in list(STYLE.items())[1:]:
        members = tuple(p for p in pts if p.category == category)
        if members:
            out.append(
                (_unplaced(legend_label(summary, category, label), members), NEUTRAL, category)
            )
    return out


def _unplaced(label: str, members: tuple[Point, ...]) -> str:
    """A legend label saying how many of its points failed before they were measured
    (nowhere to put them)."""
    unplaced = sum(not p.drawable for p in members)
    return f"{label} ({unplaced} without a measurement)" if unplaced else label


def draw_png(summary: dict[str, Any], path: Path) -> dict[str, tuple[float, float]]:
    """Write the plot as a PNG; returns ``{label: (x, y)}`` of every point drawn."""
    import matplotlib.pyplot as plt

    drawn: dict[str, tuple[float, float]] = {}
    fig = figure_png(summary, drawn)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return drawn


def figure_png(summary: dict[str, Any], drawn: dict[str, tuple[float, float]]) -> Any:
    """The PNG's matplotlib figure; ``drawn`` gets ``{label: (x, y)}`` of every point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points(summary)
    with plt.rc_context({"font.size": 14, "axes.titlesize": 17, "axes.labelsize": 15}):
        fig, ax = plt.subplots(figsize=FIGSIZE)
        _scatter_png(ax, summary, pts, drawn)
        front = pareto(pts)
        if len(front) > 1:
            ax.step(
                [float(p.achieved or 0.0) for p in front],
                [float(p.accuracy or 0.0) for p in front],
                where="pre", color="#1f77b4", linewidth=1.8, alpha=0.7,
                label="Pareto frontier", zorder=2,
            )  # fmt: skip
        for i, c in enumerate(chosen(summary, pts)):
            ax.scatter(
                [float(c.point.achieved or 0.0)], [float(c.point.accuracy or 0.0)], s=520,
                marker="*", facecolors="none", edgecolors=MARK_COLOURS[i % len(MARK_COLOURS)],
                linewidths=2.2, label=c.label, zorder=4,
            )  # fmt: skip
        t = summary["target"]
        for value in target_values(summary):
            ax.axvline(
                value, color="#444444", linestyle="--", linewidth=1.5,
                label=f"target {t['kind']} {value:g}x",
            )  # fmt: skip
        ax.set_xlabel(axis_label(summary))
        ax.set_ylabel("validation accuracy (metric accuracy)")
        ax.set_title(_title(summary))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", framealpha=0.9)
        fig.tight_layout()
    return fig


def _scatter_png(
    ax: Any, summary: dict[str, Any], pts: list[Point], drawn: dict[str, tuple[float, float]]
) -> None:
    """The points, group by group (``groups``), each candidate numbered by its round, and
    the legend's own entries (``legend_entries``) where chains are coloured."""
    for g in groups(summary, pts):
        shown = [p for p in g.points if p.drawable]
        ax.scatter(
            [float(p.achieved or 0.0) for p in shown],  # drawable: both are measured
            [float(p.accuracy or 0.0) for p in shown],
            s=110, c=g.colour, marker=STYLE[g.category][2], label=g.label or "_nolegend_",
            zorder=3, edgecolors="white",
        )  # fmt: skip
        for p in shown:
            drawn[p.label] = (float(p.achieved), float(p.accuracy))  # type: ignore[arg-type]
            if p.category != "baseline":
                ax.annotate(
                    str(p.round), (p.achieved, p.accuracy), fontsize=11,
                    xytext=(6, 5), textcoords="offset points",
                )  # fmt: skip
    for label, colour, category in legend_entries(summary, pts):
        ax.scatter([], [], s=110, c=colour, marker=STYLE[category][2], label=label)


def draw_html(summary: dict[str, Any], path: Path) -> None:
    """The same plot as a self-contained interactive HTML file (plotly; works offline)."""
    figure_html(summary).write_html(path, include_plotlyjs=True, full_html=True)


def figure_html(summary: dict[str, Any]) -> Any:
    """The HTML's plotly figure."""
    import plotly.graph_objects as go

    pts = points(summary)
    fig = go.Figure()
    _scatter_html(fig, summary, pts)
    front = pareto(pts)
    if len(front) > 1:
        fig.add_trace(
            go.Scatter(
                x=[p.achieved for p in front],
                y=[p.accuracy for p in front],
                mode="lines",
                line={"shape": "vh", "color": "#1f77b4"},
                name="Pareto frontier",
                hoverinfo="skip",
            )
        )
    for i, c in enumerate(chosen(summary, pts)):
        fig.add_trace(
            go.Scatter(
                x=[c.point.achieved],
                y=[c.point.accuracy],
                mode="markers",
                marker={
                    "symbol": "star-open",
                    "size": 26,
                    "color": MARK_COLOURS[i % len(MARK_COLOURS)],
                },
                name=c.label,
                hoverinfo="skip",
            )
        )
    for value in target_values(summary):
        fig.add_vline(
            x=value, line_dash="dash", line_color="#444444",
            annotation_text=f"target {value:g}x",
        )  # fmt: skip
    fig.update_layout(
        title=_title(summary),
        xaxis_title=axis_label(summary),
        yaxis_title="validation accuracy (metric accuracy)",
        width=1200,
        height=750,
        font={"size": 14},
        template="plotly_white",
    )
    return fig


def _scatter_html(fig: Any, summary: dict[str, Any], pts: list[Point]) -> None:
    """The points as in the PNG (``groups``, ``legend_entries``), each with its hover text:
    a chain's groups share its legend entry (clicking it hides the chain)."""
    import plotly.graph_objects as go

    rows = {r["round"]: r for r in summary.get("candidates", [])}
    for g in groups(summary, pts):
        shown = [p for p in g.points if p.drawable]
        if not shown:
            continue
        chain = shown[0].chain
        fig.add_trace(
            go.Scatter(
                x=[p.achieved for p in shown],
                y=[p.accuracy for p in shown],
                mode="markers+text" if g.category != "baseline" else "markers",
                text=[str(p.round) if p.round else "" for p in shown],
                textposition="top right",
                name=g.label or f"chain {chain}: {STYLE[g.category][0]}",
                legendgroup=f"chain {chain}" if not g.label else None,
                showlegend=bool(g.label),
                marker={"color": g.colour, "symbol": STYLE[g.category][3], "size": 12},
                hovertext=[_hover(p, rows.get(p.round)) for p in shown],
                hoverinfo="text",
            )
        )
    for label, colour, category in legend_entries(summary, pts):
        fig.add_trace(
            go.Scatter(
                x=[None], y=[None], mode="markers", name=label,
                legendgroup=label if label.startswith("chain ") else None,
                marker={"color": colour, "symbol": STYLE[category][3], "size": 12},
            )
        )  # fmt: skip


def _hover(p: Point, row: dict[str, Any] | None) -> str:
    lines = [f"<b>{p.label}</b> ({p.category})", f"accuracy {p.accuracy:.4f}"]
    lines.append(f"achieved {p.achieved:.3f}x")
    if row:
        for key in ("speedup", "compression", "latency_ms", "param_count", "bytes"):
            if row.get(key) is not None:
                lines.append(f"{key} {row[key]:.4g}")
        lines += [f"{k} = {v}" for k, v in row.get("params", {}).items()]
    if p.run_id:
        lines.append(f"run {p.run_id}")
    return "<br>".join(lines)


def write_plots(summary: dict[str, Any], out_dir: Path, stem: str = "candidates") -> list[Path]:
    """``candidates.png`` and ``candidates.html`` (nothing when no round was run)."""
    if not summary.get("candidates"):
        return []
    png, html = out_dir / f"{stem}.png", out_dir / f"{stem}.html"
    draw_png(summary, png)
    draw_html(summary, html)
    return [png, html]
