"""Channel pruning's search aids: its survey (groups, stages, groups left alone) for the
job's run and log, its rule start (``calibrate``) and, for a speedup target, a latency
predictor from a per-unit table measured once (``latency_table``; a resumed job reuses
the recorded ``latency_table.json`` when it was measured the same way).

Where the pipeline lends timing on the runtime the deliverable ships on
(``Probe.not_slower_on``: a torch-cpu job whose ONNX file must not run slower than the
baseline on onnxruntime-cpu), a second table is measured there
(``latency_table_<runtime>.json``, reused under the same rules) and gives the aids a
veto: a setting predicted below ``skip_below`` there is not built."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from learners.aids import Aids, NotSlowerOn, Probe, TimeModels, Veto
from learners.base import ModelInfo
from learners.channel.calibrate import Pruner, calibrate_channel
from learners.channel.latency_table import LatencyTable, build_table

TABLE_FILE = "latency_table.json"


def shipped_table_file(runtime: str) -> str:
    """The file name of the table measured where the deliverable ships."""
    return f"latency_table_{runtime}.json"


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
        shipped = probe.not_slower_on
        if shipped is not None:
            aids.veto = _shipped_veto(learner, info, probe, shipped)
            if aids.veto is not None:
                aids.files.append(probe.workdir / shipped_table_file(shipped.runtime))
    return aids


def latency_table(learner: Pruner, info: ModelInfo, probe: Probe) -> LatencyTable | None:
    """The recorded table when it was measured with the probe's timing and this learner's
    config, else a new one (saved); None when it cannot be measured (every setting is
    then built)."""
    saved = probe.workdir / TABLE_FILE
    skips = "settings predicted below the screening's skip fraction of the target are not built"
    return _table(learner, info, saved, probe.time_models, probe.timing, probe.log, skips)


def _shipped_veto(
    learner: Pruner, info: ModelInfo, probe: Probe, shipped: NotSlowerOn
) -> Veto | None:
    """The veto from a table measured on ``shipped.runtime`` (None, and the log says why,
    when that table cannot be measured: every setting is then built and measured)."""
    path = probe.workdir / shipped_table_file(shipped.runtime)
    skips = (
        f"settings predicted below {shipped.skip_below:.2f}x there, where the ONNX file "
        "ships, are not built"
    )
    table = _table(
        learner,
        info,
        path,
        shipped.time_models,
        shipped.timing,
        probe.log,
        skips,
        can_slow_down=True,
    )
    return None if table is None else veto_from(table, shipped.runtime, shipped.skip_below)


def veto_from(table: LatencyTable, runtime: str, skip_below: float) -> Veto:
    """Why a setting is predicted too slow on ``runtime`` (below ``skip_below``x, a margin
    for the table's error of tens of percent: a setting predicted between it and 1x is
    built, and the measured check decides); None when it is not, or the table cannot
    predict it."""

    def veto(params: dict[str, Any]) -> str | None:
        try:
            predicted = table.predict_speedup(params)
        except (
            TypeError,
            ValueError,
        ):  # not channel pruning's own parameters: no prediction, no veto
            return None
        if predicted >= skip_below:
            return None
        return (
            f"predicted {predicted:.2f}x on {runtime}, where the ONNX file ships; "
            f"below {skip_below:.2f}x"
        )

    return veto


def _table(
    learner: Pruner,
    info: ModelInfo,
    saved: Path,
    time_models: TimeModels | None,
    timing: Mapping[str, Any],
    log: Callable[[str], None],
    skips: str,
    can_slow_down: bool = False,
) -> LatencyTable | None:
    """The table at ``saved`` when it was measured with ``timing`` and this learner's
    config, else a new one measured with ``time_models`` (saved, and the log says what
    it ``skips``); None when it cannot be measured."""
    plain = _plain(timing)
    if saved.is_file():
        table = LatencyTable.from_dict(json.loads(saved.read_text()))
        if (
            _plain(table.settings) == plain
            and _plain(table.learner_config) == _plain(learner.config.to_dict())
            and table.can_slow_down == can_slow_down
        ):
            return table
        saved.unlink()  # measured for another runtime, batch or learner range
    if time_models is None:
        return None
    runtime = timing.get("runtime", "the target runtime")
    try:
        table = build_table(learner, info, time_models, plain, can_slow_down=can_slow_down)
    except Exception as err:  # noqa: BLE001 - without a table every setting is built
        why = f"{type(err).__name__}: {err}"
        log(f"latency table on {runtime} failed ({why}); no setting is skipped for it")
        return None
    saved.write_text(json.dumps(table.to_dict(), indent=1))
    log(
        f"latency table on {runtime} ({saved.name}): baseline {table.baseline_ms:.2f} ms, "
        f"measured in {table.build_seconds:.0f} s; {skips}"
    )
    return table


def _plain(data: Any) -> Any:
    """``data`` as JSON has it (tuples as lists), so a recorded table compares equal."""
    return json.loads(json.dumps(dict(data)))
