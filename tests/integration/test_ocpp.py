"""OCPP 1.6J: the device's central system (apm/io/chargers/ocpp_server.py) against simulated charge points
(sim/ocpp_charger.py), both on the real `ocpp` library, over a real websocket on 127.0.0.1.

Time in the profiles is a `ManualClock` both sides share, so expiry is decided by the test, not by
the machine's speed; the network waits are events (`wait_for`) with generous timeouts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect

from apm.core.charger_state import ChargerState
from apm.core.config import ChargerConfig
from apm.io.chargers.ocpp_policy import (
    BASE_PROFILE_ID,
    LIMIT_PROFILE_ID,
    Capabilities,
    OcppCharger,
    ProfilePolicy,
    base_profile,
    limit_profile,
    limit_value,
    parse_configuration,
    parse_meter_values,
    round_down,
    status_mode,
)
from apm.io.chargers.ocpp_server import SUBPROTOCOL, OcppCentral, basic_auth_ok, charger_id_of
from apm.io.clock import Clock
from apm.io.tasks import stop
from sim.charger import SimCharger
from sim.ev import EV
from sim.ocpp_charger import Profile, ProfileStore, SimOcppChargePoint
from tests.certs import self_signed


def aio(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in its own event loop, bounded in time."""

    @functools.wraps(fn)
    def run() -> None:
        asyncio.run(asyncio.wait_for(fn(), 60))

    return run


T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class ManualClock(Clock):
    """Time moves only when the test says so; sleepers wake when it has moved far enough."""

    def __init__(self, t: float = T0) -> None:
        self.t = t
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt
        self._moved.set()

    async def sleep(self, dt: float) -> None:
        await self.sleep_until(self.t + dt)

    async def sleep_until(self, t: float) -> None:
        while self.t < t:
            self._moved.clear()
            await self._moved.wait()


# -- sans-IO: the policy -------------------------------------------------------------------------------

def test_limits_round_down_to_a_tenth() -> None:
    assert round_down(10.55) == 10.5
    assert round_down(10.3) == 10.3  # 10.3 is 10.2999... as a float: not 10.2
    assert round_down(15.99) == 15.9
    assert round_down(-1.0) == 0.0
    three = OcppCharger(phases=3, voltage=230.0)
    one = OcppCharger(phases=1, voltage=230.0)
    assert limit_value(16.07, three, "A") == 16.0
    assert limit_value(16.07, three, "W") == 11040.0  # 16.0 A x 230 V x 3
    assert limit_value(10.0, one, "W") == 2300.0
    assert limit_value(0.0, three, "A") == 0.0  # a pause


def test_configuration_and_units() -> None:
    caps = parse_configuration([
        {"key": "SupportedFeatureProfiles", "value": "Core,FirmwareManagement,SmartCharging"},
        {"key": "ChargeProfileMaxStackLevel", "value": "8"},
        {"key": "ChargingScheduleAllowedChargingRateUnit", "value": "Power"},
        {"key": "MeterValueSampleInterval", "value": "x"},
    ])
    assert caps == Capabilities(smart_charging=True, max_stack_level=8, units=("W",), meter_interval_s=None)
    assert caps.unit == "W"
    assert Capabilities(units=("A", "W")).unit == "A"
    assert Capabilities().unit == "A"
    assert parse_configuration([{"key": "SupportedFeatureProfiles", "value": "Core"}]).smart_charging is False


def test_profiles_base_without_end_and_limit_that_expires() -> None:
    charger = OcppCharger(safe_current_a=10.0)
    policy = ProfilePolicy(validity_s=90, renew_s=30)
    caps = Capabilities(max_stack_level=3, units=("A",))
    base = base_profile(charger, policy, caps, T0)
    assert base["charging_profile_id"] == BASE_PROFILE_ID and base["stack_level"] == 0
    assert "valid_to" not in base and "duration" not in base["charging_schedule"]
    assert base["charging_schedule"]["charging_schedule_period"] == [{"start_period": 0, "limit": 10.0}]
    lim = limit_profile(20.07, charger, policy, caps, T0)
    assert lim["charging_profile_id"] == LIMIT_PROFILE_ID and lim["stack_level"] == 1
    assert lim["valid_to"] == "2026-01-01T00:01:30Z"
    assert lim["charging_schedule"]["charging_schedule_period"] == [{"start_period": 0, "limit": 20.0}]
    # A charger without stacking: one profile, falling back to the safe current inside its own schedule.
    flat = limit_profile(20.0, charger, policy, Capabilities(max_stack_level=0), T0)
    assert flat["charging_profile_id"] == BASE_PROFILE_ID and flat["stack_level"] == 0
    assert [p["limit"] for p in flat["charging_schedule"]["charging_schedule_period"]] == [20.0, 10.0]
    store = ProfileStore(max_stack_level=0)
    store.set(Profile.parse(0, flat))
    assert store.limit_a(T0 + 89) == 20.0
    assert store.limit_a(T0 + 91) == 10.0


def test_meter_values_and_status() -> None:
    sample = parse_meter_values([{"timestamp": "2026-01-01T00:00:00Z", "sampled_value": [
        {"value": "15.9", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
        {"value": "16.1", "measurand": "Current.Import", "phase": "L2-N", "unit": "A"},
        {"value": "0", "measurand": "Current.Import", "phase": "L3", "unit": "A"},
        {"value": "7.4", "measurand": "Power.Active.Import", "unit": "kW"},
        {"value": "1234.5", "unit": "kWh"},  # the default measurand: Energy.Active.Import.Register
        {"value": "nan?", "measurand": "Current.Import", "phase": "L3"},
    ]}])
    assert sample.currents_a == (15.9, 16.1, 0.0)
    assert sample.power_w == 7400.0
    assert sample.energy_wh == 1234500.0
    assert status_mode("Charging") == "charging"
    assert status_mode("SuspendedEVSE") == "connected"
    assert status_mode("Available") == "disconnected"
    assert status_mode("SomethingNew") == "disconnected"


def test_auth_and_path() -> None:
    ok = "Basic " + base64.b64encode(b"garage:s3cret").decode()
    assert basic_auth_ok(ok, "garage", "s3cret")
    assert not basic_auth_ok(ok, "garage", "other")
    assert not basic_auth_ok(ok, "carport", "s3cret")
    assert not basic_auth_ok("Basic !!!", "garage", "s3cret")
    assert not basic_auth_ok(None, "garage", "s3cret")
    key = "00112233445566778899aabbccddeeff"  # a 1.6 AuthorizationKey: the bytes go on the wire
    raw = "Basic " + base64.b64encode(b"garage:" + bytes.fromhex(key)).decode()
    assert basic_auth_ok(raw, "garage", key)
    assert basic_auth_ok("Basic " + base64.b64encode(f"garage:{key}".encode()).decode(), "garage", key)
    assert charger_id_of("/ocpp/garage%201?x=1") == "garage 1"
    assert charger_id_of("/") == ""


def test_store_stacks_by_level_and_purpose() -> None:
    store = ProfileStore()
    charger = OcppCharger(safe_current_a=8.0)
    policy = ProfilePolicy(validity_s=60, renew_s=20)
    caps = Capabilities()
    assert store.limit_a(T0) is None  # no profile: the charger's own maximum
    store.set(Profile.parse(0, base_profile(charger, policy, caps, T0)))
    store.set(Profile.parse(0, limit_profile(25.0, charger, policy, caps, T0)))
    assert store.limit_a(T0 + 1) == 25.0  # the higher stack level wins
    assert store.limit_a(T0 + 61) == 8.0  # expired: back on the base profile
    store.set(Profile.parse(0, limit_profile(4.0, charger, policy, caps, T0 + 61)))
    assert store.limit_a(T0 + 62) == 4.0  # a limit below the safe current holds too
    assert store.clear(id=LIMIT_PROFILE_ID) == "Accepted"
    assert store.limit_a(T0 + 62) == 8.0


# -- over a websocket ---------------------------------------------------------------------------------

POLICY = ProfilePolicy(validity_s=90, renew_s=30, meter_interval_s=10)


def sim_charger(cid: str, *, plugged: bool = True) -> SimCharger:
    sc = SimCharger(ChargerConfig(id=cid, max_a=32.0, phases=3), "TN")
    if plugged:
        sc.plug(0.0, EV(id=f"ev-{cid}", phases=3, response_s=0.0, start_delay_s=0.0, ramp_a_per_s=100.0))
    return sc


@contextlib.asynccontextmanager
async def running(*cps: SimOcppChargePoint) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(cp.run()) for cp in cps]
    try:
        yield
    finally:
        await stop(*tasks)


def chargers(**safe: float) -> dict[str, OcppCharger]:
    return {cid: OcppCharger(password=f"pw-{cid}-0123456789", safe_current_a=a) for cid, a in safe.items()}


def cp_for(central: OcppCentral, cid: str, clock: Clock, **kw: object) -> SimOcppChargePoint:
    kw.setdefault("password", central.chargers[cid].password)
    return SimOcppChargePoint(sim_charger(cid), central.url, clock=clock, origin=T0, steps=False,
                              reconnect_s=0.05, **kw)  # type: ignore[arg-type]


@aio
async def test_boot_configuration_and_a_limit_rounded_down() -> None:
    clock = ManualClock()
    async with OcppCentral(chargers(garage=10.0), "127.0.0.1", 0, policy=POLICY, clock=clock) as central:
        cp = cp_for(central, "garage", clock, meter_interval_s=60)
        async with running(cp):
            # Setup: the interval is set, the base profile is in place, the charger is at the safe current.
            await cp.wait_for(lambda c: c.meter_interval_s == 10 and BASE_PROFILE_ID in c.store.profiles)
            assert cp.limit_a == 10.0 and cp.charger.setpoint_a == 10.0
            await central.wait_for(lambda c: c.links()["garage"].base_profile)
            link = central.links()["garage"]
            assert link.connected and link.vendor == "apm-sim" and link.base_profile and link.unit == "A"
            central.set_limit("garage", 16.07)
            await cp.wait_for(lambda c: c.limit_a == 16.0)
            assert cp.store.profiles[LIMIT_PROFILE_ID].periods[0][1] == Decimal("16.0")
            central.set_limit("garage", 0.0)  # a pause is 0 A, below the safe base
            await cp.wait_for(lambda c: c.limit_a == 0.0)
            await central.wait_for(lambda c: c.links()["garage"].limit_a == 0.0)


@aio
async def test_a_w_only_charger_gets_watts() -> None:
    clock = ManualClock()
    async with OcppCentral({"huawei": OcppCharger(safe_current_a=6.0, phases=3)}, "127.0.0.1", 0,
                           policy=POLICY, clock=clock) as central:
        cp = cp_for(central, "huawei", clock, units=("W",), password=None)
        async with running(cp):
            await cp.wait_for(lambda c: BASE_PROFILE_ID in c.store.profiles)
            central.set_limit("huawei", 13.0)
            await cp.wait_for(lambda c: LIMIT_PROFILE_ID in c.store.profiles)
            profile = cp.store.profiles[LIMIT_PROFILE_ID]
            assert profile.unit == "W" and profile.periods[0][1] == Decimal("8970.0")
            assert cp.limit_a == pytest.approx(13.0)
            await central.wait_for(lambda c: c.links()["huawei"].limit_a == 13.0)
            assert central.links()["huawei"].unit == "W"


@aio
async def test_meter_values_become_charger_state() -> None:
    clock = ManualClock()
    got: list[ChargerState] = []
    async with OcppCentral(chargers(garage=10.0), "127.0.0.1", 0, policy=POLICY, clock=clock,
                           on_report=got.append) as central:
        cp = cp_for(central, "garage", clock)
        async with running(cp):
            await cp.wait_for(lambda c: BASE_PROFILE_ID in c.store.profiles)
            central.set_limit("garage", 16.0)
            await cp.wait_for(lambda c: c.limit_a == 16.0)
            for _ in range(2):  # the EV starts at 6 A, then takes the 16 A offered
                clock.advance(1.0)
                cp.step()
            assert cp.charger.terminals == (16.0, 16.0, 16.0)
            cp.send_meter_values()
            reports = central.reports()
            async with asyncio.timeout(10):
                while True:
                    state = await anext(reports)
                    if state.currents_a == (16.0, 16.0, 16.0) and state.mode == "charging":
                        break
            assert state.id == "garage" and state.phases_in_use == 3 and state.setpoint_a == 16.0
            assert state.at == clock.now()
            assert state.energy_wh == round(cp.energy_wh)  # the register, for the session meter
            link = central.links()["garage"]
            assert link.power_w == pytest.approx(3 * 230 * 16, abs=1) and link.status == "Charging"
            assert link.last_report_at == clock.now()
            assert got and got[-1] == state


async def _handshake_refused(url: str, headers: dict[str, str] | None = None) -> int:
    with pytest.raises(websockets.InvalidStatus) as err:
        async with connect(url, subprotocols=[SUBPROTOCOL], additional_headers=headers or {}):
            pass
    return err.value.response.status_code


@aio
async def test_unknown_id_and_wrong_password_are_refused() -> None:
    async with OcppCentral(chargers(garage=10.0), "127.0.0.1", 0, policy=POLICY) as central:
        assert await _handshake_refused(central.url + "/intruder") == 404
        assert await _handshake_refused(central.url + "/garage") == 401
        bad = "Basic " + base64.b64encode(b"garage:guess").decode()
        assert await _handshake_refused(central.url + "/garage", {"Authorization": bad}) == 401
        assert central.refused == 3
        assert not central.links()["garage"].connected


@aio
async def test_malformed_frames_get_a_call_error_and_the_others_are_served() -> None:
    clock = ManualClock()
    async with OcppCentral(chargers(garage=10.0, carport=8.0), "127.0.0.1", 0, policy=POLICY,
                           clock=clock, boot_wait_s=60) as central:
        good = cp_for(central, "carport", clock)
        token = base64.b64encode(b"garage:pw-garage-0123456789").decode()
        async with running(good), connect(central.url + "/garage", subprotocols=[SUBPROTOCOL],
                                           additional_headers={"Authorization": f"Basic {token}"}) as raw:
            await raw.send('[2, "m1", "BootNotification", {"chargePointVendor": 42}]')  # wrong type
            reply = json.loads(await raw.recv())
            assert reply[0] == 4 and reply[1] == "m1"
            await raw.send('[2, "m2", "NoSuchAction", {}]')
            reply = json.loads(await raw.recv())
            assert reply[0] == 4 and reply[1] == "m2" and reply[2] in ("NotSupported", "NotImplemented")
            await raw.send('[7, "m3", "no such message type"]')
            reply = json.loads(await raw.recv())
            assert reply[0] == 4 and reply[1] == "m3" and reply[2] == "FormatViolation"
            await raw.send("{{{ not json")  # nothing to answer to; the connection stays
            await raw.send('[2, "m4", "Heartbeat", {}]')
            reply = json.loads(await raw.recv())
            assert reply[:2] == [3, "m4"] and "currentTime" in reply[2]
            assert central.malformed == 2
            # Meanwhile the well-behaved charger is set up and takes its limit.
            await good.wait_for(lambda c: BASE_PROFILE_ID in c.store.profiles)
            central.set_limit("carport", 12.0)
            await good.wait_for(lambda c: c.limit_a == 12.0)


@aio
async def test_without_the_central_system_the_charger_falls_back_to_safe_within_the_validity() -> None:
    clock = ManualClock()
    policy = ProfilePolicy(validity_s=90, renew_s=30)
    central = OcppCentral(chargers(garage=10.0, carport=6.0), "127.0.0.1", 0, policy=policy, clock=clock)
    await central.__aenter__()
    cps = [cp_for(central, cid, clock) for cid in ("garage", "carport")]
    async with running(*cps):
        for cp in cps:
            await cp.wait_for(lambda c: BASE_PROFILE_ID in c.store.profiles)
            central.set_limit(cp.id, 32.0)
            await cp.wait_for(lambda c: c.limit_a == 32.0)
        central.crash()  # no close frame, no clean-up: as a SIGKILL or a pulled plug
        for cp in cps:
            await cp.wait_for(lambda c: not c.connected.is_set())
        clock.advance(policy.validity_s - 1)
        for cp in cps:
            cp.tick()
            assert cp.limit_a == 32.0  # still valid
        clock.advance(2)
        for cp in cps:
            cp.tick()
        assert [cp.limit_a for cp in cps] == [10.0, 6.0]
        assert [cp.charger.setpoint_a for cp in cps] == [10.0, 6.0]
        assert policy.validity_s < 120  # the bound: safe within 2 minutes


@aio
async def test_the_limit_is_renewed_before_it_runs_out() -> None:
    clock = ManualClock()
    policy = ProfilePolicy(validity_s=3, renew_s=0.2, skew_s=0)
    async with OcppCentral(chargers(garage=10.0), "127.0.0.1", 0, policy=policy, clock=clock) as central:
        cp = cp_for(central, "garage", clock)
        async with running(cp):
            await cp.wait_for(lambda c: BASE_PROFILE_ID in c.store.profiles)
            central.set_limit("garage", 20.0)
            await cp.wait_for(lambda c: c.limit_a == 20.0)
            for _ in range(3):  # each renewal moves validTo on with the clock
                clock.advance(2.0)
                n = cp.profiles_received
                await cp.wait_for(lambda c, n=n: c.profiles_received > n)
                cp.tick()
                assert cp.limit_a == 20.0
                assert cp.store.profiles[LIMIT_PROFILE_ID].valid_to == pytest.approx(clock.now() + 3, abs=1)


def test_sigkill_of_the_device_leaves_each_charger_at_its_safe_current(tmp_path: Path) -> None:
    """The real thing, in real time: the central system in its own process, SIGKILLed while both
    chargers run at 32 A; each charger is back at its own safe current by itself, within the validity."""
    validity_s = 3.0
    port_file = tmp_path / "port"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    child = subprocess.Popen([sys.executable, "-m", "tests.ocpp_child", str(port_file), str(validity_s), "32",
                              "garage:10", "carport:6"], stdout=subprocess.PIPE, env=env)

    async def main() -> None:
        async with asyncio.timeout(30):
            while not port_file.exists():
                await asyncio.sleep(0.02)  # polling a file the child writes: no event crosses processes
        url = f"ws://127.0.0.1:{port_file.read_text()}"
        cps = [SimOcppChargePoint(sim_charger(cid), url, steps=True, reconnect_s=0.2) for cid in ("garage", "carport")]
        async with running(*cps):
            line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)  # type: ignore[union-attr]
            assert line.strip() == b"ready"
            for cp in cps:
                await cp.wait_for(lambda c: c.limit_a == 32.0)
            child.send_signal(signal.SIGKILL)
            killed_at = time.time()
            # What the chargers hold runs out within the validity of the kill (whole seconds on the wire).
            for cp in cps:
                assert cp.store.profiles[LIMIT_PROFILE_ID].valid_to <= killed_at + validity_s + 1  # type: ignore[operator]
            for cp, safe in zip(cps, (10.0, 6.0), strict=True):
                await cp.wait_for(lambda c, safe=safe: c.limit_a == safe, timeout=validity_s + 30)
            assert [cp.charger.setpoint_a for cp in cps] == [10.0, 6.0]
            assert not any(cp.connected.is_set() for cp in cps)

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        child.kill()
        child.wait(10)



def test_tls_with_a_password_security_profile_2(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        clock = ManualClock()
        async with OcppCentral(chargers(garage=10.0), "127.0.0.1", 0, ssl=server_ctx, policy=POLICY,
                               clock=clock) as central:
            assert central.url.startswith("wss://")
            cp = cp_for(central, "garage", clock, ssl=client_ctx)
            async with running(cp):
                central.set_limit("garage", 20.0)
                await cp.wait_for(lambda c: c.limit_a == 20.0)

    asyncio.run(asyncio.wait_for(main(), 60))


@aio
async def test_a_charger_without_charge_point_max_profiles_gets_tx_default_profiles() -> None:
    clock = ManualClock()
    async with OcppCentral(chargers(garage=10.0), "127.0.0.1", 0, policy=POLICY, clock=clock) as central:
        cp = cp_for(central, "garage", clock, purposes=("TxDefaultProfile", "TxProfile"))
        async with running(cp):
            await cp.wait_for(lambda c: BASE_PROFILE_ID in c.store.profiles)
            assert cp.store.profiles[BASE_PROFILE_ID].purpose == "TxDefaultProfile"
            central.set_limit("garage", 25.0)
            await cp.wait_for(lambda c: c.limit_a == 25.0)
            assert cp.store.profiles[LIMIT_PROFILE_ID].purpose == "TxDefaultProfile"
            clock.advance(POLICY.validity_s + 1)
            cp.tick()
            assert cp.limit_a == 10.0
