"""The malformed-frame corpus: real frames with one element broken, rebuilt with valid checksums.

Generated, not stored: for every element of a real frame's list (each vendor's layouts from the
shared vectors), the element replaced by every other A-XDR type, its length field (or, for a
fixed-size value, a string header put in its place) set to zero, negative, huge and off by one,
the payload cut inside it, and containers given an extra element. A CRC only says the bytes came
through; these frames are what a meter with buggy firmware could send with a valid CRC.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

from han import axdr
from han.apdu import parse_notification
from han.hdlc import FrameReader, build_frame

# An element of every A-XDR type, with the extreme values of the numeric ones.
OTHER_TYPES: tuple[bytes, ...] = (
    b"\x00",  # null-data
    b"\x03\x01",  # boolean
    b"\x0f\x80",  # integer -128
    b"\x10\x80\x00",  # long -32768
    b"\x05\x80\x00\x00\x00",  # double-long, most negative
    b"\x06\xff\xff\xff\xff",  # double-long-unsigned, largest
    b"\x11\xff",
    b"\x12\xff\xff",
    b"\x14\x80" + bytes(7),  # long64, most negative
    b"\x15" + b"\xff" * 8,  # long64-unsigned, largest
    b"\x16\xff",  # enum
    b"\x17\x7f\xc0\x00\x00",  # float32 NaN
    b"\x18\x7f\xf0" + bytes(6),  # float64 +inf
    b"\x09\x00",  # empty octet-string
    b"\x09\x06\x01\x00\x01\x07\x00\xff",  # an OBIS code where a value belongs
    b"\x0a\x03abc",
    b"\x0c\x02\xc3\xa6",
    b"\x19" + b"\xff" * 12,  # date-time, nothing specified
    b"\x02\x00",  # empty structure
    b"\x01\x00",  # empty array
    b"\x02\x01\x00",  # structure of one null
    b"\x7f",  # tags no COSEM type has
    b"\xff",
)
# Length fields: zero-length long form, more than 4 length bytes, 4 GB, 2**31 (negative as a
# signed int), 127, and the largest short and long forms of one and two bytes.
BAD_LENGTHS: tuple[bytes, ...] = (
    b"\x80", b"\x85\x01\x00\x00\x00\x00", b"\x84\xff\xff\xff\xff", b"\x84\x80\x00\x00\x00",
    b"\x84\x7f\xff\xff\xff", b"\x7f", b"\x81\xff", b"\x82\xff\xff", b"\xff",
)
_EXTRA = (b"\x00", b"\x06\xff\xff\xff\xff", b"\x0a\x0bAIDON_V0001")


def info_of(frame: bytes) -> bytes:
    return FrameReader().feed(frame)[0].info


def elements(info: bytes) -> list[axdr.Node]:
    """Every value of the notification's list, containers included, in order."""
    out: list[axdr.Node] = []
    stack = [parse_notification(info).body]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.items))
    return out


def broken_infos(info: bytes) -> Iterator[tuple[str, bytes]]:
    """(what was done, the information field) for every way of breaking every element."""
    for node in elements(info):
        at, end = node.at, node.end
        original = info[at:end]
        head, tail = info[:at], info[end:]
        where = f"{axdr.type_name(node.tag)} at {at}"
        for other in OTHER_TYPES:
            if other != original:
                yield f"{where} -> {other.hex()}", head + other + tail
        if node.tag in axdr.FIXED:
            s = struct.Struct(">" + axdr.FIXED[node.tag][1])
            for value in (b"\x00" * s.size, b"\xff" * s.size, b"\x80" + b"\x00" * (s.size - 1)):
                yield f"{where} value {value.hex()}", head + bytes((node.tag,)) + value + tail
        has_length = node.tag in axdr.STRINGS or node.tag in (axdr.ARRAY, axdr.STRUCTURE)
        if has_length:
            count, value_at = axdr.read_length(info, node.at + 1)
            lengths = BAD_LENGTHS + (axdr.encode_length(count + 1),)
            if count:
                lengths += (axdr.encode_length(count - 1),)
            for length in lengths:
                yield f"{where} length {length.hex()}", head + bytes((node.tag,)) + length + info[value_at:]
        else:  # a fixed-size value: a string or container header with a bad length in its place
            for tag in (axdr.OCTET_STRING, axdr.VISIBLE_STRING, axdr.ARRAY, axdr.STRUCTURE):
                for length in BAD_LENGTHS:
                    yield f"{where} as {axdr.type_name(tag)} length {length.hex()}", head + bytes((tag,)) + length + info[at + 1 :]
        for cut in {at, at + 1, end - 1}:
            if 0 < cut < len(info):
                yield f"cut at {cut} in {where}", info[:cut]
        if node.tag in (axdr.ARRAY, axdr.STRUCTURE):
            count, value_at = axdr.read_length(info, node.at + 1)
            extras = _EXTRA + ((info[node.items[0].at : node.items[0].end],) if node.items else ())
            for extra in extras:
                grown = bytes((node.tag,)) + axdr.encode_length(count + 1) + info[value_at:end] + extra
                yield f"{where} + element {extra.hex()}", head + grown + tail


def corpus(frames: list[bytes]) -> Iterator[tuple[str, bytes]]:
    """(description, CRC-valid frame) for every broken element of every frame."""
    for k, frame in enumerate(frames):
        for what, info in broken_infos(info_of(frame)):
            yield f"frame {k}: {what}", build_frame(info)


def mutate(info: bytes, rng: random.Random, edits: int = 6) -> bytes:
    """A real payload with up to ``edits`` bytes set, deleted or inserted (biased to A-XDR's
    interesting bytes), then maybe cut: the kind of damage a CRC does not see."""
    out = bytearray(info)
    for _ in range(rng.randint(1, edits)):
        pos = rng.randrange(len(out)) if out else 0
        op = rng.random()
        byte = rng.choice((0x00, 0x01, 0x02, 0x06, 0x09, 0x0A, 0x7F, 0x80, 0x84, 0xFF, rng.randrange(256)))
        if op < 0.6 and out:
            out[pos] = byte
        elif op < 0.8 and out:
            del out[pos]
        else:
            out.insert(pos, byte)
    if rng.random() < 0.2 and out:
        del out[rng.randrange(len(out)) :]
    return bytes(out)
