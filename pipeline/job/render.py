"""The job's result in words and tables: the summary table and paragraph, the rounds
table, the front's per-target lines and Prefect's markdown. Reads a summary dict only,
so ``compressflow report`` renders an earlier job's summary.json the same way."""

from __future__ import annotations

from typing import Any

from pipeline.job.search import CLOSEST
from pipeline.records.links import run_link
from pipeline.records.tracking import achieved_key


def table(summary: dict[str, Any]) -> str:
    t = summary["target"]
    rows = [("", "baseline", "best")]
    b, w = summary["baseline"], summary["best"] or {}

    def fmt(v, spec="{:.4f}"):
        return "-" if v is None else spec.format(v)

    metric = metric_label(summary)
    rows += [
        (f"val {metric}", fmt(b["accuracy"]), fmt(w.get("accuracy"))),
        (f"test {metric}", fmt(b["test_accuracy"]), fmt(w.get("test_accuracy"))),
        (
            f"latency ms ({t['runtime']})",
            fmt(b["latency_ms"], "{:.2f}"),
            fmt(w.get("latency_ms"), "{:.2f}"),
        ),
        ("speedup (search's timing)", "1.00x", fmt(w.get("speedup"), "{:.2f}x")),
        ("speedup onnxruntime (exported files)", "1.00x", fmt(w.get("onnx_speedup"), "{:.2f}x")),
        ("compression (file)", "1.00x", fmt(w.get("compression"), "{:.2f}x")),
        ("FLOPs", f"{b['flops']:,}", f"{w['flops']:,}" if w.get("flops") else "-"),
        ("parameters", count(b.get("param_count")), count(w.get("param_count"))),
        ("bytes", f"{b['bytes']:,}", f"{w['bytes']:,}" if w.get("bytes") else "-"),
    ]
    if w.get("source"):
        rows.append(("setting from", "-", w["source"]))
    if w.get("confirmed"):
        low = min(low for low, _ in w["confirmed"].values())
        rows.append(("confirmed (low end)", "-", f"{low:.2f}x"))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(width[i]) for i, c in enumerate(r)) for r in rows]
    r = summary["rounds"]
    verdict = "MET" if summary["target_met"] else "NOT MET"
    where = " and ".join([t["runtime"], *t.get("also_on", [])])
    entries = summary.get("targets")
    if entries:
        values = ", ".join(f"{e['value']:g}" for e in entries)
        head = f"targets {t['kind']} >= {values} on {where}: {verdict} (all)"
        lines += ["", *front_lines(t["kind"], entries)]
    else:
        head = f"target {t['kind']} >= {t['value']:g} on {where}: {verdict}"
        if not summary["target_met"] and w:
            head += f"; best = closest: {CLOSEST}"
    tail = f"rounds: {r['total']} ({r['feasible']} feasible, {r['failed']} failed)"
    if summary.get("screening"):
        tail += "; " + screening_text(summary["screening"])
    warned = [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join([head, *lines, tail, *chain_lines(summary), *warned])


def metric_label(summary: dict[str, Any]) -> str:
    """``accuracy``, or a custom task's ``metric (neg_mse)``: the summary's ``accuracy``
    keys hold whatever the job's metric is."""
    metric = summary.get("metric", "accuracy")
    return metric if metric == "accuracy" else f"metric ({metric})"


def count(n: int | None) -> str:
    """A parameter count; ``-`` where none was counted (an int8 graph), never ``0``."""
    return f"{n:,}" if n else "-"


def times(x: float | None) -> str:
    """A factor as ``2.13x``; ``-`` where there is none, never ``0.00x``."""
    return "-" if x is None else f"{x:.2f}x"


def chain_label(params: dict[str, Any], learners: list[str]) -> str:
    """The chain a setting belongs to: its ``chain`` choice (a job with alternatives),
    else its learners joined by ',' (the same label)."""
    return str(params.get("chain") or ",".join(learners))


def row_chain(row: dict[str, Any]) -> str:
    """A candidate row's chain label (``chain_label`` of its params and learners)."""
    return chain_label(row.get("params") or {}, row.get("learners") or [])


def chain_names(rows: list[dict[str, Any]]) -> list[str]:
    """The chain labels of candidate rows, each once, in the order they first appear."""
    return list(dict.fromkeys(row_chain(row) for row in rows))


def chain_lines(summary: dict[str, Any]) -> list[str]:
    """One line per chain of the summary's ``chains`` (a job that searched several):
    ``chain channel,int8: 40 screened, 3 fine-tuned, best 0.9612 at 2.31x (round 5)``."""
    key = achieved_key(summary["target"]["kind"])
    chosen = (summary.get("best") or {}).get("round")
    out = []
    for label, c in (summary.get("chains") or {}).items():
        parts = [] if c["screenings"] is None else [f"{c['screenings']} screened"]
        parts.append(f"{c['full_evaluations']} fine-tuned ({c['feasible']} feasible)")
        best = c["best"]
        if best is None:
            parts.append("nothing completed")
        else:
            notes = [f"round {best['round']}"]
            notes += ["its fixed rule"] if str(best.get("source")).startswith("rule:") else []
            notes += [] if best.get("feasible") else ["short of target"]
            notes += ["the chosen one"] if best["round"] == chosen else []
            parts.append(
                f"best {_figure(best.get('accuracy'))} at {times(best.get(key))} "
                f"({', '.join(notes)})"
            )
        out.append(f"chain {label}: {', '.join(parts)}")
    return out


def _figure(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def source_words(source: str) -> str:
    """Where a setting came from, in words: ``rule:channel,int8`` is that chain's fixed
    rule, ``search`` the search (older summaries' ``fixed rule``, ``screening`` as is)."""
    if source.startswith("rule:"):
        return f"the fixed rule of {source.removeprefix('rule:')}"
    return f"the {source}"


def front_lines(kind: str, entries: list[dict[str, Any]]) -> list[str]:
    """One line per target of a front: met or not, its winner and where it is registered."""
    key = achieved_key(kind)
    out = []
    for e in entries:
        best = e["best"]
        head = f"at {e['value']:g}x: {'MET    ' if e['met'] else 'NOT MET'}"
        if best is None:
            out.append(f"{head}  nothing to report")
            continue
        line = (
            f"{head}  round {best['round']} ({best.get('source') or '-'}), val "
            f"{best['accuracy']:.4f}, test {best['test_accuracy']:.4f}, {key} "
            f"{times(best.get(key))}"
        )
        m = e.get("mlflow") or {}
        if m.get("version") is not None:
            line += f", registered {m['registered_model']} v{m['version']}"
            line += f" @{m['alias']}" if m.get("alias") else " (no alias: target not met)"
        out.append(line)
    return out


def description(summary: dict[str, Any]) -> str:
    """One paragraph for the parent run and the model version: target, met or not, the
    winner's accuracy and achieved figure and where its setting came from; for a front,
    each target's winner; the screenings, if any."""
    t, b, w, r = summary["target"], summary["baseline"], summary["best"], summary["rounds"]
    where = " and ".join([t["runtime"], *t.get("also_on", [])])
    key = achieved_key(t["kind"])
    metric = metric_label(summary)  # "accuracy", or a custom task's "metric (neg_mse)"
    entries = summary.get("targets")
    if entries:
        met = sum(e["met"] for e in entries)
        values = ", ".join(f"{e['value']:g}" for e in entries)
        text = f"compressflow job `{summary['job']}`: targets {t['kind']} >= {values}"
        text += f" on {where}, {met} of {len(entries)} met. "
    else:
        verdict = "met" if summary["target_met"] else "NOT met"
        text = f"compressflow job `{summary['job']}`: target {t['kind']} >= {t['value']:g}"
        text += f" on {where}, {verdict}. "
    if w:
        source = f", from {source_words(w['source'])}" if w.get("source") else ""
        text += (
            f"Chosen: round {w['round']} ({'+'.join(w['learners'])}{source}), validation "
            f"{metric} {w['accuracy']:.4f} (baseline {b['accuracy']:.4f}), test {metric} "
            f"{w['test_accuracy']:.4f} (baseline {b['test_accuracy']:.4f}), "
            f"{key} {times(w.get(key))}, speedup on {t['runtime']} {times(w['speedup'])}, "
            f"compression {times(w['compression'])}. "
        )
    else:
        text += nothing_chosen(r).capitalize() + ". "
    for e in entries or []:
        best = e["best"]
        verdict = "met" if e["met"] else "NOT met"
        if best is None:
            text += f"At {e['value']:g}x: {verdict}, nothing to report. "
            continue
        text += (
            f"At {e['value']:g}x: {verdict}, round {best['round']}, validation {metric} "
            f"{best['accuracy']:.4f}, test {metric} {best['test_accuracy']:.4f}, "
            f"{key} {times(best.get(key))}. "
        )
    screened = summary.get("screening")
    if screened:
        text += screening_text(screened).capitalize() + ". "
    text += (
        f"{r['total']} rounds ({r['feasible']} feasible, {r['failed']} failed); "
        f"stopped: {summary['stop_reason']}."
    )
    return text


def screening_text(screened: dict[str, Any]) -> str:
    """``screened 120 settings (30 more skipped by the cost predictor, 2 failed), promoted
    8 to a fine-tune, spearman 0.71``: the cheap fidelity in one phrase."""
    text = f"screened {screened.get('evaluated', 0)} settings"
    notes = []
    if screened.get("skipped"):
        notes.append(f"{screened['skipped']} more skipped by the cost predictor")
    if screened.get("failed"):
        notes.append(f"{screened['failed']} failed")
    if notes:
        text += f" ({', '.join(notes)})"
    text += f", promoted {screened.get('promoted', 0)} to a fine-tune"
    rho = screened.get("spearman")
    text += f", spearman {rho:.2f}" if rho is not None else ", spearman - (fewer than 4)"
    return text


def result_markdown(summary: dict[str, Any]) -> str:
    """The result for Prefect's UI: the paragraph, the table and the MLflow run link."""
    m = summary["mlflow"]
    link = run_link(m["tracking_uri"], m["experiment_id"], m["parent_run_id"])
    lines = [f"# {summary['job']}", "", description(summary), "", "```", table(summary), "```"]
    lines += ["", f"MLflow run: [{m['parent_run_id']}]({link})"]
    if m.get("best_run_id"):
        best = run_link(m["tracking_uri"], m["experiment_id"], m["best_run_id"])
        lines.append(f"Chosen candidate: [{m['best_run_id']}]({best})")
    return "\n".join(lines)


def rounds_table(kind: str, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One short row per round, for Prefect's table artifact and the terminal report;
    with a ``chain`` column where the rounds were built by more than one chain."""
    key = achieved_key(kind)
    several = len(chain_names(candidates)) > 1
    out = []
    for row in candidates:
        out.append(
            {
                "round": row["round"],
                **({"chain": row_chain(row)} if several else {}),
                "status": row["status"],
                "accuracy": _round(row.get("accuracy"), 4),
                key: _round(row.get(key), 3),
                "compression": _round(row.get("compression"), 3),
                "feasible": bool(row.get("feasible")),
                "best": bool(row.get("is_best")),
                "seconds": _round(row.get("seconds"), 1),
            }
        )
    return out


def rounds_text(summary: dict[str, Any]) -> str:
    """The rounds as an aligned text table (``compressflow report``)."""
    rows = rounds_table(summary["target"]["kind"], summary.get("candidates", []))
    if not rows:
        return "no rounds recorded"
    cells = [list(rows[0])] + [
        ["-" if v is None else ("yes" if v is True else "" if v is False else str(v))
         for v in row.values()]
        for row in rows
    ]  # fmt: skip
    width = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(width[i]) for i, c in enumerate(r)) for r in cells)


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)


def nothing_chosen(counts: dict[str, int]) -> str:
    """Why no candidate is reported: none completed, or every one that did is at chance
    accuracy (a model at chance is never the answer, not even the closest one)."""
    completed = counts["total"] - counts["failed"]
    if completed == 0:
        return "no candidate completed"
    return f"no candidate is reported: all {completed} completed ones are at chance accuracy"
