"""Protocol round-trips and validation, with property-based headers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scopeflow.errors import ProtocolError
from scopeflow.schemas.base import PROTOCOL_VERSION
from scopeflow.schemas.codec import decode, encode, frame_buffer
from scopeflow.schemas.commands import Acquire, GetState, MoveStage, Reply, SetWD
from scopeflow.schemas.results import ErrorMessage, FocusEstimate, NodeStatus
from scopeflow.schemas.series import ImageHeader, SeriesEnd, SeriesStart
from scopeflow.schemas.state import Limits, MicroscopeState, SimTruth, depth_of_field_um

finite = st.floats(min_value=-1e5, max_value=1e5, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-3, max_value=1e5, allow_nan=False, allow_infinity=False)
u63 = st.integers(min_value=0, max_value=2**63 - 1)

states = st.builds(
    MicroscopeState,
    wd_um=finite,
    wd_target_um=finite,
    settled=st.booleans(),
    stage_x_um=finite,
    stage_y_um=finite,
    magnification=positive,
    pixel_size_nm=positive,
    dwell_time_us=st.none() | positive,
    exposure_s=st.none() | positive,
    dose_e_per_px=st.none() | positive,
    beam_semiangle_mrad=st.none() | st.floats(min_value=0.1, max_value=100),
    numerical_aperture=st.none() | st.floats(min_value=0.01, max_value=1.7),
)
truths = st.none() | st.builds(SimTruth, focus_wd_um=finite, defocus_um=finite, dof_um=positive)
shapes = st.lists(st.integers(1, 40), min_size=2, max_size=2).map(tuple) | st.tuples(
    st.integers(1, 20), st.integers(1, 20), st.integers(1, 4)
)
dtypes = st.sampled_from(["uint8", "uint16", "uint32", "float32"])


def image_header(shape, dtype, state, truth, image_id=0, seq=0) -> ImageHeader:
    return ImageHeader(
        series_id=1,
        series_unique_id="s-1",
        image_id=image_id,
        shape=shape,
        dtype=dtype,
        start_time_ns=10,
        stop_time_ns=20,
        monotonic_ns=30,
        command_seq=seq,
        state=state,
        truth=truth,
    )


@settings(max_examples=150, deadline=None)
@given(shape=shapes, dtype=dtypes, state=states, truth=truths, image_id=u63, seq=u63)
def test_image_round_trip(shape, dtype, state, truth, image_id, seq):
    pixels = np.arange(math.prod(shape), dtype=dtype).reshape(shape)
    header = image_header(shape, dtype, state, truth, image_id, seq)
    msg = decode(encode(header, [frame_buffer(pixels)]))
    assert msg.kind == "image"
    assert msg.header == header
    np.testing.assert_array_equal(msg.array(), pixels)
    assert not msg.array().flags.writeable


@settings(max_examples=100, deadline=None)
@given(state=states, wd=finite, x=finite, y=finite, seq=st.integers(1, 2**63 - 1))
def test_command_and_reply_round_trip(state, wd, x, y, seq):
    limits = Limits(
        wd_min_um=-1e5,
        wd_max_um=1e5,
        stage_x_min_um=-1e5,
        stage_x_max_um=1e5,
        stage_y_min_um=-1e5,
        stage_y_max_um=1e5,
    )
    for cmd in (
        SetWD(seq=seq, wd_um=wd),
        MoveStage(seq=seq, x_um=x, y_um=y),
        Acquire(seq=seq),
        GetState(seq=seq),
    ):
        assert decode(encode(cmd)).header == cmd
    reply = Reply(
        seq=seq,
        command="acquire",
        state=state,
        limits=limits,
        command_seq=2,
        image_id=3,
        series_unique_id="acq-1",
    )
    assert decode(encode(reply)).header == reply


@settings(max_examples=50, deadline=None)
@given(state=states, truth=truths, score=st.floats(0, 1e6), image_id=u63)
def test_results_round_trip(state, truth, score, image_id):
    est = FocusEstimate(
        series_unique_id="a.b:c-1",
        image_id=image_id,
        command_seq=2,
        evaluator="tenengrad",
        score=score,
        signal="ok",
        monotonic_ns=1,
        computed_monotonic_ns=2,
        state=state,
        truth=truth,
    )
    assert decode(encode(est)).header == est
    status = NodeStatus(
        node="n", role="infer", pid=1, uptime_s=0.5, monotonic_ns=3, counters={"frames_received": 4}
    )
    assert decode(encode(status)).header == status
    start = SeriesStart(
        series_id=1, series_unique_id="s", source="sim", start_time_ns=1, state=state
    )
    assert decode(encode(start)).header == start
    end = SeriesEnd(series_id=1, series_unique_id="s", images=5, stop_time_ns=2)
    assert decode(encode(end)).header == end
    err = ErrorMessage(code="limit", reason="too far", seq=4)
    assert decode(encode(err)).header == err


def test_every_header_carries_the_protocol_version():
    for parts in (encode(GetState(seq=1)), encode(ErrorMessage(code="internal", reason="x"))):
        assert json.loads(parts[1])["protocol_version"] == PROTOCOL_VERSION


def _image_parts(**override):
    state = MicroscopeState(
        wd_um=5000.0,
        wd_target_um=5000.0,
        settled=True,
        stage_x_um=0.0,
        stage_y_um=0.0,
        magnification=1000.0,
        pixel_size_nm=10.0,
    )
    header = json.loads(image_header((4, 3), "uint16", state, None).model_dump_json())
    header.update(override)
    return [b"image", json.dumps(header).encode(), np.zeros((4, 3), np.uint16).tobytes()]


@pytest.mark.parametrize(
    ("parts", "code"),
    [
        ([b"image"], "invalid_message"),
        ([b"nonsense", b"{}"], "unknown_kind"),
        ([b"image", b"{not json", b""], "bad_json"),
        ([b"image", b"[1, 2]", b""], "bad_json"),
        (_image_parts(protocol_version="2.0"), "unsupported_version"),
        (_image_parts(protocol_version="one"), "unsupported_version"),
        (_image_parts(shape=[4, 4]), "buffer_mismatch"),
        (_image_parts(dtype="uint32"), "buffer_mismatch"),
        (_image_parts()[:2], "buffer_mismatch"),
        (_image_parts(dtype="complex64"), "invalid_message"),
        (_image_parts(unexpected_field=1), "invalid_message"),
        (_image_parts(image_id="7"), "invalid_message"),
        (_image_parts(image_id=-1), "invalid_message"),
        (_image_parts(shape=[0, 3]), "invalid_message"),
        (
            [b"command", b'{"protocol_version":"1.0","seq":1,"command":"explode"}'],
            "unknown_command",
        ),
        (
            [b"command", b'{"protocol_version":"1.0","seq":1,"command":"set_wd","wd_um":NaN}'],
            "invalid_message",
        ),
        (
            [b"command", b'{"protocol_version":"1.0","seq":1,"command":"set_wd","wd_um":1e999}'],
            "invalid_message",
        ),
        (
            [b"command", b'{"protocol_version":"1.0","seq":1,"command":"set_wd","wd_um":5e6}'],
            "invalid_message",
        ),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(parts, code):
    with pytest.raises(ProtocolError) as info:
        decode(parts)
    assert info.value.code == code
    assert len(info.value.reason) > 10


def test_nan_in_nested_state_is_rejected():
    parts = _image_parts()
    header = json.loads(parts[1])
    header["state"]["wd_um"] = float("nan")
    parts[1] = json.dumps(header).encode()  # Python's json writes the NaN token
    with pytest.raises(ProtocolError, match=r"state\.wd_um"):
        decode(parts)


def test_limits_must_be_ordered():
    with pytest.raises(ValueError, match="wd_min_um"):
        Limits(
            wd_min_um=10,
            wd_max_um=1,
            stage_x_min_um=0,
            stage_x_max_um=1,
            stage_y_min_um=0,
            stage_y_max_um=1,
        )


def test_depth_of_field_follows_pixel_size_over_angle():
    # DESIGN §5: 10 nm pixels at 3 mrad give about 3 µm per side.
    assert depth_of_field_um(10.0, 3.0) == pytest.approx(10e-3 / 3e-3)
    assert depth_of_field_um(20.0, 3.0) == pytest.approx(2 * depth_of_field_um(10.0, 3.0))
    assert depth_of_field_um(10.0, 6.0) == pytest.approx(0.5 * depth_of_field_um(10.0, 3.0))


def test_frame_buffer_refuses_types_the_wire_does_not_carry():
    with pytest.raises(ValueError, match="not allowed"):
        frame_buffer(np.zeros((2, 2), np.complex64))
    big_endian = np.arange(6, dtype=">u2").reshape(2, 3)
    out = frame_buffer(big_endian)
    assert out.dtype.byteorder in ("<", "=")
    np.testing.assert_array_equal(out, big_endian)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"protocol_version":"1.0","protocol_version":"1.0","seq":1,"command":"get_state"}',
        '\ufeff{"protocol_version":"1.0","seq":1,"command":"get_state"}'.encode(),
        '{"protocol_version":"1.0","seq":1,"command":"get_state"}'.encode("utf-16"),
    ],
    ids=["duplicate-key", "bom", "utf-16"],
)
def test_headers_must_be_plain_utf8_json_without_duplicate_keys(raw):
    with pytest.raises(ProtocolError) as info:
        decode([b"command", raw])
    assert info.value.code == "bad_json"


@pytest.mark.parametrize("version", ["².0", "1", "1.0.0", "", "01.2345"])
def test_odd_version_strings_are_rejected_not_crashing(version):
    with pytest.raises(ProtocolError) as info:
        decode(
            [
                b"command",
                json.dumps(
                    {"protocol_version": version, "seq": 1, "command": "get_state"}
                ).encode(),
            ]
        )
    assert info.value.code == "unsupported_version"


def test_error_reasons_are_cut_to_the_wire_limit():
    err = ErrorMessage.about("unknown_command", "x" * 10_000, seq=None)
    assert len(err.reason) <= 4096
    assert ErrorMessage.about("overrun", "y").code == "internal"  # not a wire error code


def test_image_times_must_be_ordered():
    parts = _image_parts(start_time_ns=30, stop_time_ns=20)
    with pytest.raises(ProtocolError, match="stop_time_ns"):
        decode(parts)


def test_deeply_nested_headers_are_rejected_not_crashing():
    deep = (
        b'{"protocol_version":"1.0","seq":1,"command":"get_state","x":'
        + b"[" * 5000
        + b"]" * 5000
        + b"}"
    )
    with pytest.raises(ProtocolError) as info:
        decode([b"command", deep])
    assert info.value.code == "bad_json"
