"""A-XDR encoding of COSEM data (IEC 62056-6-2), both directions, driven by one type table.

The parser keeps the offset of every value so that a meter profile can turn a decoded layout into a
precompiled struct (see ``han.template``): this generic walk runs once per new layout, not per frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from han.errors import MalformedPayload

NULL = 0x00
ARRAY = 0x01
STRUCTURE = 0x02
OCTET_STRING = 0x09
VISIBLE_STRING = 0x0A
UTF8_STRING = 0x0C
DATE_TIME = 0x19

# tag -> (name, struct code) of the fixed-size types.
FIXED: dict[int, tuple[str, str]] = {
    0x03: ("boolean", "B"),
    0x05: ("double-long", "i"),
    0x06: ("double-long-unsigned", "I"),
    0x0F: ("integer", "b"),
    0x10: ("long", "h"),
    0x11: ("unsigned", "B"),
    0x12: ("long-unsigned", "H"),
    0x14: ("long64", "q"),
    0x15: ("long64-unsigned", "Q"),
    0x16: ("enum", "B"),
    0x17: ("float32", "f"),
    0x18: ("float64", "d"),
}
STRINGS = {OCTET_STRING: "octet-string", VISIBLE_STRING: "visible-string", UTF8_STRING: "utf8-string"}
_STRUCTS = {tag: struct.Struct(">" + code) for tag, (_, code) in FIXED.items()}


def type_name(tag: int) -> str:
    if tag in FIXED:
        return FIXED[tag][0]
    return {NULL: "null-data", ARRAY: "array", STRUCTURE: "structure", DATE_TIME: "date-time"}.get(
        tag, STRINGS.get(tag, f"tag 0x{tag:02X}")
    )


@dataclass(slots=True, eq=False)
class Node:
    """One decoded COSEM value. ``at`` is the offset of its tag, ``vat``/``size`` its value bytes."""

    tag: int
    at: int
    vat: int
    size: int
    value: object = None  # int | float | bytes | None; items hold the children of arrays/structures
    items: list[Node] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.vat + self.size if not self.items else self.items[-1].end

    @property
    def code(self) -> str:
        """struct code of the value bytes (fixed types) or ``Ns`` (strings)."""
        if self.tag in FIXED:
            return FIXED[self.tag][1]
        return f"{self.size}s"


def read_length(buf: bytes, pos: int) -> tuple[int, int]:
    """A-XDR length: one byte below 0x80, else 0x8N followed by N big-endian bytes."""
    if pos >= len(buf):
        raise MalformedPayload(f"truncated at offset {pos}: length expected")
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > 4 or pos + 1 + count > len(buf):
        raise MalformedPayload(f"bad length 0x{first:02X} at offset {pos}")
    return int.from_bytes(buf[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def parse(buf: bytes, pos: int = 0, depth: int = 0) -> Node:
    """Decode one value at ``pos``; raises MalformedPayload on anything not well formed."""
    if depth > 8:
        raise MalformedPayload(f"nesting deeper than 8 at offset {pos}")
    if pos >= len(buf):
        raise MalformedPayload(f"truncated at offset {pos}: data tag expected")
    tag = buf[pos]
    if tag in FIXED:
        s = _STRUCTS[tag]
        end = pos + 1 + s.size
        if end > len(buf):
            raise MalformedPayload(f"truncated {type_name(tag)} at offset {pos}")
        return Node(tag, pos, pos + 1, s.size, s.unpack_from(buf, pos + 1)[0])
    if tag in STRINGS:
        n, vat = read_length(buf, pos + 1)
        if vat + n > len(buf):
            raise MalformedPayload(f"truncated {type_name(tag)} of {n} bytes at offset {pos}")
        return Node(tag, pos, vat, n, bytes(buf[vat : vat + n]))
    if tag in (ARRAY, STRUCTURE):
        n, p = read_length(buf, pos + 1)
        if n > len(buf) - p:  # every element takes at least one byte
            raise MalformedPayload(f"{type_name(tag)} of {n} elements at offset {pos}, {len(buf) - p} bytes left")
        node = Node(tag, pos, p, 0)
        for _ in range(n):
            child = parse(buf, p, depth + 1)
            node.items.append(child)
            p = child.end
        if not node.items:
            node.vat, node.size = p, 0
        return node
    if tag == NULL:
        return Node(tag, pos, pos + 1, 0)
    if tag == DATE_TIME:
        if pos + 13 > len(buf):
            raise MalformedPayload(f"truncated date-time at offset {pos}")
        return Node(tag, pos, pos + 1, 12, bytes(buf[pos + 1 : pos + 13]))
    raise MalformedPayload(f"unsupported A-XDR {type_name(tag)} at offset {pos}")


# --- building ---------------------------------------------------------------------------------


def encode(tag: int, value: object = None) -> bytes:
    """Encode a primitive: fixed types take an int/float, strings take bytes or str."""
    if tag in FIXED:
        return bytes((tag,)) + _STRUCTS[tag].pack(value)
    if tag in STRINGS:
        raw = value.encode("ascii") if isinstance(value, str) else _bytes(value)
        return bytes((tag,)) + encode_length(len(raw)) + raw
    if tag == NULL:
        return b"\x00"
    if tag == DATE_TIME:
        return bytes((tag,)) + _bytes(value)
    raise ValueError(f"cannot encode {type_name(tag)} as a primitive")


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"bytes expected, got {type(value).__name__}")
    return bytes(value)


def encode_container(tag: int, items: list[bytes]) -> bytes:
    return bytes((tag,)) + encode_length(len(items)) + b"".join(items)


def structure(*items: bytes) -> bytes:
    return encode_container(STRUCTURE, list(items))
