"""MLflow bookkeeping: one parent run per job, a ``baseline`` child run and one nested
child run per candidate, all with the same metric keys (see ``candidate_metrics``), and
one ``screening`` child run holding every cheap evaluation (hundreds of them: a run each
would bury the candidates in the UI).

Everything goes through ``MlflowClient`` with explicit run ids (no fluent global state),
so candidates finishing on worker threads can be logged safely.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    Param,
)
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from pipeline.records.filelock import locked
from pipeline.records.mlmodel import SaveModel
from pipeline.records.redact import credentials_to_env, redact_data
from pipeline.records.results import CandidateResult, ScreeningResult
from pipeline.records.store import ARTIFACTS_FOLDER, relocate_store, sqlite_file

# Logged on every candidate child run and on the `baseline` child run (units: README).
CANDIDATE_METRICS = (
    "accuracy",
    "speedup",
    "latency_ms",
    "baseline_latency_ms",
    "flops",
    "param_count",
    "bytes",
    "compression",
    "seconds",
)

# MLflow 3 opens an experiment on its GenAI overview unless told it holds model training
# runs; with this tag the experiment opens on its runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def achieved_key(kind: str) -> str:
    """The metric compared with the target: ``achieved_speedup`` or ``achieved_compression``."""
    return f"achieved_{kind}"


def achieved_low_key(kind: str) -> str:
    """The metric feasibility is judged on: the achieved figure's interval low end."""
    return f"{achieved_key(kind)}_low"


# Per runtime: the 95% interval of its speedup, as ``speedup_low.<runtime>`` and
# ``speedup_high.<runtime>`` (beside ``speedup.<runtime>``, so the compare view lines
# them up; ``pipeline.job.resume`` reads them back). Every runtime with a speedup has
# both keys, so every child run (the baseline too) has the same metric keys.
INTERVAL_PREFIXES = ("speedup_low.", "speedup_high.")
ONNX_CHECK_KEY = "onnx_check_speedup"


def candidate_metrics(r: CandidateResult, kind: str, feasible: bool) -> dict[str, float | None]:
    """The metrics of one child run (a candidate or the baseline): one set of keys for all
    (``screening_score`` only where the setting was screened: the baseline never is)."""
    metrics: dict[str, float | None] = {m: getattr(r, m) for m in CANDIDATE_METRICS}
    metrics[achieved_key(kind)] = r.achieved(kind)
    metrics[achieved_low_key(kind)] = r.achieved_low(kind)
    metrics["feasible"] = float(feasible)
    metrics.update({f"speedup.{k}": v for k, v in r.speedups.items()})
    for runtime, point in r.speedups.items():
        # No interval recorded (the baseline, an older result): the point, no noise known.
        low, high = r.speedup_intervals.get(runtime, (point, point))
        metrics[f"speedup_low.{runtime}"] = low
        metrics[f"speedup_high.{runtime}"] = high
    if r.screening_score is not None:
        metrics["screening_score"] = r.screening_score
    if r.onnx_check is not None:  # its speedup on onnxruntime (target.onnx_not_slower)
        metrics[ONNX_CHECK_KEY] = r.onnx_check
    return metrics


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b": "value"} with values as strings (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            out[name] = text[:6000]
    return out


def provenance_tags() -> dict[str, str]:
    """Who ran what: MLflow's source, user and (in a git checkout) commit tags."""
    try:
        user = getpass.getuser()
    except Exception:  # no user database entry (some containers)
        user = os.environ.get("USER", "unknown")
    tags = {
        "mlflow.source.name": "compressflow:pipeline.flows.compress",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": user,
    }
    commit = _git_commit(Path(__file__).resolve().parents[2])
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit(folder: Path) -> str | None:
    if not (folder / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


SCREENINGS_FILE = "screenings.json"  # every screening row so far (what a resume reads)
SCREENINGS_TABLE = "screenings_table.json"  # MLflow's table artifact (log_table), appended


class Tracker:
    def __init__(self, uri: str, experiment: str) -> None:
        uri = credentials_to_env(uri)  # a server's password is never recorded or shown
        # Screening rows logged so far, per screening run (rewritten whole each batch).
        self._screenings: dict[str, dict[int, ScreeningResult]] = {}
        self._screenings_lock = threading.Lock()
        db_file = sqlite_file(uri)
        if db_file is None:
            self._open(uri, experiment, None)
            return
        db_file.parent.mkdir(parents=True, exist_ok=True)
        # Jobs started together on a fresh store would race through MLflow's table creation
        # and migrations (one dies with a migration error), so they take turns here.
        with locked(db_file.with_name(db_file.name + ".lock")):
            relocate_store(db_file)  # a store that was moved keeps its artifacts readable
            self._open(uri, experiment, db_file)

    def _open(self, uri: str, experiment: str, db_file: Path | None) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
            if not all(found.tags.get(k) == v for k, v in EXPERIMENT_KIND.items()):
                for key, value in EXPERIMENT_KIND.items():
                    self.client.set_experiment_tag(self.experiment_id, key, value)
        else:
            # A local store keeps its artifacts beside its database, so the whole record
            # of a job is one folder (the demo's lives inside the checkout).
            location = (db_file.parent / ARTIFACTS_FOLDER).as_uri() if db_file else None
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=location, tags=EXPERIMENT_KIND
                )
            except MlflowException:  # another job (on a server store) created it first
                again = self.client.get_experiment_by_name(experiment)
                if again is None:
                    raise
                self.experiment_id = again.experiment_id
        self._provenance = provenance_tags()

    # -- parent ---------------------------------------------------------------------
    def start_job(self, name: str, spec: dict[str, Any]) -> str:
        spec = redact_data(spec)  # params and spec.json: no credentials in any URI
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={"compressflow.kind": "job", **self._provenance},
        )
        params = [Param(k, v) for k, v in flatten(spec, "spec.").items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        self.log_dict(run.info.run_id, spec, "spec.json")
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float | None], step: int = 0) -> None:
        clean = [Metric(k, float(v), _now_ms(), step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(clean), 1000):
            self.client.log_batch(run_id, metrics=clean[i : i + 1000])

    def log_dict(self, run_id: str, data: Any, name: str) -> None:
        self.client.log_dict(run_id, data, name)

    def log_file(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def describe(self, run_id: str, text: str) -> None:
        """The run's description, shown at the top of its page in the MLflow UI."""
        self.client.set_tag(run_id, "mlflow.note.content", text)

    def log_dataset(
        self,
        run_id: str,
        name: str,
        digest: str,
        source: dict[str, Any],
        profile: dict[str, Any],
        context: str = "training",
    ) -> None:
        """The job's data as an MLflow dataset input (what ``mlflow.log_input`` records)."""
        dataset = Dataset(
            name=name,
            digest=digest,
            source_type="compressflow",
            source=json.dumps(source),
            profile=json.dumps(profile),
        )
        tags = [InputTag("mlflow.data.context", context)]
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])

    def finish(self, run_id: str, failed: bool = False, status: str | None = None) -> None:
        """End the parent run: FINISHED, FAILED, or ``status`` (KILLED: Ctrl-C, SIGTERM)."""
        self.client.set_terminated(run_id, status or ("FAILED" if failed else "FINISHED"))

    # -- children -------------------------------------------------------------------
    def _child(
        self, parent_run_id: str, name: str, kind: str, seconds: float, tags: dict[str, str]
    ) -> tuple[str, int]:
        """A child run spanning the ``seconds`` that just ended; returns (id, end ms)."""
        end = _now_ms()
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            start_time=end - int(round(seconds * 1000)),
            tags={
                "mlflow.parentRunId": parent_run_id,
                "compressflow.kind": kind,
                **self._provenance,
                **tags,
            },
        )
        return run.info.run_id, end

    def log_baseline(
        self, parent_run_id: str, baseline: CandidateResult, kind: str, reuse: bool = False
    ) -> str:
        """The baseline as a child run named ``baseline``, with the candidates' metric keys
        (``reuse``: keep the one a resumed job already has)."""
        if reuse:
            found = self.children(parent_run_id, kind="baseline")
            if found:
                return found[0].info.run_id
        run_id, end = self._child(
            parent_run_id, "baseline", "baseline", baseline.seconds, {"status": baseline.status}
        )
        self.log_metrics(run_id, {**candidate_metrics(baseline, kind, False), "is_best": 0.0})
        if baseline.curves:
            self._log_curves(run_id, "pretrain", baseline.curves)
        self.client.set_terminated(run_id, "FINISHED", end_time=end)
        return run_id

    def log_candidate(
        self, parent_run_id: str, result: CandidateResult, feasible: bool, kind: str = "speedup"
    ) -> str:
        run_id, end = self._child(
            parent_run_id,
            f"round-{result.round:03d}",
            "candidate",
            result.seconds,
            {
                "status": result.status,
                "feasible": str(feasible).lower(),
                "learners": ",".join(result.learners),
                "source": result.source,
            },
        )
        params = [Param(k, str(v)) for k, v in result.params.items()]
        params.append(Param("round", str(result.round)))
        self.client.log_batch(run_id, params=params)
        self.log_metrics(run_id, {**candidate_metrics(result, kind, feasible), "is_best": 0.0})
        self._log_curves(run_id, "finetune", result.curves)
        if result.records:
            self.log_dict(run_id, result.records, "per_layer_settings.json")
        for tag in ("model_path", "deployable_path"):
            if getattr(result, tag):
                self.client.set_tag(run_id, tag, getattr(result, tag))
        if result.error:
            self.client.set_tag(run_id, "error", result.error[:5000])
            self.client.log_text(run_id, result.error, "error.txt")
        if result.deployable_path and os.path.exists(result.deployable_path):
            self.log_file(run_id, result.deployable_path, "deployable")
        self.client.set_terminated(
            run_id, "FINISHED" if result.status == "ok" else "FAILED", end_time=end
        )
        return run_id

    def _log_curves(self, run_id: str, prefix: str, curves: dict[str, list[float]]) -> None:
        now = _now_ms()
        curve = [
            Metric(f"{prefix}.{name}", float(v), now, step)
            for name, values in curves.items()
            for step, v in enumerate(values)
        ]
        for i in range(0, len(curve), 1000):
            self.client.log_batch(run_id, metrics=curve[i : i + 1000])

    # -- screenings -----------------------------------------------------------------
    def start_screening(self, parent_run_id: str) -> str:
        """The job's one ``screening`` child run (the one it already has, when resumed)."""
        found = self.children(parent_run_id, kind="screening")
        if found:
            return str(found[0].info.run_id)
        run_id, _ = self._child(parent_run_id, "screening", "screening", 0.0, {})
        return run_id

    def log_screenings(self, run_id: str, rows: list[ScreeningResult]) -> None:
        """One batch of screenings: step metrics ``screen_accuracy``, ``screen_predicted``,
        ``screen_achieved`` at step = the row's index (charted in the run's Model metrics
        view), ``screenings.json`` rewritten with every row so far (a row logged again,
        e.g. once promoted, replaces its earlier self there), and the new rows appended to
        MLflow's table artifact. The run ends FINISHED at each batch's time, so its
        duration spans the screenings and a killed job leaves no run RUNNING."""
        with self._screenings_lock:
            recorded = self._screenings.get(run_id)
            if recorded is None:
                recorded = {r.index: r for r in self._read_screenings(run_id)}
                self._screenings[run_id] = recorded
            new = [r for r in rows if r.index not in recorded]
            recorded.update({r.index: r for r in rows})
            every = [recorded[i].to_dict() for i in sorted(recorded)]
        now = _now_ms()
        metrics = [
            Metric(f"screen_{name}", float(value), now, r.index)
            for r in new
            for name, value in (
                ("accuracy", r.accuracy),
                ("predicted", r.predicted),
                ("achieved", r.achieved),
            )
            if value is not None
        ]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])
        self.log_dict(run_id, every, SCREENINGS_FILE)
        if new:
            self.client.log_table(run_id, screening_table(new), SCREENINGS_TABLE)
        self.client.set_terminated(run_id, "FINISHED", end_time=now)

    def _read_screenings(self, run_id: str) -> list[ScreeningResult]:
        names = {a.path for a in self.client.list_artifacts(run_id)}
        if SCREENINGS_FILE not in names:
            return []
        with tempfile.TemporaryDirectory(prefix="compressflow-screenings-") as tmp:
            local = Path(self.client.download_artifacts(run_id, SCREENINGS_FILE, tmp))
            return [ScreeningResult.from_dict(row) for row in json.loads(local.read_text())]

    def recorded_screenings(self, parent_run_id: str) -> tuple[str | None, list[ScreeningResult]]:
        """The job's screening run id and every screening row it recorded, by index
        (``(None, [])`` when it has none yet), for a resumed job to continue from."""
        found = self.children(parent_run_id, kind="screening")
        if not found:
            return None, []
        run_id = str(found[0].info.run_id)
        rows = self._read_screenings(run_id)
        with self._screenings_lock:
            self._screenings[run_id] = {r.index: r for r in rows}
        return run_id, sorted(rows, key=lambda r: r.index)

    def children(self, parent_run_id: str, kind: str = "candidate") -> list[Any]:
        """The job's child runs of one kind (``candidate``, ``baseline`` or ``screening``)."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.mlflow.parentRunId = '{parent_run_id}' "
                f"and tags.`compressflow.kind` = '{kind}'"
            ),
            max_results=10000,
        )

    def recorded_baseline(self, parent_run_id: str) -> dict[str, float] | None:
        """The metrics of the job's ``baseline`` child run (``None`` if it has none)."""
        found = self.children(parent_run_id, kind="baseline")
        return dict(found[0].data.metrics) if found else None

    def child_ids(self, parent_run_id: str) -> dict[int, str]:
        """Round -> run id of the job's candidate runs."""
        return {
            int(r.data.params["round"]): r.info.run_id
            for r in self.children(parent_run_id)
            if "round" in r.data.params
        }

    def describe_version(
        self, name: str, version: str | int, text: str, tags: dict[str, Any]
    ) -> None:
        """A registered version's description, and tags linking it to its runs."""
        self.client.update_model_version(name, str(version), description=text)
        for key, value in tags.items():
            if value is not None:
                self.client.set_model_version_tag(name, str(version), key, str(value))

    def mark_best(
        self, parent_run_id: str, best_round: int, front: dict[int, list[str]] | None = None
    ) -> str | None:
        """Tag the winning child (``best: true``), log ``is_best`` 1/0 on every candidate,
        and record ``best_run_id`` and ``best_round`` on the parent; returns the winner's id.
        ``front`` (a list target): round -> the targets it won (``["2x", "3x"]``); each
        of those runs is a winner too and is tagged ``best_for`` with its targets."""
        front = front or {}
        best_id = None
        for run in self.children(parent_run_id):
            round_ = int(run.data.params.get("round", -1))
            is_best = round_ == best_round or round_ in front
            self.log_metrics(run.info.run_id, {"is_best": float(is_best)})
            if is_best:
                self.client.set_tag(run.info.run_id, "best", "true")
            if round_ in front:
                self.client.set_tag(run.info.run_id, "best_for", ",".join(front[round_]))
            if round_ == best_round:
                best_id = run.info.run_id
        if best_id is not None:
            self.set_tags(parent_run_id, {"best_run_id": best_id, "best_round": best_round})
        if front:
            won = {label: r for r, labels in front.items() for label in labels}
            self.set_tags(parent_run_id, {"front_rounds": json.dumps(won)})
        return best_id

    # -- models ---------------------------------------------------------------------
    def log_model(self, run_id: str, save: SaveModel, name: str = "best_model") -> str:
        """A model logged to ``run_id`` as an MLflow logged model of the job's experiment
        (what ``mlflow.<flavour>.log_model`` does, without its global tracking URI and
        active experiment): ``save`` writes the model folder, which is uploaded; returns
        the model's id (its URI is ``models:/<id>``)."""
        params = {k: str(v) for k, v in self.client.get_run(run_id).data.params.items()}
        logged = self.client.create_logged_model(
            self.experiment_id,
            name=name,
            source_run_id=run_id,
            params=params,
            tags=self._provenance,  # who logged it, as on the job's runs
        )
        model_id = logged.model_id
        metadata = Model(
            artifact_path=logged.artifact_location,
            model_uuid=model_id,
            run_id=run_id,
            model_id=model_id,
        )
        try:
            with tempfile.TemporaryDirectory(prefix="compressflow-model-") as tmp:
                folder = str(Path(tmp, "model"))
                save(folder, metadata)
                self.client.log_model_artifacts(model_id, folder)
            self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
        except Exception:
            self.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(model_id, LoggedModelStatus.READY)
        return str(model_id)

    def register(self, name: str, model_id: str, run_id: str, aliases: list[str]) -> Any:
        """A new version of the registered model ``name`` (created on first use) from a
        logged model, its source run ``run_id``, with ``aliases`` pointed at it; returns
        the version."""
        try:
            self.client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise  # another job registering the same name first is fine
        # The logged model's own location as the source: given ``models:/<id>``, MLflow's
        # store looks the id up through the global tracking URI, not this client's.
        source = self.client.get_logged_model(model_id).artifact_location
        version = self.client.create_model_version(
            name, source, run_id=run_id, model_id=model_id
        ).version
        self.set_aliases(name, version, aliases)
        return version

    def set_aliases(self, name: str, version: str | int, aliases: list[str]) -> None:
        """Point each alias of the registered model ``name`` at ``version`` (an alias
        moves: a later job's winner at the same target takes it over)."""
        for alias in aliases:
            self.client.set_registered_model_alias(name, alias, str(version))

    def history(self, parent_run_id: str) -> list[dict[str, Any]]:
        """The candidate runs recorded under a job (for resuming its search)."""
        return [
            {
                "run_id": r.info.run_id,
                "params": dict(r.data.params),
                "metrics": dict(r.data.metrics),
                "tags": dict(r.data.tags),
            }
            for r in self.children(parent_run_id)
        ]


def screening_table(rows: list[ScreeningResult]) -> dict[str, list[Any]]:
    """Rows as columns for MLflow's table view: the row's figures, then one column per
    setting (``params.<name>``; values as text, as MLflow shows params)."""
    names = sorted({name for r in rows for name in r.params})
    columns: dict[str, list[Any]] = {
        key: [getattr(r, key) for r in rows]
        for key in ("index", "status", "accuracy", "predicted", "achieved", "promoted_round")
    }
    columns["seconds"] = [round(r.seconds, 3) for r in rows]
    columns["error"] = [r.error or "" for r in rows]
    for name in names:
        columns[f"params.{name}"] = [str(r.params.get(name, "")) for r in rows]
    return columns


def _now_ms() -> int:
    return int(time.time() * 1000)
