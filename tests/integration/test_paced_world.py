"""The pipeline's paced world and the meter feed when the feed falls behind (a loaded machine)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apm.io.clock import ScaledClock
from sim.closed_loop import scenario_from_dict
from sim.meter import scenario_meter
from sim.pipeline import MeterFeed, PacedWorld

pytestmark = pytest.mark.timeout(60)


def test_a_feed_far_behind_the_world_skips_what_the_meter_missed_instead_of_failing(tmp_path: Path) -> None:
    """The line stalls (the event loop starved) while the world runs 400 s ahead, more than the world
    keeps (180 s) and the meter remembers (64 s): the feed skips the pushes it missed and goes on;
    it used to fail with a KeyError in sim/world.py."""
    (tmp_path / "flat.csv").write_text("time_s,l1_a,l2_a,l3_a\n0,4,4,4\n", encoding="utf-8")
    sc = scenario_from_dict({"duration_s": 600, "grid": {"network": "TN", "fuse_a": 25},
                             "meter": {"vendor": "aidon", "kind": "3p-tn"}, "household": {"trace": "flat.csv"},
                             "charger": [{"id": "a"}]}, "stall", tmp_path)

    async def main() -> tuple[MeterFeed, list[bytes], int]:
        clock = ScaledClock(2000.0, start=sc.start)
        world = PacedWorld(sc)
        feed_written: list[bytes] = []

        async def write(frame: bytes) -> None:
            if not feed_written:
                await world.reached(400)  # synchronised on the world, not on the machine's speed
            feed_written.append(frame)

        feed = MeterFeed(scenario_meter(sc, world), write, clock, sc.start.timestamp(), world=world)
        clock.anchor(sc.start)
        stepping = asyncio.create_task(world.run(clock, sc.start.timestamp(), sc.duration_s))
        await feed.run(sc.duration_s)
        await stepping
        return feed, feed_written, world.k

    feed, written, k = asyncio.run(main())
    assert k == 600
    assert feed.skipped > 0  # the pushes of the stall that the meter no longer keeps
    assert feed.frames == len(written) > 100  # and the rest went out, to the end of the run
