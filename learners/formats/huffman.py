"""Canonical Huffman coding of small-alphabet integer streams (Deep Compression, stage 3).

Cluster indices and sparse-position gaps are far from uniformly distributed, so coding
them with variable-length codes saves bits that fixed-width packing wastes. Codes are
canonical, so the decoder needs only the code length of each symbol (one byte each), not
the tree. Lengths are limited to ``MAX_CODE_LENGTH`` bits (by flattening the counts, as
zlib does) so that decoding is one table look-up per symbol.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

MAX_CODE_LENGTH = 16


@dataclass(frozen=True)
class HuffmanCode:
    """Code lengths for symbols ``0..len(lengths)-1`` (0 = symbol never occurs)."""

    lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(not 0 <= n <= MAX_CODE_LENGTH for n in self.lengths):
            raise ValueError(f"code lengths must be in [0, {MAX_CODE_LENGTH}], got {self.lengths}")

    def codes(self) -> np.ndarray:
        """Canonical code values (shortest first, ties by symbol), one per symbol."""
        return _canonical(np.asarray(self.lengths, dtype=np.int64))

    def bits_for(self, counts: np.ndarray) -> int:
        """Total bits to code a stream with these symbol counts."""
        return int(np.dot(np.asarray(self.lengths[: len(counts)], dtype=np.int64), counts))


def _lengths_from_counts(counts: np.ndarray) -> np.ndarray:
    """Unlimited Huffman code lengths (a symbol alone in the stream gets length 1)."""
    lengths = np.zeros(len(counts), dtype=np.int64)
    present = [int(s) for s in np.flatnonzero(counts)]
    if len(present) == 1:
        lengths[present[0]] = 1
        return lengths
    # Heap of (weight, tie-breaker, symbols under this node).
    heap: list[tuple[int, int, list[int]]] = [(int(counts[s]), s, [s]) for s in present]
    heapq.heapify(heap)
    tie = len(counts)
    while len(heap) > 1:
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (w1 + w2, tie, s1 + s2))
        tie += 1
    return lengths


def build_code(symbols: np.ndarray, alphabet_size: int | None = None) -> HuffmanCode:
    """The Huffman code for the symbol frequencies of ``symbols`` (non-negative ints)."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if symbols.size and symbols.min() < 0:
        raise ValueError("Huffman symbols must be non-negative integers")
    size = alphabet_size if alphabet_size is not None else int(symbols.max(initial=-1)) + 1
    counts = np.bincount(symbols, minlength=size).astype(np.int64)
    if len(counts) > size:
        raise ValueError(f"symbol {len(counts) - 1} is outside the alphabet of size {size}")
    if not counts.any():
        return HuffmanCode(tuple([0] * size))
    lengths = _lengths_from_counts(counts)
    while lengths.max() > MAX_CODE_LENGTH:
        # Flatten the distribution until the longest code fits (costs very little).
        counts = np.where(counts > 0, (counts + 1) // 2, 0)
        lengths = _lengths_from_counts(counts)
    return HuffmanCode(tuple(int(n) for n in lengths))


def _canonical(lengths: np.ndarray) -> np.ndarray:
    codes = np.zeros(len(lengths), dtype=np.int64)
    code = 0
    prev_len = 0
    for sym in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        n = int(lengths[sym])
        code <<= n - prev_len
        codes[sym] = code
        code += 1
        prev_len = n
    return codes


def encode(symbols: np.ndarray, code: HuffmanCode) -> bytes:
    """Pack the symbols' codes MSB-first into bytes (the last byte is zero-padded)."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if symbols.size == 0:
        return b""
    lengths = np.asarray(code.lengths, dtype=np.int64)
    if symbols.max() >= len(lengths) or (lengths[symbols] == 0).any():
        raise ValueError("a symbol has no code: build the code from this stream")
    values = code.codes()[symbols]
    sym_len = lengths[symbols]
    width = int(sym_len.max())
    # Left-align each code in a row of `width` bits, then keep its first `sym_len` bits.
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    aligned = values << (width - sym_len)
    bits = ((aligned[:, None] >> shifts) & 1).astype(np.uint8)
    keep = np.arange(width)[None, :] < sym_len[:, None]
    return np.packbits(bits[keep]).tobytes()


def decode(data: bytes, code: HuffmanCode, count: int) -> np.ndarray:
    """Decode ``count`` symbols from ``data`` (a table look-up per symbol)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.asarray(code.lengths, dtype=np.int64)
    if not lengths.any():
        raise ValueError("cannot decode symbols with an empty code")
    width = int(lengths.max())
    codes = code.codes()
    # table[v] for every width-bit window v: the symbol whose code prefixes v, and its length.
    table_sym = np.full(1 << width, -1, dtype=np.int64)
    table_len = np.zeros(1 << width, dtype=np.int64)
    for sym in np.flatnonzero(lengths):
        n = int(lengths[sym])
        start = int(codes[sym]) << (width - n)
        table_sym[start : start + (1 << (width - n))] = sym
        table_len[start : start + (1 << (width - n))] = n
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(np.int64)
    bits = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
    # window[p] = the integer value of bits[p : p + width].
    n_pos = len(bits) - width
    window = np.zeros(n_pos, dtype=np.int64)
    for k in range(width):
        window = (window << 1) | bits[k : k + n_pos]
    win = window.tolist()
    sym_table = table_sym.tolist()
    len_table = table_len.tolist()
    out = [0] * count
    pos = 0
    for i in range(count):
        if pos >= n_pos:
            raise ValueError("Huffman stream ended before all symbols were decoded")
        v = win[pos]
        s = sym_table[v]
        if s < 0:
            raise ValueError("invalid Huffman code in stream")
        out[i] = s
        pos += len_table[v]
    return np.asarray(out, dtype=np.int64)
