"""A finished job as an object: its summary, records and winning model."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from compressflow.errors import SpecError
from learners.formats.onnx_module import OnnxModule
from pipeline.job.modelfile import load_saved
from pipeline.job.render import table
from pipeline.records import storage

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


@dataclass
class Result:
    """``summary`` is the job's summary.json; ``folder`` its run folder when local."""

    summary: dict[str, Any]
    folder: Path | None = None
    _best: nn.Module | None = field(default=None, repr=False)

    @property
    def met(self) -> bool:
        return bool(self.summary["target_met"])

    @property
    def candidates(self) -> list[dict[str, Any]]:
        return list(self.summary.get("candidates", []))

    @property
    def mlflow_run_id(self) -> str:
        return str(self.summary["mlflow"]["parent_run_id"])

    @property
    def artifacts(self) -> dict[str, str]:
        return dict(self.summary.get("artifacts", {}))

    @property
    def plot(self) -> Path | None:
        """The accuracy-against-target plot of every candidate (a PNG), when local."""
        path = self.folder / "candidates.png" if self.folder else None
        return path if path and path.is_file() else None

    @property
    def best(self) -> nn.Module | None:
        """The winner, loaded on first use: rebuilt as an ``nn.Module`` from the job's
        records where its model and data sources are reachable (always in the process
        that ran it), else its exported ONNX file run by onnxruntime. ``None``: no
        candidate met the accuracy floor."""
        if self._best is None and self.summary.get("best"):
            self._best = _load_best(self.artifacts)
        return self._best

    def report(self) -> str:
        """The table ``compressflow run`` prints at the end."""
        return table(self.summary)

    def __repr__(self) -> str:
        t = self.summary["target"]
        state = "met" if self.met else "not met"
        return (
            f"Result(job={self.summary['job']!r}, target {t['kind']} >= {t['value']} on "
            f"{t['runtime']}: {state}, mlflow_run_id={self.mlflow_run_id!r})"
        )


def _load_best(artifacts: dict[str, str]) -> nn.Module:
    path = artifacts.get("best_model")
    if path and Path(path).is_file():
        try:
            return load_saved(path)
        except (ValueError, OSError, AttributeError, ImportError):
            pass  # its sources are not reachable here: the exported file still runs
    onnx = artifacts.get("best_onnx")
    if not onnx:
        raise SpecError("the job recorded no model file for its winner")
    return OnnxModule(storage.fetch(onnx).read_bytes()).eval()


def load(run_id_or_folder: str | Path, tracking_uri: str | None = None) -> Result:
    """A past job's Result: from its run folder (``<output>/<job>/<run id>``, or a
    summary.json in it), else from the MLflow parent run of that id in ``tracking_uri``
    (default ``sqlite:///mlflow.db``, as jobs record by default)."""
    path = Path(run_id_or_folder)
    if path.is_file():
        path = path.parent
    if path.is_dir():
        if not (path / "summary.json").is_file():
            raise SpecError(f"{path} holds no summary.json: give a job run's folder")
        return Result(json.loads((path / "summary.json").read_text()), path)
    return _from_mlflow(str(run_id_or_folder), tracking_uri or DEFAULT_TRACKING_URI)


def _from_mlflow(run_id: str, tracking_uri: str) -> Result:
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory(prefix="compressflow-load-") as tmp:
        try:
            local = MlflowClient(tracking_uri).download_artifacts(run_id, "summary.json", tmp)
            summary = json.loads(Path(local).read_text())
        except Exception as err:
            raise SpecError(
                f"{run_id!r} is neither a job run folder nor a job's MLflow run with a "
                f"summary.json in {tracking_uri}: {err}"
            ) from None
    return Result(summary, run_folder(summary))


def run_folder(summary: dict[str, Any]) -> Path | None:
    """The local run folder the summary's files are in (its baseline ONNX file is in
    ``<run folder>/baseline/``); ``None`` for an s3:// output or a folder gone."""
    onnx = summary.get("artifacts", {}).get("baseline_onnx")
    if not onnx or storage.is_s3(onnx):
        return None
    folder = Path(onnx).parents[1]
    return folder if folder.is_dir() else None
