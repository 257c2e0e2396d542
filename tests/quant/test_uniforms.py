"""Stochastic rounding's uniforms: any span drawn on its own is that span of one draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant import block_payload, parallel, sign_payload, uniforms
from quant.codec import Codec
from quant.uniforms import Uniforms

SEED = 20261202


def _whole(count: int) -> np.ndarray:
    return Uniforms(SEED).draw(count)


@pytest.mark.parametrize("start", [0, 1, 2, 3, 7, 64, 999, 1001])
@pytest.mark.parametrize("count", [1, 2, 5, 300])
def test_a_span_is_that_span_of_the_whole_stream(start: int, count: int) -> None:
    span = _whole(1400)[start : start + count]
    np.testing.assert_array_equal(Uniforms(SEED, start).draw(count), span)
    np.testing.assert_array_equal(Uniforms(SEED).at(start).draw(count), span)


def test_fill_on_several_threads_gives_the_draws_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    single = Uniforms(SEED, 11).draw(1000)
    monkeypatch.setattr(parallel, "workers", lambda: 3)
    monkeypatch.setattr(uniforms, "_SPAN_VALUES", 7)  # three spans, odd starts among them
    assert len(parallel.spans(1000, 7)) == 3
    np.testing.assert_array_equal(Uniforms(SEED, 11).draw(1000), single)
    out = np.empty((10, 100), dtype=np.float32)
    Uniforms(SEED, 11).fill(out)
    np.testing.assert_array_equal(out.reshape(-1), single)


def test_tensor_is_the_draws_in_c_order_in_any_float_dtype() -> None:
    draws = _whole(24)
    as32 = Uniforms(SEED).tensor((2, 3, 4), torch.float32)
    as64 = Uniforms(SEED).tensor(torch.Size((2, 3, 4)), torch.float64)
    assert as32.shape == as64.shape == (2, 3, 4)
    assert as32.dtype == torch.float32 and as64.dtype == torch.float64
    np.testing.assert_array_equal(as32.reshape(-1).numpy(), draws)
    np.testing.assert_array_equal(as64.reshape(-1).numpy(), draws.astype(np.float64))


def test_draws_are_uniform_24_bit_numbers_in_the_unit_interval() -> None:
    draws = _whole(400_000).astype(np.float64)
    assert draws.min() >= 0.0 and draws.max() < 1.0
    scaled = draws * 2**24
    np.testing.assert_array_equal(scaled, np.floor(scaled))  # 24 random bits each
    assert abs(draws.mean() - 0.5) < 0.003  # sd of the mean: 0.00046
    counts = np.histogram(draws, bins=16, range=(0.0, 1.0))[0]
    expected = draws.size / 16
    assert ((counts - expected) ** 2 / expected).sum() < 50  # chi2(15) p ~ 1e-5
    # Neighbouring draws are not correlated (the two halves of one 64-bit output).
    assert abs(np.corrcoef(draws[0::2], draws[1::2])[0, 1]) < 0.01


def test_a_seeded_generator_gives_the_same_stream_and_the_next_draw_another() -> None:
    first = Uniforms.from_generator(torch.Generator().manual_seed(4))
    again = Uniforms.from_generator(torch.Generator().manual_seed(4))
    assert first == again and first.start == 0
    generator = torch.Generator().manual_seed(4)
    streams = {Uniforms.from_generator(generator).seed for _ in range(20)}
    assert len(streams) == 20
    assert not np.array_equal(Uniforms(1).draw(64), Uniforms(2).draw(64))


@pytest.mark.parametrize("text", ["fp8_e4m3:sr", "sign:sr", "sign:block=24:sr", "bf16:sr"])
def test_codecs_encoding_in_pieces_send_the_bytes_of_one_piece(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = np.random.default_rng(2).standard_normal((37, 29)).astype(np.float32)
    codec = Codec.from_spec(text)
    whole = codec.encode([x], generator=torch.Generator().manual_seed(6))
    monkeypatch.setattr(block_payload, "PIECE_VALUES", 48)
    monkeypatch.setattr(sign_payload, "PIECE_VALUES", 48)
    pieces = codec.encode([x], generator=torch.Generator().manual_seed(6))
    assert pieces == whole
    other = codec.encode([x], generator=torch.Generator().manual_seed(7))
    assert other != whole


def test_tensor_fills_a_given_buffer_or_says_what_it_needs() -> None:
    out = torch.empty(3, 8)
    assert Uniforms(SEED, 5).tensor(out.shape, torch.float32, out=out) is out
    np.testing.assert_array_equal(out.reshape(-1).numpy(), _whole(29)[5:])
    with pytest.raises(ValueError, match=r"contiguous float32 tensor of shape \(3, 8\)"):
        Uniforms(SEED).tensor((3, 8), torch.float32, out=torch.empty(8, 3).t())


def test_fill_writes_into_the_array_given_or_refuses_it() -> None:
    out = np.zeros((4, 6), dtype=np.float32)
    Uniforms(SEED, 2).fill(out)
    np.testing.assert_array_equal(out.reshape(-1), _whole(26)[2:])
    strided = np.zeros((6, 4), dtype=np.float32).T  # reshape(-1) of it would be a copy
    with pytest.raises(ValueError, match="C-contiguous float32 array"):
        Uniforms(SEED).fill(strided)
    with pytest.raises(ValueError, match="got float64"):
        Uniforms(SEED).fill(np.zeros(4))
