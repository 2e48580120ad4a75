"""The packed container: a deployable format that really shrinks.

Weight-level learners (sparsity, quantisation-aware training, k-means weight sharing)
leave a dense PyTorch model whose weights have structure: zeros, integer grids, a few
shared values. ``PackedModel`` pairs that model with a ``TensorCodec`` per weight, and
``save_packed`` writes only what is needed to rebuild the exact tensors:

- positions of non-zeros as a bitmap or as run-length gaps (whichever is smaller),
- values as float32, as b-bit uniform codes with a per-channel scale, or as b-bit indices
  into a codebook,
- optionally Huffman-coded integer streams (indices, codes, gaps),
- every other tensor (BatchNorm statistics, biases, scales) as raw bytes,
- no architecture: it is the model source plus the learners' JSON replay records, so
  ``load_packed(path, template)`` fills a model rebuilt that way (a pickled architecture,
  as format 1 could hold, is refused: unpickling runs code).

The file is self-describing (a zlib-compressed JSON header). Loading decodes to exactly
the tensors that were saved, so the reloaded model gives bit-identical outputs.

Nothing in the file is unpickled: loading it runs no code.
"""

from __future__ import annotations

import copy
import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from learners.formats import huffman
from learners.formats.bitpack import pack_uint, packed_bytes, unpack_uint

MAGIC = b"CFPK"
FORMAT_VERSION = 1
VALUE_KINDS = ("float32", "uniform", "codebook")

# --------------------------------------------------------------------------- codecs


@dataclass(frozen=True)
class TensorCodec:
    """How one weight tensor is stored.

    sparse:  store the positions of non-zeros and only their values.
    values:  "float32" (raw), "uniform" (integer codes in [-(2^(b-1)-1), 2^(b-1)-1] times a
             per-output-channel scale read from the state-dict entry ``scale``), or
             "codebook" (b-bit indices into the tensor's sorted distinct values).
    bits:    width of uniform codes or codebook indices (2..8); 32 for float32.
    huffman: entropy-code the integer streams (codes, indices, position gaps).
    """

    sparse: bool = False
    values: str = "float32"
    bits: int = 32
    scale: str | None = None
    huffman: bool = False

    def __post_init__(self) -> None:
        if self.values not in VALUE_KINDS:
            raise ValueError(f"values must be one of {VALUE_KINDS}, got {self.values!r}")
        if self.values == "float32" and self.bits != 32:
            raise ValueError(f"float32 values take bits=32, got {self.bits}")
        if self.values != "float32" and not 1 <= self.bits <= 8:
            raise ValueError(f"{self.values} values take bits in [1, 8], got {self.bits}")
        if self.values == "uniform" and (self.scale is None or self.bits < 2):
            raise ValueError("uniform values need bits >= 2 and the state-dict key of a scale")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gap_symbols(positions: np.ndarray, width: int) -> np.ndarray:
    """Gaps between successive non-zeros in ``width``-bit symbols. The largest symbol is an
    escape meaning "skip that many and read on", so long runs of zeros cost extra symbols
    instead of wider ones (Deep Compression's relative indexing, without filler zeros)."""
    escape = (1 << width) - 1
    gaps = np.diff(positions, prepend=-1) - 1
    n_escapes = gaps // escape
    out = np.full(int(n_escapes.sum() + len(gaps)), escape, dtype=np.int64)
    ends = np.cumsum(n_escapes + 1) - 1
    out[ends] = gaps - n_escapes * escape
    return out


def _positions_from_gaps(symbols: np.ndarray, width: int) -> np.ndarray:
    escape = (1 << width) - 1
    is_value = symbols != escape
    # Each value symbol's position = (sum of all symbols up to and including it) + its rank.
    csum = np.cumsum(symbols)
    return (csum[is_value] + np.arange(int(is_value.sum()))).astype(np.int64)


@dataclass
class _Stream:
    """One integer stream written either fixed-width or Huffman-coded."""

    meta: dict[str, Any] = field(default_factory=dict)
    blobs: list[bytes] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.blobs)


def _int_stream(symbols: np.ndarray, bits: int, use_huffman: bool) -> _Stream:
    fixed = _Stream({"count": int(symbols.size), "bits": bits, "huffman": False})
    fixed.blobs = [pack_uint(symbols, bits)]
    if not use_huffman or symbols.size == 0:
        return fixed
    code = huffman.build_code(symbols, alphabet_size=1 << bits)
    lengths = bytes(code.lengths)
    coded = _Stream({"count": int(symbols.size), "bits": bits, "huffman": True})
    coded.blobs = [lengths, huffman.encode(symbols, code)]
    return coded if coded.nbytes < fixed.nbytes else fixed


def _read_int_stream(meta: dict[str, Any], blobs: list[bytes]) -> np.ndarray:
    if meta["huffman"]:
        code = huffman.HuffmanCode(tuple(blobs[0]))
        return huffman.decode(blobs[1], code, meta["count"])
    return unpack_uint(blobs[0], meta["bits"], meta["count"])


def _encode_positions(mask: np.ndarray, use_huffman: bool) -> _Stream:
    """The cheapest of a bitmap and gap streams of width 1..8 bits."""
    best = _Stream({"kind": "bitmap"}, [np.packbits(mask.astype(np.uint8)).tobytes()])
    positions = np.flatnonzero(mask)
    for width in range(1, 9):
        symbols = _gap_symbols(positions, width)
        if packed_bytes(symbols.size, width) > 4 * best.nbytes and not use_huffman:
            continue
        stream = _int_stream(symbols, width, use_huffman)
        if stream.nbytes < best.nbytes:
            best = _Stream({"kind": "gaps", "width": width, **stream.meta}, stream.blobs)
    return best


def _decode_positions(meta: dict[str, Any], blobs: list[bytes], numel: int) -> np.ndarray:
    if meta["kind"] == "bitmap":
        bits = np.unpackbits(np.frombuffer(blobs[0], dtype=np.uint8))[:numel]
        return np.flatnonzero(bits)
    return _positions_from_gaps(_read_int_stream(meta, blobs), meta["width"])


def _channel_view(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    return scale.reshape(-1, *([1] * (ndim - 1)))


def uniform_codes(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes of a weight that lies on the per-channel grid ``code * scale``."""
    qmax = (1 << (bits - 1)) - 1
    s = _channel_view(scale, weight.dim())
    codes = torch.round(weight / torch.where(s == 0, torch.ones_like(s), s)).clamp(-qmax, qmax)
    if not torch.equal(codes * s, weight):
        raise ValueError("weight is not on its uniform grid (codes * scale != weight)")
    return codes.to(torch.int64)


def _encode_tensor(
    name: str, tensor: torch.Tensor, codec: TensorCodec, state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, Any], list[bytes]]:
    t = tensor.detach().cpu().contiguous()
    if t.dtype != torch.float32:
        raise ValueError(f"{name}: only float32 weights can be coded, got {t.dtype}")
    flat = t.numpy().ravel()
    meta: dict[str, Any] = {"codec": codec.to_dict()}
    blobs: list[bytes] = []
    sections: list[list[Any]] = []
    mask = flat != 0
    if codec.sparse:
        pos = _encode_positions(mask, codec.huffman)
        meta["positions"] = pos.meta
        sections.append(["positions", len(pos.blobs)])
        blobs += pos.blobs
    keep = mask if codec.sparse else np.ones_like(mask)
    nnz_values = flat[keep]
    if codec.values == "float32":
        sections.append(["values", 1])
        blobs.append(nnz_values.astype("<f4").tobytes())
    elif codec.values == "uniform":
        assert codec.scale is not None
        codes = uniform_codes(t, state[codec.scale].detach().cpu().float(), codec.bits)
        qmax = (1 << (codec.bits - 1)) - 1
        symbols = codes.numpy().ravel()[keep] + qmax
        stream = _int_stream(symbols, codec.bits, codec.huffman)
        meta["values"] = stream.meta
        sections.append(["values", len(stream.blobs)])
        blobs += stream.blobs
    else:
        centroids = np.unique(nnz_values)
        if centroids.size > (1 << codec.bits):
            raise ValueError(
                f"{name}: {centroids.size} distinct values do not fit a "
                f"{codec.bits}-bit codebook ({1 << codec.bits} entries)"
            )
        indices = np.searchsorted(centroids, nnz_values)
        stream = _int_stream(indices, codec.bits, codec.huffman)
        meta["values"] = stream.meta
        meta["centroids"] = int(centroids.size)
        sections.append(["centroids", 1])
        blobs.append(centroids.astype("<f4").tobytes())
        sections.append(["values", len(stream.blobs)])
        blobs += stream.blobs
    meta["nnz"] = int(keep.sum())
    meta["sections"] = sections
    return meta, blobs


def _decode_tensor(
    meta: dict[str, Any], blobs: list[bytes], shape: list[int], state: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    codec = TensorCodec(**meta["codec"])
    numel = int(np.prod(shape)) if shape else 1
    parts: dict[str, list[bytes]] = {}
    i = 0
    for section, n in meta["sections"]:
        parts[section] = blobs[i : i + n]
        i += n
    if codec.sparse:
        positions = _decode_positions(meta["positions"], parts["positions"], numel)
    else:
        positions = np.arange(numel)
    if codec.values == "float32":
        values = np.frombuffer(parts["values"][0], dtype="<f4").astype(np.float32)
        flat = np.zeros(numel, dtype=np.float32)
        flat[positions] = values
        return torch.from_numpy(flat).reshape(shape)
    symbols = _read_int_stream(meta["values"], parts["values"])
    if codec.values == "codebook":
        centroids = np.frombuffer(parts["centroids"][0], dtype="<f4").astype(np.float32)
        flat = np.zeros(numel, dtype=np.float32)
        flat[positions] = centroids[symbols]
        return torch.from_numpy(flat).reshape(shape)
    qmax = (1 << (codec.bits - 1)) - 1
    codes = np.zeros(numel, dtype=np.int64)
    codes[positions] = symbols - qmax
    assert codec.scale is not None
    scale = _channel_view(state[codec.scale].float(), len(shape))
    # Same float32 product as learners.qat.convert computes, hence bit-exact.
    return torch.from_numpy(codes).reshape(shape).float() * scale


# --------------------------------------------------------------------------- container


def _strip_weights(model: nn.Module) -> nn.Module:
    """A copy whose parameters and persistent buffers live on the meta device (no bytes)."""
    skeleton = copy.deepcopy(model)
    for module in skeleton.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = nn.Parameter(
                    torch.empty_like(p, device="meta"), requires_grad=p.requires_grad
                )
        for name, b in list(module._buffers.items()):
            if b is not None and name not in module._non_persistent_buffers_set:
                module._buffers[name] = torch.empty_like(b, device="meta")
    return skeleton


@dataclass(frozen=True)
class PackStats:
    """Where the bytes of a packed file go (all sizes in bytes)."""

    total: int
    header: int
    architecture: int
    coded: int  # weights stored through a codec
    raw: int  # everything else (BatchNorm, biases, scales)
    per_tensor: dict[str, int]


def pack(model: nn.Module, codecs: Mapping[str, TensorCodec]) -> tuple[bytes, PackStats]:
    """Serialise ``model``'s state with ``codecs``; returns the file bytes and a breakdown."""
    state = model.state_dict()
    unknown = sorted(set(codecs) - set(state))
    if unknown:
        raise ValueError(f"codecs name tensors the model does not have: {unknown}")
    entries: list[dict[str, Any]] = []
    payload: list[bytes] = []
    per_tensor: dict[str, int] = {}
    coded = raw = 0
    for name, tensor in state.items():
        entry: dict[str, Any] = {"name": name, "shape": list(tensor.shape)}
        if name in codecs:
            meta, blobs = _encode_tensor(name, tensor, codecs[name], state)
            entry.update(meta)
            coded += sum(len(b) for b in blobs)
        else:
            arr = tensor.detach().cpu().contiguous().numpy()
            entry["dtype"] = arr.dtype.str
            blobs = [arr.astype(arr.dtype.newbyteorder("<")).tobytes()]
            raw += len(blobs[0])
        entry["blob_sizes"] = [len(b) for b in blobs]
        per_tensor[name] = sum(len(b) for b in blobs)
        entries.append(entry)
        payload += blobs
    header = zlib.compress(
        json.dumps({"format": FORMAT_VERSION, "tensors": entries}, separators=(",", ":")).encode(),
        9,
    )
    arch = b""  # the architecture section stays empty: no pickle in the file
    head = MAGIC + struct.pack("<BII", FORMAT_VERSION, len(header), len(arch))
    data = b"".join([head, header, arch, *payload])
    stats = PackStats(
        total=len(data),
        header=len(head) + len(header),
        architecture=len(arch),
        coded=coded,
        raw=raw,
        per_tensor=per_tensor,
    )
    return data, stats


def _read(data: bytes) -> tuple[list[dict[str, Any]], bytes, dict[str, list[bytes]]]:
    if data[:4] != MAGIC:
        raise ValueError("not a compressflow packed file (bad magic bytes)")
    version, header_len, arch_len = struct.unpack_from("<BII", data, 4)
    if version != FORMAT_VERSION:
        raise ValueError(f"packed format version {version}; this code reads {FORMAT_VERSION}")
    offset = 4 + struct.calcsize("<BII")
    header = json.loads(zlib.decompress(data[offset : offset + header_len]))
    offset += header_len
    arch = data[offset : offset + arch_len]
    offset += arch_len
    blobs: dict[str, list[bytes]] = {}
    for entry in header["tensors"]:
        parts = []
        for size in entry["blob_sizes"]:
            parts.append(data[offset : offset + size])
            offset += size
        blobs[entry["name"]] = parts
    if offset != len(data):
        raise ValueError(f"packed file has {len(data) - offset} trailing bytes: corrupt?")
    return header["tensors"], arch, blobs


def unpack_state(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, TensorCodec]]:
    """The exact state dict and the codecs stored in a packed file."""
    entries, _, blobs = _read(data)
    state: dict[str, torch.Tensor] = {}
    codecs: dict[str, TensorCodec] = {}
    for entry in entries:  # raw tensors first: uniform codes need their scale
        if "codec" not in entry:
            arr = np.frombuffer(blobs[entry["name"]][0], dtype=np.dtype(entry["dtype"]))
            state[entry["name"]] = torch.from_numpy(arr.copy()).reshape(entry["shape"])
    for entry in entries:
        if "codec" in entry:
            state[entry["name"]] = _decode_tensor(
                entry, blobs[entry["name"]], entry["shape"], state
            )
            codecs[entry["name"]] = TensorCodec(**entry["codec"])
    return {e["name"]: state[e["name"]] for e in entries}, codecs


class PackedModel(nn.Module):
    """A dense model plus the codecs that store its weights compactly.

    ``forward`` is the dense model's (so accuracy and latency are those of dense kernels:
    sparsity and shared weights save bytes, not time, on CPU). ``save_packed`` writes the
    deployable file; ``load_packed`` restores an identical model.
    """

    packed_suffix = ".cfpk"

    def __init__(self, model: nn.Module, codecs: Mapping[str, TensorCodec]) -> None:
        super().__init__()
        self.model = model
        self.codecs = dict(codecs)
        unknown = sorted(set(self.codecs) - set(model.state_dict()))
        if unknown:
            raise ValueError(f"codecs name tensors the model does not have: {unknown}")
        self.train(model.training)  # a wrapper must not flip BatchNorm back to training

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def packed(self) -> tuple[bytes, PackStats]:
        return pack(self.model, self.codecs)

    def save_packed(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.packed()[0])
        return path


def unwrap(model: nn.Module) -> tuple[nn.Module, dict[str, TensorCodec]]:
    """The dense model and codecs of a learner's output (codecs empty for a plain model)."""
    if isinstance(model, PackedModel):
        return model.model, dict(model.codecs)
    return model, {}


def loads_packed(data: bytes, template: nn.Module) -> PackedModel:
    """Rebuild a PackedModel from bytes onto ``template``, the architecture (the model
    source plus the learners' replay records; its weights are not used, nor mutated). A
    file with a pickled architecture (written by an older compressflow) is refused."""
    _, arch, _ = _read(data)
    if arch:
        raise ValueError(
            "this packed file holds a pickled architecture (an older compressflow wrote it); "
            "it is not loaded, as unpickling runs code: re-export it with this version"
        )
    if isinstance(template, PackedModel):
        template = template.model
    state, codecs = unpack_state(data)
    model = _strip_weights(template)
    model.load_state_dict(state, strict=True, assign=True)
    return PackedModel(model.eval(), codecs).eval()


def load_packed(path: str | Path, template: nn.Module) -> PackedModel:
    """Load a file written by ``PackedModel.save_packed`` onto ``template`` (no pickle)."""
    return loads_packed(Path(path).read_bytes(), template)
