"""The shared HAN test vectors (../shared/vectors), read at run time so new vectors are tested too."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("APM_VECTORS", ROOT.parent / "shared" / "vectors"))
SCHEMA = VECTORS.parent / "schema" / "reading.schema.json"


def records(scope: str | None = None) -> list[dict]:
    out = []
    for path in sorted(VECTORS.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if scope is None or rec["scope"] == scope:
                    out.append(rec)
    if not out:
        raise FileNotFoundError(f"no vectors with scope {scope!r} under {VECTORS}")
    return out


def frame(rec: dict) -> bytes:
    return bytes.fromhex(rec["hex"])


def mismatches(expected: dict, got: dict) -> list[str]:
    """Fields of ``expected`` that ``got`` does not match (numbers 1e-6 relative, voltages 0.05 V)."""
    bad = []
    for key, want in expected.items():
        have = got.get(key)
        if isinstance(want, (int, float)) and not isinstance(want, bool) and have is not None:
            tol = 0.05 if key.startswith("voltage_") else abs(want) * 1e-6
            if not math.isclose(have, want, rel_tol=0, abs_tol=tol + 1e-12):
                bad.append(f"{key}: expected {want}, got {have}")
        elif key == "meter_time" and want and have:
            if have[:19] != want[:19]:  # the wall-clock part is what counts
                bad.append(f"{key}: expected {want}, got {have}")
        elif key == "estimated":
            if sorted(have or []) != sorted(want):
                bad.append(f"{key}: expected {want}, got {have}")
        elif have != want:
            bad.append(f"{key}: expected {want!r}, got {have!r}")
    return bad


def core_stream() -> bytes:
    return b"".join(frame(r) for r in records("core"))
