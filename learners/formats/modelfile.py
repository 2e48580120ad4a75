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

What the job writes for itself (``save_model``/``load_model``): a module's tensors in
safetensors plus, where a module holds non-tensor state, that state as its own file (an
int8 ONNX graph as ONNX, a packed model's codecs as JSON). The architecture is never
stored: it is rebuilt from the model source and the learners' JSON replay records.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learners.formats.onnx_module import OnnxModule
from learners.formats.packed import PackedModel, TensorCodec

TRUST_FLAG = "--trust-pickled-models"
TRUST_FIELD = "trust_pickled_models"
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
    return ExportedModule(program.module())


class ExportedModule(nn.Module):
    """A ``torch.export`` program's module as a plain ``nn.Module``: the exported graph
    runs as exported (its train/eval behaviour is fixed at export; torch refuses
    ``.eval()`` on it), so ``train``/``eval`` here only set the flag."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.program(*args, **kwargs)

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self


_TORCH_ENV = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")


def save_model(model: nn.Module, path: str | Path) -> Path:
    """``path`` (safetensors): every tensor of the state dict (shared ones once); beside it
    ``<stem>.graph.onnx`` for an ``OnnxModule`` in the model and ``<stem>.codecs.json`` for
    a ``PackedModel``'s codecs. No architecture: the caller rebuilds it (model source plus
    replay records) and hands it to ``load_model``. Returns ``path``."""
    from safetensors.torch import save_model as save_tensors

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(model, str(path), metadata={VERSIONS_KEY: json.dumps(state_versions(model))})
    graphs = [m for m in model.modules() if isinstance(m, OnnxModule)]
    if len(graphs) > 1:
        raise ValueError("a model with more than one ONNX graph cannot be saved")
    for graph in graphs:
        _graph_file(path).write_bytes(graph.onnx_bytes)
    packed = [m for m in model.modules() if isinstance(m, PackedModel)]
    if len(packed) > 1:
        raise ValueError("a model with more than one PackedModel cannot be saved")
    for p in packed:
        codecs = {name: asdict(codec) for name, codec in p.codecs.items()}
        _codecs_file(path).write_text(json.dumps(codecs, indent=1, sort_keys=True))
    return path


def load_model(template: nn.Module, path: str | Path) -> nn.Module:
    """Fill ``template`` (the rebuilt architecture) from ``save_model``'s files, strictly:
    a missing, extra or differently shaped tensor is an error. Returns it in eval mode."""
    path = Path(path)
    graph, codecs = _graph_file(path), _codecs_file(path)
    if graph.exists():
        for m in template.modules():
            if isinstance(m, OnnxModule):
                m.onnx_bytes = graph.read_bytes()
                m._session = None
    if codecs.exists():
        saved = {k: TensorCodec(**v) for k, v in json.loads(codecs.read_text()).items()}
        for m in template.modules():
            if isinstance(m, PackedModel):
                m.codecs = saved
    try:
        _load_state(template, path)
    except RuntimeError as err:
        raise ValueError(f"the state in {path} does not fit the rebuilt model: {err}") from None
    return template.eval()


# Modules version their state dicts (``_version``, kept in the state dict's ``_metadata``)
# and some refuse to load without it: torchvision's MNASNet raises "version should be set
# to 1 or 2". safetensors keeps only tensors, so the versions travel in its header.
VERSIONS_KEY = "torch_state_dict_versions"


def state_versions(model: nn.Module) -> dict[str, Any]:
    """Each module's state-dict metadata (``{"version": n}``) by module name."""
    return dict(getattr(model.state_dict(), "_metadata", {}) or {})


def _load_state(template: nn.Module, path: Path) -> None:
    """Load ``path`` into ``template`` strictly, with the module versions saved in its
    header (a file without them loads as before). safetensors stores a tensor that
    several names share once: the other names get that tensor."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = collections.OrderedDict(load_file(str(path)))
    with safe_open(str(path), "pt") as f:
        header = f.metadata() or {}
    if VERSIONS_KEY in header:
        state._metadata = json.loads(header[VERSIONS_KEY])  # type: ignore[attr-defined]
    shared: dict[tuple[int, torch.dtype, tuple[int, ...]], list[str]] = {}
    for name, t in template.state_dict().items():
        shared.setdefault((t.data_ptr(), t.dtype, tuple(t.shape)), []).append(name)
    for names in shared.values():
        stored = [n for n in names if n in state]
        for n in names if stored else ():
            state.setdefault(n, state[stored[0]])
    template.load_state_dict(state, strict=True)


def saved_files(path: str | Path) -> list[Path]:
    """The files ``save_model`` wrote for ``path``."""
    path = Path(path)
    return [p for p in (path, _graph_file(path), _codecs_file(path)) if p.exists()]


def _graph_file(path: Path) -> Path:
    return path.with_name(path.stem + ".graph.onnx")


def _codecs_file(path: Path) -> Path:
    return path.with_name(path.stem + ".codecs.json")
