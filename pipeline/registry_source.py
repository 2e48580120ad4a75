"""Model source ``models:/<name>/<version|alias|latest>``: a model registered in MLflow,
e.g. the latest version re-compressed every night by a scheduled deployment.

The registry is the MLflow server named by ``MLFLOW_TRACKING_URI`` (the standard
variable, set on the worker or in the deployment's job variables): a model source is
resolved before the job's own tracking store is opened, and may live in another one.
"""

from __future__ import annotations

import os
import tempfile

from torch import nn


def load_registered(uri: str, tracking_uri: str | None = None) -> nn.Module:
    """The PyTorch model behind a ``models:/`` URI (one logged with ``mlflow.pytorch``)."""
    import mlflow.artifacts
    import mlflow.pytorch

    from pipeline.models import ModelSourceError

    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise ModelSourceError(
            f"model {uri}: set MLFLOW_TRACKING_URI to the MLflow server that holds the registry"
        )
    with tempfile.TemporaryDirectory(prefix="compressflow-registry-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri, registry_uri=tracking_uri
            )
            model = mlflow.pytorch.load_model(local, map_location="cpu")
        except Exception as err:
            raise ModelSourceError(
                f"model {uri} cannot be loaded from the registry at {tracking_uri}: {err}"
            ) from None
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"model {uri} is a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()
