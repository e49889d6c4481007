"""The device's HAN side as an asyncio component: bytes in, readings, headroom and energy out on MQTT.

    bytes (serial port, replay, simulated meter)
      -> han.HanReader -> reading/listN                           (retained, QoS 0)
                          (each reading stamped when the meter measured it: arrival less the frame's
                           time on the line, ``char_time_s`` per byte)
      -> apm.core.controller.Controller (MeterState -> HeadroomEstimator -> Balancer; the one the fast
                          simulation drives too)
                                     -> energy/hourly             (persistent outbox, QoS 1)
                                     -> headroom                  (on every reading and every
                                                                   charger/+/state message; also
                                                                   handed in-process to the balancer
                                                                   service: ``headroom_listeners``)
      subscription: SubscriptionTracker transitions -> subscription (retained, QoS 1) and the log; the
                          state itself goes to the Controller (the balancer's gate) in-process
      subscription/revocation (retained, from the issuer): verified with the issuer's key, stored
                          (flash image or memory), then the subscription is re-evaluated at once
      status file beside the flash image (read by `apm info`)
      capacity guard ([capacity] enabled): owned by the Controller (its caps reach the balancer in
                          ``decide``); its month's peaks kept in the flash image (``capacity_store``)
                          and published on ``capacity`` (retained) every 30 s and when an hour closes

    async with Device(config, clock=clock, url=broker_url, outbox=box) as device:
        await device.run(serial_chunks(port))      # until the source ends; or device.feed(data)

The device never waits for the broker (`apm.io.mqtt.link.MqttLink`): readings and headroom go on being
computed and the latest of each is sent once it is back; hourly records wait in the outbox. It listens
to ``charger/+/state`` to know what our own chargers draw, which the headroom takes out of the measured
line currents.

Byte sources are async iterators of ``bytes``: `serial_chunks` (a pyserial port read through the event
loop's ``add_reader`` on its file descriptor: no thread, no polling), or any paced chunk source
(`apm.io.replay.paced`, a simulated meter on a pty read through `serial_chunks` again).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from apm.core.capacity_guard import CapacityGuard, guard_for, month_doc, month_from_doc
from apm.core.charger_state import ChargerState
from apm.core.config import DeviceConfig
from apm.core.controller import Controller, ReadingOutcome, balancer_settings
from apm.core.eco.capacity import MonthLog, goal_from_settings
from apm.core.headroom import Headroom, HeadroomEstimator
from apm.core.meter_state import BaselineStore, HourlyEnergy, MeterState
from apm.core.sessions import Session, SessionMeter
from apm.core.subscription import State, SubscriptionState, SubscriptionTracker, evaluate, features
from apm.core.throttle import Throttle
from apm.core.token import verify_revocation_for
from apm.io.clock import Clock, RealClock
from apm.io.mqtt.discovery import discovery_messages, link_messages, session_messages
from apm.io.mqtt.link import MqttLink
from apm.io.mqtt.messages import (
    CapacityPayload,
    HeadroomNote,
    Rejections,
    SessionPayload,
    headroom_message,
    read_charger_state,
    read_headroom,
)
from apm.io.mqtt.topics import (
    CHARGER_SESSION,
    CHARGER_STATE,
    SUBSCRIPTION_REVOCATION,
    PayloadError,
    Topics,
    iso_ts,
)
from apm.io.storage.outbox import MemoryOutbox, Outbox
from apm.io.tasks import stop
from han import HanReader, Reading

log = logging.getLogger(__name__)

# (now, detected meter vendor or None) -> the subscription's state; see `flash_subscription`.
SubscriptionSource = Callable[[datetime, str | None], SubscriptionState]
# Told of every headroom the device publishes (clock time, the message as a receiver reads it).
HeadroomListener = Callable[[float, HeadroomNote], None]

SUBSCRIPTION_EVERY_S = 60.0  # clock seconds between re-evaluations (a token expires by the clock)
STATUS_EVERY_S = 2.0  # wall seconds between status-file writes
CAPACITY_EVERY_S = 30.0  # clock seconds between the capacity guard's retained updates
# A headroom waiting in the link's queue longer than this (wall seconds) is not worth sending.
HEADROOM_TTL_S = 2.0
_EMPTY_READS_LOST = 64
MAX_FRAME_TIME_S = 2.0  # the longest a frame takes on the line (Aidon's list 3 at 2400 baud: ~1.5 s)
MAX_REVOCATION_BYTES = 16 * 1024
PLAUSIBLE_DRAW = 1.1  # a charger's report may show this much more than its max_a (meter tolerance)
SESSION_EVERY_S = 10.0  # clock seconds between two publications of an open session's energy


class CapacityStore(Protocol):
    """Where the capacity guard's month is kept across a restart (`apm.io.storage.flash.FlashCapacity`):
    `apm.core.capacity_guard.month_doc`'s form."""

    def load(self) -> Mapping[str, Any] | None: ...

    def save(self, month: Mapping[str, Any]) -> None: ...


class PortLost(OSError):
    """The serial port went away (adapter unplugged, pty hung up)."""


class DeviceFailed(RuntimeError):
    """One of the device's own tasks ended with an error (logged with its traceback): `Device.run`
    raises it, so that `apm run` exits non-zero within a second and systemd starts it again, rather
    than running on without a listener or housekeeping."""


def session_view(session: Session | None, now: float) -> dict[str, Any] | None:
    """``{energy_kwh, started_at, ended_at, duration_s, source, active}`` (ISO times), None before the first EV."""
    if session is None:
        return None
    return {"energy_kwh": round(session.energy_kwh, 3), "started_at": iso_ts(session.started_at),
            "ended_at": iso_ts(session.ended_at) if session.ended_at is not None else None,
            "duration_s": round(session.duration_s(now)), "source": session.source, "active": session.active}


def granted_subscription(reason: str = "simulated subscription (demo)") -> SubscriptionSource:
    """Every feature granted, without a token: for demos and simulations."""
    state = SubscriptionState(State.VALID, reason)
    return lambda _now, _meter: state


@runtime_checkable
class RevocationStore(Protocol):
    """A subscription source that also keeps the revocations the device receives over MQTT."""

    def issuer_key(self) -> str | None:
        """PEM of the issuer's public key, None if the device holds none."""
        ...

    def add_revocation(self, revocation: str) -> bool:
        """Keep a verified revocation; False if it was kept already (a retained message seen again)."""
        ...


@dataclass(frozen=True, slots=True)
class FlashSubscription:
    """The token, issuer key and revocations stored in the flash image, re-read at every evaluation
    (so `apm token install` takes effect while the device runs); revocations received are stored there."""

    image: Path
    config: DeviceConfig

    def __call__(self, now: datetime, meter: str | None) -> SubscriptionState:
        from apm.io.storage.flash import Flash, FlashError

        try:
            c = Flash(self.image).read()
        except FlashError as exc:
            return SubscriptionState(State.NONE, f"flash image unreadable: {exc}")
        return evaluate(now, token=c.token, public_key=c.issuer_key, config=self.config,
                        revocations=c.revocations, meter=meter)

    def issuer_key(self) -> str | None:
        from apm.io.storage.flash import Flash, FlashError

        try:
            return Flash(self.image).read().issuer_key
        except FlashError:
            return None

    def add_revocation(self, revocation: str) -> bool:
        from apm.io.storage.flash import Flash

        flash = Flash(self.image)
        if revocation in flash.read().revocations:
            return False
        flash.add_revocation(revocation)  # idempotent, so a race with `apm token install` is harmless
        return True


class MemorySubscription:
    """A token and issuer key held in memory (no flash image); revocations received are kept here."""

    def __init__(self, config: DeviceConfig, *, token: str | None, public_key: str | None,
                 revocations: tuple[str, ...] = ()) -> None:
        self.config = config
        self.token = token
        self.public_key = public_key
        self.revocations = list(revocations)

    def __call__(self, now: datetime, meter: str | None) -> SubscriptionState:
        return evaluate(now, token=self.token, public_key=self.public_key, config=self.config,
                        revocations=self.revocations, meter=meter)

    def issuer_key(self) -> str | None:
        return self.public_key

    def add_revocation(self, revocation: str) -> bool:
        if revocation in self.revocations:
            return False
        self.revocations.append(revocation)
        return True


def flash_subscription(image: Path, config: DeviceConfig) -> FlashSubscription:
    return FlashSubscription(image, config)


def no_subscription(config: DeviceConfig) -> SubscriptionSource:
    """No token anywhere (a configuration from a TOML file): the state says so."""
    return lambda now, meter: evaluate(now, token=None, public_key=None, config=config, meter=meter)


async def serial_chunks(fd: int, *, size: int = 4096) -> AsyncIterator[bytes]:
    """What arrives on a serial port's file descriptor, read when the event loop says it is readable.

    ``fd`` must be non-blocking (pyserial opens ports with O_NONBLOCK). Raises `PortLost` when the port
    hangs up (EIO on a pty whose other side closed, EOF, an unplugged USB adapter).
    """
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    empty = 0
    try:
        while True:
            await ready.wait()
            ready.clear()
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF):
                    raise PortLost(exc.errno, f"the serial port went away: {exc.strerror}") from None
                raise
            if not data:
                # A tty with VMIN 0 reads 0 bytes when a readiness report was already served; a port
                # that keeps reporting readiness with nothing to read has gone (pyserial's rule too).
                empty += 1
                if empty > _EMPTY_READS_LOST:
                    raise PortLost(errno.EIO, "the serial port went away (readable, but no data)")
                continue
            empty = 0
            yield data
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(fd)


class Device:
    """The HAN side of the APM. An async context manager; see the module doc."""

    def __init__(
        self,
        config: DeviceConfig,
        *,
        url: str,
        clock: Clock | None = None,
        outbox: Outbox | None = None,
        subscription: SubscriptionSource | None = None,
        status_file: Path | None = None,
        reader: HanReader | None = None,
        headroom_options: Mapping[str, Any] | None = None,
        stale_after_s: float | None = None,
        char_time_s: float = 0.0,
        link_options: Mapping[str, Any] | None = None,
        baseline_store: BaselineStore | None = None,
        capacity_store: CapacityStore | None = None,
    ) -> None:
        self.config = config
        # Clock seconds one character takes on the HAN line (0: a source without line timing, a replay).
        self.char_time_s = char_time_s
        self._since_reading = 0
        self.clock = clock or RealClock()
        self.topics = Topics(config.serial)
        self.reader = reader or HanReader(ct_ratio=config.grid.ct_ratio)
        # The decoder has applied the CT ratio already: the estimator takes the readings as they are.
        # stale_after_s None: the configuration's [balancer] stale_after_s, so headroom and balancer agree.
        self.controller = Controller(config.grid, config.chargers, settings=balancer_settings(config),
                                     headroom=config.headroom, headroom_options=headroom_options,
                                     stale_after_s=stale_after_s)
        # The hourly baseline survives a restart, so the hour open at the restart is recorded.
        self.baseline_store = baseline_store
        if baseline_store is not None:
            self._restore_baseline(baseline_store)
        self.capacity_store = capacity_store
        self._month_kept: MonthLog | None = None
        self.controller.set_capacity(self._capacity_guard(capacity_store))
        self.stale_after_s = self.controller.stale_after_s
        self.subscription_source = subscription or no_subscription(config)
        # Only a source that holds the issuer's key can check a revocation, so only it listens for them.
        self.revocations = (self.subscription_source if isinstance(self.subscription_source, RevocationStore)
                            else None)
        listen = [(self.topics.all_charger_states, 0)]
        if self.revocations is not None:
            listen.append((self.topics.subscription_revocation, 1))
        self.tracker = SubscriptionTracker()
        self.status_file = status_file
        # Each charger's link for the status file; the runtime sets it once the chargers' edges are up.
        self.charger_links: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None
        self.hourly: list[HourlyEnergy] = []
        self.headroom_seq = 0
        self.headroom_listeners: list[HeadroomListener] = []
        # Told every reading as the meter measured it (Home Assistant's energy this hour).
        self.reading_listeners: list[Callable[[float, Reading], None]] = []
        self.problems = 0
        self.last_problem: str | None = None
        self.rejections = Rejections(self.topics, "device")
        # Each charger's charging session, from the reports below (apm.core.sessions).
        self.sessions = SessionMeter(config.grid.network, config.chargers)
        self._session_throttle: Throttle[str] = Throttle(SESSION_EVERY_S)  # per charger
        charger_ids = [c.id for c in config.chargers]
        self.link = MqttLink.for_device(
            self.topics, config.broker, url=url, outbox=outbox if outbox is not None else MemoryOutbox(),
            birth=discovery_messages(self.topics, chargers=charger_ids, capacity=self.controller.capacity is not None)
            + session_messages(self.topics, charger_ids) + link_messages(self.topics, charger_ids),
            subscriptions=listen, **dict(link_options or {}))
        self._tasks: list[asyncio.Task[None]] = []
        self._failed: asyncio.Future[DeviceFailed] | None = None
        self._status_written = 0.0

    # --- the controller's values, for the views and `apm info` -----------------------------------

    @property
    def state(self) -> MeterState:
        return self.controller.meter

    @property
    def estimator(self) -> HeadroomEstimator:
        return self.controller.estimator

    @property
    def chargers(self) -> dict[str, ChargerState]:
        return self.controller.states

    @property
    def headroom(self) -> Headroom | None:
        return self.controller.headroom

    @property
    def readings(self) -> int:
        return self.controller.readings

    @property
    def last_reading_at(self) -> float | None:
        return self.controller.last_reading_at

    @property
    def han_state(self) -> str:
        return self.controller.han_state

    @property
    def capacity(self) -> CapacityGuard | None:
        return self.controller.capacity

    @property
    def advice(self) -> tuple[str, ...]:
        """Installation advice (apm.core.wiring), from the per-phase lists."""
        return self.controller.advice

    # --- lifetime --------------------------------------------------------------------------------

    async def __aenter__(self) -> Device:
        await self.link.__aenter__()
        self.evaluate_subscription()
        self._failed = asyncio.get_running_loop().create_future()
        self._tasks = [asyncio.create_task(self._listen(), name="device: listener"),
                       asyncio.create_task(self._housekeeping(), name="device: housekeeping")]
        for t in self._tasks:
            t.add_done_callback(self._task_done)
        return self

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "it ended"
        log.error("%s failed (%s); the device stops so that its service manager restarts it",
                  task.get_name(), why, exc_info=exc)
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(DeviceFailed(f"{task.get_name()} failed: {why}"))

    async def __aexit__(self, *exc: object) -> None:
        await stop(*self._tasks)  # cancels them, again if a wait_for swallowed the first
        self.write_status()
        await self.link.__aexit__(*exc)  # sends what is queued, then the retained "offline"

    async def run(self, source: AsyncIterable[bytes]) -> None:
        """Feed every chunk of ``source`` through the pipeline until it ends; `DeviceFailed` as soon
        as one of the device's own tasks fails (each driver of the device runs this)."""
        failed = self._failed
        if failed is None:  # not entered: no tasks of its own to watch
            await self._feed_all(source)
            return
        feeding = asyncio.ensure_future(self._feed_all(source))
        try:
            watched: list[asyncio.Future[Any]] = [feeding, failed]
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not feeding.done():
                feeding.cancel()
                await asyncio.gather(feeding, return_exceptions=True)
        if failed.done():
            raise failed.result()
        feeding.result()

    async def _feed_all(self, source: AsyncIterable[bytes]) -> None:
        async for chunk in source:
            self.feed(chunk)

    # --- bytes to messages (synchronous: one chunk, its readings, their messages) -----------------

    def feed(self, data: bytes) -> list[Reading]:
        now = self.clock.now()
        readings = self.reader.feed(data)
        self._since_reading += len(data)
        for problem in self.reader.pop_problems():
            self.problems += 1
            self.last_problem = f"{problem.kind}: {problem.reason}"
            log.debug("HAN: %s", self.last_problem)
        if readings:
            # The meter measured before it started sending: a list 2 takes ~1 s at 2400 baud, in which
            # an EV ramping up changes what our chargers report by amperes. The bytes since the last
            # reading are (about) this frame; a long gap is the meter falling silent, not one frame.
            sent_for = min(self._since_reading * self.char_time_s, MAX_FRAME_TIME_S)
            self._since_reading = 0
            for r in readings:
                self.on_reading(now - sent_for, r)
        return readings

    def on_reading(self, now: float, reading: Reading) -> ReadingOutcome:
        """A reading the meter measured at ``now``: through the controller, out on MQTT."""
        out = self.controller.on_reading(now, reading)
        if out.han_back is not None:
            log.info("HAN data %s: %s meter, list %d", "back" if out.han_back == "stale" else "arriving",
                     reading.meter, reading.list)
        self.link.publish(self.topics.reading_message(reading))
        if out.hourly is not None:
            self._hourly(out.hourly)
            self.keep_capacity()
        if self.baseline_store is not None and self.state.baseline is not self._baseline_kept:
            self._keep_baseline(self.baseline_store)
        if out.new_meter:
            self.evaluate_subscription()  # eligibility depends on the meter on the HAN port
        for line in out.advice or ():
            log.info("installation advice: %s", line)
        self._publish_headroom(now, out.headroom)
        for listener in self.reading_listeners:
            listener(now, reading)
        return out

    def on_charger_state(self, now: float, state: ChargerState) -> None:
        """A charger's report: what it drew at ``state.at`` goes into the estimator's history (kept in
        time order), then the headroom is recomputed; its session goes on (`sessions`)."""
        self._publish_headroom(now, self.controller.on_charger_states(now, [state]))
        volts = tuple(self.state.value(f"voltage_l{k}_v") for k in (1, 2, 3))
        session = self.sessions.on_report(state, volts)
        if session is not None:
            self._publish_session(now, session)

    def _publish_session(self, now: float, session: Session) -> None:
        """Retained on the charger's session topic: at once when a session starts or ends, else every
        SESSION_EVERY_S (a go-e reports every few seconds; Home Assistant needs no more)."""
        if not self._session_throttle.due(session.charger, now, (session.started_at, session.active)):
            return
        payload = SessionPayload(energy_kwh=round(session.energy_kwh, 3), started_at=iso_ts(session.started_at),
                                 ended_at=iso_ts(session.ended_at) if session.ended_at is not None else None,
                                 duration_s=round(session.duration_s(now), 1), source=session.source)
        self.link.publish(self.topics.message(CHARGER_SESSION, payload, charger=session.charger))

    def session_view(self, charger_id: str) -> dict[str, Any] | None:
        """A charger's session (the open one, else the last) as the page and the status file show it."""
        return session_view(self.sessions.session(charger_id), self.clock.now())

    def publish_headroom(self, now: float) -> Headroom | None:
        return self._publish_headroom(now, self.controller.headroom_at(now))

    def _publish_headroom(self, now: float, h: Headroom | None) -> Headroom | None:
        if h is None:
            return None  # no per-phase list yet: the balancer stays on the fixed current
        self.headroom_seq += 1
        msg = headroom_message(self.topics, h, seq=self.headroom_seq, reading_seq=self.readings,
                               ttl_s=HEADROOM_TTL_S)
        self.link.publish(msg)
        if self.headroom_listeners:
            note = read_headroom(msg.payload, now)  # what a balancer over MQTT would read
            for listener in self.headroom_listeners:
                listener(now, note)
        return h

    def _hourly(self, record: HourlyEnergy) -> None:
        self.hourly.append(record)
        data = self.topics.energy_record(record)
        # The baseline the closed hour moved on goes with its record, in one write where the outbox can
        # (the flash image): a power cut between two writes would record the hour twice, or never.
        baseline = self.state.baseline if self.baseline_store is not None else None
        try:
            self.link.add_record(data, baseline=baseline)
        except Exception as exc:  # a full or broken outbox must not stop the meter being read
            log.error("hourly energy %s -> %s not stored: %s", record.hour_start, record.hour_end, exc)
            return
        log.info("hourly energy %s -> %s: %.0f Wh imported, %.0f Wh exported", record.hour_start,
                 record.hour_end, record.import_wh, record.export_wh)

    def _restore_baseline(self, store: BaselineStore) -> None:
        try:
            baseline = store.load()
        except Exception as exc:  # a broken store costs the open hour, not the device
            log.error("hourly baseline not restored: %s", exc)
            baseline = None
        if baseline is not None:
            self.state.restore_baseline(baseline, self.clock.now())
            log.info("hourly energy continues from %s (%.0f Wh imported)", baseline.meter_time, baseline.import_wh)
        self._baseline_kept = self.state.baseline

    def _keep_baseline(self, store: BaselineStore) -> None:
        baseline = self._baseline_kept = self.state.baseline
        if baseline is None:
            return
        try:
            store.save(baseline)
        except Exception as exc:  # as with the outbox: the meter goes on being read
            log.error("hourly baseline %s not stored: %s", baseline.meter_time, exc)

    # --- the capacity guard ------------------------------------------------------------------------

    def _capacity_guard(self, store: CapacityStore | None) -> CapacityGuard | None:
        """The guard of the configuration's ``[capacity]``, with the month kept in ``store``."""
        goal = goal_from_settings(self.config.capacity)
        if goal is None:
            return None
        month = None
        if store is not None:
            try:
                doc = store.load()
                month = month_from_doc(doc, goal) if doc is not None else None
            except Exception as exc:  # a broken store costs the month's peaks so far, not the device
                log.error("capacity guard: the month's peaks not restored: %s", exc)
        self._month_kept = month
        guard = guard_for(goal, self.config.grid.network, self.config.chargers,
                          min_a=self.config.balancer.min_a, log=month)
        if guard is not None:
            kept = f", {len(month.hours)} daily peaks of {month.year}-{month.month:02d} restored" if month else ""
            log.info("capacity guard: keeping the month in the %g kW step%s", goal.step_kw, kept)
        return guard

    def keep_capacity(self) -> None:
        """Store the guard's month when it changed (an hour closed, list 3 corrected one) and publish
        its state at once."""
        guard = self.controller.capacity
        if guard is None or guard.log is None or guard.log is self._month_kept:
            return
        self._month_kept = guard.log
        if self.capacity_store is not None:
            try:
                self.capacity_store.save(month_doc(guard.log))
            except Exception as exc:  # as with the baseline: the meter goes on being read
                log.error("capacity guard: the month's peaks not stored: %s", exc)
        self.publish_capacity()

    def publish_capacity(self) -> None:
        guard = self.controller.capacity
        status = guard.to_dict(self.clock.datetime()) if guard is not None else None
        if status is not None:
            self.link.publish(self.topics.capacity_message(CapacityPayload.of(status, iso_ts(self.clock.now()))))

    # --- subscription and status -------------------------------------------------------------------

    def evaluate_subscription(self) -> SubscriptionState:
        at = self.clock.datetime()
        state = self.subscription_source(at, self.controller.meter.meter)
        self.controller.set_subscription(state)  # the balancer's gate, in this process
        change = self.tracker.update(state, at)
        if change is not None:
            log.info("%s", change.log_line())
            status = {**change.to_status(), "granted": sorted(features(state, han_fresh=True))}
            self.link.publish(self.topics.subscription_message(status))
        return state

    def on_revocation(self, payload: bytes) -> bool:
        """A revocation from the issuer: verified, stored, and the subscription re-evaluated at once.
        A forged or malformed one is logged with the reason and nothing is stored. True if stored."""
        store = self.revocations
        if store is None or not payload:
            return False  # an empty retained message only clears the topic
        if len(payload) > MAX_REVOCATION_BYTES:
            log.warning("revocation refused: %d bytes, no JWT is that long; nothing stored", len(payload))
            return False
        try:
            text = payload.decode("ascii").strip()
        except UnicodeDecodeError:
            log.warning("revocation refused: the payload is not a JWT (not ASCII); nothing stored")
            return False
        key = store.issuer_key()
        if not key:
            log.warning("revocation refused: no issuer key stored to verify it with; nothing stored")
            return False
        verdict = verify_revocation_for(text, key, serial=self.config.serial)
        if not verdict.ok or verdict.revocation is None:
            log.warning("revocation refused (%s): %s; nothing stored",
                        verdict.refusal.value if verdict.refusal else "invalid", verdict.message)
            return False
        try:
            new = store.add_revocation(text)
        except Exception as exc:  # a broken image must not stop the device
            log.error("revocation %s not stored: %s", verdict.revocation.revocation_id, exc)
            return False
        if new:
            log.info("revocation %s received (%s): %s", verdict.revocation.revocation_id,
                     verdict.revocation.reason or "no reason given", verdict.message)
        self.evaluate_subscription()
        return new

    def han_fresh(self, now: float) -> bool:
        return self.controller.han_fresh(now)

    def status(self) -> dict[str, Any]:
        """What `apm info` reads from the status file (and the live view shows)."""
        st = self.link.stats
        sub = self.tracker.current
        return {
            "serial": self.config.serial,
            "meter": self.state.meter,
            "meter_id": self.state.meter_id,
            "meter_type": self.state.meter_type,
            "han_state": self.han_state,
            "last_frame_at": iso_ts(self.last_reading_at) if self.last_reading_at is not None else None,
            "readings": {f"list{k}": v for k, v in self.state.counts.items()},
            "hourly_records": len(self.hourly),
            "broker": {"url": st.broker, "connected": st.connected, "last_error": st.last_error,
                       "records_pending": st.records_pending, "records_dropped": st.records_dropped},
            "subscription": sub.state.value if sub else None,
            "rejected": {"messages": self.rejections.count, "unknown_chargers": self.rejections.unknown},
            "advice": list(self.advice),
            "capacity": (self.capacity.to_dict(self.clock.datetime()) if self.capacity is not None else None),
            "chargers": self._charger_links(),
            "updated_at": iso_ts(self.clock.now()),
            "pid": os.getpid(),
        }

    def _charger_links(self) -> dict[str, dict[str, Any]]:
        """Each charger's protocol, connection, last report (ISO time) and limit: the runtime's view of the
        chargers' edges when it gave one, else what the device itself heard (MQTT chargers)."""
        if self.charger_links is not None:
            links = self.charger_links()
        else:
            links = {c.id: {"protocol": c.protocol, "connected": None,
                            "last_report_at": s.at if (s := self.chargers.get(c.id)) else None, "limit_a": None}
                     for c in self.config.chargers}
        return {cid: {**link, "last_report_at": iso_ts(at) if isinstance(at := link.get("last_report_at"), float)
                      else None, "session": self.session_view(cid)} for cid, link in links.items()}

    def write_status(self) -> None:
        if self.status_file is None:
            return
        path = self.status_file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.status(), indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write the status file %s: %s", path, exc)

    # --- background --------------------------------------------------------------------------------

    async def _listen(self) -> None:
        async for m in self.link.messages():
            self.on_message(m.topic, m.payload)

    def on_message(self, topic: str, payload: bytes) -> bool:
        """One message off the broker: used (True), or ignored or rejected (counted and logged), never
        an exception: one bad message must not end the listener (a revocation after it would never
        be stored, our chargers' draw no longer taken out of the headroom)."""
        try:
            ref = self.topics.parse(topic)
            if ref is not None and ref.kind == SUBSCRIPTION_REVOCATION:
                return self.on_revocation(payload)
            if ref is not None and ref.kind == CHARGER_STATE and ref.charger is not None:
                return self._on_charger_report(ref.charger, payload)
        except PayloadError as exc:
            self.rejections.reject(topic, str(exc))
        except Exception as exc:  # what nobody foresaw: logged with its traceback, and the listener goes on
            self.rejections.reject(topic, f"{type(exc).__name__}: {exc}", exc_info=True)
        return False

    def _on_charger_report(self, charger: str, payload: bytes) -> bool:
        max_a = self.controller.max_a.get(charger)
        if max_a is None:
            self.rejections.unknown_charger(charger)
            return False
        now = self.clock.now()
        state = read_charger_state(charger, payload, now)
        # What our own charger draws is taken out of the measured lines: a report of more than it can
        # draw would make room for the house that is not there.
        if max(state.currents_a) > max_a * PLAUSIBLE_DRAW + 1.0 or min(state.currents_a) < -1.0:
            raise PayloadError(f"currents {state.currents_a} are beyond what charger {charger!r} "
                               f"(max_a {max_a:g} A) can draw")
        self.on_charger_state(now, state)
        return True

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        next_eval = self.clock.now() + SUBSCRIPTION_EVERY_S
        next_capacity = self.clock.now()
        while True:
            await asyncio.sleep(min(0.5, self.clock.wall(1.0)))
            now = self.clock.now()
            tick = self.controller.tick(now)
            if tick.went_stale:
                log.warning("HAN data stale: nothing from the meter for %.0f s", tick.silent_s)
            if now >= next_eval:
                next_eval = now + SUBSCRIPTION_EVERY_S
                self.evaluate_subscription()
            if self.capacity is not None:
                self.keep_capacity()  # an hour the guard's own integral closed
                if now >= next_capacity:
                    next_capacity = now + CAPACITY_EVERY_S
                    self.publish_capacity()
            if loop.time() - self._status_written >= STATUS_EVERY_S:
                self._status_written = loop.time()
                self.write_status()
