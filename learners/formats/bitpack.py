"""Fixed-width bit packing of small non-negative integers (codes, indices, gaps)."""

from __future__ import annotations

import numpy as np


def pack_uint(values: np.ndarray, bits: int) -> bytes:
    """Fixed-width, MSB-first packing of non-negative integers below ``2**bits``."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size == 0:
        return b""
    if values.min() < 0 or values.max() >= (1 << bits):
        raise ValueError(f"values must lie in [0, {(1 << bits) - 1}] to pack in {bits} bits")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    return np.packbits(((values[:, None] >> shifts) & 1).astype(np.uint8).ravel()).tobytes()


def unpack_uint(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_uint``."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    raw = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: count * bits]
    if raw.size < count * bits:
        raise ValueError(f"{len(data)} bytes cannot hold {count} values of {bits} bits")
    weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
    return raw.reshape(count, bits).astype(np.int64) @ weights


def packed_bytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8
