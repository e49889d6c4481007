"""What `apm monitor` shows: the latest value of each quantity (from whichever list last carried it)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from han import Reading

# (field, label, unit, divisor for display)
POWER = (
    ("active_import_w", "Active import", "W", 1),
    ("active_export_w", "Active export", "W", 1),
    ("reactive_import_var", "Reactive import", "var", 1),
    ("reactive_export_var", "Reactive export", "var", 1),
)
ENERGY = (
    ("active_import_wh", "Active import", "kWh", 1000),
    ("active_export_wh", "Active export", "kWh", 1000),
    ("reactive_import_varh", "Reactive import", "kvarh", 1000),
    ("reactive_export_varh", "Reactive export", "kvarh", 1000),
)
PHASES = ("l1", "l2", "l3")


@dataclass(frozen=True, slots=True)
class Latest:
    value: float
    list: int
    at: float  # monotonic time
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """The counters shown under the values."""

    frames_ok: int = 0
    frames_bad: int = 0
    bytes_in: int = 0
    bytes_discarded: int = 0
    errors: tuple[tuple[str, int], ...] = ()
    last_problem: str | None = None


class Board:
    """Latest values and identity of the meter, fed one reading at a time."""

    def __init__(self, port: str, settings: str) -> None:
        self.port = port
        self.settings = settings
        self.values: dict[str, Latest] = {}
        self.identity: dict[str, str] = {}
        self.lists: Counter[int] = Counter()

    def update(self, reading: Reading, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.lists[reading.list] += 1
        d = reading.to_json_dict()
        for key in ("meter", "meter_type", "meter_id", "list_id", "meter_time"):
            if d.get(key):
                self.identity[key] = str(d[key])
        estimated = set(reading.estimated)
        for key, value in d.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("list", "phases"):
                self.values[key] = Latest(float(value), reading.list, now, key in estimated)

    def _cell(self, key: str, divisor: float, now: float, digits: int = 1) -> tuple[str, str, str]:
        v = self.values.get(key)
        if v is None:
            return "-", "", ""
        mark = "≈" if v.estimated else ""
        return f"{mark}{v.value / divisor:,.{digits}f}", f"list {v.list}", f"{now - v.at:.0f} s"

    def render(self, status: LinkStatus, now: float | None = None) -> Group:
        """Fits an 80x24 terminal: borderless tables, power beside energy, one line per counter."""
        now = time.monotonic() if now is None else now
        ident = self.identity
        head = Text.assemble(
            ("HAN monitor ", "bold"), f"{self.port}  {self.settings}",
            f"  ·  {ident.get('meter', '?')} {ident.get('meter_type', '')}".rstrip(),
            f"  ·  id {ident['meter_id']}" if "meter_id" in ident else "",
            f"  ·  meter time {ident['meter_time']}" if "meter_time" in ident else "",
        )
        values = _table("", "Power", "", "from", "age", "Energy (list 3)", "", "age")
        for (key, label, unit, div), (ekey, _, eunit, ediv) in zip(POWER, ENERGY, strict=True):
            value, src, age = self._cell(key, div, now, 0)
            evalue, _, eage = self._cell(ekey, ediv, now, 3)
            values.add_row(label, value, unit, src, age, evalue, eunit, eage)
        phases = _table("Grid line", *(name.upper() for name in PHASES))
        phases.add_row("Current (A)", *(self._cell(f"current_{p}_a", 1, now, 2)[0] for p in PHASES))
        phases.add_row("Voltage (V)", *(self._cell(f"voltage_{p}_v", 1, now, 1)[0] for p in PHASES))
        lists = ", ".join(f"list {n}: {self.lists[n]}" for n in sorted(self.lists)) or "none yet"
        errors = ", ".join(f"{n} {kind}" for kind, n in status.errors) or "none"
        counters = Text(
            f"readings: {lists}\n"
            f"frames: {status.frames_ok} good, {status.frames_bad} bad; {status.bytes_in} bytes read, "
            f"{status.bytes_discarded} outside frames; problems: {errors}"
            + (f"\nlast problem: {status.last_problem}" if status.last_problem else "")
            + ("\n≈ estimated by the decoder, not measured" if any(v.estimated for v in self.values.values()) else "")
        )
        return Group(head, Text(), values, Text(), phases, Text(), counters)


_RIGHT = {"Power", "age", "Energy (list 3)", "L1", "L2", "L3"}


def _table(*columns: str) -> Table:
    """A borderless table (a header and one rule), so the whole view fits 80x24."""
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    for col in columns:
        t.add_column(col, justify="right" if col in _RIGHT else "left", no_wrap=True)
    return t
