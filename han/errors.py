"""Why a frame or a notification gave no reading. Every error names what was seen."""

from __future__ import annotations


class HanError(Exception):
    """Base of everything `han` raises for bad or unsupported input."""

    kind = "error"


class FrameError(HanError):
    """An HDLC frame failed its checks (flags, length, HCS or FCS)."""

    kind = "frame"


class MalformedPayload(HanError):
    """The LLC/APDU or the A-XDR data is not well formed (truncated, bad tag, bad length)."""

    kind = "malformed"


class EncryptedPayload(HanError):
    """A ciphered APDU (general-glo-ciphering etc.): Norwegian meters push plain text by default."""

    kind = "encrypted"


class UnsupportedList(HanError):
    """Well-formed DLMS data that is not one of the supported Norwegian lists.

    ``foreign`` is set when the data is another meter's whole list (an unknown list id, or
    registers without one): the stream comes from a meter we do not support.
    """

    kind = "unsupported"

    def __init__(self, message: str, *, foreign: bool = False) -> None:
        super().__init__(message)
        self.foreign = foreign


class ImplausibleReading(HanError):
    """Well-formed data whose values no real meter sends (out of physical range, counters going back)."""

    kind = "implausible"


class DecoderFault(HanError):
    """An unexpected error while decoding one payload: a bug, reported as a problem of that frame
    so that one frame never stops the stream."""

    kind = "internal"
