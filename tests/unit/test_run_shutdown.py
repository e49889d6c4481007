"""`apm run` shutdown: a stop cancels every task it started, so none outlives the port it reads."""

from __future__ import annotations

import asyncio

from apm.services.runtime import beside as _with


def test_cancelling_the_pair_ends_both_tasks() -> None:
    """A stop or --duration cancels the work from outside: the work must not keep running (it would read
    a closed port and end as "Task exception was never retrieved")."""
    ended: list[str] = []
    started = {"background": asyncio.Event(), "work": asyncio.Event()}

    async def forever(name: str) -> None:
        started[name].set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    async def main() -> None:
        pair = asyncio.create_task(_with(forever("background"), forever("work")))
        for e in started.values():
            await e.wait()
        pair.cancel()
        await asyncio.gather(pair, return_exceptions=True)
        assert sorted(ended) == ["background", "work"]
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_a_failing_work_ends_the_background_and_raises() -> None:
    ended: list[str] = []

    async def background() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("background")

    async def work() -> None:
        raise OSError("port gone")

    async def main() -> None:
        try:
            await _with(background(), work())
        except OSError as exc:
            assert str(exc) == "port gone"
        else:
            raise AssertionError("the work's failure was swallowed")
        assert ended == ["background"]

    asyncio.run(main())
