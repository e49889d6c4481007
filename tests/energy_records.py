"""An hourly energy record (apm.io.mqtt.messages.EnergyRecord) as the outbox keeps it, for link and broker tests."""

from __future__ import annotations

from typing import Any


def record(rid: str, import_wh: float, export_wh: float = 0.0) -> dict[str, Any]:
    return {"id": rid, "hour_start": "2024-01-15T10:00:00+01:00", "hour_end": "2024-01-15T11:00:00+01:00",
            "hours": 1, "import_wh": import_wh, "export_wh": export_wh, "meter_id": None}
