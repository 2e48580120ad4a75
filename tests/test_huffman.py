import math

import numpy as np
import pytest

from learners.formats import huffman


def _entropy_bits(symbols: np.ndarray) -> float:
    counts = np.bincount(symbols)
    p = counts[counts > 0] / symbols.size
    return float(-(p * np.log2(p)).sum())


def _is_prefix_free(code: huffman.HuffmanCode) -> bool:
    words = [
        format(int(v), f"0{n}b") for v, n in zip(code.codes(), code.lengths, strict=True) if n > 0
    ]
    return not any(a != b and b.startswith(a) for a in words for b in words)


@pytest.mark.parametrize(
    "symbols",
    [
        np.random.default_rng(0).geometric(0.3, 5000) - 1,
        np.random.default_rng(1).integers(0, 16, 3000),
        np.full(100, 7),
        np.array([3]),
        np.array([0, 1]),
    ],
    ids=["geometric", "uniform16", "one-symbol", "single", "two"],
)
def test_round_trip_is_exact_and_size_is_the_sum_of_code_lengths(symbols):
    code = huffman.build_code(symbols)
    data = huffman.encode(symbols, code)
    assert np.array_equal(huffman.decode(data, code, symbols.size), symbols)
    assert len(data) == math.ceil(code.bits_for(np.bincount(symbols)) / 8)
    assert _is_prefix_free(code)


def test_mean_code_length_is_within_one_bit_of_the_entropy():
    symbols = np.random.default_rng(2).geometric(0.2, 20000) - 1
    code = huffman.build_code(symbols)
    mean = code.bits_for(np.bincount(symbols)) / symbols.size
    h = _entropy_bits(symbols)
    assert h <= mean < h + 1


def test_code_lengths_are_limited_even_for_fibonacci_counts():
    # Fibonacci frequencies give the deepest possible Huffman tree.
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    symbols = np.repeat(np.arange(30), fib)
    code = huffman.build_code(symbols)
    assert max(code.lengths) <= huffman.MAX_CODE_LENGTH
    assert np.array_equal(
        huffman.decode(huffman.encode(symbols, code), code, symbols.size), symbols
    )


def test_a_symbol_without_a_code_is_refused():
    code = huffman.build_code(np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="no code"):
        huffman.encode(np.array([2]), code)
    with pytest.raises(ValueError, match="non-negative"):
        huffman.build_code(np.array([-1, 2]))


def test_truncated_stream_is_detected():
    symbols = np.random.default_rng(3).integers(0, 8, 500)
    code = huffman.build_code(symbols)
    data = huffman.encode(symbols, code)
    with pytest.raises(ValueError, match="ended"):
        huffman.decode(data[: len(data) // 2], code, symbols.size)
