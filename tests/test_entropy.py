import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netpress.codec import entropy
from netpress.codec.entropy import (
    AdaptiveCounts,
    decode_symbols,
    encode_symbols,
    entropy_bits,
    growing_blocks,
    prior_levels,
    prior_probabilities,
)
from netpress.errors import FormatError


def roundtrip(symbols, alphabet, zero, rows=0):
    mode, data, _ = encode_symbols(symbols, alphabet, zero, rows)
    out = decode_symbols(mode, data, symbols.size, alphabet, zero, "test", rows)
    assert np.array_equal(out, symbols.ravel())
    return mode, data


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda k: st.tuples(st.just(k), st.lists(st.integers(0, k - 1), min_size=0, max_size=400), st.integers(0, k - 1))
    )
)
def test_any_symbol_array_roundtrips(case):
    alphabet, values, zero = case
    roundtrip(np.array(values, dtype=np.int32), alphabet, zero)
    roundtrip(np.array(values, dtype=np.int32), alphabet, None)
    for rows in (1, 2, 5):
        if values and len(values) % rows == 0:
            roundtrip(np.array(values, dtype=np.int32), alphabet, zero, rows)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=60), st.sampled_from(entropy._RUN_CAPS))
def test_run_symbol_counts_from_the_run_lengths_equal_those_of_the_run_symbols(runs, cap):
    """The run-length cap is chosen from counts taken off the runs' histogram, without writing each cap's symbols:
    they must be those symbols' counts exactly, so the cap (and the file) is the one the symbols would choose."""
    runs = np.array(runs, dtype=np.int64)
    expected = np.bincount(entropy._run_symbols(runs, cap), minlength=cap + 1)
    counts = entropy._run_symbol_counts(np.bincount(runs), cap)
    assert counts.tolist() == expected.tolist()
    assert entropy.counts_entropy_bits(counts) == entropy_bits(entropy._run_symbols(runs, cap))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=80), st.floats(0, 1))
def test_run_length_counts_from_the_zeros_positions_equal_those_of_the_runs(values, density):
    """A dense tensor's run histogram is taken from where its few zeros are: it must be the runs' own, exactly."""
    symbols = np.array(values, dtype=np.int32) * (np.random.default_rng(len(values)).random(len(values)) < density)
    zeros = int((symbols == 0).sum())
    expected = np.bincount(entropy._run_lengths(symbols, 0))
    assert entropy._run_length_counts(symbols, 0, zeros).tolist() == expected.tolist()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=200), st.sampled_from([1, 2, 4, 16]), st.integers(1, 9))
def test_run_length_coding_in_chunks_writes_the_stream_of_the_whole(values, cap, chunk):
    """A large tensor's run symbols are made and coded a chunk at a time: the symbols, and the stream, must be those
    of the whole tensor at once, whatever the chunk size and wherever a run crosses a chunk's edge."""
    symbols = np.array(values, dtype=np.int32)
    whole = entropy._run_symbols(entropy._run_lengths(symbols, 0), cap)
    encoded = encode_symbols(symbols, 4, 0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(entropy, "RUN_CHUNK", chunk)
        parts = list(entropy._chunked_run_symbols(symbols, 0, cap))
        assert np.concatenate(parts or [whole[:0]]).tolist() == whole.tolist()
        assert encode_symbols(symbols, 4, 0) == encoded
    counts = np.bincount(whole, minlength=cap + 1)
    assert entropy._range_encode([(iter(parts), counts)]) == entropy._range_encode([(whole, counts)])


def test_rank_one_layout_wins_on_rows_of_different_scales():
    rng = np.random.default_rng(0)
    scales = np.outer(rng.uniform(0.5, 20, 64), rng.uniform(0.1, 3, 300))
    symbols = (np.clip(np.round(rng.normal(0, scales)), -127, 127) + 127).astype(np.int32)
    mode, data = roundtrip(symbols, 255, 127, rows=64)
    assert mode == "rank1"
    assert len(data) < entropy_bits(symbols) / 8


def test_a_large_tensor_picks_its_rank_one_model_on_a_sample_and_still_roundtrips(monkeypatch):
    """Above the sampling size the model is chosen on a strided sample; the stream must decode all the same,
    and the sampled scales must be the full ones at those positions."""
    rng = np.random.default_rng(0)
    scales = np.outer(rng.uniform(0.5, 20, 64), rng.uniform(0.1, 3, 300))
    symbols = (np.clip(np.round(rng.normal(0, scales)), -127, 127) + 127).astype(np.int32)
    full_mode, full = roundtrip(symbols, 255, 127, rows=64)
    monkeypatch.setattr(entropy, "RANK1_SAMPLE", 500)
    monkeypatch.setattr(entropy, "RANK1_SAMPLE_ABOVE", 1000)
    mode, data = roundtrip(symbols, 255, 127, rows=64)
    assert mode == full_mode == "rank1" and len(data) <= 1.01 * len(full)
    row_q, col_q = rng.integers(-40, 40, 64).astype(np.int8), rng.integers(-40, 40, 300).astype(np.int8)
    positions = np.arange(0, 64 * 300, 37)
    every = entropy._rank1_scales(row_q, col_q, 3.0, 10)
    assert np.array_equal(entropy._rank1_scales(row_q, col_q, 3.0, 10, positions), every[positions])


def test_coded_size_is_within_one_percent_of_the_entropy_bound():
    rng = np.random.default_rng(0)
    symbols = rng.choice(16, size=200_000, p=np.r_[0.7, np.full(15, 0.02)]).astype(np.int32)
    _, data = roundtrip(symbols, 16, 0)
    assert len(data) <= 1.01 * entropy_bits(symbols) / 8 + 64


def test_clustered_zeros_choose_run_lengths():
    symbols = np.zeros(100_000, dtype=np.int32)
    symbols[:5000] = np.random.default_rng(1).integers(1, 4, 5000)
    mode, data = roundtrip(symbols, 4, 0)
    assert mode == "runs"
    assert len(data) < entropy_bits(symbols) / 8


@pytest.mark.parametrize("symbols", [np.zeros(0, np.int32), np.zeros(10, np.int32), np.full(10, 3, np.int32)])
def test_degenerate_arrays(symbols):
    roundtrip(symbols, 4, 0)


def test_context_layout_wins_when_neighbours_are_alike():
    """A Markov chain along each row: order-0 cannot see it, the context layout can."""
    rng = np.random.default_rng(0)
    steps = rng.choice([-1, 0, 1], size=(64, 576), p=[0.2, 0.6, 0.2])
    symbols = (np.cumsum(steps, axis=1) % 16).astype(np.int32)
    mode, data = roundtrip(symbols, 16, 0, rows=64)
    assert mode == "context"
    assert len(data) < 0.5 * entropy_bits(symbols) / 8


def test_context_period_sees_the_pixel_above():
    """Each row is a flattened 28 × 28 image whose columns are alike: the symbol 28 back (the pixel
    above) predicts, the left neighbour does not. The writer finds the period and the file shrinks."""
    rng = np.random.default_rng(0)
    image_columns = rng.integers(0, 4, size=(64, 1, 28))
    noise = rng.choice([0, 1], size=(64, 28, 28), p=[0.9, 0.1])
    symbols = ((image_columns + noise) % 4).reshape(64, 784).astype(np.int32)
    mode, data = roundtrip(symbols, 4, 0, rows=64)
    assert mode == "context" and data[0] % 28 == 0  # 28 or a multiple: the same pixel some rows up
    assert len(data) < 0.6 * entropy_bits(symbols) / 8


@pytest.mark.parametrize("sampled", [False, True])
def test_rank1_coded_in_parts_gives_the_same_words(monkeypatch, sampled):
    """Rank-1 scales are made a part at a time (bounded memory), on the sample and on the whole tensor."""
    rng = np.random.default_rng(2)
    scale = np.outer(rng.uniform(0.2, 3, 40), rng.uniform(0.2, 3, 300))
    symbols = np.clip(np.round(rng.laplace(0, scale)) + 7, 0, 14).astype(np.int32)
    if sampled:
        monkeypatch.setattr(entropy, "RANK1_SAMPLE", 500)
        monkeypatch.setattr(entropy, "RANK1_SAMPLE_ABOVE", 4000)
    whole = entropy._encode_rank1(symbols.ravel(), 15, 7, 40).getvalue()
    monkeypatch.setattr(entropy, "_PROBABILITY_ROWS_BYTES", 8 * 123)
    assert entropy._encode_rank1(symbols.ravel(), 15, 7, 40).getvalue() == whole
    assert np.array_equal(decode_symbols("rank1", whole, symbols.size, 15, 7, "test", 40), symbols.ravel())


@pytest.mark.parametrize("part_bytes", [8 * 4, 8 * 4 * 37])
def test_context_blocks_coded_in_parts_give_the_same_words(monkeypatch, part_bytes):
    """A large layer's block is coded a few thousand symbols at a time (bounded memory): the words must not change."""
    rng = np.random.default_rng(1)
    image_columns = rng.integers(0, 4, size=(16, 1, 28))
    symbols = ((image_columns + rng.choice([0, 1], size=(16, 28, 28), p=[0.9, 0.1])) % 4).reshape(16, 784).astype(np.int32)
    whole = encode_symbols(symbols, 4, 0, rows=16)
    monkeypatch.setattr(entropy, "_PROBABILITY_ROWS_BYTES", part_bytes)  # parts of 1 and of 37 symbols
    assert encode_symbols(symbols, 4, 0, rows=16) == whole and whole[0] == "context"


@pytest.mark.parametrize("period", [b"\x01", b"\x0b"])
def test_context_period_that_does_not_fit_is_a_format_error(period):
    """Period 1 would duplicate the left neighbour; 11 > 20 columns / 2 cannot be a period."""
    with pytest.raises(FormatError, match="period"):
        decode_symbols("context", period + b"\0\0\0\0", 40, 4, 0, "test", rows=2)


def test_growing_blocks_cover_every_index_once_and_grow_geometrically():
    assert [(b.start, b.stop) for b in growing_blocks(20, 1)] == [(0, 1), (1, 2), (2, 4), (4, 8), (8, 16), (16, 20)]
    blocks = growing_blocks(1000, 8)
    assert [b.stop - b.start for b in blocks[:10]] == [1] * 9 + [2]
    assert np.array_equal(np.concatenate([np.arange(1000)[b] for b in blocks]), np.arange(1000))
    assert len(blocks) < 60


def test_adaptive_counts_learn_each_context_and_never_give_zero_probability():
    model = AdaptiveCounts(alphabet=4, contexts=2)
    for _ in range(50):
        model.count(np.array([1, 3]), context=np.array([0, 1]))
    probabilities = model.probabilities(np.array([0, 1]))
    assert np.allclose(probabilities.sum(axis=1), 1) and (probabilities > 0).all()
    assert probabilities[0].argmax() == 1 and probabilities[1].argmax() == 3


def test_prior_levels_keep_each_count_within_a_factor_of_root_two_and_mark_absent_symbols():
    counts = np.array([0, 1, 2, 3, 1000, 0, 2**20])
    levels = prior_levels(counts)
    assert levels.tolist()[:4] == [0, 1, 3, 4] and levels[5] == 0
    probabilities = prior_probabilities(levels)
    assert probabilities.sum() == pytest.approx(1) and (probabilities[counts == 0] == 0).all()
    ratio = (probabilities / counts.sum())[counts > 0] / (counts[counts > 0] / counts.sum() ** 2)
    assert np.all(np.abs(np.log2(ratio / np.median(ratio))) <= 0.5 + 1e-9)


def test_context_prior_is_cheaper_than_a_count_table_on_a_small_sparse_tensor():
    """90 % zeros and a tail of magnitudes, like a pruned 5-bit conv of 16 × 16 × 3 × 3: the stored
    prior (about 4 bits a symbol) costs less than exact counts do, so the context layout wins even
    though the symbols are independent and the contexts have nothing to learn."""
    rng = np.random.default_rng(0)
    tail = np.r_[np.zeros(5), np.exp(-np.arange(10) / 3)]
    p = np.r_[tail[::-1], 0, tail] / np.r_[tail[::-1], 0, tail].sum() * 0.1
    p[15] = 0.9
    symbols = rng.choice(31, size=(16, 144), p=p).astype(np.int32)
    mode, data, side = encode_symbols(symbols, 31, 15, rows=16)
    counted, counted_data, counted_side = encode_symbols(symbols, 31, 15, rows=0)
    assert (mode, counted) == ("context", "symbols")
    assert len(data) < len(counted_data) and side < counted_side


@pytest.mark.parametrize(
    ("prior", "message"),
    [
        (b"\x04\xff", "order"),  # Exp-Golomb order 4 is out of range
        (b"\x00", "cut short"),  # no prior bits at all
        (b"\x00\x00\x00\x00\x00\x00\x00", "damaged"),  # a run of zeros longer than any code
        (b"\x00\xff", "no symbol present"),  # four zero deltas: every level 0
    ],
)
def test_damaged_context_prior_is_a_format_error(prior, message):
    with pytest.raises(FormatError, match=message):
        decode_symbols("context", b"\x00" + prior + b"\0\0\0\0", 40, 4, 0, "test", rows=2)


def test_decoding_a_symbol_the_prior_marks_absent_is_a_format_error(monkeypatch):
    """A writer whose prior leaves out a symbol that occurs (the coder still codes it, at the smallest
    probability): the reader decodes it and refuses the stream instead of trusting it."""
    symbols = np.tile(np.array([0, 1, 2, 1], dtype=np.int32), 20)
    honest = prior_levels
    monkeypatch.setattr(entropy, "prior_levels", lambda counts: honest(counts) * (np.arange(counts.size) != 2))
    data = entropy._encode_context(symbols, 4, 4, 0).getvalue()
    with pytest.raises(FormatError, match="marks absent"):
        decode_symbols("context", data, symbols.size, 4, None, "test", rows=4)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(2, 8), st.sampled_from([(2, 8), (4, 12), (3, 30)]))
def test_random_context_streams_decode_or_raise_a_format_error(data, alphabet, shape):
    """Streams that skip the container's CRC checks: the prior and word parsers never fail otherwise."""
    rows, cols = shape
    try:
        out = decode_symbols("context", data, rows * cols, alphabet, 0, "test", rows=rows)
    except FormatError:
        return
    assert out.shape == (rows * cols,) and 0 <= out.min() and out.max() < alphabet
