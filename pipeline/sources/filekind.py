"""What a model or weights file really is, read from its bytes (not its name), so that an
empty, truncated, corrupt or mislabelled file is named as such before a loader reports
something misleading ("a pickled Python object" for random bytes, a Rust traceback for
a truncated safetensors file)."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

# What each kind is called in a message.
NAMES = {
    "pt2": "a torch.export archive (.pt2)",
    "torch": "a torch.save archive",
    "pickle": "a legacy torch.save / pickle file",
    "safetensors": "a safetensors file",
    "onnx": "an ONNX model",
}
SUFFIXES = {".pt2": "pt2", ".safetensors": "safetensors", ".onnx": "onnx"}
WEIGHTS = ("safetensors", "torch", "pickle")
MODELS = ("pt2", "onnx", "torch", "pickle", "safetensors")  # safetensors: said elsewhere
_SAFETENSORS_HEADER_MAX = 100 * 2**20


class FileKindError(ValueError):
    """A file that is not what it must be; the message names what it is."""


def _safetensors(path: Path, head: bytes, size: int) -> str | None:
    """ "safetensors", "truncated" or None (not one)."""
    if len(head) < 9 or head[8:9] != b"{":
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n > _SAFETENSORS_HEADER_MAX:
        return None
    if size < 8 + n:
        return "truncated"
    with path.open("rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "truncated"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return "truncated" if size < 8 + n + max(ends, default=0) else "safetensors"


def _onnx(path: Path) -> bool:
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception:  # noqa: BLE001 - any decode or checker failure: not a usable ONNX file
        return False
    return len(model.graph.node) > 0


def identify(path: Path) -> str:
    """One of ``NAMES``' kinds, or "empty", "truncated", "corrupt" or "unknown"."""
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "truncated"
        return "pt2" if any(n.endswith("/archive_format") for n in names) else "torch"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    found = _safetensors(path, head, size)
    if found is not None:
        return found
    if _onnx(path):
        return "onnx"
    return "corrupt" if path.suffix.lower() == ".onnx" else "unknown"


def check(path: Path, role: str, allowed: tuple[str, ...], shown: str | None = None) -> str:
    """The kind of ``path`` for ``role`` ("weights", "model file"); ``FileKindError`` for
    an empty, truncated, unknown or mislabelled file, naming what it is."""
    shown = shown or str(path)
    kind = identify(path)
    if kind == "empty":
        raise FileKindError(f"{role} {shown} is empty (0 bytes): the copy or download failed")
    if kind == "truncated":
        what = NAMES[SUFFIXES.get(path.suffix.lower(), "torch")]
        raise FileKindError(
            f"{role} {shown} is truncated: it begins as {what} but ends early (an "
            "interrupted copy or download?): copy it again"
        )
    if kind == "corrupt":
        raise FileKindError(
            f"{role} {shown} does not parse as an ONNX model (truncated, corrupt or not "
            "ONNX at all): export or copy it again"
        )
    if kind not in allowed:
        accepted = ", ".join(NAMES[k] for k in allowed if k != "pickle")
        raise FileKindError(
            f"{role} {shown} holds none of what compressflow reads there ({accepted}): "
            "check the path"
        )
    labelled = SUFFIXES.get(path.suffix.lower())
    # Loaders are chosen by the name: a safetensors file must be called .safetensors.
    if (labelled and labelled != kind) or (kind == "safetensors" and not labelled):
        raise FileKindError(
            f"{role} {shown} is named {path.suffix or 'without a suffix'} but holds "
            f"{NAMES[kind]}: rename it to match what it holds"
        )
    return kind
