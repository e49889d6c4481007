"""HAN port reader: Norwegian AMS meters' DLMS/COSEM push lists to normalised readings, sans-IO.

    reader = HanReader()
    for reading in reader.feed(chunk):   # any chunking of the byte stream
        ...
"""

from han.decoder import Decoder
from han.errors import (
    DecoderFault,
    EncryptedPayload,
    FrameError,
    HanError,
    ImplausibleReading,
    MalformedPayload,
    UnsupportedList,
)
from han.hdlc import Frame, FrameReader
from han.reader import HanReader, Problem
from han.reading import Reading

__all__ = [
    "Decoder",
    "DecoderFault",
    "EncryptedPayload",
    "Frame",
    "FrameError",
    "FrameReader",
    "HanError",
    "HanReader",
    "ImplausibleReading",
    "MalformedPayload",
    "Problem",
    "Reading",
    "UnsupportedList",
]
