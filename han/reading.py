"""The normalised value of one HAN data-notification."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Field order of the JSON form (../shared/schema/reading.schema.json).
QUANTITIES: tuple[str, ...] = (
    "active_import_w",
    "active_export_w",
    "reactive_import_var",
    "reactive_export_var",
    "current_l1_a",
    "current_l2_a",
    "current_l3_a",
    "voltage_l1_v",
    "voltage_l2_v",
    "voltage_l3_v",
    "active_import_wh",
    "active_export_wh",
    "reactive_import_varh",
    "reactive_export_varh",
)


@dataclass(frozen=True, slots=True)
class Reading:
    """One decoded list. A quantity the meter did not send is None, never 0.

    Values are already scaled (in-band scaler or fixed vendor scaling, then the CT ratio).
    ``estimated`` names the quantities the decoder computed instead of reading them.
    """

    meter: str  # "aidon" | "kaifa" | "kamstrup"
    list: int  # 1, 2 or 3
    list_id: str | None = None
    meter_id: str | None = None
    meter_type: str | None = None
    meter_time: str | None = None  # ISO 8601, with offset when the meter gives one
    phases: int | None = None
    active_import_w: float | None = None
    active_export_w: float | None = None
    reactive_import_var: float | None = None
    reactive_export_var: float | None = None
    current_l1_a: float | None = None
    current_l2_a: float | None = None
    current_l3_a: float | None = None
    voltage_l1_v: float | None = None
    voltage_l2_v: float | None = None
    voltage_l3_v: float | None = None
    active_import_wh: float | None = None
    active_export_wh: float | None = None
    reactive_import_varh: float | None = None
    reactive_export_varh: float | None = None
    estimated: tuple[str, ...] = field(default=())

    def to_json_dict(self) -> dict[str, Any]:
        """The schema's JSON form (``estimated`` as a list)."""
        d = asdict(self)
        d["estimated"] = list(self.estimated)
        return d

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> Reading:
        known: dict[str, Any] = {k: d.get(k) for k in cls.__dataclass_fields__ if k in d}
        known["estimated"] = tuple(d.get("estimated") or ())
        return cls(**known)
