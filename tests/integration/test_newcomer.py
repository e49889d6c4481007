"""What a newcomer meets first on a fresh clone: the Makefile's targets and the README's first steps."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _recipes() -> dict[str, list[str]]:
    recipes: dict[str, list[str]] = {}
    target = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and target:
            recipes[target].append(line.strip())
        elif m := re.match(r"^([\w-]+):", line):
            target = m.group(1)
            recipes[target] = []
        elif not line.startswith("\t"):
            target = None
    return recipes


def test_every_target_writing_to_out_creates_it_first():
    # A fresh clone has no out/ (it is in .gitignore): a report written there must not fail.
    recipes = _recipes()
    writers = [t for t, lines in recipes.items() if any("out/" in x for x in lines)]
    assert {"sim-days", "eco-week", "lifecycle"} <= set(writers)
    for target in writers:
        lines = recipes[target]
        first_use = next(i for i, x in enumerate(lines) if "out/" in x)
        assert any("mkdir -p out" in x for x in lines[:first_use]), target


def test_readme_says_how_to_reach_apm_after_make_run():
    text = (ROOT / "README.md").read_text()
    head = text[: text.index("## Connecting")]
    assert ".venv/bin/apm" in head and "source .venv/bin/activate" in head
