"""Lossless coding of integer symbol arrays with a range coder (constriction).

The probability model of each array is its exact symbol counts, stored in the stream as varints:
integer "fixed-point" probabilities, so encoder and decoder build bit-identical models.

Four layouts, whichever is smaller for a given array (all are tried, the bytes decide; ``runs`` is skipped
where its count tables and its entropy, which no model codes below, already exceed the ``symbols`` bytes):

``symbols``   every symbol coded against one categorical model.
``runs``      the lengths of zero runs before each non-zero symbol (alphabet ``0..M``, where ``M`` means
              "M zeros, continue") followed by the non-zero symbols. Wins when zeros are clustered.
``rank1``     the symbols' offsets from the centre symbol, each coded with a quantized Gaussian or
              Laplace whose scale is a rank-1 product of a per-row and a per-column scale (the array
              viewed as rows × columns, rows = output channels). No count table; wins on dense
              quantized weights, whose magnitudes vary by output neuron and by input feature.
``context``   each symbol coded given its left neighbour in the rows × columns view and, when a
              ``period`` p is set, also the symbol p columns back (the pixel above, when a layer's
              inputs are an image flattened row by row), with counts that encoder and decoder
              learn as they go (``AdaptiveCounts``), starting from a coarse stored prior (each
              symbol's count to within a factor 2^(1/4), a few bits a symbol). Coded column by column,
              so decoding stays vectorised. Wins on low-bit weights, where neighbouring kernel
              taps and inputs are alike, and on sparse ones, where the prior is cheaper than a
              count table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import constriction
import numpy as np

from netpress.errors import FormatError

MAX_ALPHABET = 1 << 16
_RUN_CAPS = tuple(1 << k for k in range(0, 13))
RUN_CHUNK = 1 << 22  # symbols turned into run-length symbols at a time
CODER_SLACK = 16  # bytes: the most a range coder's final flush can save below a stream's information content
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)  # one probability row per symbol
_CONTEXT_MAX_ALPHABET = 64  # larger alphabets have too few symbols per context to learn from
_MAX_PERIODS_TRIED = 32  # column lags the writer scores for the context layout's second neighbour


class ByteWriter:
    """Appends varints, float arrays and coder words to a growing byte buffer."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def varint(self, value: int) -> None:
        if value < 0:
            raise ValueError("varints are unsigned")
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
        self.parts.append(bytes(out))

    def varints(self, values: np.ndarray) -> None:
        for v in values.tolist():
            self.varint(int(v))

    def array(self, values: np.ndarray) -> None:
        self.parts.append(np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes())

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class ByteReader:
    """Reads what ``ByteWriter`` wrote; any overrun is a ``FormatError``."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def varint(self, limit: int = 1 << 40) -> int:
        value, shift = 0, 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise FormatError(f"{self.what}: stream ends inside a number")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if value > limit:
            raise FormatError(f"{self.what}: value {value} out of range (at most {limit})")
        return value

    def varints(self, n: int, limit: int = 1 << 40) -> np.ndarray:
        return np.array([self.varint(limit) for _ in range(n)], dtype=np.int64)

    def array(self, dtype: str, n: int) -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        end = self.pos + n * dt.itemsize
        if end > len(self.data):
            raise FormatError(f"{self.what}: stream is shorter than its tables")
        out = np.frombuffer(self.data[self.pos : end], dtype=dt).astype(np.dtype(dtype))
        self.pos = end
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical entropy of an array in bits, N·H: the bound no per-array model can beat."""
    if symbols.size == 0:
        return 0.0
    return counts_entropy_bits(np.bincount(symbols.ravel()))


def counts_entropy_bits(counts: np.ndarray) -> float:
    """N·H of an array from its symbol counts."""
    counts = counts.astype(np.float64)
    counts = counts[counts > 0]
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def _range_encode(pieces: list[tuple[np.ndarray | Iterable[np.ndarray], np.ndarray]]) -> bytes:
    """Range-code several (symbols, counts) pairs one after another into one stream; a piece's symbols may come as
    consecutive chunks (the coder's state carries over, so the stream is the one of their concatenation)."""
    encoder = constriction.stream.queue.RangeEncoder()
    for symbols, counts in pieces:
        if np.count_nonzero(counts) > 1:  # a single possible symbol costs no bits at all
            model = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)
            for chunk in [symbols] if isinstance(symbols, np.ndarray) else symbols:
                encoder.encode(chunk.astype(np.int32, copy=False), model)
    return word_bytes(encoder)


def _range_decode(data: bytes, pieces: list[tuple[int, np.ndarray]], what: str) -> list[np.ndarray]:
    decoder = constriction.stream.queue.RangeDecoder(_words(data, what))
    out = []
    for n, counts in pieces:
        if n and counts.sum() <= 0:
            raise FormatError(f"{what}: symbol counts are all zero")
        if np.count_nonzero(counts) <= 1:
            out.append(np.full(n, int(np.argmax(counts)), dtype=np.int32))
            continue
        model = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)
        out.append(np.asarray(decoder.decode(model, n), dtype=np.int32))
    return out


class AdaptiveCounts:
    """Symbol counts per context, learned from the symbols already coded, in encoder and decoder alike.

    Probabilities are the context's counts plus ``backoff`` pseudo-counts spread like the order-0
    estimate, so rare contexts borrow from the whole array. The order-0 estimate is a stored
    ``prior`` when there is one (its cost is then paid once, in a table, instead of symbol by
    symbol while it is learned), else all counts + ½, so no symbol gets zero probability. With
    ``pairs`` a second, finer context (a pair of neighbours) backs off the same way to the first.
    The caller decides when to ``count`` (after each block of ``growing_blocks``): recounting after
    every symbol would cost far more than it gains. Every value is an integer count or one IEEE
    operation on them, so the encoder and any decoder compute bit-identical probabilities.
    """

    def __init__(
        self, alphabet: int, contexts: int = 1, backoff: float = 32.0, pairs: int = 0, prior: np.ndarray | None = None
    ) -> None:
        self.by_context = np.zeros((contexts, alphabet))
        self.by_pair = np.zeros((pairs, alphabet))
        self.overall = np.zeros(alphabet)
        self.backoff = backoff
        self.prior = prior
        self._recompute()

    def count(self, symbols: np.ndarray, context: np.ndarray | None = None, pair: np.ndarray | None = None) -> None:
        """Add symbols (with their contexts, flat arrays of one length) and recompute the probabilities."""
        alphabet = self.overall.size
        self.overall += np.bincount(symbols, minlength=alphabet)
        for keys, table in ((context, self.by_context), (pair, self.by_pair)):
            if keys is not None:
                table += np.bincount(keys.astype(np.int64) * alphabet + symbols, minlength=table.size).reshape(table.shape)
        self._recompute()

    def _recompute(self) -> None:
        alphabet = self.overall.size
        if self.prior is not None:
            self._order0 = self.prior
        else:
            self._order0 = (self.overall + 0.5) / (self.overall.sum() + 0.5 * alphabet)
        counts = self.by_context
        self._table = (counts + self.backoff * self._order0) / (counts.sum(axis=1, keepdims=True) + self.backoff)
        self._pair_totals = self.by_pair.sum(axis=1)

    def order0(self) -> np.ndarray:
        return self._order0

    def probabilities(self, context: np.ndarray, pair: np.ndarray | None = None) -> np.ndarray:
        """One probability row per entry of ``context`` (and of ``pair``, the finer context, if given)."""
        if pair is None:
            return self._table[context]
        return (self.by_pair[pair] + self.backoff * self._table[context]) / (self._pair_totals[pair][:, None] + self.backoff)


def growing_blocks(n: int, divisor: int) -> list[slice]:
    """Consecutive slices covering 0..n, each 1/``divisor`` as long as everything before it (at least 1):
    an adaptive model counted after each block stays current with a logarithmic number of recounts."""
    out, start = [], 0
    while start < n:
        size = max(1, -(-start // divisor))
        out.append(slice(start, min(n, start + size)))
        start += size
    return out


def _conditional_entropy(columns: np.ndarray, alphabet: int, lag: int) -> float:
    """Empirical H(symbol | the symbol ``lag`` columns back) over the rows × columns view, bits per symbol."""
    pairs = columns[:, :-lag].astype(np.int64) * alphabet + columns[:, lag:]
    joint = np.bincount(pairs.ravel(), minlength=alphabet * alphabet).reshape(alphabet, alphabet).astype(np.float64)
    given = joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    return float(-(joint[nz] * np.log2((joint / np.maximum(given, 1))[nz])).sum() / pairs.size)


def _best_period(symbols: np.ndarray, alphabet: int, rows: int) -> int:
    """The column lag p ≥ 2 (a divisor of the column count) whose symbol predicts best, if it predicts
    better than the left neighbour; else 0. A cheap proxy that spares an encode where it cannot win."""
    view = symbols.reshape(rows, -1)
    cols = view.shape[1]
    lags = [p for p in range(2, cols // 2 + 1) if cols % p == 0][:_MAX_PERIODS_TRIED]
    if not lags:
        return 0
    scores = {p: _conditional_entropy(view, alphabet, p) for p in lags}
    best = min(scores, key=scores.get)
    return best if scores[best] < _conditional_entropy(view, alphabet, 1) else 0


_PRIOR_STEPS = 2  # prior levels per doubling of a count: each count known to within a factor 2^(1/4) either way
_PRIOR_MAX_LEVEL = 127
_PRIOR_MAX_ORDER = 3  # Exp-Golomb orders the writer tries for the prior
_PRIOR_MAX_ZEROS = 16  # leading zeros of one prior code: more than any level difference needs


def prior_levels(counts: np.ndarray) -> np.ndarray:
    """Each symbol's count as a level: 0 for an absent symbol, else 1 + round(2·log2(count))."""
    safe = np.maximum(counts, 1).astype(np.float64)
    return np.where(counts > 0, 1 + np.round(_PRIOR_STEPS * np.log2(safe)), 0).astype(np.int64)


def prior_probabilities(levels: np.ndarray) -> np.ndarray:
    """The order-0 probabilities that levels stand for: 2^((L-1)/2) normalised, 0 where L = 0 (exact,
    from ``_pow2_eighths`` and a correctly rounded sum, so any decoder gets the same binary64 values)."""
    weights = np.where(levels > 0, _pow2_eighths((levels - 1) * (8 // _PRIOR_STEPS)), 0.0)
    return weights / math.fsum(weights.tolist())


def _zigzag_deltas(levels: np.ndarray) -> np.ndarray:
    deltas = np.diff(levels, prepend=0)
    return np.where(deltas >= 0, 2 * deltas, -2 * deltas - 1)


def _exp_golomb_bits(values: np.ndarray, order: int) -> list[int]:
    """Exp-Golomb code of order ``order`` of each value: zeros, then value + 2^order in binary, MSB first."""
    bits = []
    for value in values.tolist():
        word = value + (1 << order)
        length = word.bit_length()
        bits += [0] * (length - 1 - order) + [int(b) for b in format(word, "b")]
    return bits


def _write_prior(out: ByteWriter, levels: np.ndarray) -> None:
    """The order (one byte), then each level's zigzag delta from the previous level, Exp-Golomb coded
    and packed MSB first into bytes, zero-padded: the writer keeps the order that packs smallest."""
    deltas = _zigzag_deltas(levels)
    order, bits = min(((k, _exp_golomb_bits(deltas, k)) for k in range(_PRIOR_MAX_ORDER + 1)), key=lambda kb: len(kb[1]))
    out.parts.append(bytes([order]) + np.packbits(np.array(bits, dtype=np.uint8)).tobytes())


def _read_prior(reader: ByteReader, alphabet: int, what: str) -> np.ndarray:
    order = int(reader.array("uint8", 1)[0])
    if order > _PRIOR_MAX_ORDER:
        raise FormatError(f"{what}: prior code order {order} is not in 0..{_PRIOR_MAX_ORDER}")
    longest = -(-(2 * _PRIOR_MAX_ZEROS + _PRIOR_MAX_ORDER + 1) // 8)  # bytes in the longest code a reader accepts
    bits = np.unpackbits(np.frombuffer(reader.data[reader.pos : reader.pos + alphabet * longest], dtype=np.uint8))
    pos, previous, levels = 0, 0, []
    for _ in range(alphabet):
        zeros = 0
        while pos < bits.size and not bits[pos]:
            zeros, pos = zeros + 1, pos + 1
        width = zeros + order + 1
        if zeros > _PRIOR_MAX_ZEROS or pos + width > bits.size:
            raise FormatError(f"{what}: the context prior is damaged or cut short")
        word = int("".join(map(str, bits[pos : pos + width])), 2)
        pos += width
        zig = word - (1 << order)
        previous += zig // 2 if zig % 2 == 0 else -(zig + 1) // 2
        if not 0 <= previous <= _PRIOR_MAX_LEVEL:
            raise FormatError(f"{what}: prior level {previous} is not in 0..{_PRIOR_MAX_LEVEL}")
        levels.append(previous)
    reader.pos += -(-pos // 8)
    levels = np.array(levels, dtype=np.int64)
    if not levels.any():
        raise FormatError(f"{what}: the context prior has no symbol present")
    return levels


class _ContextCoder:
    """The ``context`` layout's shared state: the columns (after ``pad`` columns of the value
    ``alphabet``, which stands for "no neighbour"), the contexts they give, and the adaptive model."""

    # Columns between recounts: a recount after each of the first 8, then whenever the uncounted ones
    # reach 1/8 of the counted (under 0.1 % in size against a recount per column, and nearly half the decoding time).
    BLOCK_DIVISOR = 8
    # Pseudo-counts of the prior in each context: with the prior stored, trusting it longer pays.
    BACKOFF = 64.0

    def __init__(self, cols: int, rows: int, alphabet: int, period: int, levels: np.ndarray) -> None:
        self.alphabet, self.period, self.pad = alphabet, period, max(period, 1)
        self.buffer = np.full((self.pad + cols, rows), alphabet, dtype=np.int32)
        self.columns = self.buffer[self.pad :]
        pairs = (alphabet + 1) ** 2 if period else 0
        self.model = AdaptiveCounts(alphabet, alphabet + 1, self.BACKOFF, pairs, prior_probabilities(levels))
        self.blocks = growing_blocks(cols, self.BLOCK_DIVISOR)

    def keys(self, block: slice) -> tuple[np.ndarray, np.ndarray | None]:
        """The contexts of the columns in ``block``, (columns × rows) each: the left symbol and, with a
        period, the (left, p-back) pair."""
        left = self.buffer[self.pad + block.start - 1 : self.pad + block.stop - 1]
        if not self.period:
            return left, None
        back = self.buffer[self.pad + block.start - self.period : self.pad + block.stop - self.period]
        return left, left.astype(np.int64) * (self.alphabet + 1) + back

    def count(self, block: slice, left: np.ndarray, pair: np.ndarray | None) -> None:
        """Add the block's symbols with their contexts (``keys(block)``) to the model."""
        self.model.count(self.columns[block].ravel(), left.ravel(), None if pair is None else pair.ravel())


_PROBABILITY_ROWS_BYTES = 8 << 20


def _encode_context(symbols: np.ndarray, alphabet: int, rows: int, period: int) -> ByteWriter:
    """Column by column (see ``_ContextCoder``); the model is fixed within a block, so each block is
    one call to the coder."""
    levels = prior_levels(np.bincount(symbols, minlength=alphabet))
    coder = _ContextCoder(symbols.size // rows, rows, alphabet, period, levels)
    coder.columns[:] = symbols.reshape(rows, -1).T
    encoder = constriction.stream.queue.RangeEncoder()
    for block in coder.blocks:
        left, pair = coder.keys(block)
        flat_left, flat_pair, flat = left.ravel(), None if pair is None else pair.ravel(), coder.columns[block].ravel()
        # The model is fixed within a block, so coding it in parts gives the same words; a part's rows of
        # probabilities (8 bytes per symbol and level) stay a few MiB however large the layer.
        part = max(1, _PROBABILITY_ROWS_BYTES // (8 * alphabet))
        for start in range(0, flat.size, part):
            rows_of = slice(start, start + part)
            probabilities = coder.model.probabilities(flat_left[rows_of], None if flat_pair is None else flat_pair[rows_of])
            encoder.encode(flat[rows_of], _CATEGORICAL, probabilities)
        coder.count(block, left, pair)
    out = ByteWriter()
    out.varint(period)
    _write_prior(out, levels)
    out.parts.append(word_bytes(encoder))
    return out


def _decode_context(reader: ByteReader, n: int, alphabet: int, rows: int, what: str) -> np.ndarray:
    if rows < 1 or n % rows or alphabet > _CONTEXT_MAX_ALPHABET:
        raise FormatError(f"{what}: the context layout does not fit {n} symbols in {rows} rows over {alphabet} levels")
    period = reader.varint(limit=n // rows)
    if period == 1 or (period and 2 * period > n // rows):
        raise FormatError(f"{what}: context period {period} does not fit {n // rows} columns")
    levels = _read_prior(reader, alphabet, what)
    decoder = constriction.stream.queue.RangeDecoder(_words(reader.rest(), what))
    coder = _ContextCoder(n // rows, rows, alphabet, period, levels)
    for block in coder.blocks:
        for j in range(block.start, block.stop):  # each column's contexts need the column before it
            left, pair = coder.keys(slice(j, j + 1))
            probabilities = coder.model.probabilities(left[0], None if pair is None else pair[0])
            coder.columns[j] = decoder.decode(_CATEGORICAL, probabilities)
        coder.count(block, *coder.keys(block))
    if not levels[coder.columns].all():
        raise FormatError(f"{what}: decoded a symbol that the context prior marks absent")
    return np.ascontiguousarray(coder.columns.T).ravel()


def word_bytes(encoder: constriction.stream.queue.RangeEncoder) -> bytes:
    """A range coder's output as little-endian 32-bit words."""
    return encoder.get_compressed().astype("<u4").tobytes()


def encode_words(out: ByteWriter, encoder: constriction.stream.queue.RangeEncoder) -> None:
    """A range coder's words with their count in front, for streams where more data follows."""
    words = word_bytes(encoder)
    out.varint(len(words) // 4)
    out.parts.append(words)


def decode_words(reader: ByteReader) -> np.ndarray:
    return reader.array("uint32", reader.varint(limit=len(reader.data) // 4))


def _words(data: bytes, what: str) -> np.ndarray:
    """The 32-bit words of a range-coded stream."""
    if len(data) % 4:
        raise FormatError(f"{what}: coded stream length {len(data)} is not a whole number of words")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def _run_lengths(symbols: np.ndarray, zero: int) -> np.ndarray:
    """Zeros before each non-zero symbol."""
    nz = np.flatnonzero(symbols != zero)
    return np.diff(np.concatenate(([-1], nz))) - 1


def _chunks(symbols: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``symbols`` in consecutive slices of ``RUN_CHUNK``, with their offsets."""
    for start in range(0, symbols.size, RUN_CHUNK):
        yield start, symbols[start : start + RUN_CHUNK]


def _chunked_run_symbols(symbols: np.ndarray, zero: int, cap: int) -> Iterator[np.ndarray]:
    """``_run_symbols(_run_lengths(symbols, zero), cap)`` a chunk of symbols at a time: the whole tensor's run
    lengths and their splitting take about 36 bytes per weight."""
    last = -1  # the last non-zero symbol's position so far
    for start, chunk in _chunks(symbols):
        at = np.flatnonzero(chunk != zero) + start
        if at.size:
            yield _run_symbols(np.diff(at, prepend=last) - 1, cap)
            last = int(at[-1])


def _run_symbols(runs: np.ndarray, cap: int) -> np.ndarray:
    """Split each run into ``run // cap`` continuation symbols (value ``cap``) and a final ``run % cap``."""
    reps = runs // cap + 1
    out = np.full(int(reps.sum()), cap, dtype=np.int32)
    out[np.cumsum(reps) - 1] = runs % cap
    return out


def _varint_bytes(values: np.ndarray) -> int:
    v = np.maximum(values.astype(np.int64), 1)
    return int(np.sum(np.floor(np.log2(v) / 7) + 1))


def _run_symbol_counts(lengths: np.ndarray, cap: int) -> np.ndarray:
    """``np.bincount(_run_symbols(runs, cap), minlength=cap + 1)`` from ``lengths = np.bincount(runs)``, without the
    symbols: a run r gives r // cap continuations and a final r % cap. O(longest run), not O(weights)."""
    r = np.arange(lengths.size)
    finals = np.bincount(r % cap, weights=lengths, minlength=cap).astype(np.int64)  # float64 sums of counts: exact
    return np.append(finals, int((lengths * (r // cap)).sum()))


def _run_length_counts(symbols: np.ndarray, zero: int, zeros: int) -> np.ndarray:
    """``np.bincount(_run_lengths(symbols, zero))`` from the positions of the ``zeros`` zero symbols where they are the
    fewer: a dense tensor's runs are mostly empty, and listing them takes 8 bytes per weight."""
    nonzeros = symbols.size - zeros
    if zeros > nonzeros or not nonzeros:
        return np.bincount(_run_lengths(symbols, zero))
    at = np.flatnonzero(symbols == zero)
    starts = np.flatnonzero(np.diff(at, prepend=-2) != 1)  # where each stretch of consecutive zeros begins
    lengths = np.diff(np.append(starts, at.size))
    lengths = lengths[at[starts] + lengths < symbols.size]  # a stretch that reaches the end precedes no symbol
    counts = np.bincount(lengths, minlength=1)
    counts[0] += nonzeros - lengths.size  # non-zero symbols right after another
    return counts


def _best_run_cap(lengths: np.ndarray) -> int:
    """The continuation cap with the smallest estimated size (run entropy plus its count table), from the runs'
    histogram ``lengths``."""
    best, best_cost = 1, float("inf")
    longest = max(lengths.size - 1, 0)
    for cap in _RUN_CAPS:
        counts = _run_symbol_counts(lengths, cap)
        cost = counts_entropy_bits(counts) / 8 + _varint_bytes(counts)
        if cost < best_cost:
            best, best_cost = cap, cost
        if cap > longest:
            break
    return best


# 2^(k/8) for k = 0..7, written exactly so every machine builds the same scales.
_EIGHTH_POWERS = np.array(
    [
        float.fromhex(h)
        for h in (
            "0x1.0000000000000p+0",
            "0x1.172b83c7d517bp+0",
            "0x1.306fe0a31b715p+0",
            "0x1.4bfdad5362a27p+0",
            "0x1.6a09e667f3bcdp+0",
            "0x1.8ace5422aa0dbp+0",
            "0x1.ae89f995ad3adp+0",
            "0x1.d5818dcfba487p+0",
        )
    ]
)
_MIN_SCALE = 0.05


def _pow2_eighths(q: np.ndarray) -> np.ndarray:
    """2^(q/8) for integer q, from exact constants and ldexp (no libm rounding differences)."""
    q = q.astype(np.int64)
    return np.ldexp(_EIGHTH_POWERS[q % 8], (q // 8).astype(np.int32))


_FAMILIES = ("gaussian", "laplace")
_MULTIPLIERS = (6, 8, 10, 12, 14)  # the scale multiplier is k/8; the writer keeps the smallest result


def _rank1_scales(
    row_q: np.ndarray, col_q: np.ndarray, norm: float, multiplier: int, positions: np.ndarray | None = None
) -> np.ndarray:
    """Per-symbol scales from the stored log-scales; identical in encoder and decoder.

    scale_ij = max(2^(qr_i/8) · 2^(qc_j/8) / norm · k/8, 0.05): a rank-1 model of the mean offset
    magnitude, times a multiplier that turns it into the family's scale parameter. ``positions``
    (flat indices) gives the scales of those symbols only.
    """
    rows, cols = _pow2_eighths(row_q), _pow2_eighths(col_q)
    if positions is None:
        scales = np.outer(rows, cols).ravel()
    else:
        scales = rows[positions // cols.size] * cols[positions % cols.size]
    return np.maximum(scales / norm * (multiplier / 8), _MIN_SCALE)


def _log_scale_q(mean_abs: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.log2(mean_abs + 1e-3) * 8), -127, 127).astype(np.int8)


def _rank1_model(family: int, center: int, alphabet: int):
    model = constriction.stream.model.QuantizedGaussian if family == 0 else constriction.stream.model.QuantizedLaplace
    return model(-center, alphabet - 1 - center)


# Above this many symbols the rank-1 family and multiplier are chosen on an evenly strided sample of
# about RANK1_SAMPLE symbols, then only the chosen model codes the whole tensor: ten full encodes of a
# large embedding table took most of the time to write a transformer.
RANK1_SAMPLE = 1 << 16
RANK1_SAMPLE_ABOVE = 8 * RANK1_SAMPLE


def _rank1_words(
    flat: np.ndarray,
    positions: np.ndarray | None,
    scales_of: Callable[[np.ndarray], np.ndarray],
    family: int,
    center: int,
    alphabet: int,
) -> bytes:
    """The words of ``flat`` (the symbols at ``positions``, or all) under the scales ``scales_of(positions)``,
    coded a part at a time: the same words as one call, with a part's scales (8 bytes per symbol) in memory."""
    encoder = constriction.stream.queue.RangeEncoder()
    model = _rank1_model(family, center, alphabet)
    part = _PROBABILITY_ROWS_BYTES // 8
    for start in range(0, flat.size, part):
        chunk = slice(start, start + part)
        where = positions[chunk] if positions is not None else np.arange(start, min(start + part, flat.size))
        encoder.encode(flat[chunk], model, np.zeros(where.size), scales_of(where))
    return word_bytes(encoder)


def _encode_rank1(symbols: np.ndarray, alphabet: int, center: int, rows: int) -> ByteWriter:
    """Try each family and multiplier; keep the smallest stream (judged on a sample for large tensors)."""
    offsets = symbols.reshape(rows, -1).astype(np.int32) - np.int32(center)
    magnitude = np.abs(offsets)
    # Means of integers: their float64 sums are exact, so these equal the means of a float64 copy.
    row_q = _log_scale_q(magnitude.mean(axis=1, dtype=np.float64))
    col_q = _log_scale_q(magnitude.mean(axis=0, dtype=np.float64))
    norm = float(magnitude.mean(dtype=np.float64) + 1e-3)
    del magnitude
    flat = offsets.ravel()
    stride = -(-flat.size // RANK1_SAMPLE) if flat.size > RANK1_SAMPLE_ABOVE else 1
    while math.gcd(stride, flat.size // rows) > 1:  # a stride sharing a factor with the row would see few columns
        stride += 1
    sample = np.arange(0, flat.size, stride) if stride > 1 else None

    def scales(multiplier: int) -> Callable[[np.ndarray], np.ndarray]:
        return lambda positions: _rank1_scales(row_q, col_q, norm, multiplier, positions)

    tried = {
        (family, multiplier): _rank1_words(flat[::stride], sample, scales(multiplier), family, center, alphabet)
        for family in range(len(_FAMILIES))
        for multiplier in _MULTIPLIERS
    }
    family, multiplier = min(tried, key=lambda key: len(tried[key]))  # the first of equal sizes
    words = tried[family, multiplier]
    if stride > 1:
        words = _rank1_words(flat, None, scales(multiplier), family, center, alphabet)
    out = ByteWriter()
    out.array(np.array([norm], dtype=np.float64))
    out.array(np.array([family, multiplier], dtype=np.uint8))
    out.array(row_q)
    out.array(col_q)
    out.parts.append(words)
    return out


def _decode_rank1(reader: ByteReader, n: int, alphabet: int, center: int, rows: int, what: str) -> np.ndarray:
    if rows < 1 or n % rows:
        raise FormatError(f"{what}: {n} symbols cannot form {rows} rows")
    (norm,) = reader.array("float64", 1)
    family, multiplier = (int(v) for v in reader.array("uint8", 2))
    if not np.isfinite(norm) or norm <= 0 or family >= len(_FAMILIES) or multiplier not in _MULTIPLIERS:
        raise FormatError(f"{what}: invalid rank-1 model parameters")
    row_q, col_q = reader.array("int8", rows), reader.array("int8", n // rows)
    words = _words(reader.rest(), what)
    scales = _rank1_scales(row_q, col_q, float(norm), multiplier)
    decoder = constriction.stream.queue.RangeDecoder(words)
    model = _rank1_model(family, center, alphabet)
    offsets = np.asarray(decoder.decode(model, np.zeros(n), scales), dtype=np.int64)
    return (offsets + center).astype(np.int32)


def encode_symbols(symbols: np.ndarray, alphabet: int, zero: int | None, rows: int = 0) -> tuple[str, bytes, int]:
    """Code a flat int array over ``0..alphabet-1``.

    Returns the chosen layout, its bytes, and how many of them are side information (count tables,
    scales) rather than range-coded words. ``rows`` (the size of axis 0 of the original tensor)
    enables the ``rank1`` and ``context`` layouts.
    """
    symbols = np.ascontiguousarray(symbols.ravel(), dtype=np.int32)
    if not 0 < alphabet <= MAX_ALPHABET:
        raise ValueError(f"alphabet size must be in 1..{MAX_ALPHABET}, got {alphabet}")
    counts = np.bincount(symbols, minlength=alphabet)
    plain = ByteWriter()
    plain.varints(counts)
    plain.parts.append(_range_encode([(symbols, counts)]))
    candidates = [("symbols", plain)]
    if zero is not None and symbols.size and counts[zero]:
        lengths = _run_length_counts(symbols, zero, int(counts[zero]))
        cap = _best_run_cap(lengths)
        run_counts = _run_symbol_counts(lengths, cap)
        nz_counts = counts.copy()
        nz_counts[zero] = 0
        rl = ByteWriter()
        rl.varint(cap)
        rl.varint(int(run_counts.sum()))
        rl.varints(run_counts)
        rl.varints(nz_counts)
        # No model codes a sequence in fewer bits than its empirical entropy (the range coder's last words aside):
        # where even that is not smaller than the plain layout, the run symbols are not made or coded.
        least = len(rl.getvalue()) + (counts_entropy_bits(run_counts) + counts_entropy_bits(nz_counts)) / 8 - CODER_SLACK
        if least < len(plain.getvalue()):
            run_syms = _chunked_run_symbols(symbols, zero, cap)
            nonzero = (chunk[chunk != zero] for _, chunk in _chunks(symbols))
            rl.parts.append(_range_encode([(run_syms, run_counts), (nonzero, nz_counts)]))
            candidates.append(("runs", rl))
    if rows and alphabet >= 3 and symbols.size and symbols.size % rows == 0:
        center = zero if zero is not None else alphabet // 2
        candidates.append(("rank1", _encode_rank1(symbols, alphabet, center, rows)))
    if rows > 1 and symbols.size > rows and symbols.size % rows == 0 and 2 <= alphabet <= _CONTEXT_MAX_ALPHABET:
        candidates.append(("context", _encode_context(symbols, alphabet, rows, 0)))
        period = _best_period(symbols, alphabet, rows)
        if period:
            candidates.append(("context", _encode_context(symbols, alphabet, rows, period)))
    mode, best = min(candidates, key=lambda c: len(c[1].getvalue()))
    data = best.getvalue()
    return mode, data, len(data) - len(best.parts[-1])  # the words are always the last part


def decode_symbols(mode: str, data: bytes, n: int, alphabet: int, zero: int | None, what: str, rows: int = 0) -> np.ndarray:
    """Inverse of ``encode_symbols``: exactly ``n`` symbols, or a ``FormatError``."""
    reader = ByteReader(data, what)
    if mode == "rank1" and alphabet >= 3:
        return _decode_rank1(reader, n, alphabet, zero if zero is not None else alphabet // 2, rows, what)
    if mode == "context":
        return _decode_context(reader, n, alphabet, rows, what)
    if mode == "symbols":
        counts = reader.varints(alphabet, limit=n)
        if counts.sum() != n:
            raise FormatError(f"{what}: symbol counts add up to {counts.sum()}, expected {n}")
        (out,) = _range_decode(reader.rest(), [(n, counts)], what)
        if np.bincount(out, minlength=alphabet).tolist() != counts.tolist():
            raise FormatError(f"{what}: decoded symbols disagree with the stored counts")
        return out
    if mode != "runs" or zero is None:
        raise FormatError(f"{what}: unknown coding {mode!r}")
    cap = reader.varint(limit=_RUN_CAPS[-1])
    n_runs = reader.varint(limit=n + n // max(cap, 1) + 1)
    run_counts = reader.varints(cap + 1, limit=n_runs)
    nz_counts = reader.varints(alphabet, limit=n)
    n_nonzero = int(nz_counts.sum())
    if cap < 1 or run_counts.sum() != n_runs or int(run_counts[:cap].sum()) != n_nonzero or nz_counts[zero]:
        raise FormatError(f"{what}: inconsistent run-length tables")
    run_syms, nonzero = _range_decode(reader.rest(), [(n_runs, run_counts), (n_nonzero, nz_counts)], what)
    if (
        np.bincount(run_syms, minlength=cap + 1).tolist() != run_counts.tolist()
        or np.bincount(nonzero, minlength=alphabet).tolist() != nz_counts.tolist()
    ):
        raise FormatError(f"{what}: decoded symbols disagree with the stored counts")
    advance = np.where(run_syms == cap, cap, run_syms + 1).astype(np.int64)
    ends = np.cumsum(advance) - 1
    positions = ends[run_syms < cap]
    if positions.size and positions[-1] >= n:
        raise FormatError(f"{what}: runs overrun the tensor")
    out = np.full(n, zero, dtype=np.int32)
    out[positions] = nonzero
    return out
