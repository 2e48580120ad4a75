"""Model sources: a zoo name, ``package.module:factory`` (+ optional weights), a saved
full-model file, or any of those files behind an ``s3://`` URI."""

from __future__ import annotations

import importlib
import inspect
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learners.formats.modelfile import UntrustedModelError, load_model_file, refusal
from pipeline.records import storage
from pipeline.sources import filekind, zoo
from pipeline.sources.guard import UserCodeExit, guarded


class ModelSourceError(ValueError):
    """A model source that cannot be built or loaded; the message says why."""


def _call_factory(factory, num_classes: int, in_channels: int, options: dict[str, Any]):
    """Call a user factory with its options, plus ``num_classes`` and ``in_channels`` only
    where its signature names them (a ``**kwargs`` factory would silently swallow them)."""
    try:
        accepted = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        accepted = set()  # a builtin or C callable: options only
    kwargs = dict(options)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if key not in kwargs and key in accepted:
            kwargs[key] = value
    return factory(**kwargs)


def load_weights(model: nn.Module, weights: str) -> nn.Module:
    """Load a state dict from safetensors or a torch file (``weights_only=True``: a
    weights file never runs code). Keys must match the model exactly."""
    path = storage.fetch(weights)
    try:
        filekind.check(path, "weights", filekind.WEIGHTS, shown=weights)
    except filekind.FileKindError as err:
        raise ModelSourceError(str(err)) from None
    state: Any  # a state dict, once checked below; torch.load may give anything
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ModelSourceError(
                f"weights {weights}: not a state dict loadable with weights_only=True ({err})"
            ) from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelSourceError(f"weights {weights}: expected a state dict, got {type(state)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelSourceError(f"weights {weights} do not fit the model: {err}") from None
    return model


def build_model(
    source: str,
    num_classes: int,
    in_channels: int,
    options: dict[str, Any] | None = None,
    weights: str | None = None,
    trust_pickled: bool = False,
) -> tuple[nn.Module, bool]:
    """The model and whether it came with trained weights. A model file is a
    ``torch.export`` program or ONNX; a pickled module only with ``trust_pickled``."""
    options = options or {}
    if source.startswith("models:/"):
        return load_registered(source, trust_pickled=trust_pickled), True
    if source in zoo.names():
        try:
            model = zoo.build(source, num_classes=num_classes, in_channels=in_channels, **options)
        except TypeError as err:
            raise ModelSourceError(
                f"zoo model {source!r} does not take these options {sorted(options)}: {err}"
            ) from None
    elif ":" in source and not storage.is_s3(source) and not Path(source).exists():
        module_name, _, attr = source.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ModelSourceError(f"model factory {source!r} cannot be imported: {err}") from None
        try:
            with guarded(f"model factory {source}"):
                model = _call_factory(factory, num_classes, in_channels, options)
        except UserCodeExit as err:
            raise ModelSourceError(str(err)) from None
        except Exception as err:
            raise ModelSourceError(
                f"model factory {source} raised {type(err).__name__}: {err} "
                f"(it was called with options {sorted(options)})"
            ) from None
        if not isinstance(model, nn.Module):
            raise ModelSourceError(f"{source} returned {type(model).__name__}, not an nn.Module")
    else:
        try:
            path = storage.fetch(source)
            filekind.check(path, "model file", filekind.MODELS, shown=source)
            return load_model_file(path, trust_pickled), True
        except (storage.StorageError, ValueError) as err:
            raise ModelSourceError(str(err)) from None
        except Exception as err:
            raise ModelSourceError(f"model file {source} cannot be loaded: {err}") from None
    if weights:
        return load_weights(model, weights), True
    return model, False


def load_registered(
    uri: str, tracking_uri: str | None = None, trust_pickled: bool = False
) -> nn.Module:
    """The model behind a ``models:/<name>/<version|alias|latest>`` URI, e.g. the latest
    version re-compressed every night: a ``torch.export`` program (MLflow's ``pt2``
    serialization, as compressflow registers its winners) or an ONNX model load without
    pickle; a pickled ``mlflow.pytorch`` model only with ``trust_pickled``. The registry
    is the MLflow server named by ``MLFLOW_TRACKING_URI``: a model source is resolved
    before the job's own tracking store is opened, and may live in another one."""
    import mlflow.artifacts

    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise ModelSourceError(
            f"model {uri}: set MLFLOW_TRACKING_URI to the MLflow server that holds the registry"
        )
    with tempfile.TemporaryDirectory(prefix="compressflow-registry-") as tmp:
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri,
                    dst_path=tmp,
                    tracking_uri=tracking_uri,
                    registry_uri=tracking_uri,
                )
            )
            files = sorted(local.rglob("*.pt2")) + sorted(local.rglob("*.onnx"))
            if files:
                model = load_model_file(files[0], trust_pickled)
            elif not trust_pickled:
                raise UntrustedModelError(refusal(uri, "a pickled mlflow.pytorch model"))
            else:
                import mlflow.pytorch

                model = mlflow.pytorch.load_model(str(local), map_location="cpu")
        except UntrustedModelError as err:
            raise ModelSourceError(str(err)) from None
        except Exception as err:
            raise ModelSourceError(
                f"model {uri} cannot be loaded from the registry at {tracking_uri}: {err}"
            ) from None
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"model {uri} is a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


class OutputSelect(nn.Module):
    """Wraps a model whose forward returns a dict, a tuple or an output object (as Hugging
    Face models return ``.logits``) so that it returns the one tensor the job scores."""

    def __init__(self, model: nn.Module, key: str | int) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pick_output(self.model(x), self.key)


def pick_output(out: Any, key: str | int) -> torch.Tensor:
    if isinstance(key, int):
        return out[key]
    if isinstance(out, dict):
        return out[key]
    return getattr(out, key)


def output_key(out: Any, requested: str | int) -> str | int | None:
    """Which part of a forward's output holds the logits: None for a plain tensor; with
    ``auto``, ``.logits``/``["logits"]`` or the only tensor of a tuple; else as asked."""
    if requested != "auto":
        try:
            picked = pick_output(out, requested)
        except (KeyError, IndexError, AttributeError, TypeError):
            picked = None
        if not isinstance(picked, torch.Tensor):
            raise ModelSourceError(
                f"model.output {requested!r} does not select a tensor from the model's "
                f"output ({describe_output(out)})"
            )
        return requested
    if isinstance(out, torch.Tensor):
        return None
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return "logits"
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return "logits"
    if isinstance(out, tuple | list):
        tensors = [i for i, o in enumerate(out) if isinstance(o, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    raise ModelSourceError(
        f"the model returns {describe_output(out)}: set model.output to the key, attribute "
        "or index that holds the logits (e.g. output: logits, or output: 0)"
    )


def describe_output(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, dict):
        return f"a dict with keys {list(out)}"
    if isinstance(out, tuple | list):
        return f"a {type(out).__name__} of {len(out)} items"
    return f"a {type(out).__name__} object"


def with_logits_output(model: nn.Module, example: torch.Tensor, requested: str | int) -> nn.Module:
    """``model`` itself when its forward returns the logits tensor, else wrapped so it does."""
    with torch.no_grad():
        out = model.eval()(example)
    key = output_key(out, requested)
    return model if key is None else OutputSelect(model, key).eval()
