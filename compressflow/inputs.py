"""A notebook's objects as the spec's ``model`` and ``data`` fields.

Strings and mappings are spec fields as a job file writes them. An ``nn.Module`` or a
``(train, val, test)`` triple of DataLoaders or datasets is filed in
``pipeline.sources.inprocess`` and becomes a ``package.module:factory`` source, so the
same sources, preflight and flow serve it. A module's trained weights go to a weights
file, as a job file would name one: the baseline is then not trained again.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from compressflow.errors import SpecError
from pipeline.sources import inprocess

SPLITS = ("train", "val", "test")
# Weights of in-process models, for as long as this process lives (a rebuilt candidate
# reloads them); removed when the interpreter exits.
_SCRATCH = tempfile.TemporaryDirectory(prefix="compressflow-inputs-")


def slug(model: nn.Module) -> str:
    """An identifier from the model's class name: the default job name's model part."""
    return re.sub(r"\W+", "_", type(model).__name__).strip("_").lower() or "model"


def model_fields(model: Any, train_first: bool) -> dict[str, Any]:
    """The spec's ``model`` mapping for a module, a source string or a mapping."""
    if isinstance(model, str):
        return {"source": model}
    if isinstance(model, Mapping):
        return dict(model)
    if not isinstance(model, nn.Module):
        raise SpecError(
            f"model must be a torch.nn.Module, a model source string (zoo name, "
            f"package.module:factory, model file) or a mapping of model fields, got "
            f"{type(model).__name__}"
        )
    source = inprocess.put("model", slug(model), inprocess.copies(model))
    fields: dict[str, Any] = {"source": source}
    if not train_first:
        path = f"{_SCRATCH.name}/{source.rpartition(':')[2]}.pt"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
        fields["weights"] = path
    return fields


def data_fields(data: Any) -> dict[str, Any]:
    """The spec's ``data`` mapping for (train, val, test), a dict of them, a source string
    or a mapping of data fields (one with a ``source`` key)."""
    if isinstance(data, str):
        return {"source": data}
    if isinstance(data, Mapping) and "source" in data:
        return dict(data)
    if isinstance(data, Mapping):
        missing = [k for k in SPLITS if data.get(k) is None]
        if missing:
            raise SpecError(
                f"data: a dict of splits needs the keys train, val and test; missing {missing}"
            )
        splits = tuple(data[k] for k in SPLITS)
    elif isinstance(data, Sequence) and len(data) == 3:
        splits = tuple(data)
    else:
        raise SpecError(
            "data must be (train, val, test) DataLoaders or datasets, a dict with keys "
            "train, val and test, or a data source string (digits, cifar10:<dir>, "
            f"imagefolder:<dir>, package.module:callable); got {type(data).__name__}"
        )
    return {"source": inprocess.put("data", "given", lambda: splits)}
