"""Channel pruning's search aids: its survey (groups, stages, groups left alone) for the
job's run and log, its rule start (``calibrate``) and, for a speedup target, a latency
predictor from a per-unit table measured once (``latency_table``; a resumed job reuses
the recorded ``latency_table.json`` when it was measured the same way)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from typing import Any

from learners.aids import Aids, Probe
from learners.base import ModelInfo
from learners.channel.calibrate import Pruner, calibrate_channel
from learners.channel.latency_table import LatencyTable, build_table

TABLE_FILE = "latency_table.json"


def prepare_channel(learner: Pruner, info: ModelInfo, probe: Probe) -> Aids:
    aids = Aids()
    found = learner.survey(info)
    config = learner.config
    stages = {s: [g.root for g in found.groups if g.stage == s] for s in found.stages()}
    multiples = learner.multiples(info)
    counts = Counter(multiples.values())
    widths = ", ".join(f"{m} ({n})" for m, n in sorted(counts.items(), reverse=True))
    aids.lines.append(
        f"channel pruning: {len(found.groups)} dependency groups in {len(stages)} "
        f"{config.granularity}s, channel multiple per group: {widths or 1}"
    )
    if found.excluded:
        aids.lines.append(f"channel pruning {found.describe_excluded()}")
    record: dict[str, Any] = {
        "round_to": config.multiple,
        "multiples": multiples,
        "groups": [g.to_dict() for g in found.groups],
        "excluded": [dict(e) for e in found.excluded],
    }
    if probe.start and found.groups:
        calibration = calibrate_channel(
            learner, info, replace(probe, workdir=probe.workdir / "calibration")
        )
        record["calibration"] = calibration.to_dict()
        aids.start, aids.factor = calibration.start, calibration.reached
        aids.unreachable = calibration.outcome if calibration.unreachable else None
    aids.records["channel_survey.json"] = record
    if probe.predictor and probe.target.kind == "speedup" and found.groups:
        table = latency_table(learner, info, probe)
        if table is not None:
            aids.predict = table.predict_speedup
            aids.files.append(probe.workdir / TABLE_FILE)
    return aids


def latency_table(learner: Pruner, info: ModelInfo, probe: Probe) -> LatencyTable | None:
    """The recorded table when it was measured with the probe's timing and this learner's
    config, else a new one (saved); None when it cannot be measured (every setting is
    then built)."""
    saved = probe.workdir / TABLE_FILE
    timing = _plain(probe.timing)
    if saved.is_file():
        table = LatencyTable.from_dict(json.loads(saved.read_text()))
        if _plain(table.settings) == timing and _plain(table.learner_config) == _plain(
            learner.config.to_dict()
        ):
            return table
        saved.unlink()  # measured for another runtime, batch or learner range
    if probe.time_models is None:
        return None
    try:
        table = build_table(learner, info, probe.time_models, timing)
    except Exception as err:  # noqa: BLE001 - without a table every setting is built
        probe.log(f"latency table failed ({type(err).__name__}: {err}); every setting is built")
        return None
    saved.write_text(json.dumps(table.to_dict(), indent=1))
    probe.log(
        f"latency table: baseline {table.baseline_ms:.2f} ms, measured in "
        f"{table.build_seconds:.0f} s; settings predicted below the screening's skip "
        "fraction of the target are not built"
    )
    return table


def _plain(data: Any) -> Any:
    """``data`` as JSON has it (tuples as lists), so a recorded table compares equal."""
    return json.loads(json.dumps(dict(data)))
