"""The balancer: per-charger current setpoints that keep every line of the main fuse within its limit.

Sans-IO: ``Balancer.update(now, headroom, states)`` is called on every tick (the closed-loop
simulation calls it each simulated second; the device on every headroom or charger message) and
returns ``{charger_id: setpoint_a}``; 0 means paused. ``Balancer.last`` explains the decision.

How it decides, per update:

1. What our chargers may draw on each line: the headroom's ``available_a`` when it is fresh and the
   mode is "protect"; otherwise ``fixed_current_a`` on every line, shared by all chargers (no
   subscription, no meter yet, or stale meter data: the fixed current must be one that cannot trip
   the fuse on its own, like Zaptec's offline current).
2. Fair shares by water-filling (max-min fairness): every charger's share rises together until a line
   it uses is full or it reaches its own cap (its max current, the eco plan's ``allowed_a``, or what
   its EV is seen to draw when the EV limits itself); the rest is re-shared among the others. What
   is left over then goes back to the EVs that limit themselves, up to their charger's max.
   ``sharing = "max_energy"`` (not the default) gives up fairness for power: of the fair shares and
   every priority order, the one that charges with the most watts (an ampere of a 3-phase EV on a
   shared line is worth three of a 1-phase one on TN, sqrt(3) on IT); ties and near-ties (within
   ``max_energy_margin``) keep the fair shares.
3. A charger whose share is below ``min_a`` (6 A, IEC 61851) on any line it uses is paused and the
   shares recomputed without it (of equal shares, a 1-phase charger is paused before a 3-phase one:
   an ampere on the shared line gives a 3-phase EV more power). A paused charger restarts only after
   ``restart_delay_s``, and only once it could have had ``min_a + restart_hysteresis_a`` for
   ``restart_confirm_s`` without pushing anyone else below ``min_a`` (relay wear: SmartEVSE waits
   60 s, OpenEVSE 300 s, Easee ~10 min).
   Which chargers run converges to the set the fair rule picks from all that want current, not
   only from those that run already: a paused charger may also restart in place of running ones
   (a swap) when the fair rule, ranking them all alike (no preference for who runs), pauses those
   and keeps it with ``min_a + restart_hysteresis_a``, e.g. a 3-phase EV instead of a 1-phase one
   on a shared full line. A swap costs a pause and a restart, so it needs a clear gain: the chargers
   then draw ``swap_min_gain`` more power, under the same delay and confirmation as a restart, and
   only once every charger it pauses has run ``swap_min_run_s``. The one swapped out waits its own
   ``restart_delay_s`` from then; it cannot swap straight back (with the same current the fair rule
   pauses it again, and the power would fall), so one charger is swapped out at most once per
   ``restart_delay_s + swap_min_run_s``.
4. Decreases apply at once, with one exception: while some line's allocation exceeds what it may
   carry, but no line by more than ``decrease_deadband_a`` (in total, over all chargers on the
   line), a decrease or pause waits up to ``decrease_grace_s`` (counted from when the excess began)
   for the headroom to come back (a fridge starting, a few hundred watts of noise) instead of
   following every wobble. The line then runs at most that much above fuse - margin: still below the
   fuse rating as long as the deadband is below the headroom's safety margin (the balancer does not
   know the margin: whoever configures both must keep it so; `sim.closed_loop` refuses a scenario
   that does not). 0 turns it off.
   A decrease (or pause) that only list 1's power rise asks for (the headroom's ``rise_a``, taken
   off every line because list 1 cannot tell which line the new load is on) is just as immediate,
   but provisional: it starts no hold and no restart delay, so when the next per-phase list places
   the load on other lines, the charger gets its current back at the next allowed change.
   A charging charger that the rise alone would pause is held at ``min_a`` instead (a pause and a
   restart cost an EV ~15 s of charging, and most rises are on another line), as long as no line it
   uses is then allotted more than the headroom's ``rise_slack_a`` (safety margin +
   ``[headroom] rise_hold_over_in`` x In) above what it may carry with the rise; the others share
   what the held leave. The held got ``min_a`` together without the rise, so a line is allotted at
   most min(rise, slack) above its rise-adjusted headroom. Worst case, the rise is on such a line:
   it carries at most rise_hold_over_in x In (0.13: 1.13 In, what a breaker carries for an hour)
   above the fuse rating until the next per-phase list places the load (10 s) and the EV follows
   the pause that list then asks for (a few seconds). That pause is a rise's (no restart delay), as
   it would have been without the hold.
   Increases wait ``hold_s`` after that charger's last decrease and
   ``min_interval_s`` after its last change, rise by at most ``max_step_up_a``, must be worth
   ``min_increase_a``, and only use current that is free now: other chargers count with the larger
   of their new setpoint and what they still draw (an EV takes seconds to follow a decrease).

Each charger is in one of the `Stage`s below; what moves it is an `Event`, and `TRANSITIONS` lists
every move there is (as h11's ``_state.py`` does for HTTP): `transition` refuses any other, since it
would be a bug in the steps of ``update``. The hold and the restart delay are timers on top of the
stage (``last_decrease``, ``since``, ``ok_since``), so ``Decision.stages`` can say until when.

Cost: O(chargers^2 x lines) per update, no allocation beyond a few small dicts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from apm.core.charger_state import ChargerState
from apm.core.config import BalancerSettings, ChargerConfig, Sharing  # noqa: F401 (declared with the config)
from apm.core.headroom import Headroom
from apm.core.lines import LINES, Network, Triple, charging_power_w, usage

Mode = Literal["fixed", "protect"]
SHARING: tuple[str, ...] = ("fair", "max_energy")
_EPS = 1e-9


# --- the per-charger state machine -----------------------------------------------------------------


class Stage(StrEnum):
    """Where the balancer has one charger (its own view; the charger's report is `ChargerState`)."""

    IDLE = "idle"  # no EV, or one that wants no current: no session (nothing remembered)
    RUNNING = "running"  # in the sharing: its setpoint follows its share (0 until it can start)
    HOLDING = "holding"  # running at > 0 A, cut less than hold_s ago: it may not rise yet
    PAUSED = "paused"  # below min_a: waits restart_delay_s, then min_a + hysteresis for restart_confirm_s
    PAUSED_RISE = "paused_rise"  # paused only for list 1's unplaced power rise: restarts without the delay
    ECO_PAUSED = "eco_paused"  # the eco plan allows less than min_a now


class Event(StrEnum):
    ARRIVE = "arrive"  # its EV wants current
    LEAVE = "leave"  # its EV no longer wants current (or left): the session is over
    ECO_CAP = "eco_cap"  # the eco plan allows less than min_a
    ECO_LIFT = "eco_lift"  # the eco plan allows min_a again (no restart delay: we did not cut for lack of current)
    PAUSE = "pause"  # its share is below min_a
    PAUSE_RISE = "pause_rise"  # ... only because of list 1's unplaced rise
    SWAP_OUT = "swap_out"  # the fair rule runs a paused charger in its place (step 3 of the module doc)
    RESTART = "restart"  # a paused charger may have current again (or takes a swapped-out one's place)
    HOLD = "hold"  # a decrease's hold applies to a setpoint above 0
    HOLD_OVER = "hold_over"  # hold_s has passed since the last decrease (or the setpoint is 0 again)


_ACTIVE = (Stage.RUNNING, Stage.HOLDING)
_PAUSED = (Stage.PAUSED, Stage.PAUSED_RISE)

# Every move there is: stage -> event -> next stage. Anything else is a bug (`IllegalTransition`).
TRANSITIONS: Mapping[Stage, Mapping[Event, Stage]] = {
    Stage.IDLE: {Event.ARRIVE: Stage.RUNNING},
    Stage.RUNNING: {Event.LEAVE: Stage.IDLE, Event.ECO_CAP: Stage.ECO_PAUSED, Event.PAUSE: Stage.PAUSED,
                    Event.PAUSE_RISE: Stage.PAUSED_RISE, Event.SWAP_OUT: Stage.PAUSED, Event.HOLD: Stage.HOLDING},
    Stage.HOLDING: {Event.LEAVE: Stage.IDLE, Event.ECO_CAP: Stage.ECO_PAUSED, Event.PAUSE: Stage.PAUSED,
                    Event.PAUSE_RISE: Stage.PAUSED_RISE, Event.SWAP_OUT: Stage.PAUSED,
                    Event.HOLD_OVER: Stage.RUNNING},
    Stage.PAUSED: {Event.LEAVE: Stage.IDLE, Event.ECO_CAP: Stage.ECO_PAUSED, Event.RESTART: Stage.RUNNING},
    Stage.PAUSED_RISE: {Event.LEAVE: Stage.IDLE, Event.ECO_CAP: Stage.ECO_PAUSED,
                        Event.RESTART: Stage.RUNNING},
    Stage.ECO_PAUSED: {Event.LEAVE: Stage.IDLE, Event.ECO_LIFT: Stage.RUNNING},
}


class IllegalTransition(RuntimeError):
    """An event the charger's stage has no transition for: a bug in the balancer, not bad input."""


def transition(stage: Stage, event: Event) -> Stage:
    """The stage ``event`` moves a charger in ``stage`` to; `IllegalTransition` if the table has none."""
    nxt = TRANSITIONS[stage].get(event)
    if nxt is None:
        raise IllegalTransition(f"{event.value} in stage {stage.value}")
    return nxt


@dataclass(frozen=True, slots=True)
class Transition:
    charger: str
    before: Stage
    event: Event
    after: Stage


@dataclass(frozen=True, slots=True)
class ChargerStage:
    """A charger's stage for status pages: since when, and until when at the earliest (the hold's end
    when HOLDING; when PAUSED, the restart delay's or confirmation's end, if current allows it then)."""

    stage: Stage
    since: float
    until: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """One update's outcome, for status pages, MQTT and tests."""

    at: float
    mode: str  # "protect", "fixed" (by choice), "fixed: stale meter data", "fixed: no meter data"
    available_a: tuple[float | None, float | None, float | None]
    setpoints: dict[str, float]
    targets: dict[str, float]  # what the shares allowed before rate limits
    reasons: dict[str, str]
    changed: tuple[str, ...] = ()
    stages: dict[str, ChargerStage] = field(default_factory=dict)
    transitions: tuple[Transition, ...] = ()  # this update's, in order


@dataclass(slots=True)
class _Charger:
    config: ChargerConfig
    stage: Stage = Stage.IDLE
    since: float = -math.inf  # when it entered its stage (PAUSED: the restart delay counts from here)
    setpoint: float = 0.0
    last_change: float = -math.inf
    last_decrease: float = -math.inf  # the hold counts from here
    started: float = -math.inf  # when it last began to run (a swap waits swap_min_run_s from here)
    ok_since: float | None = None  # PAUSED: the restart condition has held since
    soft_cap: float | None = None  # learned: its EV limits itself to about this (kept over pauses)
    ev_phases: int | None = None  # the EV's phases this session, once seen charging (kept over pauses)
    rise_held: bool = False  # held at min_a for list 1's unplaced rise, and not yet given min_a without


@dataclass(slots=True)
class _Demand:
    """The chargers that want current now: their caps (hard: max_a and the eco plan's; soft: also what
    the EV is seen to limit itself to), the lines they use and what they draw on each."""

    hard: dict[str, float] = field(default_factory=dict)
    soft: dict[str, float] = field(default_factory=dict)
    use: dict[str, Triple] = field(default_factory=dict)
    draws: dict[str, Triple] = field(default_factory=dict)


class Balancer:
    """Sans-IO balancer for up to three chargers; see the module docstring for the rules."""

    def __init__(self, network: Network, chargers: Sequence[ChargerConfig],
                 settings: BalancerSettings | None = None) -> None:
        if len(chargers) > 3:
            raise ValueError("an APM drives at most 3 chargers")
        self.network: Network = network
        self.settings = settings or BalancerSettings()
        self._c = {c.id: _Charger(c) for c in chargers}
        self._order = [c.id for c in chargers]
        self.supply_phases = 3
        self.changes = 0  # setpoint changes so far (all chargers)
        self.last: Decision | None = None
        self._over_since: float | None = None  # some line's allocation has exceeded its headroom since
        self._moves: list[Transition] = []  # this update's transitions

    @property
    def setpoints(self) -> dict[str, float]:
        return {cid: c.setpoint for cid, c in self._c.items()}

    @property
    def stages(self) -> dict[str, Stage]:
        return {cid: c.stage for cid, c in self._c.items()}

    def replace_charger(self, charger: ChargerConfig) -> None:
        """New limits for a configured charger (same id); its stage and history stay."""
        if charger.id not in self._c:
            raise KeyError(charger.id)
        self._c[charger.id].config = charger

    # --- the update ------------------------------------------------------------------------------

    def update(self, now: float, headroom: Headroom | None, charger_states: Mapping[str, ChargerState],
               mode: Mode = "protect", allowed_a: Mapping[str, float] | None = None) -> dict[str, float]:
        """Every charger's setpoint now (0: paused); ``self.last`` explains it. Steps: the mode and
        supply, the holds that ran out, the chargers' sessions and caps, the shares and restarts, then
        decreases, pauses and increases, and last the commit (module doc, steps 1-4)."""
        self._moves = []
        reasons: dict[str, str] = {}
        if headroom is not None:
            self.supply_phases = headroom.supply_phases
        how, avail = self._supply(now, headroom, mode)  # 1. the mode, and what each line may carry
        self._sync_holds(now)  # holds that ran out
        demand = self._observe(now, charger_states, allowed_a, reasons)  # who wants current, their caps
        running, shares, why, dropped = self._share(now, demand, avail, reasons)  # 2./3. shares, restarts
        s = self.settings
        provisional = (self._provisional(headroom, running, dropped, demand.hard, demand.soft, demand.use)
                       if how == "protect" else {})
        held = (self._hold_for_rise(headroom, running, shares, why, dropped, provisional, demand, avail)
                if provisional and headroom is not None else [])  # at min_a rather than paused for the rise
        for cid, c in self._c.items():  # a hold is over once the charger has min_a without one
            c.rise_held = c.rise_held and (cid in held or cid in dropped)
        targets = {cid: 0.0 for cid in self._order}
        for cid, a in shares.items():
            targets[cid] = _floor(a, s.resolution_a) if a >= s.min_a - _EPS else 0.0
        # 4. rate limits: decreases first (they free current), then pauses, then increases
        new = self._decrease(now, how, targets, provisional, demand.use, avail, why, dropped, reasons)
        self._pause(now, dropped, provisional, reasons)
        self._raise(now, targets, demand, new, avail, why, reasons)
        return self._emit(now, how, avail, new, targets, reasons)

    # --- the steps of an update --------------------------------------------------------------------

    def _fire(self, now: float, c: _Charger, event: Event) -> None:
        """Apply ``event`` to ``c`` (`transition` refuses what the table does not have)."""
        after = transition(c.stage, event)
        self._moves.append(Transition(c.config.id, c.stage, event, after))
        c.stage = after
        c.since = now
        c.ok_since = None  # a restart condition holds only within one pause
        if event in (Event.ARRIVE, Event.RESTART, Event.ECO_LIFT):
            c.started = now
        if after is Stage.IDLE:  # session over: a new EV starts without a restart delay, unknown
            c.soft_cap = None
            c.ev_phases = None

    def _supply(self, now: float, headroom: Headroom | None,
                mode: Mode) -> tuple[str, tuple[float, ...]]:
        """The decision's mode ("protect", or "fixed..." and why) and what our chargers may draw on each
        line: the headroom when it is fresh, else the fixed current shared by all."""
        s = self.settings
        if mode == "fixed":
            how = "fixed"
        elif headroom is None:
            how = "fixed: no meter data"
        elif now - headroom.measured_at > s.stale_after_s:
            how = f"fixed: stale meter data ({now - headroom.measured_at:.0f} s)"
        else:
            return "protect", tuple(math.inf if a is None else max(0.0, a) for a in headroom.available_a)
        f = s.fixed_current_a
        return how, ((f, f, f) if self.supply_phases == 3 else (f, math.inf, math.inf))

    def _sync_holds(self, now: float) -> None:
        """RUNNING <-> HOLDING: a setpoint above 0 holds for hold_s after its charger's last decrease
        (a start from 0 is not held; a restart inherits a hold that still runs)."""
        for c in self._c.values():
            if c.stage not in _ACTIVE:
                continue
            held = c.setpoint > 0 and now - c.last_decrease < self.settings.hold_s
            if held and c.stage is Stage.RUNNING:
                self._fire(now, c, Event.HOLD)
            elif not held and c.stage is Stage.HOLDING:
                self._fire(now, c, Event.HOLD_OVER)

    def _observe(self, now: float, charger_states: Mapping[str, ChargerState],
                 allowed_a: Mapping[str, float] | None, reasons: dict[str, str]) -> _Demand:
        """Sessions that begin and end, eco pauses, and the caps and lines of who wants current."""
        demand = _Demand()
        for cid in self._order:
            c = self._c[cid]
            st = charger_states.get(cid)
            if st is None or not st.wants_current:
                if c.stage is not Stage.IDLE:
                    self._fire(now, c, Event.LEAVE)
                reasons[cid] = "no EV" if st is None or st.mode == "disconnected" else f"EV {st.mode}"
                continue
            if c.stage is Stage.IDLE:
                self._fire(now, c, Event.ARRIVE)
            cap = c.config.max_a
            if allowed_a is not None and cid in allowed_a:
                cap = min(cap, allowed_a[cid])
                if cap < self.settings.min_a:
                    reasons[cid] = f"eco plan: {allowed_a[cid]:g} A now"
                    if c.stage is not Stage.ECO_PAUSED:
                        self._fire(now, c, Event.ECO_CAP)
                    continue
            if c.stage is Stage.ECO_PAUSED:
                self._fire(now, c, Event.ECO_LIFT)
            self._want(now, c, st, cap, demand)
        return demand

    def _want(self, now: float, c: _Charger, st: ChargerState, cap: float, demand: _Demand) -> None:
        cid = c.config.id
        phases: int = c.config.phases
        if st.mode == "charging" and st.phases_in_use in (1, 3):
            c.ev_phases = st.phases_in_use
        if c.ev_phases is not None:
            # a paused 1-phase EV still needs one phase only: do not count it on lines it cannot use
            phases = min(phases, c.ev_phases)
        demand.use[cid] = usage(self.network, phases, c.config.rotation, self.supply_phases)
        demand.hard[cid] = cap
        demand.soft[cid] = min(cap, self._learn_soft_cap(now, c, st))
        demand.draws[cid] = use_scaled(demand.use[cid], st.draw_a)

    def _share(self, now: float, d: _Demand, avail: tuple[float, ...], reasons: dict[str, str]
               ) -> tuple[list[str], dict[str, float], dict[str, str], dict[str, str]]:
        """Shares of the running chargers, then of each paused one that may restart (beside them, or
        in place of some by a swap). Returns who runs, the shares (0 for the paused), why each stopped
        where it did, and who cannot get min_a."""
        running = [cid for cid in d.hard if self._c[cid].stage not in _PAUSED]
        paused = [cid for cid in d.hard if self._c[cid].stage in _PAUSED]
        shares, why, dropped = self._shares(running, d.hard, d.soft, d.use, avail)
        for cid in paused:
            out = self._entry(now, cid, running, shares, d, avail, reasons)
            if out is None:
                continue
            running[:] = [x for x in running if x not in out]
            running.append(cid)
            shares, why, more = self._shares(running, d.hard, d.soft, d.use, avail)
            dropped.update(more)
        for cid in d.hard:
            if cid not in running and cid not in shares:
                shares[cid] = 0.0
        return running, shares, why, dropped

    def _decrease(self, now: float, how: str, targets: dict[str, float], provisional: dict[str, float],
                  use: dict[str, Triple], avail: tuple[float, ...], why: dict[str, str],
                  dropped: dict[str, str], reasons: dict[str, str]) -> dict[str, float]:
        """The new setpoints with the decreases applied, at once unless they wait in the deadband (a
        pause that waits leaves ``dropped``). A decrease starts a hold unless only list 1's rise asks
        for it."""
        s = self.settings
        new = {cid: c.setpoint for cid, c in self._c.items()}
        excess = self._excess(use, avail) if how == "protect" else math.inf
        if excess <= _EPS:
            self._over_since = None
        elif self._over_since is None:
            self._over_since = now
        wait = (s.decrease_grace_s - (now - self._over_since)
                if self._over_since is not None and excess <= s.decrease_deadband_a + _EPS else 0.0)
        for cid in self._order:
            c = self._c[cid]
            if targets[cid] >= c.setpoint - _EPS:
                continue
            if cid in use and wait > _EPS and c.stage not in _PAUSED:  # a swap-out does not wait
                reasons[cid] = (f"decrease to {targets[cid]:g} A waits {wait:.0f} s"
                                f" (lines at most {excess:.1f} A over)")
                dropped.pop(cid, None)  # a pause waits too
                continue
            new[cid] = targets[cid]
            if provisional.get(cid, -math.inf) >= c.setpoint - _EPS:
                # only list 1's unplaced power rise asks for it: the next per-phase list may give it
                # back at once, so no hold (see step 4 of the module doc)
                reasons.setdefault(cid, "decrease (provisional): " + why.get(cid, "share"))
                continue
            c.last_decrease = now
            if cid not in reasons:
                reasons[cid] = "decrease: " + why.get(cid, "share")
        return new

    def _pause(self, now: float, dropped: dict[str, str], provisional: dict[str, float],
               reasons: dict[str, str]) -> None:
        """Pause who cannot get min_a: provisionally when list 1's rise alone is the cause."""
        for cid, text in dropped.items():
            # one held for a rise that the next per-phase list places on its line pauses as it would
            # have without the hold (no restart delay: the hold must not cost more than the pause)
            c = self._c[cid]
            rise_only = provisional.get(cid, 0.0) >= self.settings.min_a - _EPS or c.rise_held
            c.rise_held = False
            self._fire(now, c, Event.PAUSE_RISE if rise_only else Event.PAUSE)
            reasons[cid] = text

    def _raise(self, now: float, targets: dict[str, float], demand: _Demand, new: dict[str, float],
               avail: tuple[float, ...], why: dict[str, str], reasons: dict[str, str]) -> None:
        """Increases (and starts), each as its charger's rate limits allow, into ``new``."""
        for cid in self._order:
            c = self._c[cid]
            t = targets[cid]
            if t <= c.setpoint + _EPS:
                if t > 0 and cid not in reasons:
                    reasons[cid] = why.get(cid, "share")
                continue
            reasons[cid] = self._increase(now, cid, c, t, demand, new, avail, why.get(cid, "share"))

    def _emit(self, now: float, how: str, avail: tuple[float, ...], new: dict[str, float],
              targets: dict[str, float], reasons: dict[str, str]) -> dict[str, float]:
        """Commit the new setpoints and explain them in ``self.last``."""
        changed: list[str] = []
        for cid in self._order:
            c = self._c[cid]
            if new[cid] != c.setpoint:
                c.setpoint = new[cid]
                c.last_change = now
                changed.append(cid)
        self.changes += len(changed)
        self._sync_holds(now)  # a decrease shows as HOLDING at once
        self.last = Decision(
            at=now,
            mode=how,
            available_a=tuple(None if math.isinf(a) else a for a in avail),  # type: ignore[arg-type]
            setpoints=dict(new),
            targets=targets,
            reasons=reasons,
            changed=tuple(changed),
            stages={cid: self._stage(self._c[cid]) for cid in self._order},
            transitions=tuple(self._moves),
        )
        return dict(new)

    def _stage(self, c: _Charger) -> ChargerStage:
        s = self.settings
        until: float | None = None
        if c.stage is Stage.HOLDING:
            until = c.last_decrease + s.hold_s
        elif c.stage is Stage.PAUSED:
            until = c.since + s.restart_delay_s
            if c.ok_since is not None:
                until = max(until, c.ok_since + s.restart_confirm_s)
        return ChargerStage(c.stage, c.since, until)

    # --- pieces ----------------------------------------------------------------------------------

    def _learn_soft_cap(self, now: float, c: _Charger, st: ChargerState) -> float:
        s = self.settings
        if st.mode != "charging":  # paused or starting: what it took before still holds
            return math.inf if c.soft_cap is None else c.soft_cap
        draw = st.draw_a
        settled = now - c.last_change >= s.ev_settle_s
        if settled and c.setpoint > 0 and draw < c.setpoint - s.ev_slack_a:
            c.soft_cap = max(s.min_a, draw + s.ev_slack_a / 2)
        elif c.soft_cap is not None and draw >= c.soft_cap - s.ev_slack_a / 4:
            c.soft_cap = None  # the EV takes what it is offered again
        return math.inf if c.soft_cap is None else c.soft_cap

    def _excess(self, use: dict[str, Triple], avail: tuple[float, ...]) -> float:
        """The most any line's present setpoints exceed what it may carry (A; <= 0: none)."""
        worst = -math.inf
        for i in range(3):
            if math.isinf(avail[i]):
                continue
            total = sum(u[i] * self._c[cid].setpoint for cid, u in use.items())
            if total > 0.0:
                worst = max(worst, total - avail[i])
        return worst

    def _allocate(self, caps: dict[str, float], use: dict[str, Triple],
                  avail: Sequence[float]) -> tuple[dict[str, float], dict[str, str]]:
        """Shares by the sharing rule: water-filling, or (max_energy) the most power."""
        shares, why = water_fill(caps, use, avail)
        s = self.settings
        if s.sharing != "max_energy" or len(caps) < 2:
            return shares, why
        best, best_p = shares, self._power(shares, use) * (1.0 + s.max_energy_margin)
        for order in itertools.permutations(caps):
            alloc = priority_fill(order, caps, use, avail, s.min_a)
            p = self._power(alloc, use)
            if p > best_p + _EPS:
                best, best_p = alloc, p
        if best is shares:
            return shares, why
        return best, {c: ("priority: most power" if best[c] > 0 else "priority to more power per ampere")
                      for c in best}

    def _shares(self, running: list[str], hard: dict[str, float], soft: dict[str, float],
                use: dict[str, Triple], avail: tuple[float, ...], keep_running: bool = True
                ) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
        """Shares for ``running``, dropping (from ``running``, in place) who cannot get min_a.
        Returns the shares, why each stopped where it did, and the dropped with the reason.
        ``keep_running=False``: of equal shares, no preference for a charger that charges already."""
        s = self.settings
        watts = {c: sum(use[c]) for c in running}  # line-amperes per ampere: 3-phase counts more
        live = list(running)
        dropped: dict[str, str] = {}
        while True:
            shares, why = self._allocate({c: soft[c] for c in live}, use, avail)
            # give what is left over back to EVs that limit themselves, up to their hard cap
            left = [avail[i] - sum(use[c][i] * shares[c] for c in live) for i in range(3)]
            # (not to one that max_energy's priorities left at 0: that would undo them)
            extra_caps = {c: hard[c] - shares[c] for c in live
                          if hard[c] - shares[c] > _EPS and shares[c] > 0}
            if extra_caps:
                extra, _ = water_fill(extra_caps, use, tuple(left))
                for c, e in extra.items():
                    shares[c] += e
            low = [c for c in live if shares[c] < s.min_a - _EPS]
            if not low:
                break
            # pause the one with the least; on a tie keep the one already charging, then the one that
            # turns an ampere into more power (3-phase), then the first
            drop = min(low, key=lambda c: (round(shares[c], 1), keep_running and self._c[c].setpoint > 0,
                                           watts[c], -self._order.index(c)))
            live.remove(drop)
            running.remove(drop)
            got = max(0.0, shares[drop])
            dropped[drop] = f"paused: {got:.1f} A < {s.min_a:g} A ({why.get(drop, 'share')})"
        return shares, why, dropped

    def _provisional(self, headroom: Headroom | None, running: list[str], dropped: dict[str, str],
                     hard: dict[str, float], soft: dict[str, float], use: dict[str, Triple]) -> dict[str, float]:
        """The shares without list 1's power rise (which the headroom adds to every line because it
        cannot tell which one the new load is on), when there is one; else {}."""
        if headroom is None or headroom.rise_a <= 0.0:
            return {}
        rise = headroom.rise_a
        avail = tuple(math.inf if a is None else max(0.0, a + rise) for a in headroom.available_a)
        shares, _, _ = self._shares([*running, *dropped], hard, soft, use, avail)
        return shares

    def _hold_for_rise(self, headroom: Headroom, running: list[str], shares: dict[str, float],
                       why: dict[str, str], dropped: dict[str, str], provisional: dict[str, float],
                       d: _Demand, avail: tuple[float, ...]) -> list[str]:
        """Keep at min_a, in place (``running``, ``shares``, ``why``, ``dropped``), each charging charger
        that only list 1's unplaced rise pauses, while no line it uses is then allotted more than the
        headroom's ``rise_slack_a`` above its ``available_a``; the others share what is left (step 4 of
        the module doc). The held need min_a on each line; they got at least that together without the
        rise, so a line is allotted at most min(rise, slack) more than with the pause."""
        s = self.settings
        slack = headroom.rise_slack_a
        if slack <= 0.0:
            return []
        raw = tuple(math.inf if a is None else a for a in headroom.available_a)
        floors = [0.0, 0.0, 0.0]
        held: list[str] = []
        while True:
            more = False
            for cid in [x for x in self._order if x in dropped]:
                u = d.use[cid]
                trial = [floors[i] + u[i] * s.min_a for i in range(3)]
                if (self._c[cid].setpoint < s.min_a - _EPS or provisional.get(cid, 0.0) < s.min_a - _EPS
                        or any(u[i] and trial[i] - raw[i] > slack + _EPS for i in range(3))):
                    continue
                floors, more = trial, True
                held.append(cid)
                del dropped[cid]
            if not more:
                break
            # the others share what the held leave; who then falls below min_a may be held too
            left = tuple(a if math.isinf(a) else max(0.0, a - floors[i]) for i, a in enumerate(avail))
            others = [x for x in running if x not in held]
            sub, sub_why, out = self._shares(others, d.hard, d.soft, d.use, left)
            shares.update(sub)
            why.update(sub_why)
            dropped.update(out)
            for x in out:
                shares[x] = 0.0
            running[:] = [*others, *held]
        for cid in held:
            self._c[cid].rise_held = True
            shares[cid] = s.min_a
            why[cid] = f"held at min_a: list 1 rise of {headroom.rise_a:.1f} A not yet placed"
        return held

    def _entry(self, now: float, cid: str, running: list[str], shares: dict[str, float], d: _Demand,
               avail: tuple[float, ...], reasons: dict[str, str]) -> list[str] | None:
        """Whether paused ``cid`` restarts now (step 3 of the module doc): None if not; else the running
        chargers it replaces, whom it swaps out ([] when it fits beside them all)."""
        s = self.settings
        c = self._c[cid]
        alloc, why = self._allocate({x: d.soft[x] for x in [*running, cid]}, d.use, avail)
        out: list[str] | None = None
        if alloc[cid] >= s.min_a + s.restart_hysteresis_a - _EPS and all(
                alloc[x] >= s.min_a - _EPS for x in running):
            out = []
        else:
            out = self._swap_for(cid, running, shares, d, avail)
        if out is None:
            c.ok_since = None
            reasons.setdefault(cid, f"paused: {alloc[cid]:.1f} A available ({why.get(cid, 'share')})")
            return None
        if c.ok_since is None:
            c.ok_since = now
        wait = max(c.since + s.restart_delay_s, c.ok_since + s.restart_confirm_s) - now
        if c.stage is Stage.PAUSED_RISE and not out:
            wait = 0.0  # paused for a rise the next per-phase list placed elsewhere
        # who is swapped out must have run swap_min_run_s (relay wear, no ping-pong)
        wait = max([wait, *(self._c[o].started + s.swap_min_run_s - now for o in out)])
        if wait > _EPS:
            instead = f" in place of {', '.join(out)}" if out else ""
            reasons[cid] = f"paused: restart in {wait:.0f} s{instead}"
            return None
        self._fire(now, c, Event.RESTART)
        reasons.pop(cid, None)
        for o in out:
            self._fire(now, self._c[o], Event.SWAP_OUT)
            reasons[o] = f"paused: {cid} in its place (fair shares give more power)"
        return out

    def _swap_for(self, cid: str, running: list[str], shares: dict[str, float], d: _Demand,
                  avail: tuple[float, ...]) -> list[str] | None:
        """The running chargers the fair rule pauses in favour of paused ``cid`` when it ranks them all
        alike (no preference for who runs already), if ``cid`` then gets min_a + restart_hysteresis_a
        and the chargers draw swap_min_gain more power than now; else None."""
        s = self.settings
        if not running:
            return None
        kept = [*running, cid]
        alloc, _, out = self._shares(kept, d.hard, d.soft, d.use, avail, keep_running=False)
        if not out or cid not in kept or alloc[cid] < s.min_a + s.restart_hysteresis_a - _EPS:
            return None
        now_w = self._power({x: shares[x] for x in running}, d.use)
        if self._power({x: alloc[x] for x in kept}, d.use) < now_w * (1.0 + s.swap_min_gain) + _EPS:
            return None
        return list(out)

    def _power(self, alloc: Mapping[str, float], use: Mapping[str, Triple]) -> float:
        """What ``alloc`` charges with (W); an ampere of a 3-phase EV is worth more than a 1-phase one's."""
        return sum(charging_power_w(self.network, 3 if sum(use[c]) > 2.5 else 1, a)
                   for c, a in alloc.items() if a >= self.settings.min_a - _EPS)

    def _increase(self, now: float, cid: str, c: _Charger, target: float, d: _Demand, new: dict[str, float],
                  avail: tuple[float, ...], why: str) -> str:
        """Raise ``c`` towards ``target`` as the rate limits allow; returns the reason."""
        s = self.settings
        cur = c.setpoint
        if c.stage is Stage.HOLDING:
            return f"hold: {c.last_decrease + s.hold_s - now:.0f} s after a decrease"
        if cur > 0 and now - c.last_change < s.min_interval_s:
            return f"hold: {c.last_change + s.min_interval_s - now:.0f} s since last change"
        step = min(target, cur + s.max_step_up_a) if cur > 0 else target
        step = _floor(min(step, self._free(cid, d, new, avail)), s.resolution_a)
        if cur == 0 and step < s.min_a:
            return "waiting for current to be released"
        if step - cur < s.min_increase_a - _EPS and step < d.hard[cid] - _EPS:
            return f"{why} (increase of {step - cur:.1f} A not worth a change)"
        if step <= cur:
            return f"{why} (waiting for current to be released)"
        new[cid] = step
        return ("start: " if cur == 0 else "increase: ") + why

    def _free(self, cid: str, d: _Demand, new: dict[str, float], avail: tuple[float, ...]) -> float:
        """The most ``cid`` may have of current that is free now: the others count with the larger of
        their new setpoint and what they still draw (an EV takes seconds to follow a decrease)."""
        free = math.inf
        u = d.use[cid]
        for i in range(3):
            if u[i] == 0.0 or math.isinf(avail[i]):
                continue
            taken = 0.0
            for o, uo in d.use.items():
                if o != cid and uo[i] > 0.0:
                    taken += max(uo[i] * new[o], d.draws[o][i])
            free = min(free, avail[i] - taken)
        return free


def priority_fill(order: Sequence[str], caps: Mapping[str, float], use: Mapping[str, Triple],
                  avail: Sequence[float], min_a: float) -> dict[str, float]:
    """Each charger in ``order`` takes all it can (its cap, what its lines have left); below min_a
    it takes nothing."""
    left = [max(0.0, a) for a in avail]
    alloc: dict[str, float] = {}
    for c in order:
        x = caps[c]
        u = use[c]
        for i in range(3):
            if u[i]:
                x = min(x, left[i])
        if x < min_a - _EPS:
            x = 0.0
        alloc[c] = x
        for i in range(3):
            if u[i] and not math.isinf(left[i]):
                left[i] -= u[i] * x
    return alloc


def _floor(x: float, step: float) -> float:
    """``x`` rounded down to a multiple of ``step`` (and to 1e-6, so 0.1 steps print as they read)."""
    return round(math.floor(x / step + 1e-9) * step, 6)


def use_scaled(u: Triple, a: float) -> Triple:
    return (u[0] * a, u[1] * a, u[2] * a)


def water_fill(caps: Mapping[str, float], use: Mapping[str, Triple],
               avail: Sequence[float]) -> tuple[dict[str, float], dict[str, str]]:
    """Max-min fair shares: all rise together; a charger stops at its cap or when a line it uses is
    full. ``avail`` may hold inf for an unconstrained line. Returns the shares and why each stopped
    ("L2 full", "own cap"). At most (chargers + lines) rounds."""
    alloc = {c: 0.0 for c in caps}
    why: dict[str, str] = {}
    left = [max(0.0, a) for a in avail]
    active = [c for c in caps if caps[c] > _EPS]
    for c in caps:
        if caps[c] <= _EPS:
            why[c] = "own cap"
    while active:
        inc = min(caps[c] - alloc[c] for c in active)
        for i in range(3):
            n = sum(use[c][i] for c in active)
            if n > 0 and not math.isinf(left[i]):
                inc = min(inc, left[i] / n)
        inc = max(inc, 0.0)
        for c in active:
            alloc[c] += inc
            u = use[c]
            for i in range(3):
                if u[i] and not math.isinf(left[i]):
                    left[i] -= u[i] * inc
        still = []
        for c in active:
            if caps[c] - alloc[c] <= 1e-7:
                why[c] = "own cap"
                continue
            full = [LINES[i] for i in range(3) if use[c][i] and not math.isinf(left[i]) and left[i] <= 1e-7]
            if full:
                why[c] = "/".join(full) + " full"
                continue
            still.append(c)
        if len(still) == len(active):
            break  # nothing froze: numerical corner, stop rather than spin
        active = still
    return alloc, why
