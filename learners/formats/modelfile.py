"""Model files that load without running code, and the job's own model folders.

What a user may hand over (``load_model_file``):

- ``.pt2``: a ``torch.export`` program. Loaded with torch's loader with every pickle path
  shut: the archive is refused if it holds pickled weights, constants or custom objects,
  and any ``torch.load`` inside runs with ``weights_only`` forced on.
- ``.onnx``: an ONNX graph, run by onnxruntime (``OnnxModule``): it can be timed and
  int8-quantised, but it has no float weights to prune or fine-tune.
- a pickled full module (``torch.save(model)``, ``.pt``/``.pth``): unpickling runs
  whatever code the file names, so it is refused unless the caller trusts it
  (``trust_pickled=True``: the job's ``--trust-pickled-models``).
- ``.safetensors``: weights only; they need an architecture (a factory or zoo name).

What the job writes for itself (``save_state``/``load_state``): a module's tensors in
safetensors (``state.safetensors``) plus, for a module that holds non-tensor state (an
int8 ONNX graph), that state as its own file (``graph.onnx``). The architecture is never
stored: it is rebuilt from the model source and the learners' JSON replay records.
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
from pathlib import Path

import torch
from torch import nn

from learners.formats.onnx_module import OnnxModule

TRUST_FLAG = "--trust-pickled-models"
TRUST_FIELD = "trust_pickled_models"
STATE_FILE = "state.safetensors"
GRAPH_FILE = "graph.onnx"
_ENV_LOCK = threading.Lock()


class UntrustedModelError(ValueError):
    """A model file that would run code when loaded, and the caller did not trust it."""


def refusal(path: str | Path, what: str) -> str:
    return (
        f"model file {path} is {what}: loading it would run any code it names. Hand over a "
        "torch.export program (.pt2), an ONNX file, or safetensors weights with a factory "
        f"(model.weights); or, if you trust the file, pass {TRUST_FLAG} "
        f"(job file: {TRUST_FIELD}: true)"
    )


def load_model_file(path: str | Path, trust_pickled: bool = False) -> nn.Module:
    """A model from a file, in eval mode; pickles only with ``trust_pickled``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxModule(path.read_bytes()).eval()
    if suffix == ".safetensors":
        raise ValueError(
            f"{path} holds weights only: give an architecture as the model source (a zoo "
            "name or package.module:factory) and this file as model.weights"
        )
    if _is_pt2(path):
        return load_pt2(path, trust_pickled)
    if not trust_pickled:
        # A weights-only look first: safe, and it tells a state dict from a module.
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise UntrustedModelError(refusal(path, "a pickled Python object")) from None
        if isinstance(obj, dict):
            raise ValueError(
                f"{path} holds a state dict (weights only): give an architecture as the "
                "model source (a zoo name or package.module:factory) and this file as "
                "model.weights"
            )
        if isinstance(obj, nn.Module):  # unreachable with weights_only, kept for clarity
            return obj.eval()
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a model")
    model = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user
    if not isinstance(model, nn.Module):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def _is_pt2(path: Path) -> bool:
    if path.suffix.lower() == ".pt2":
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/archive_format") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def pt2_pickle_parts(path: str | Path) -> list[str]:
    """What in a ``torch.export`` archive would be unpickled by ``torch.export.load``:
    pickled weights or constants, TorchScript/opaque custom objects, legacy ``.pt`` blobs."""
    parts: list[str] = []
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            base = name.rsplit("/", 1)[-1]
            if "/data/weights/" in name and base.endswith(".pt"):
                parts.append(name)
            if "/data/constants/" in name and (
                base.endswith(".pt") or base.startswith(("custom_obj", "opaque_obj"))
            ):
                parts.append(name)
            if base.endswith("_config.json") and "/data/" in name:
                config = json.loads(z.read(name)).get("config", {})
                parts += [f"{name}:{k}" for k, v in config.items() if v.get("use_pickle")]
    return parts


def load_pt2(path: str | Path, trust_pickled: bool = False) -> nn.Module:
    """The module of a ``torch.export`` program (``torch.export.save``)."""
    try:
        parts = pt2_pickle_parts(path)
    except (zipfile.BadZipFile, ValueError, AttributeError) as err:
        raise ValueError(f"{path} is not a torch.export archive: {err}") from None
    if parts and not trust_pickled:
        raise UntrustedModelError(
            refusal(path, f"a torch.export archive with pickled parts ({parts[0]})")
        )
    if trust_pickled:
        program = torch.export.load(str(path))
    else:
        # Sample inputs and the like go through torch.load, which falls back to
        # weights_only=False on failure: forced on here (process-wide, hence the lock).
        with _ENV_LOCK:
            saved = {k: os.environ.pop(k, None) for k in _TORCH_ENV}
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
            try:
                program = torch.export.load(str(path))
            finally:
                for k, v in saved.items():
                    os.environ.pop(k, None)
                    if v is not None:
                        os.environ[k] = v
    return program.module()


_TORCH_ENV = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")


def save_state(model: nn.Module, folder: str | Path) -> Path:
    """``folder``/state.safetensors (every tensor of the state dict, shared ones once), plus
    ``graph.onnx`` for an ``OnnxModule`` anywhere in the model. Returns ``folder``."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / STATE_FILE))
    graphs = [m for m in model.modules() if isinstance(m, OnnxModule)]
    if len(graphs) > 1:
        raise ValueError("a model with more than one ONNX graph cannot be saved")
    for graph in graphs:
        (folder / GRAPH_FILE).write_bytes(graph.onnx_bytes)
    return folder


def load_state(model: nn.Module, folder: str | Path) -> nn.Module:
    """Fill ``model`` (the rebuilt architecture) from ``save_state``'s files, strictly:
    a key or shape that differs is an error. Returns the model in eval mode."""
    from safetensors.torch import load_model

    folder = Path(folder)
    graph = folder / GRAPH_FILE
    if graph.exists():
        for m in model.modules():
            if isinstance(m, OnnxModule):
                m.onnx_bytes = graph.read_bytes()
                m._session = None
    missing, unexpected = load_model(model, str(folder / STATE_FILE), strict=True)
    if missing or unexpected:  # strict raises first; kept for safetensors versions that don't
        raise ValueError(f"state in {folder} does not fit: missing {missing}, extra {unexpected}")
    return model.eval()
