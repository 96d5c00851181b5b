"""NodeMetrics (private registry, counters fed from cumulative totals) and the /metrics endpoint."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import prometheus_client
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from gossipd.exchange import PeerRefused
from gossipd.metrics import CONTENT_TYPE, NodeMetrics, outcome_of, pair_distance
from gossipd.metrics_http import MAX_REQUEST, serve_metrics
from gossipd.netapi import TransportError
from protocol.errors import DecodeError, ProtocolError, SpecMismatch

PEER = "12D3KooWTestPeer"


def status(**over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "step": 10, "loss": 0.5, "accuracy": 0.9, "mixes": 3, "known_peers": ["a", "b", "c"],
        "live_peers": 2, "bytes_sent": 1000, "bytes_received": 900, "refused_non_members": 1,
        "uptime_s": 12.5,
    }
    s.update(over)
    return s


def value(m: NodeMetrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    assert v is not None, f"{name} {labels} not exported"
    return v


def make() -> NodeMetrics:
    return NodeMetrics(PEER, "digits-mlp", "mlp-64-10")


# -- NodeMetrics ------------------------------------------------------------------------------

def test_update_sets_gauges_and_counters() -> None:
    m = make()
    m.update(status())
    assert value(m, "gossipd_training_step") == 10
    assert value(m, "gossipd_training_loss") == 0.5
    assert value(m, "gossipd_test_accuracy") == 0.9
    assert value(m, "gossipd_mixes_total") == 3
    assert value(m, "gossipd_peers_known") == 3
    assert value(m, "gossipd_peers_live") == 2
    assert value(m, "gossipd_exchange_sent_bytes_total") == 1000
    assert value(m, "gossipd_exchange_received_bytes_total") == 900
    assert value(m, "gossipd_refused_non_members_total") == 1
    assert value(m, "gossipd_uptime_seconds") == 12.5
    assert value(m, "gossipd_strikes_total") == 0  # absent key: untouched
    m.update(status(strikes_total=4))
    assert value(m, "gossipd_strikes_total") == 4
    m.update(status(strikes=6))
    assert value(m, "gossipd_strikes_total") == 6


def test_counters_never_decrease() -> None:
    m = make()
    seen = []
    for sent in (100, 250, 40, 60, 60, 300):  # 40: a reset-looking smaller total
        m.update(status(bytes_sent=sent))
        seen.append(value(m, "gossipd_exchange_sent_bytes_total"))
    assert seen == [100, 250, 250, 270, 270, 510]  # held at the drop, growth counted after it
    assert all(a <= b for a, b in itertools.pairwise(seen))


def test_unknown_values_are_nan_and_bad_values_ignored() -> None:
    m = make()
    assert math.isnan(value(m, "gossipd_training_loss"))
    assert math.isnan(value(m, "gossipd_consensus_distance_estimate"))
    m.update(status(loss=None, accuracy=None))
    assert math.isnan(value(m, "gossipd_training_loss"))
    assert math.isnan(value(m, "gossipd_test_accuracy"))
    m.update(status())
    m.update(status(bytes_sent="lots", bytes_received=math.inf, step=None))
    assert value(m, "gossipd_exchange_sent_bytes_total") == 1000  # unchanged
    assert value(m, "gossipd_exchange_received_bytes_total") == 900
    assert value(m, "gossipd_training_step") == 10
    m.update({})  # nothing known: nothing moves
    assert value(m, "gossipd_mixes_total") == 3
    assert value(m, "gossipd_test_accuracy") == 0.9


def test_render_contains_every_metric() -> None:
    m = make()
    m.update(status())
    m.observe_exchange("initiated", "ok", 0.02)
    m.observe_mix(0.1)
    text = m.render().decode()
    for name in (
        "gossipd_info", "gossipd_training_step", "gossipd_training_loss", "gossipd_test_accuracy",
        "gossipd_mixes_total", "gossipd_exchanges_total", "gossipd_exchange_duration_seconds",
        "gossipd_exchange_sent_bytes_total", "gossipd_exchange_received_bytes_total",
        "gossipd_peers_known", "gossipd_peers_live", "gossipd_strikes_total",
        "gossipd_refused_non_members_total", "gossipd_uptime_seconds",
        "gossipd_consensus_distance_estimate",
    ):
        assert f"\n{name}" in text, name
    assert (f'gossipd_info{{peer_id="{PEER}",spec="mlp-64-10",task="digits-mlp",version="1"}} 1.0'
            in text)
    families = {f.name for f in text_string_to_metric_families(text)}  # it parses
    assert "gossipd_exchanges" in families
    assert CONTENT_TYPE == prometheus_client.CONTENT_TYPE_LATEST


def test_exchanges_and_histogram_buckets() -> None:
    m = make()
    # every role x outcome series exists at 0 before anything happens
    assert value(m, "gossipd_exchanges_total", role="served", outcome="timeout") == 0
    for seconds in (0.003, 0.2, 40.0):
        m.observe_exchange("initiated", "ok", seconds)
    m.observe_exchange("served", "protocol_error", 1.0)
    assert value(m, "gossipd_exchanges_total", role="initiated", outcome="ok") == 3
    assert value(m, "gossipd_exchanges_total", role="served", outcome="protocol_error") == 1
    h = "gossipd_exchange_duration_seconds"
    assert value(m, h + "_bucket", role="initiated", le="0.005") == 1
    assert value(m, h + "_bucket", role="initiated", le="0.25") == 2
    assert value(m, h + "_bucket", role="initiated", le="30.0") == 2
    assert value(m, h + "_bucket", role="initiated", le="+Inf") == 3
    assert value(m, h + "_count", role="initiated") == 3
    assert value(m, h + "_sum", role="initiated") == pytest.approx(40.203)
    assert value(m, h + "_count", role="served") == 1
    with pytest.raises(ValueError, match="role"):
        m.observe_exchange("sideways", "ok", 1.0)
    with pytest.raises(ValueError, match="outcome"):
        m.observe_exchange("served", "meh", 1.0)


def test_private_registries() -> None:
    a, b = make(), NodeMetrics("other", "t", "s")
    a.update(status(bytes_sent=500))
    a.observe_exchange("served", "ok", 0.1)
    a.observe_mix(2.0)
    assert value(a, "gossipd_exchange_sent_bytes_total") == 500
    assert value(b, "gossipd_exchange_sent_bytes_total") == 0
    assert value(b, "gossipd_exchanges_total", role="served", outcome="ok") == 0
    assert math.isnan(value(b, "gossipd_consensus_distance_estimate"))
    assert b"other" not in a.render() and PEER.encode() not in b.render()
    assert prometheus_client.REGISTRY.get_sample_value("gossipd_training_step") is None


def test_outcome_of() -> None:
    assert outcome_of(None) == "ok"
    assert outcome_of(ProtocolError("x")) == "protocol_error"
    assert outcome_of(DecodeError("x")) == "protocol_error"
    assert outcome_of(SpecMismatch("x")) == "protocol_error"
    assert outcome_of(PeerRefused("busy", "try later")) == "refused"
    assert outcome_of(TransportError("reset")) == "transport_error"
    assert outcome_of(trio.TooSlowError()) == "timeout"
    assert outcome_of(RuntimeError("?")) == "transport_error"


def test_pair_distance_and_consensus_estimate() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    b = np.array([1.0, 0.0, 3.0, 6.0], np.float32)
    assert pair_distance(a, b) == pytest.approx(2.0)  # (0 + 4 + 0 + 4) / 4
    assert pair_distance(a, a) == 0.0
    assert pair_distance(b, a) == pair_distance(a, b)
    with pytest.raises(ValueError):
        pair_distance(a, b[:3])
    with pytest.raises(ValueError):
        pair_distance(np.zeros(0), np.zeros(0))
    m = make()
    m.observe_mix(4.0)
    assert value(m, "gossipd_consensus_distance_estimate") == 4.0  # first value seeds it
    m.observe_mix(math.inf)
    m.observe_mix(math.nan)
    m.observe_mix(-1.0)
    assert value(m, "gossipd_consensus_distance_estimate") == 4.0  # ignored
    for _ in range(60):
        m.observe_mix(0.0)
    assert 0.0 <= value(m, "gossipd_consensus_distance_estimate") < 1e-4  # decays to recent


# -- HTTP endpoint ----------------------------------------------------------------------------

async def fetch(port: int, request: bytes) -> bytes:
    with trio.fail_after(2):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            chunks = []
            while data := await stream.receive_some(65536):
                chunks.append(data)
    return b"".join(chunks)


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode()


async def test_http_metrics_and_404(nursery: trio.Nursery) -> None:
    m = make()
    m.update(status())
    port = await nursery.start(serve_metrics, "127.0.0.1", 0, m.render)
    reply = await fetch(port, get("/metrics"))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"Content-Type: {CONTENT_TYPE}".encode() in head
    assert b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert body == m.render()
    assert (await fetch(port, get("/metrics?x=1"))).startswith(b"HTTP/1.1 200 ")
    assert (await fetch(port, b"GET /metrics HTTP/1.0\n\n")).startswith(b"HTTP/1.1 200 ")
    for req in (get("/"), get("/metricsx"), b"POST /metrics HTTP/1.1\r\n\r\n"):
        assert (await fetch(port, req)).startswith(b"HTTP/1.1 404 "), req
    assert (await fetch(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")


async def test_http_bad_clients_do_not_stop_server(nursery: trio.Nursery) -> None:
    m = make()
    port = await nursery.start(
        lambda task_status: serve_metrics("127.0.0.1", 0, m.render, client_timeout_s=0.3,
                                          task_status=task_status))
    # oversized head: answered 431 (or reset, if the server closes while we still send)
    start = trio.current_time()
    try:
        reply = await fetch(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (2 * MAX_REQUEST))
        assert reply == b"" or reply.startswith(b"HTTP/1.1 431 ")
    except trio.BrokenResourceError:
        pass
    # a client that connects and says nothing is dropped at the deadline
    with trio.fail_after(2):
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        async with silent:
            assert await silent.receive_some(100) == b""
    # one that closes half-way through its request
    half = await trio.open_tcp_stream("127.0.0.1", port)
    await half.send_all(b"GET /met")
    await half.aclose()
    assert trio.current_time() - start < 2
    assert (await fetch(port, get("/metrics"))).startswith(b"HTTP/1.1 200 ")


async def test_http_render_failure_is_500(nursery: trio.Nursery) -> None:
    def broken() -> bytes:
        raise RuntimeError("collector bug")

    port = await nursery.start(serve_metrics, "127.0.0.1", 0, broken)
    assert (await fetch(port, get("/metrics"))).startswith(b"HTTP/1.1 500 ")
    assert (await fetch(port, get("/metrics"))).startswith(b"HTTP/1.1 500 ")  # still serving


async def test_http_refuses_non_loopback() -> None:
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.org"):
        with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
            await serve_metrics(host, 0, bytes)
    # with the explicit opt-in a wildcard bind is allowed
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_metrics(
            "0.0.0.0", 0, lambda: b"x", allow_remote=True, task_status=task_status))
        assert (await fetch(port, get("/metrics"))).endswith(b"\r\n\r\nx")
        nursery.cancel_scope.cancel()


async def test_http_ipv6_loopback(nursery: trio.Nursery) -> None:
    try:
        port = await nursery.start(serve_metrics, "::1", 0, lambda: b"six")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with trio.fail_after(2):
        stream = await trio.open_tcp_stream("::1", port)
        async with stream:
            await stream.send_all(get("/metrics"))
            reply = b""
            while data := await stream.receive_some(4096):
                reply += data
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"six")
