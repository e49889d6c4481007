"""go-e over MQTT: the device's adapter (apm/io/chargers/goe.py) against a simulated go-e (sim/goe_charger.py) on
a real mosquitto, and the adapter's failsafe rules on their own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

from apm.core.charger_state import ChargerState
from apm.core.config import ChargerConfig
from apm.io.chargers.goe import GoeAdapter, GoeCharger, GoeControl
from apm.io.tasks import stop
from sim.charger import SimCharger
from sim.ev import EV
from sim.goe_charger import SimGoeCharger

SAFE = GoeCharger(serial="012345", safe_current_a=10, echo_timeout_s=30, resend_s=30)
AMP, FRC = "go-eCharger/012345/amp/set", "go-eCharger/012345/frc/set"


def test_safe_value_first_and_only_while_echoed() -> None:
    c = GoeControl("garage", SAFE)
    assert c.commands(None, 0.0) == [(AMP, b"10"), (FRC, b"0")]  # nothing asked yet: the safe value
    assert c.commands(32.0, 1.0) == []  # not echoed yet: no step above safe (and 10 was just sent)
    c.on_message("go-eCharger/012345/amp", b"10", 3.0)
    assert c.commands(32.9, 3.0) == [(AMP, b"32"), (FRC, b"0")]  # echoed: up it goes, whole amperes
    assert c.commands(32.0, 20.0) == []
    c.on_message("go-eCharger/012345/car", b"3", 20.0)  # the charger is there, but amp still says 10
    assert c.commands(32.0, 34.0) == [(AMP, b"32"), (FRC, b"0")]  # not echoed: re-sent after resend_s
    c.on_message("go-eCharger/012345/frc", b"0", 4.0)
    c.on_message("go-eCharger/012345/amp", b"32", 35.0)
    c.on_message("go-eCharger/012345/nrg", b"[230,230,230,0,32,32,32,0,0,0,0,0,1,1,1,0]", 60.0)
    assert c.commands(32.0, 80.0) == []  # echoed: nothing to write
    # Nothing heard for longer than echo_timeout_s: back to the safe value until the charger answers again.
    assert c.commands(32.0, 60.0 + 31.0) == [(AMP, b"10"), (FRC, b"0")]
    # A pause parks amp at the safe value and switches off.
    assert c.commands(3.0, 92.0) == [(AMP, b"10"), (FRC, b"1")]
    assert c.will() == (AMP, b"10")


def test_reports_become_charger_state() -> None:
    c = GoeControl("garage", SAFE)
    c.on_message("go-eCharger/012345/car", b"2", 1.0)
    c.on_message("go-eCharger/012345/amp", b"16", 1.0)
    state = c.on_message("go-eCharger/012345/nrg", b"[230,230,230,0,15.9,16.0,0.1,3657,3680,0,0,7337,1,1,1,0]",
                         2.0)
    assert state == ChargerState(id="garage", mode="charging", currents_a=(15.9, 16.0, 0.1), phases_in_use=1,
                                 setpoint_a=16.0, at=2.0)
    off = c.on_message("go-eCharger/012345/frc", b"1", 3.0)
    assert off is not None and off.setpoint_a == 0.0
    assert c.on_message("go-eCharger/999999/amp", b"16", 3.0) is None  # another charger
    assert c.on_message("go-eCharger/012345/amp", b"{{", 3.0) is None
    assert c.on_message("go-eCharger/012345/amp/result", b"ok", 3.0) is None


def sim_goe(url: str, amp: int = 32) -> SimGoeCharger:
    sc = SimCharger(ChargerConfig(id="garage", max_a=32.0, phases=3), "TN")
    sc.plug(0.0, EV(id="ev", phases=3, response_s=0.0, start_delay_s=0.0, ramp_a_per_s=100.0))
    return SimGoeCharger(sc, "012345", url, steps=False, publish_every_s=0.2, amp=amp)


@contextlib.asynccontextmanager
async def running(goe: SimGoeCharger) -> AsyncIterator[None]:
    task = asyncio.create_task(goe.run())
    try:
        await asyncio.wait_for(goe.connected.wait(), 10)
        yield
    finally:
        await stop(task)


def test_adapter_sends_safe_first_then_the_limit_and_pauses(mosquitto) -> None:
    async def main() -> None:
        goe = sim_goe(mosquitto.url)
        reports: list[ChargerState] = []
        async with running(goe), GoeAdapter({"garage": SAFE}, mosquitto.url, on_report=reports.append,
                                            tick_s=0.05) as adapter:
            adapter.set_limit("garage", 16.5)
            await goe.wait_for(lambda g: g.amp == 16)
            amps = [v for k, v in goe.received if k == "amp"]
            assert amps[0] == 10 and amps[-1] == 16 and 32 not in amps
            assert goe.charger.setpoint_a == 16.0
            goe.step()
            adapter.set_limit("garage", 0.0)
            await goe.wait_for(lambda g: g.frc == 1)
            assert goe.amp == 10 and goe.charger.setpoint_a == 0.0
            assert reports and reports[-1].id == "garage"
            assert adapter.links()["garage"].connected
    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_killed_device_leaves_the_go_e_at_the_safe_current(mosquitto) -> None:
    """SIGKILL the device: the broker delivers its will, amp/set = the safe value."""
    async def main() -> None:
        goe = sim_goe(mosquitto.url, amp=6)
        async with running(goe):
            env = dict(os.environ, PYTHONPATH=os.getcwd())
            child = subprocess.Popen([sys.executable, "-m", "tests.goe_child", mosquitto.url, "012345", "10", "32"],
                                     stdout=subprocess.PIPE, env=env)
            try:
                line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)  # type: ignore[union-attr]
                assert line.strip() == b"ready"
                assert goe.amp == 32
                child.send_signal(signal.SIGKILL)
                await goe.wait_for(lambda g: g.amp == 10, timeout=30)
                assert goe.charger.setpoint_a == 10.0
            finally:
                child.kill()
                child.wait(10)
    asyncio.run(asyncio.wait_for(main(), 90))
