"""The search's progress in the terminal: a live bar (rich) when stdout is a terminal or
a Jupyter notebook that can draw one (rich draws it in an ipywidgets output), one plain
line per round otherwise (CI, log files, a worker's captured output).

Both show rounds done (of the budget), the best candidate so far, the time spent and an
estimate of the time left (mean seconds per round so far, times the rounds left, capped
by a time budget).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import IO, Any

from pipeline.job.search import SearchState


def eta_seconds(
    done: int, total: int | None, elapsed: float, minutes: float | None
) -> float | None:
    """Seconds left: mean time per round times the rounds left, capped by a time budget."""
    left: float | None = None
    if total is not None and done > 0:
        left = elapsed / done * max(total - done, 0)
    if minutes is not None:
        budget_left = max(minutes * 60 - elapsed, 0.0)
        left = budget_left if left is None else min(left, budget_left)
    return left


def fraction_done(done: int, total: int | None, elapsed: float, minutes: float | None) -> float:
    """Between 0 and 1: rounds of the round budget, else time of the time budget."""
    if total:
        return min(done / total, 1.0)
    if minutes:
        return min(elapsed / (minutes * 60), 1.0)
    return 0.0


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def best_text(state: SearchState, metric: str = "acc") -> str:
    """The best so far; ``metric`` names the job's metric (a custom task's ``neg_mse``)."""
    best = state.best()
    if best is None:
        return "best: none yet"
    mark = "" if state.feasible(best) else ", short of target"
    return (
        f"best: round {best.round}, {metric} {best.accuracy:.4f}, "
        f"{state.target_kind} {best.achieved(state.target_kind) or 0:.2f}x{mark}"
    )


def line(
    state: SearchState,
    total: int | None,
    elapsed: float,
    minutes: float | None,
    metric: str = "acc",
) -> str:
    done = len(state.results)
    of = f"/{total}" if total is not None else ""
    left = eta_seconds(done, total, elapsed, minutes)
    return (
        f"progress: {done}{of} rounds | {best_text(state, metric)} | "
        f"elapsed {clock(elapsed)} | "
        f"left ~{clock(left)}"
    )


def jupyter_can_draw() -> bool:
    """Whether this is a Jupyter kernel (rich's own test) with ipywidgets installed: rich
    draws a live bar there in a widget, and without ipywidgets only warns."""
    from rich.console import Console

    return Console().is_jupyter and importlib.util.find_spec("ipywidgets") is not None


class SearchProgress:
    """``with SearchProgress(...) as p: ... p.update(state)`` after each finished round."""

    def __init__(
        self,
        total: int | None,
        minutes: float | None = None,
        stream: IO[str] | None = None,
        live: bool | None = None,
        metric: str = "acc",
    ) -> None:
        self.total, self.minutes, self.metric = total, minutes, metric
        self.stream = stream or sys.stdout
        if live is None:
            live = self.stream.isatty() or (self.stream is sys.stdout and jupyter_can_draw())
        self.live = live
        self.started = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> SearchProgress:
        self.started = time.monotonic()
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]search"),
                BarColumn(bar_width=20),
                MofNCompleteColumn() if self.total else TextColumn("{task.completed} rounds"),
                TextColumn("elapsed"),
                TimeElapsedColumn(),
                TextColumn("left ~{task.fields[left]}"),
                TextColumn("{task.fields[best]}"),
                console=Console(file=self.stream),
                refresh_per_second=2,
            )
            self._task = self._bar.add_task("search", total=self.total, left="?", best="")
            self._bar.start()
        return self

    def update(self, state: SearchState) -> None:
        elapsed = time.monotonic() - self.started
        if self._bar is None:
            print(
                line(state, self.total, elapsed, self.minutes, self.metric),
                file=self.stream,
                flush=True,
            )
            return
        done = len(state.results)
        left = eta_seconds(done, self.total, elapsed, self.minutes)
        best = best_text(state, self.metric)
        self._bar.update(self._task, completed=done, left=clock(left), best=best)

    def fraction(self, state: SearchState) -> float:
        elapsed = time.monotonic() - self.started
        return fraction_done(len(state.results), self.total, elapsed, self.minutes)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
