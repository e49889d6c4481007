"""Every input handler is total (issue 13 items 3 and 4): any payload on any topic the device, the
balancer, Smart eco or a simulated charger listens to ends in a value or a counted, logged rejection,
never an exception; and after any of them the device still stores a genuine revocation and still takes
our charger's draw out of the headroom. No broker: the handlers are called as the listeners call them
(tests/hostile/test_on_the_broker.py sends the same payloads through mosquitto to a running device)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apm.core.config import ChargerConfig, DeviceConfig, GridConfig
from apm.core.eco.planner import Charger
from apm.core.eco.prices import sample_week
from apm.io.mqtt.link import MqttLink
from apm.io.mqtt.messages import MAX_DEPTH, PayloadError, check_shape
from apm.io.mqtt.topics import Topics
from apm.services.balancer import BalancerService
from apm.services.device import Device, MemorySubscription
from apm.services.eco import EcoPlanner, EcoService
from sim.charger import SimCharger
from sim.charger_node import ChargerNode
from sim.cloud import Installation, Issuer
from tests.hostile.payloads import GOOD_STATE, corpus, payloads

CONFIG = DeviceConfig(serial="APMHOST1", installation_id="inst-host", grid=GridConfig(network="TN", fuse_a=25),
                      chargers=(ChargerConfig("a", max_a=32, phases=3),))
T = Topics(CONFIG.serial)
URL = "mqtt://127.0.0.1:9"  # nobody there: the parts never wait for the broker
TOPICS = [T.charger_state("a"), T.charger_state("zz-unknown"), f"{T.root}/charger/a/b/state", T.subscription_revocation,
          T.headroom, T.subscription, T.eco_plan, T.eco_request, T.charger_setpoint("a"), T.charger_setpoint("b"),
          T.status, T.reading(2), "apm/OTHER/headroom", "#"]
HOME = Installation(CONFIG.installation_id, CONFIG.serial, chargers=1, meter="kamstrup")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


class Parts:
    """The device with a verified subscription, the balancer beside it and one apart, Smart eco and a
    simulated charger: every listener there is, on one event loop, none connected."""

    def __init__(self, issuers: Issuers) -> None:
        self.issuer = issuer = issuers()
        self.store = MemorySubscription(CONFIG, token=issuer.issue(CONFIG.serial, datetime.now(UTC)),
                                        public_key=issuer.public_key_pem)
        self.device = Device(CONFIG, url=URL, subscription=self.store)
        self.device.evaluate_subscription()
        self.beside = BalancerService.beside(self.device, url=URL)
        self.alone = BalancerService(CONFIG, url=URL, subscription=self.store)
        chargers = {"a": Charger("a", max_a=32, phases=3, network="TN")}
        self.eco = EcoService(MqttLink(URL, client_id="eco"), T, EcoPlanner(chargers, lambda _now: sample_week(),
                                                                             budget_a=23.0))
        self.node = ChargerNode(SimCharger(CONFIG.chargers[0], "TN"), T, url=URL, steps=False)

    def send(self, topic: str, payload: bytes) -> None:
        """To every listener, as its loop would hand it over; none may raise."""
        self.device.on_message(topic, payload)
        self.beside.on_message(topic, payload)
        self.alone.on_message(topic, payload)
        self.eco.on_message(topic, payload)
        self.node.on_message(topic, payload)




class Issuers:
    """A fresh issuer (its own key and subscription) for each set of parts: a decline ends one."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.n = 0

    def __call__(self) -> Issuer:
        self.n += 1
        cloud = Issuer.keygen(self.where / f"cloud-{self.n}.json")
        cloud.subscribe(HOME, datetime.now(UTC) - timedelta(days=1))
        return cloud


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuers:
    return Issuers(tmp_path_factory.mktemp("cloud"))


class Looped:
    """`Parts` on an event loop of its own, every call made from inside it."""

    def __init__(self, issuers: Issuers) -> None:
        self.loop = asyncio.new_event_loop()
        self.parts: Parts = self.call(Parts, issuers)

    def call(self, fn: Any, *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)

        return self.loop.run_until_complete(call())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parts, name)

    def send(self, topic: str, payload: bytes) -> None:
        self.call(self.parts.send, topic, payload)

    def on_message(self, part: Any, topic: str, payload: bytes) -> Any:
        return self.call(part.on_message, topic, payload)


@pytest.fixture
def parts(issuer: Issuers) -> Iterator[Looped]:
    looped = Looped(issuer)
    try:
        yield looped
    finally:
        looped.loop.close()


def _still_works(p: Looped) -> None:
    """After whatever came before: our charger's draw still reaches the headroom, a genuine
    revocation is still stored and ends the subscription."""
    now = p.device.clock.now()
    assert p.on_message(p.device, T.charger_state("a"), _state(12.5))
    st_a = p.device.controller.states["a"]
    assert st_a.currents_a == (12.5, 12.5, 12.5) and abs(st_a.at - now) < 5
    assert p.call(p.device.evaluate_subscription).state.value == "valid"
    assert p.on_message(p.device, T.subscription_revocation, p.issuer.decline(CONFIG.serial, datetime.now(UTC)).encode())
    assert p.device.tracker.current is not None and p.device.tracker.current.state.value == "revoked"
    assert len(p.store.revocations) == 1


def _state(a: float) -> bytes:
    import json

    return json.dumps({**GOOD_STATE, "current_l1_a": a, "current_l2_a": a, "current_l3_a": a}).encode()


@pytest.mark.parametrize(("name", "payload"), corpus(), ids=[n for n, _ in corpus()])
def test_each_hostile_payload_on_every_topic_is_rejected_and_logged(
        parts: Looped, name: str, payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for topic in TOPICS:
        parts.send(topic, payload)
    # the device's own charger's state: a value in range (a time from another age is replaced by the
    # arrival), or rejected, counted and logged with nothing of it used
    parts.device.controller.states.pop("a", None)
    before = parts.device.rejections.count
    if parts.on_message(parts.device, T.charger_state("a"), payload):
        st_a = parts.device.controller.states["a"]
        assert all(0 <= x <= 32 * 1.1 + 1 for x in st_a.currents_a)
        assert abs(st_a.at - parts.device.clock.now()) < 5
    else:
        assert parts.device.rejections.count == before + 1
        assert "rejected a message on apm/APMHOST1/charger/a/state" in caplog.text
        assert parts.device.controller.states.get("a") is None
    _still_works(parts)


def test_an_unknown_charger_is_ignored_and_named_once(parts: Looped, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for _ in range(5):
        assert not parts.on_message(parts.device, T.charger_state("zz-unknown"), _state(10))
    assert caplog.text.count("'zz-unknown'") == 1 and parts.device.rejections.unknown == 5
    assert "zz-unknown" not in parts.device.controller.states
    for i in range(1000):  # a flood of made-up ids: the log names a few, the memory keeps a few
        parts.on_message(parts.device, T.charger_state(f"x{i}"), _state(10))
    assert len(parts.device.rejections.unknown_ids) <= 32


def test_a_report_beyond_what_the_charger_can_draw_is_refused(parts: Parts) -> None:
    # 40 A on a 32 A charger would make room for 40 A of house load that is really there
    assert not parts.on_message(parts.device, T.charger_state("a"), _state(40.0))
    assert parts.on_message(parts.device, T.charger_state("a"), _state(32.0))


def test_a_forged_headroom_gives_the_balancer_apart_no_more_than_fuse_less_margin(parts: Parts) -> None:
    import json

    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    parts.on_message(parts.alone, T.headroom, json.dumps({"l1_a": 400, "l2_a": 400, "l3_a": 400, "ts": ts,
                                                   "stale": False}).encode())
    h = parts.alone.controller.headroom
    assert h is not None and h.available_a == (23.0, 23.0, 23.0)


def test_forged_subscription_states_change_no_gate(parts: Parts) -> None:
    for payload in (b'{"state":"none","reason":"x"}', b'{"state":"valid","reason":"x","granted":["fuse_protection"]}'):
        parts.on_message(parts.alone, T.subscription, payload)
        assert parts.alone.subscription is not None and parts.alone.subscription.state.value == "valid"
    nobody = parts.call(lambda: BalancerService(CONFIG, url=URL))  # apart, and no token: nothing grants protection
    parts.on_message(nobody, T.subscription, b'{"state":"valid","reason":"forged","granted":["fuse_protection","eco"]}')
    assert nobody.subscription is None and not nobody.gate().fuse_protection


@FUZZ
@given(topic=st.sampled_from(TOPICS), payload=payloads)
def test_fuzz_every_handler_never_raises(parts: Looped, topic: str, payload: bytes) -> None:
    parts.send(topic, payload)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(TOPICS), payloads), min_size=1, max_size=20))
def test_fuzz_then_a_genuine_revocation_and_our_draw_still_count(issuer: Issuers, batch: list[Any]) -> None:
    p = Looped(issuer)
    try:
        for topic, payload in batch:
            p.send(topic, payload)
        _still_works(p)
    finally:
        p.loop.close()


@given(st.integers(0, 5000), st.sampled_from([b"[", b"{\"a\":"]))
def test_the_depth_limit_is_found_before_parsing(n: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    payload = opener * n + b"1" + closer * n
    if n > MAX_DEPTH:
        with pytest.raises(PayloadError, match="nested deeper"):
            check_shape(payload)
    else:
        check_shape(payload)
