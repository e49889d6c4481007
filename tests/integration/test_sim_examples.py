"""`python -m sim.examples` writes the same dumps every run (no clock, no hash order, no zone leaks in)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _generate(out: Path, hash_seed: str, tz: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONHASHSEED": hash_seed, "TZ": tz,
                        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "sim.examples", str(out)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_examples_are_the_same_every_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _generate(a, "1", "UTC")
    _generate(b, "2", "Asia/Tokyo")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) == 10
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    again = _generate(a, "3", "Europe/Oslo")  # a third run over the first leaves every file alone
    assert again.stderr.count(": unchanged") == len(names)
