"""When a retained status message is worth sending again: at once when what matters in it changed, else
at most every ``every_s`` (sans-IO: keys, values and the time in, yes or no out).

A charger's session energy or its link's last report moves every few seconds; Home Assistant and the
broker need the news (a session starting, a link going down) at once and the rest only now and then.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Throttle(Generic[K]):
    """Per key: the time, ``key_fields`` and value of the last message sent (see the module doc)."""

    def __init__(self, every_s: float) -> None:
        if every_s < 0:
            raise ValueError(f"every_s must be >= 0, not {every_s}")
        self.every_s = every_s
        self._sent: dict[K, tuple[float, Any, Any]] = {}

    def due(self, key: K, now: float, key_fields: Any, value: Any = None) -> bool:
        """Whether to send ``value`` for ``key`` now; a yes is taken as sent. An identical ``value``
        (when one is given) is never sent twice; with the same ``key_fields`` as the last one sent, not
        before ``every_s`` has passed."""
        sent = self._sent.get(key)
        if sent is not None:
            at, fields, old = sent
            if value is not None and old == value:
                return False
            if fields == key_fields and now - at < self.every_s:
                return False
        self._sent[key] = (now, key_fields, value)
        return True
