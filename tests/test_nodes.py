"""Nodes over real sockets: commands, bad input, counters, shutdown, peers that vanish."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
import zmq
import zmq.auth

from scopeflow.acquisition.node import AcquireConfig, AcquireNode
from scopeflow.devices.remote import CommandRejected, MicroscopeClient
from scopeflow.errors import LimitError, PeerTimeout
from scopeflow.inference.node import InferConfig, InferNode
from scopeflow.metrics import NodeMetrics
from scopeflow.schemas.codec import decode
from scopeflow.schemas.results import FocusEstimate
from scopeflow.scopes.results import ResultSubscriber
from scopeflow.transport.endpoints import CurveClientKeys, CurveServerKeys
from scopeflow.transport.streams import LosslessReceiver, send
from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM

from children import header_for
from harness import autofocus_record, pipeline, remote_autofocus, running


def small_sem(**kw) -> SimulatedSEM:
    return SimulatedSEM(SEMConfig(frame_shape=(128, 128), settle_s=0.0, **kw))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_request(ctx: zmq.Context, endpoint: str, parts: list[bytes]) -> dict:
    """Send raw parts on a REQ socket (as a foreign client would) and return the answer."""
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(endpoint)
    try:
        req.send_multipart(parts)
        assert req.poll(5000), "no answer"
        kind, body = req.recv_multipart()
        return {"kind": kind.decode(), **json.loads(body)}
    finally:
        req.close()


V = '"protocol_version":"1.0"'
BAD_COMMANDS = [
    ([b"command", b"{oops"], "bad_json"),
    (
        [b"command", b'{"protocol_version":"9.0","seq":1,"command":"get_state"}'],
        "unsupported_version",
    ),
    ([b"command", ("{" + V + ',"seq":2,"command":"self_destruct"}').encode()], "unknown_command"),
    (
        [b"command", ("{" + V + ',"seq":3,"command":"set_wd","wd_um":NaN}').encode()],
        "invalid_message",
    ),
    (
        [b"command", ("{" + V + ',"seq":4,"command":"set_wd","wd_um":"5000"}').encode()],
        "invalid_message",
    ),
    ([b"command", ("{" + V + ',"seq":5,"command":"set_wd","wd_um":999999}').encode()], "limit"),
    (
        [b"command", ("{" + V + ',"seq":6,"command":"move_stage","x_um":1e5,"y_um":0}').encode()],
        "limit",
    ),
    ([b"command", ("{" + V + ',"seq":true,"command":"nope"}').encode()], "unknown_command"),
    (
        [b"command", ("{" + V + ',"seq":7,"command":"' + "x" * 9000 + '"}').encode()],
        "unknown_command",
    ),
    ([b"reply", b"{}"], "unsupported_version"),
    ([b"image", ("{" + V + "}").encode()], "invalid_message"),
    ([b"gibberish", b"{}"], "unknown_kind"),
    ([b"command"], "invalid_message"),
    (
        [b"command", b'{"protocol_version":"1.0","seq":8,"x":' + b"[" * 3000 + b"]" * 3000 + b"}"],
        "bad_json",
    ),
]


def test_every_bad_command_is_answered_counted_and_the_node_keeps_serving(ipc_dir):
    port = free_port()
    sem = small_sem()
    with pipeline(ipc_dir, sem, with_infer=False, metrics_port=port) as p:
        for parts, code in BAD_COMMANDS:
            answer = raw_request(p.ctx, p.commands, parts)
            assert answer["kind"] == "error", parts
            assert answer["code"] == code, (parts[:1], answer)
            assert len(answer["reason"]) > 5
        # A valid request still works, and nothing moved.
        ok = raw_request(
            p.ctx, p.commands, [b"command", ("{" + V + ',"seq":9,"command":"get_state"}').encode()]
        )
        assert ok["kind"] == "reply" and ok["seq"] == 9
        assert ok["state"]["wd_um"] == pytest.approx(sem.config.focus_wd_um)
        metrics = p.acquire.metrics
        n_protocol = sum(1 for _, c in BAD_COMMANDS if c != "limit")
        assert metrics.value("messages_rejected") == n_protocol
        assert metrics.value("commands_rejected", code="limit") == 2
        # The same counters, scraped from the node's Prometheus endpoint.
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = text.decode()
        assert 'scopeflow_messages_rejected_total{code="bad_json"} 2.0' in text
        assert 'scopeflow_commands_rejected_total{code="limit"} 2.0' in text


def test_errors_echo_the_seq_when_it_can_be_read(ipc_dir):
    with pipeline(ipc_dir, small_sem(), with_infer=False) as p:
        answer = raw_request(
            p.ctx,
            p.commands,
            [b"command", ("{" + V + ',"seq":41,"command":"set_wd","wd_um":-5}').encode()],
        )
        assert answer["seq"] == 41 and answer["code"] == "limit"


def test_commands_move_the_microscope_and_replies_carry_the_new_state(ipc_dir):
    sem = small_sem()
    with pipeline(ipc_dir, sem, with_infer=False) as p:
        client = MicroscopeClient(p.ctx, p.commands, timeout_s=5)
        try:
            r1 = client.set_wd(5012.5)
            assert r1.state.wd_um == pytest.approx(5012.5) and r1.state.settled
            assert r1.command_seq == 1
            r2 = client.move_stage(10.0, -3.0)
            assert (r2.state.stage_x_um, r2.state.stage_y_um) == pytest.approx((10.0, -3.0))
            assert r2.command_seq == 2
            r3 = client.acquire()
            assert r3.image_id == 0 and r3.command_seq == 2
            assert r3.series_unique_id == p.acquire.series_unique_id
            with pytest.raises(CommandRejected) as info:
                client.set_wd(1e5)
            assert info.value.code == "limit"
            assert client.get_state().state.wd_um == pytest.approx(5012.5)
        finally:
            client.close()
    assert sem.state().wd_um == pytest.approx(5012.5)


def test_beam_shift_moves_the_field_within_its_range_and_counts_as_a_move(ipc_dir):
    """Protocol 1.4 ``set_beam_shift``: absolute, in the reply's state, refused past the
    range the limits report (the guard, in one place), refused by a microscope without one."""
    from scopeflow_lab.sim.sim_adapter import open_simulator

    with pipeline(ipc_dir, small_sem(), with_infer=False) as p:
        client = MicroscopeClient(p.ctx, p.commands, timeout_s=5)
        try:
            limit = client.get_state().limits.beam_shift_range_um
            assert limit == 20.0  # the SEM simulator's coils
            r = client.set_beam_shift(1.5, -0.25)
            assert (r.state.beam_shift_x_um, r.state.beam_shift_y_um) == (1.5, -0.25)
            assert r.command_seq == 1
            with pytest.raises(CommandRejected) as info:
                client.set_beam_shift(limit + 1.0, 0.0)
            assert info.value.code == "limit"
            state = client.get_state()
            assert state.command_seq == 1 and state.state.beam_shift_x_um == 1.5
        finally:
            client.close()
    optical = open_simulator("optical,frame_size=64")
    with pipeline(ipc_dir, optical, with_infer=False) as p:
        client = MicroscopeClient(p.ctx, p.commands, timeout_s=5)
        try:
            assert client.get_state().limits.beam_shift_range_um is None
            with pytest.raises(CommandRejected, match="no beam shift") as info:
                client.set_beam_shift(0.1, 0.0)
            assert info.value.code == "device_error"
        finally:
            client.close()


def test_max_wd_step_is_enforced_by_the_server(ipc_dir):
    with pipeline(ipc_dir, small_sem(max_wd_step_um=10.0), with_infer=False) as p:
        client = MicroscopeClient(p.ctx, p.commands, timeout_s=5)
        try:
            client.set_wd(5009.0)
            with pytest.raises(CommandRejected, match="maximum step"):
                client.set_wd(5030.0)
        finally:
            client.close()


def test_rate_limit_refuses_a_flood(ipc_dir):
    with pipeline(ipc_dir, small_sem(), with_infer=False, max_commands_per_s=5.0) as p:
        client = MicroscopeClient(p.ctx, p.commands, timeout_s=5)
        codes = []
        try:
            for _ in range(20):
                try:
                    client.get_state()
                    codes.append("ok")
                except CommandRejected as exc:
                    codes.append(exc.code)
        finally:
            client.close()
    assert codes[:5] == ["ok"] * 5
    assert codes.count("rate_limited") >= 10
    assert p.acquire.metrics.value("commands_rejected", code="rate_limited") == codes.count(
        "rate_limited"
    )


def test_inference_node_rejects_bad_frames_and_keeps_serving(ipc_dir):
    ctx = zmq.Context()
    frames = f"ipc://{ipc_dir}/f"
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(frames)
    node = InferNode(
        InferConfig(frames_endpoint=frames, results_endpoint=f"ipc://{ipc_dir}/r"), ctx=ctx
    )
    sub = ResultSubscriber(ctx, f"ipc://{ipc_dir}/r", NodeMetrics("test"))
    good = np.random.default_rng(0).integers(0, 4000, (64, 64), dtype=np.uint16)
    hdr = json.loads(header_for(0, (64, 64)).model_dump_json(exclude_none=True))
    nan_state = json.loads(json.dumps(hdr))
    nan_state["state"]["pixel_size_nm"] = float("nan")
    bad = [
        [b"image", b"not json", good.tobytes()],
        [b"image", json.dumps({**hdr, "protocol_version": "3.1"}).encode(), good.tobytes()],
        [b"image", json.dumps({**hdr, "shape": [64, 65]}).encode(), good.tobytes()],
        [b"image", json.dumps(nan_state).encode(), good.tobytes()],
        [b"image", json.dumps(hdr).encode()],
    ]
    try:
        with running(node):
            sub.wait_connected(10)
            time.sleep(0.3)  # let the node's subscription reach our PUB
            for parts in bad:
                pub.send_multipart(parts)
            pub.send_multipart(
                [b"image", b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}", good.tobytes()]
            )
            send(pub, header_for(7, (64, 64)), [good])
            est = sub.wait_for(7, 0, timeout_s=10)
            assert est.signal == "ok" and est.score > 0
            assert node.metrics.value("messages_rejected") == len(bad) + 1
            for code in ("bad_json", "unsupported_version", "buffer_mismatch", "invalid_message"):
                assert node.metrics.value("messages_rejected", code=code) >= 1
    finally:
        sub.close()
        pub.close()
        ctx.term()


def test_stale_results_are_ignored_and_counted(ipc_dir):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"ipc://{ipc_dir}/r")
    metrics = NodeMetrics("control")
    sub = ResultSubscriber(ctx, f"ipc://{ipc_dir}/r", metrics)
    state = header_for(0).state

    def estimate(image_id: int, command_seq: int, series: str = "s1") -> FocusEstimate:
        return FocusEstimate(
            series_unique_id=series,
            image_id=image_id,
            command_seq=command_seq,
            evaluator="x",
            score=float(image_id),
            signal="ok",
            monotonic_ns=1,
            computed_monotonic_ns=2,
            state=state,
        )

    got = {}

    def wait() -> None:
        got["est"] = sub.wait_for(5, min_command_seq=4, timeout_s=10, series="s1")

    waiter = threading.Thread(target=wait)
    try:
        time.sleep(0.3)
        waiter.start()
        # Taken before the controller's last move (command_seq 4): stale, whatever the image_id.
        for msg in (estimate(5, 3), estimate(6, 2), estimate(9, 8, series="other"), estimate(7, 4)):
            send(pub, msg)
            time.sleep(0.1)  # separate deliveries, so 'latest' does not merge them
        waiter.join(10)
        assert (got["est"].image_id, got["est"].command_seq) == (7, 4)
        assert metrics.value("stale_results_ignored") == 2
    finally:
        sub.close()
        pub.close()
        ctx.term()


def test_silent_microscope_stops_the_controller_with_timeout(ipc_dir):
    ctx = zmq.Context()
    mute = ctx.socket(zmq.ROUTER)  # accepts connections, never answers
    mute.setsockopt(zmq.LINGER, 0)
    mute.bind(f"ipc://{ipc_dir}/c")
    client = MicroscopeClient(ctx, f"ipc://{ipc_dir}/c", timeout_s=0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(PeerTimeout, match="did not answer"):
            client.get_state()
        assert time.monotonic() - t0 < 3
    finally:
        client.close()
        mute.close()
        ctx.term()


def test_controller_without_inference_node_stops_with_timeout(ipc_dir):
    with pipeline(ipc_dir, small_sem(), with_infer=False) as p:
        out = remote_autofocus(p, timeout_s=0.5, ready_timeout_s=1.0)
    assert out.stop_reason == "timeout"
    assert "inference node" in out.message
    assert out.frames == 0


def test_microscope_vanishing_mid_run_stops_with_timeout(ipc_dir):
    ctx = zmq.Context()
    sem = small_sem(start_wd_um=5040.0)
    acq = AcquireNode(
        sem,
        AcquireConfig(frames_endpoint=f"ipc://{ipc_dir}/f", commands_endpoint=f"ipc://{ipc_dir}/c"),
        ctx=ctx,
    )
    inf = InferNode(
        InferConfig(frames_endpoint=f"ipc://{ipc_dir}/f", results_endpoint=f"ipc://{ipc_dir}/r"),
        ctx=ctx,
    )
    result = {}

    def control() -> None:
        result["out"] = autofocus_record(
            ctx, f"ipc://{ipc_dir}/c", f"ipc://{ipc_dir}/r", timeout_s=1.0
        )

    with running(inf):
        acq_thread = threading.Thread(target=acq.run)
        acq_thread.start()
        controller = threading.Thread(target=control)
        controller.start()
        while acq.metrics.value("frames_sent") < 3:
            time.sleep(0.005)
        acq.stop()  # the microscope goes away in the middle of the search
        acq_thread.join(5)
        controller.join(15)
        assert not controller.is_alive(), "the controller hung"
    ctx.term()
    out = result["out"]
    assert out.stop_reason == "timeout"
    assert out.frames >= 3


def test_continuous_mode_streams_and_latest_consumers_skip_with_counts(ipc_dir):
    with pipeline(ipc_dir, small_sem(), mode="continuous", frame_rate_hz=200.0) as p:
        sub = ResultSubscriber(p.ctx, p.results, NodeMetrics("watcher"))
        try:
            sub.wait_connected(10)
            first = sub.wait_for(0, 0, timeout_s=10)
            last = sub.wait_for(first.image_id + 100, 0, timeout_s=20)
        finally:
            sub.close()
        assert last.image_id >= first.image_id + 100
        sent = p.acquire.metrics.value("frames_sent")
        m = p.infer.metrics
        assert sent >= 100
        # The inference node accounts for every frame it did not evaluate.
        assert m.value("results_published") + m.value("frames_skipped") >= last.image_id - 5


def test_lossless_output_delivers_every_frame_in_order(ipc_dir):
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(f"ipc://{ipc_dir}/rec")
    metrics = NodeMetrics("recorder")
    receiver = LosslessReceiver(pull, metrics)
    try:
        with pipeline(
            ipc_dir,
            small_sem(),
            with_infer=False,
            mode="continuous",
            frame_rate_hz=300.0,
            lossless_endpoint=f"ipc://{ipc_dir}/rec",
        ) as p:
            ids = []
            kinds = []
            while len(ids) < 60:
                msg = receiver.poll(5000)
                assert msg is not None
                kinds.append(msg.kind)
                if msg.kind == "image":
                    ids.append(msg.header.image_id)
                    assert msg.array().shape == (128, 128)
            assert p.acquire.metrics.value("overruns") == 0
    finally:
        pull.close()
        ctx.term()
    assert kinds[0] == "series_start"
    assert ids == list(range(ids[0], ids[0] + 60)) and ids[0] == 0
    assert metrics.value("frames_lost") == 0


def test_series_end_is_sent_on_shutdown(ipc_dir):
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"series_end")
    sub.connect(f"ipc://{ipc_dir}/f")
    with pipeline(ipc_dir, small_sem(), with_infer=False) as p:
        client = MicroscopeClient(p.ctx, p.commands, timeout_s=5)
        client.acquire()
        client.acquire()
        client.close()
        time.sleep(0.2)
    assert sub.poll(3000)
    end = decode(sub.recv_multipart())
    sub.close()
    ctx.term()
    assert end.kind == "series_end" and end.header.images == 2


def test_public_command_endpoint_with_curve_serves_only_key_holders(tmp_path, ipc_dir):
    for d in ("server", "clients", "private"):
        (tmp_path / d).mkdir()
    server_public, server_secret = zmq.auth.create_certificates(tmp_path / "server", "server")
    _, client_secret = zmq.auth.create_certificates(tmp_path / "clients", "control")
    _, stranger_secret = zmq.auth.create_certificates(tmp_path / "private", "stranger")
    ctx = zmq.Context()
    node = AcquireNode(
        small_sem(),
        AcquireConfig(
            frames_endpoint=f"ipc://{ipc_dir}/f",
            commands_endpoint="tcp://0.0.0.0:*",
            curve=CurveServerKeys(server_secret, tmp_path / "clients"),
        ),
        ctx=ctx,
    )
    endpoint = "tcp://127.0.0.1:" + node.commands_endpoint.rsplit(":", 1)[1]
    try:
        with running(node):
            trusted = MicroscopeClient(
                ctx, endpoint, timeout_s=5, curve=CurveClientKeys(client_secret, server_public)
            )
            assert trusted.set_wd(5003.0).state.wd_um == pytest.approx(5003.0)
            trusted.close()
            for curve in (CurveClientKeys(stranger_secret, server_public), None):
                outsider = MicroscopeClient(ctx, endpoint, timeout_s=0.5, curve=curve)
                with pytest.raises(PeerTimeout):
                    outsider.set_wd(5010.0)
                outsider.close()
            assert node.microscope.state().wd_um == pytest.approx(5003.0)
    finally:
        ctx.term()


class FaultySEM(SimulatedSEM):
    """A simulated SEM with injected faults: WD moves fail, every other frame fails."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.acquisitions = 0

    def _do_set_wd(self, wd_um: float) -> None:
        raise RuntimeError("lens supply tripped")

    def _do_acquire(self):
        self.acquisitions += 1
        if self.acquisitions % 2 == 0:
            raise RuntimeError("scan generator timeout")
        return super()._do_acquire()


def test_device_faults_are_answered_and_still_advance_command_seq(ipc_dir):
    sem = FaultySEM(SEMConfig(frame_shape=(64, 64), settle_s=0.0))
    with pipeline(ipc_dir, sem, with_infer=False) as p:
        client = MicroscopeClient(p.ctx, p.commands, timeout_s=5)
        try:
            before = client.get_state()
            assert before.command_seq == 0
            assert before.series_unique_id == p.acquire.series_unique_id
            with pytest.raises(CommandRejected, match="lens supply tripped") as info:
                client.set_wd(5001.0)
            assert info.value.code == "device_error"
            # The device was asked to move: frames from now on must not pass for older ones.
            assert client.get_state().command_seq == 1
            assert client.acquire().image_id == 0
            with pytest.raises(CommandRejected, match="scan generator"):
                client.acquire()
            assert client.acquire().image_id == 1  # the failed frame used up no image_id
        finally:
            client.close()
        assert p.acquire.metrics.value("commands_rejected", code="device_error") == 2


def test_continuous_stream_survives_device_faults(ipc_dir):
    sem = FaultySEM(SEMConfig(frame_shape=(64, 64), settle_s=0.0))
    with pipeline(ipc_dir, sem, mode="continuous", frame_rate_hz=200.0) as p:
        sub = ResultSubscriber(p.ctx, p.results, NodeMetrics("watcher"))
        try:
            sub.wait_connected(10)
            est = sub.wait_for(20, 0, timeout_s=20)
        finally:
            sub.close()
        assert est.image_id >= 20
        assert p.acquire.metrics.value("acquire_failures") >= 20


class StrictLensSEM(SimulatedSEM):
    """An adapter whose own WD limit is stricter than the limits it reports."""

    def _do_set_wd(self, wd_um: float) -> None:
        if wd_um > 5005.0:
            raise LimitError("lens current limit reached")
        super()._do_set_wd(wd_um)


def test_an_adapter_limit_refusal_does_not_advance_command_seq(ipc_dir):
    with pipeline(
        ipc_dir, StrictLensSEM(SEMConfig(frame_shape=(64, 64), settle_s=0.0)), with_infer=False
    ) as p:
        client = MicroscopeClient(p.ctx, p.commands, timeout_s=5)
        try:
            assert client.set_wd(5004.0).command_seq == 1
            with pytest.raises(CommandRejected) as info:
                client.set_wd(5006.0)
            assert info.value.code == "limit"
            assert client.get_state().command_seq == 1
        finally:
            client.close()
