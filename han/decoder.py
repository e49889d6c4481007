"""From one HDLC information field (or a bare LLC/APDU payload) to a ``Reading``."""

from __future__ import annotations

from collections import deque

from han.apdu import parse_notification
from han.errors import DecoderFault, HanError, UnsupportedList
from han.plausibility import CounterGuard
from han.profiles import identify
from han.reading import Reading
from han.template import Template

_MAX_TEMPLATES = 64


class Decoder:
    """Decodes payloads of one stream; raises ``HanError`` subclasses for what it cannot decode,
    and nothing else: a payload gives a reading or a named problem, whatever its bytes.

    It remembers the layouts it has seen (the fast path), and which meter the stream comes from:
    list 1 carries no identity, so after an unsupported list 2/3 (another vendor's list) a list 1
    frame of the same shape is refused rather than credited to the wrong meter. Readings out of
    physical range or with energy counters going back are refused (``han.plausibility``).
    """

    def __init__(self, ct_ratio: float = 1.0) -> None:
        if not ct_ratio > 0:
            raise ValueError(f"CT ratio must be positive, got {ct_ratio}")
        self.ct_ratio = ct_ratio
        self._templates: dict[int, list[Template]] = {}
        self._compiled: deque[Template] = deque()  # oldest first
        self.foreign: str | None = None  # why the last identified list was unsupported
        self.counters = CounterGuard(ct_ratio)

    def decode(self, info: bytes) -> Reading:
        for template in self._templates.get(len(info), ()):
            reading = template.apply(info)
            if reading is not None:
                return self._attribute(reading)
        return self._attribute(self._compile(info))

    def _compile(self, info: bytes) -> Reading:
        """The slow path, once per new layout. Its checks are meant to refuse every malformed
        payload with a ``HanError``; anything else is a decoder bug, which costs this frame only."""
        try:
            template = Template(info, identify(parse_notification(info)), self.ct_ratio)
            self._keep(template)  # before the first apply: an implausible first frame is compiled once
            reading = template.apply(info)
        except UnsupportedList as exc:
            if exc.foreign:
                self.foreign = str(exc)
            raise
        except HanError:
            raise
        except Exception as exc:  # the stream must outlive a bug on one frame
            raise DecoderFault(f"{type(exc).__name__} while decoding: {exc}") from exc
        if reading is None:
            raise DecoderFault("a layout does not decode the payload it was compiled from")
        return reading

    def _keep(self, template: Template) -> None:
        """Remember a layout; when full, forget the oldest, so that layouts of broken frames cannot
        keep a real one off the fast path for good (it is compiled again when it comes back)."""
        if len(self._compiled) >= _MAX_TEMPLATES:
            old = self._compiled.popleft()
            same_size = self._templates[old.size]
            same_size.remove(old)
            if not same_size:
                del self._templates[old.size]
        self._templates.setdefault(template.size, []).append(template)
        self._compiled.append(template)

    def _attribute(self, reading: Reading) -> Reading:
        if reading.list == 1:
            if self.foreign is not None:
                raise UnsupportedList(f"list 1 from a meter whose list is unsupported: {self.foreign}")
            return reading
        self.foreign = None
        if reading.list == 3:
            self.counters.check(reading)
        return reading
