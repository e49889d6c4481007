"""From one HDLC information field (or a bare LLC/APDU payload) to a ``Reading``."""

from __future__ import annotations

from han.apdu import parse_notification
from han.errors import UnsupportedList
from han.profiles import identify
from han.reading import Reading
from han.template import Template

_MAX_TEMPLATES = 64


class Decoder:
    """Decodes payloads of one stream; raises ``HanError`` subclasses for what it cannot decode.

    It remembers the layouts it has seen (the fast path), and which meter the stream comes from:
    list 1 carries no identity, so after an unsupported list 2/3 (another vendor's list) a list 1
    frame of the same shape is refused rather than credited to the wrong meter.
    """

    def __init__(self, ct_ratio: float = 1.0) -> None:
        if not ct_ratio > 0:
            raise ValueError(f"CT ratio must be positive, got {ct_ratio}")
        self.ct_ratio = ct_ratio
        self._templates: dict[int, list[Template]] = {}
        self._template_count = 0
        self.foreign: str | None = None  # why the last identified list was unsupported

    def decode(self, info: bytes) -> Reading:
        for template in self._templates.get(len(info), ()):
            reading = template.apply(info)
            if reading is not None:
                return self._attribute(reading)
        try:
            layout = identify(parse_notification(info))
        except UnsupportedList as exc:
            if exc.foreign:
                self.foreign = str(exc)
            raise
        template = Template(info, layout, self.ct_ratio)
        reading = template.apply(info)
        assert reading is not None, "a layout must decode the payload it was compiled from"
        if self._template_count < _MAX_TEMPLATES:
            self._templates.setdefault(len(info), []).append(template)
            self._template_count += 1
        return self._attribute(reading)

    def _attribute(self, reading: Reading) -> Reading:
        if reading.list == 1:
            if self.foreign is not None:
                raise UnsupportedList(f"list 1 from a meter whose list is unsupported: {self.foreign}")
        else:
            self.foreign = None
        return reading
