"""Parameter compression: codec bounds, sizes, error feedback, the pair-sum rule, hostile bytes."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossipd import compress as c
from gossipd.config import AveragingConfig, Config, NetworkConfig, TrainConfig
from gossipd.daemon import Node
from gossipd.ledger import Ledger
from gossipd.provenance import Provenance
from gossipd.runner import ModelRunner
from protocol import quant
from tests.fakes import MemoryNetwork
from tests.test_node import FakeTrainer, one_exchange, params

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RNG = np.random.default_rng(7)


def _vec(n: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(n) * scale).astype(np.float32)


@pytest.mark.parametrize("n", [1, 255, 256, 257, 1000, quant.SEGMENT + 300])
@pytest.mark.parametrize("mode", c.MODES)
def test_sizes_and_roundtrip_shape(n: int, mode: str) -> None:
    x = _vec(n)
    buf = c.encode(x, mode)
    assert buf.dtype == np.uint8 and buf.ndim == 1 and buf.size == c.encoded_size(n, mode)
    y = c.decode(buf, n, mode)
    assert y.dtype == np.float32 and y.shape == (n,)
    np.testing.assert_array_equal(y, c.roundtrip(x, mode))
    out = np.empty(n, np.float32)
    assert c.decode(bytes(buf), n, mode, out=out) is out
    np.testing.assert_array_equal(out, y)


def test_encoded_sizes() -> None:
    assert c.encoded_size(1000, "none") == 4000
    assert c.encoded_size(1000, "bf16") == 2000
    assert c.encoded_size(1000, "int8") == 4 * 4 + 1000
    n = 10_000_000
    assert c.encoded_size(n, "none") / c.encoded_size(n, "int8") >= 3.9
    with pytest.raises(ValueError):
        c.encoded_size(10, "fp8")


def test_none_is_exact() -> None:
    x = _vec(1000)
    np.testing.assert_array_equal(c.roundtrip(x, "none"), x)
    assert c.encode(x, "none").tobytes() == x.astype("<f4").tobytes()


def test_bf16_relative_error() -> None:
    x = np.concatenate([_vec(50_000), _vec(1000, 1e-30), _vec(1000, 1e30)])
    y = c.roundtrip(x, "bf16")
    assert (np.abs(y - x) <= np.abs(x) * 2.0**-8).all()


def test_bf16_round_to_nearest_even() -> None:
    # 1 + 2**-8 is exactly halfway between bf16 neighbours 1 and 1 + 2**-7: ties go to even (1).
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8)], np.float32)
    y = c.roundtrip(x, "bf16")
    np.testing.assert_array_equal(y, np.array([1.0, 1 + 2**-6, 1 + 2**-7, -1.0], np.float32))


def test_bf16_saturates_instead_of_overflowing() -> None:
    big = np.finfo(np.float32).max
    y = c.roundtrip(np.array([big, -big], np.float32), "bf16")
    assert np.isfinite(y).all() and y[0] > 3.3e38 and y[1] < -3.3e38


def test_int8_error_within_half_scale_per_block() -> None:
    n = 256 * 40 + 77
    x = _vec(n) * np.repeat(np.logspace(-6, 3, 41), 256)[:n].astype(np.float32)
    x[256:512] = 0.0  # a zero block: scale 0, decodes to exact zeros
    buf = c.encode(x, "int8")
    nb = quant.int8_blocks(n)
    scales = buf[: 4 * nb].view("<f4")
    q = buf[4 * nb :].view(np.int8)
    assert scales[1] == 0 and (q[256:512] == 0).all() and q.min() >= -127
    y = c.decode(buf, n, "int8")
    err = np.abs(y - x)
    bound = np.repeat(scales, 256)[:n] * 0.5 * (1 + 1e-5)
    assert (err <= bound).all()
    for b in range(nb):
        block = x[b * 256 : (b + 1) * 256]
        assert scales[b] == np.float32(np.abs(block).max() / np.float32(127))


@pytest.mark.parametrize("mode", c.MODES)
def test_encode_refuses_non_finite(mode: str) -> None:
    for bad in (np.nan, np.inf, -np.inf):
        x = _vec(600)
        x[300] = bad
        with pytest.raises(ValueError):
            c.encode(x, mode)


def test_decode_rejects_bad_buffers() -> None:
    x = _vec(300)
    with pytest.raises(ValueError):
        c.decode(c.encode(x, "bf16")[:-1], 300, "bf16")
    with pytest.raises(ValueError):
        c.decode(c.encode(x, "int8"), 301, "int8")
    with pytest.raises(ValueError):
        c.decode(b"", 0, "mp3")
    for scale in (np.nan, np.inf, -1.0, -0.0, 2.0**121):
        buf = c.encode(x, "int8").copy()
        buf[:4] = np.frombuffer(np.array([scale], "<f4").tobytes(), np.uint8)
        with pytest.raises(ValueError):
            c.decode(buf, 300, "int8")
    buf = c.encode(x, "int8").copy()
    buf[8 + 5] = 0x80  # int8 -128
    with pytest.raises(ValueError):
        c.decode(buf, 300, "int8")
    buf = c.encode(x, "bf16").copy()
    buf[2:4] = [0x80, 0x7F]  # 0x7F80: +Inf
    with pytest.raises(ValueError):
        c.decode(buf, 300, "bf16")


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_error_feedback_keeps_the_sum_of_sent_values_close(mode: str) -> None:
    """Sum over T rounds of x_hat tracks the sum of x: the residual stays bounded."""
    n, rounds = 4096, 200
    state = c.ef_init()
    sum_x = np.zeros(n, np.float64)
    sum_hat = np.zeros(n, np.float64)
    worst = 0.0
    for _ in range(rounds):
        x = _vec(n, 0.1) + np.float32(0.003)  # a small bias plain rounding would keep losing
        buf, x_hat, state = c.ef_compress(state, x, mode)
        np.testing.assert_array_equal(c.decode(buf, n, mode), x_hat)
        sum_x += x
        sum_hat += x_hat
        assert state.residual is not None
        worst = max(worst, float(np.abs(state.residual).max()))
        # Invariant: sum of x - sum of x_hat == the residual (up to float rounding).
        np.testing.assert_allclose(sum_x - sum_hat, state.residual, atol=1e-4)
    assert worst < 0.01
    assert float(np.abs(sum_x - sum_hat).max()) < 0.01


def test_ef_none_keeps_no_residual_and_is_pure() -> None:
    x = _vec(100)
    buf, x_hat, state = c.ef_compress(c.ef_init(), x, "none")
    assert state.residual is None and x_hat is x and buf.size == 400
    s1 = c.ef_compress(c.ef_init(), x, "int8")[2]
    assert s1.residual is not None
    before = s1.residual.copy()
    c.ef_compress(s1, x, "int8")
    np.testing.assert_array_equal(s1.residual, before)  # the old state is not mutated
    with pytest.raises(ValueError):
        c.ef_compress(s1, _vec(101), "int8")


@pytest.mark.parametrize("mode", c.MODES)
def test_merge_on_dequantized_vectors_preserves_the_pair_sum(mode: str) -> None:
    """C + w (R_hat - S_hat) on both sides: the pair's sum is unchanged by compression."""
    n, w = 5000, 0.5
    fa, fb = c.ErrorFeedback(mode), c.ErrorFeedback(mode)
    ca, cb = _vec(n), _vec(n, 3.0)
    for _ in range(20):
        sa, sb = ca.copy(), cb.copy()  # snapshots
        ca += _vec(n, 0.01)  # training goes on during the exchange
        cb += _vec(n, 0.01)
        total = ca.astype(np.float64) + cb
        enc_a, sa_hat = fa(sa)
        enc_b, sb_hat = fb(sb)
        ra = c.decode(enc_b, n, mode)  # what A receives
        rb = c.decode(enc_a, n, mode)
        np.testing.assert_array_equal(rb, sa_hat)
        ca = ca + np.float32(w) * (ra - sa_hat)
        cb = cb + np.float32(w) * (rb - sb_hat)
        np.testing.assert_allclose(ca.astype(np.float64) + cb, total, atol=1e-4)
    assert float(np.abs(ca - cb).max()) < 0.1  # and they still converge


def test_error_feedback_holder() -> None:
    ef = c.ErrorFeedback("int8")
    assert ef.dtype == "i8b256" and c.wire_dtype("bf16") == "bf16"
    buf, x_hat = ef(_vec(1000))
    assert x_hat.dtype == np.float32
    assert buf.size == c.encoded_size(1000, "int8") and ef.state.residual is not None
    with pytest.raises(ValueError):
        c.ErrorFeedback("zip")


@FUZZ
@given(data=st.binary(max_size=2000), n=st.integers(0, 600), mode=st.sampled_from(c.MODES))
def test_decoding_arbitrary_bytes_only_raises_value_error(data: bytes, n: int, mode: str) -> None:
    try:
        y = c.decode(data, n, mode)
    except ValueError:
        return
    assert y.shape == (n,) and np.isfinite(y).all()


@FUZZ
@given(n=st.integers(1, 700), mode=st.sampled_from(["bf16", "int8"]),
       seed=st.integers(0, 2**32 - 1))
def test_decoding_right_sized_random_buffers(n: int, mode: str, seed: int) -> None:
    buf = np.random.default_rng(seed).integers(0, 256, c.encoded_size(n, mode), dtype=np.uint8)
    try:
        y = c.decode(buf, n, mode)
    except ValueError:
        return
    assert np.isfinite(y).all()


@FUZZ
@given(x=hnp.arrays(np.float32, st.integers(1, 600),
                    elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
       mode=st.sampled_from(c.MODES))
def test_any_finite_vector_roundtrips_to_finite(x: np.ndarray, mode: str) -> None:
    y = c.roundtrip(x, mode)
    assert np.isfinite(y).all() and y.shape == x.shape
    if mode == "bf16":
        normal = np.abs(x) >= np.finfo(np.float32).tiny
        small = np.abs(x) < 3.3e38
        sel = normal & small
        assert (np.abs(y - x)[sel] <= np.abs(x[sel]) * 2.0**-8).all()


# ------------------------------------------------------------------ two nodes, in memory


def _node(net: MemoryNetwork, name: str, value: float, state: Path, compression: str) -> Node:
    transport = net.transport(name)
    cfg = Config(network=NetworkConfig(listen=("/memory",), dial_timeout_s=1.0),
                 averaging=AveragingConfig(interval_s=3600, timeout_s=2.0,
                                           compression=compression, robust="none"),
                 train=TrainConfig(steps_per_second=40, eval_interval_s=1.0))
    trainer = FakeTrainer(value, n=1000, spec="fake/1000")
    runner = ModelRunner(trainer, 40, 1.0, 0.5)  # type: ignore[arg-type]
    state.mkdir()
    prov = Provenance(Ledger(state / "ledger.bin", transport.seed,
                             transport.peer_id_bytes(transport.peer_id)))
    return Node(cfg, transport, runner, transport.seed, random.Random(name), provenance=prov)


async def test_nodes_with_different_compression_average_and_agree_on_receipts(
        tmp_path: Path) -> None:
    net = MemoryNetwork()
    a = _node(net, "a", 0.1, tmp_path / "a", "int8")
    b = _node(net, "b", 1.3, tmp_path / "b", "bf16")
    await one_exchange(net, a, b)
    assert a.stats.ok == 1 and b.stats.served_ok == 1
    pa, pb = params(a), params(b)
    # Both merged with the dequantized vectors: the pair's sum is exactly what it was.
    np.testing.assert_allclose(pa.astype(np.float64) + pb, 0.1 + 1.3, rtol=1e-6)
    np.testing.assert_allclose(pa, 0.7, atol=0.01)
    np.testing.assert_allclose(pb, 0.7, atol=0.01)
    # int8 sent n + 4 * ceil(n / 256) data bytes, bf16 2n: a sent less than it received.
    assert a.stats.bytes.sent < b.stats.bytes.sent
    assert a.error_feedback.state.residual is not None
    assert b.error_feedback.state.residual is not None
    # The receipts hash what was actually sent, so both ledgers hold the same one.
    assert a.provenance is not None and b.provenance is not None
    ra = [r.data for r in a.provenance.ledger.read() if r.kind == "receipt"]
    rb = [r.data for r in b.provenance.ledger.read() if r.kind == "receipt"]
    assert ra == rb and len(ra) == 1
