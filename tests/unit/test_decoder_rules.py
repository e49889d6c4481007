"""The normalisation rules on real frames changed in one register: missing values and estimates."""

from __future__ import annotations

import struct

from han import HanReader
from han.hdlc import FrameReader, build_frame
from tests.vectors import frame, records

BY_ID = {r["id"]: r for r in records("core")}


def _with_u32(rec_id: str, index_from_end: int, value: int) -> bytes:
    """The frame with its n-th double-long-unsigned from the end of the body set to ``value``."""
    raw = frame(BY_ID[rec_id])
    parsed = FrameReader().feed(raw)[0]
    info = bytearray(parsed.info)
    positions = [i for i in range(len(info) - 4) if info[i] == 0x06]
    at = positions[-index_from_end]
    struct.pack_into(">I", info, at + 1, value)
    return build_frame(bytes(info), dest=bytes((parsed.dest,)), src=parsed.src.to_bytes(2, "big"),
                       control=parsed.control)


def test_a_four_wire_meter_reporting_zero_l2_voltage_is_a_lost_phase_not_an_estimate():
    # Kaifa MA304H4 (TN), list 2: ... U1, U2, U3 are the last three registers.
    reading = HanReader().feed(_with_u32("amsr-fr-kaifa-tn-3p-2", 2, 0))[0]
    assert reading.meter_type == "MA304H4"
    assert reading.voltage_l2_v == 0
    assert reading.estimated == ()


def test_a_three_wire_kaifa_zero_l2_voltage_is_estimated():
    reading = HanReader().feed(frame(BY_ID["amsr-kaifa-gh493-1"]))[0]
    assert reading.meter_type == "MA304H3E"
    assert reading.estimated == ("voltage_l2_v",)
    assert 230 < reading.voltage_l2_v < 240


def test_a_three_wire_l2_current_of_zero_with_unequal_i1_i3_is_a_placeholder():
    reading = HanReader().feed(frame(BY_ID["pen-MA304T3-2017-01-23_13-03-15-57-3"]))[0]
    assert reading.current_l2_a is None
    assert reading.current_l1_a != reading.current_l3_a


def test_three_wire_aidon_has_no_l2_current_and_it_is_not_estimated():
    reading = HanReader().feed(frame(BY_ID["robin-aidon-6525-3-FC722-ok-3"]))[0]
    assert reading.current_l2_a is None
    assert "current_l2_a" not in reading.estimated
