"""Conformance against real captured frames: every record of ../shared/vectors."""

from __future__ import annotations

import json

import jsonschema
import pytest

from han import Decoder, HanError, HanReader
from tests.vectors import SCHEMA, frame, mismatches, records

CORE = records("core")
BAD_CRC = records("bad-crc")
OTHER = [r for r in records() if r["scope"] not in ("core", "bad-crc")]
VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))


def _ids(recs):
    return [r["id"] for r in recs]


@pytest.mark.parametrize("rec", CORE, ids=_ids(CORE))
def test_core_frame_decodes_to_expected(rec):
    reader = HanReader()
    readings = reader.feed(frame(rec))
    reader.close()
    assert len(readings) == 1, reader.pop_problems()
    got = readings[0].to_json_dict()
    assert mismatches(rec["expected"], got) == []
    VALIDATOR.validate(got)
    # Missing values are null, never 0, and the list tells which ones were computed.
    assert set(got["estimated"]) <= {"voltage_l2_v"}
    if got["estimated"]:
        assert got["voltage_l2_v"] is not None


@pytest.mark.parametrize("rec", BAD_CRC, ids=_ids(BAD_CRC))
def test_bad_crc_record_yields_no_reading(rec):
    reader = HanReader()
    assert reader.feed(frame(rec)) == []
    reader.close()
    assert reader.errors["frame"] >= 1 or reader.frames.frames_ok == 0


@pytest.mark.parametrize("rec", OTHER, ids=_ids(OTHER))
def test_other_scopes_give_a_clear_error_or_a_correct_reading(rec):
    data = frame(rec)
    if rec["framing"] == "hdlc":
        reader = HanReader()
        readings = reader.feed(data)
        reader.close()
        problems = reader.pop_problems()
    elif rec["framing"] in ("llc", "apdu"):
        try:
            readings, problems = [Decoder().decode(data)], []
        except HanError as exc:
            readings, problems = [], [exc]
    else:  # M-Bus long frames and P1 text are not HDLC: nothing to read
        reader = HanReader()
        assert reader.feed(data) == []
        return
    if readings:
        assert len(readings) == 1
        assert mismatches(rec["expected"], readings[0].to_json_dict()) == []
    else:
        # A segment of a multi-frame push yields nothing on its own; anything else names a reason.
        assert problems or rec["hex"][2:4] in ("a8",), rec["id"]
        for p in problems:
            assert str(getattr(p, "reason", p)), rec["id"]


def test_whole_core_corpus_as_one_stream():
    stream = b"".join(frame(r) for r in CORE)
    reader = HanReader()
    readings = reader.feed(stream)
    assert len(readings) == len(CORE)
    for rec, reading in zip(CORE, readings, strict=True):
        assert mismatches(rec["expected"], reading.to_json_dict()) == [], rec["id"]
    assert reader.frames.frames_bad == 0
    assert reader.bytes_discarded == 0


def test_encrypted_frames_are_named_as_such():
    # Frames whose LLC header is followed by a general-glo-ciphering APDU (0xDB).
    encrypted = [r for r in OTHER if r["framing"] == "hdlc" and "e6e700db" in r["hex"][:40]]
    assert encrypted
    for rec in encrypted:
        reader = HanReader()
        assert reader.feed(frame(rec)) == []
        assert reader.errors["encrypted"] == 1, rec["id"]


def test_list1_after_an_unsupported_list_is_not_credited_to_another_vendor():
    # A Landis+Gyr E350 in Norway sends EMBRIQ_V1_1 lists and Aidon-shaped list-1 frames.
    lg = {r["id"]: frame(r) for r in OTHER if r["id"].startswith("amsr-fr-lg-e350-norway")}
    reader = HanReader()
    assert reader.feed(lg["amsr-fr-lg-e350-norway-0"]) == []
    assert reader.feed(lg["amsr-fr-lg-e350-norway-1"]) == []
    problems = reader.pop_problems()
    assert "EMBRIQ_V1_1" in problems[0].reason
    assert "list 1" in problems[1].reason
