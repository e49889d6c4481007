"""HAN port reader: Norwegian AMS meters' DLMS/COSEM push lists to normalised readings, sans-IO.

    reader = HanReader()
    for reading in reader.feed(chunk):   # any chunking of the byte stream
        ...
"""

from han.decoder import Decoder
from han.errors import EncryptedPayload, FrameError, HanError, MalformedPayload, UnsupportedList
from han.hdlc import Frame, FrameReader
from han.reader import HanReader, Problem
from han.reading import Reading

__all__ = [
    "Decoder",
    "EncryptedPayload",
    "Frame",
    "FrameError",
    "FrameReader",
    "HanError",
    "HanReader",
    "MalformedPayload",
    "Problem",
    "Reading",
    "UnsupportedList",
]
