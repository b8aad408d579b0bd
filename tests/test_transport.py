"""Transport between processes over inproc/ipc/tcp, with the latest and lossless policies."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import numpy as np
import pytest
import zmq
import zmq.auth

from scopeflow.errors import EndpointError, OverrunError
from scopeflow.metrics import NodeMetrics
from scopeflow.transport import endpoints
from scopeflow.transport.streams import LatestReceiver, LosslessReceiver, LosslessSender, send

from children import frame_pixels, header_for, publish_frames, push_frames

SPAWN = mp.get_context("spawn")
N_FRAMES = 30


def _receive_all(sock: zmq.Socket, metrics: NodeMetrics, n: int, seed: int) -> list[int]:
    receiver = LosslessReceiver(sock, metrics, capacity=8)
    ids = []
    while len(ids) < n:
        msg = receiver.poll(20_000)
        assert msg is not None, f"timed out after {len(ids)} frames"
        np.testing.assert_array_equal(msg.array(), frame_pixels(seed, msg.header.image_id))
        ids.append(msg.header.image_id)
    return ids


@pytest.mark.parametrize("scheme", ["ipc", "tcp"])
def test_lossless_frames_between_processes(scheme, ipc_dir):
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    ep = f"ipc://{ipc_dir}/frames" if scheme == "ipc" else "tcp://127.0.0.1:*"
    bound = endpoints.bind(pull, ep)
    child = SPAWN.Process(target=push_frames, args=(bound, N_FRAMES, 7))
    child.start()
    metrics = NodeMetrics("test")
    try:
        ids = _receive_all(pull, metrics, N_FRAMES, seed=7)
    finally:
        child.join(30)
        pull.close()
        ctx.term()
    assert child.exitcode == 0
    assert ids == list(range(N_FRAMES))
    assert metrics.value("frames_lost") == 0
    assert metrics.value("frames_received") == N_FRAMES


def test_lossless_frames_inproc_between_threads():
    # inproc cannot cross processes; it connects nodes that share one context (tests, demo).
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    endpoints.bind(pull, "inproc://frames-test")

    def produce() -> None:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 5000)
        endpoints.connect(push, "inproc://frames-test")
        sender = LosslessSender(push, NodeMetrics("producer"), capacity=4, timeout_s=10)
        for i in range(N_FRAMES):
            sender.send(header_for(i), [frame_pixels(3, i)])
        push.close()

    producer = threading.Thread(target=produce)
    producer.start()
    ids = _receive_all(pull, NodeMetrics("test"), N_FRAMES, seed=3)
    producer.join(10)
    pull.close()
    ctx.term()
    assert ids == list(range(N_FRAMES))


def test_lossless_overrun_is_an_error_and_counted(ipc_dir):
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    pull = ctx.socket(zmq.PULL)  # connected but never reads: the queue fills up
    pull.setsockopt(zmq.LINGER, 0)
    endpoints.bind(push, f"ipc://{ipc_dir}/q")
    endpoints.connect(pull, f"ipc://{ipc_dir}/q")
    metrics = NodeMetrics("test")
    sender = LosslessSender(push, metrics, capacity=2, timeout_s=0.05)
    delivered = 0
    with pytest.raises(OverrunError, match="not delivered"):
        for i in range(10_000):
            sender.send(header_for(i), [frame_pixels(0, i)])
            delivered += 1
    assert metrics.value("overruns") == 1
    # Everything accepted before the overrun is still there, in order.
    receiver = LosslessReceiver(pull, NodeMetrics("rx"))
    got = []
    while (msg := receiver.poll(200)) is not None:
        got.append(msg.header.image_id)
    assert got == list(range(delivered))
    push.close()
    pull.close()
    ctx.term()


def test_lossless_receiver_counts_gaps_as_lost():
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for s in (push, pull):
        s.setsockopt(zmq.LINGER, 0)
    pull.bind("inproc://gaps")
    push.connect("inproc://gaps")
    for image_id in (0, 1, 4, 5):
        send(push, header_for(image_id, (2, 2)), [np.zeros((2, 2), np.uint16)])
    metrics = NodeMetrics("rx")
    receiver = LosslessReceiver(pull, metrics)
    ids = [receiver.poll(1000).header.image_id for _ in range(4)]
    assert ids == [0, 1, 4, 5]
    assert metrics.value("frames_lost") == 2
    push.close()
    pull.close()
    ctx.term()


def test_latest_policy_keeps_up_and_accounts_for_every_frame(ipc_dir):
    ep = f"ipc://{ipc_dir}/pub"
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 2)
    sub.setsockopt(zmq.SUBSCRIBE, b"image")
    endpoints.connect(sub, ep)
    n = 150
    child = SPAWN.Process(target=publish_frames, args=(ep, n, 300.0, 5))
    child.start()
    metrics = NodeMetrics("slow-consumer")
    receiver = LatestReceiver(sub, metrics)
    processed = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = receiver.poll(1500)
        if msg is None and processed:
            break
        if msg is None:
            continue
        np.testing.assert_array_equal(msg.array(), frame_pixels(5, msg.header.image_id, (64, 64)))
        processed.append(msg.header.image_id)
        time.sleep(0.02)  # a consumer slower than the 300 Hz stream
    child.join(10)
    sub.close()
    ctx.term()
    assert child.exitcode == 0
    assert processed == sorted(processed)
    skipped = metrics.value("frames_skipped")
    assert skipped > 0, "a slow consumer must skip frames"
    # Every frame between the first and last processed one was either processed or counted;
    # frames before the first processed one count only if the first drain held them (then they
    # were skipped in favour of a newer one), never twice.
    between = processed[-1] - processed[0] + 1
    assert between <= skipped + len(processed) <= between + processed[0]
    assert len(processed) >= 10


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tcp://",
        "udp://1.2.3.4:5",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:70000",
        "ipc://" + "x" * 200,
        "inproc://",
    ],
)
def test_bad_endpoints_are_refused_with_the_fix(text):
    with pytest.raises(EndpointError):
        endpoints.parse_endpoint(text)


def test_command_endpoint_is_loopback_only_without_curve():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        with pytest.raises(EndpointError, match="CURVE"):
            endpoints.bind(sock, "tcp://0.0.0.0:*", loopback_only=True)
        assert endpoints.bind(sock, "tcp://127.0.0.1:*", loopback_only=True).startswith("tcp://")
    finally:
        sock.close()
        ctx.term()


def test_curve_admits_authorised_clients_only(tmp_path):
    server_dir, clients_dir, other_dir = (tmp_path / d for d in ("server", "clients", "other"))
    for d in (server_dir, clients_dir, other_dir):
        d.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(server_dir, "server")
    _, client_secret = zmq.auth.create_certificates(clients_dir, "client")
    _, stranger_secret = zmq.auth.create_certificates(other_dir, "stranger")
    server_keys = endpoints.CurveServerKeys(server_secret, clients_dir)

    ctx = zmq.Context()
    auth = endpoints.start_authenticator(ctx, server_keys)
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    # Not loopback, but allowed because CURVE is configured.
    bound = endpoints.bind(router, "tcp://0.0.0.0:*", loopback_only=True, curve=server_keys)
    port = bound.rsplit(":", 1)[1]

    def ask(secret) -> bytes | None:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        endpoints.connect(
            dealer,
            f"tcp://127.0.0.1:{port}",
            curve=endpoints.CurveClientKeys(secret, server_public),
        )
        dealer.send(b"ping")
        got = None
        if router.poll(1500):
            ident, body = router.recv_multipart()
            router.send_multipart([ident, b"pong:" + body])
            if dealer.poll(1500):
                got = dealer.recv()
        dealer.close()
        return got

    try:
        assert ask(client_secret) == b"pong:ping"
        assert ask(stranger_secret) is None
    finally:
        router.close()
        auth.stop()
        ctx.term()
