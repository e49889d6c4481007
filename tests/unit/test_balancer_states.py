"""The balancer's per-charger state machine: the table, every transition in it driven through
`Balancer.update`, refusals, and the stage as status pages and the controller see it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apm.core.balancer import (
    TRANSITIONS,
    Balancer,
    BalancerSettings,
    Event,
    IllegalTransition,
    Stage,
    Transition,
    transition,
)
from apm.core.charger_state import ChargerState
from apm.core.config import ChargerConfig, GridConfig
from apm.core.controller import Controller
from apm.core.headroom import Headroom
from apm.core.lines import terminal_currents, usage

ROT = ("L1", "L2", "L3")
S = BalancerSettings(hold_s=10.0, restart_delay_s=60.0, restart_confirm_s=15.0, min_interval_s=5.0)


def room(now: float, a: float, rise_a: float = 0.0) -> Headroom:
    """``a`` A free on every line; ``rise_a``: list 1's unplaced rise, already taken off (as apm.core.headroom does)."""
    return Headroom(at=now, measured_at=now, network="TN", supply_phases=3, limit_a=23.0,
                    available_a=(a - rise_a, a - rise_a, a - rise_a), measured_a=(0.0, 0.0, 0.0),
                    house_a=(0.0, 0.0, 0.0), own_a=(0.0, 0.0, 0.0), rise_a=rise_a, age_s=0.0, fresh=True,
                    reason="test")


def ev(amps: float = 0.0) -> ChargerState:
    return ChargerState("a", "charging" if amps > 0 else "connected", terminal_currents("TN", 3, amps),
                        3 if amps > 0 else None, amps)


GONE = ChargerState("a")  # disconnected


class Walk:
    """One 3-phase charger "a" on TN, stepped one update at a time."""

    def __init__(self) -> None:
        self.b = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)], S)
        self.t = -1.0

    def step(self, a: float, state: ChargerState | None = None, *, rise_a: float = 0.0,
             allowed: float | None = None) -> tuple[Transition, ...]:
        self.t += 1.0
        st_ = state if state is not None else ev(self.b.setpoints["a"])
        self.b.update(self.t, room(self.t, a, rise_a), {"a": st_},
                      allowed_a=None if allowed is None else {"a": allowed})
        assert self.b.last is not None
        return self.b.last.transitions

    @property
    def stage(self) -> Stage:
        return self.b.stages["a"]


# --- ways into each stage (at t = 0 or 1) ------------------------------------------------------------

def running() -> Walk:
    w = Walk()
    w.step(20.0)  # arrive and start at 20 A
    assert w.stage is Stage.RUNNING and w.b.setpoints == {"a": 20.0}
    return w


def holding() -> Walk:
    w = running()
    w.step(12.0)  # a cut: the hold starts
    assert w.stage is Stage.HOLDING and w.b.setpoints == {"a": 12.0}
    return w


def paused() -> Walk:
    w = running()
    w.step(3.0)
    assert w.stage is Stage.PAUSED and w.b.setpoints == {"a": 0.0}
    return w


def paused_rise() -> Walk:
    w = running()
    w.step(20.0, rise_a=16.0)  # 4 A left only because of list 1's rise
    assert w.stage is Stage.PAUSED_RISE and w.b.setpoints == {"a": 0.0}
    return w


def eco_paused() -> Walk:
    w = running()
    w.step(20.0, allowed=0.0)
    assert w.stage is Stage.ECO_PAUSED and w.b.setpoints == {"a": 0.0}
    return w


def swap(hold: bool = False) -> tuple[Transition, ...]:
    """TN: "a" 1-phase on L1 runs, "b" 3-phase waits paused; 10 A on L1 make b's three phases worth
    more, so b takes a's place once a has run swap_min_run_s (120 s). ``hold``: a was cut just before."""
    cfg = [ChargerConfig("a", 32.0, 1, ROT), ChargerConfig("b", 32.0, 3, ROT)]
    b = Balancer("TN", cfg, S)
    sp = {"a": 0.0, "b": 0.0}
    for t in range(200):
        l1 = 9.0 if hold and t >= 119 else 10.0  # 1 A: beyond the decrease deadband
        head = dataclasses.replace(room(float(t), 30.0), available_a=(l1, 30.0, 30.0))
        states = {"a": ChargerState("a", "charging" if sp["a"] else "connected",
                                    terminal_currents("TN", 1, sp["a"]), 1 if sp["a"] else None, sp["a"]),
                  "b": ev(sp["b"]) if t >= 1 else GONE}
        sp = b.update(float(t), head, states)
        moves = b.last.transitions  # type: ignore[union-attr]
        if any(m.event is Event.SWAP_OUT for m in moves):
            assert t == 120 and sp == {"a": 0.0, "b": 0.0}  # b starts once a's current is released
            return moves
    raise AssertionError("no swap")


def until(w: Walk, event: Event, a: float = 20.0, limit: int = 200) -> tuple[Transition, ...]:
    """Step with ``a`` A free until ``event`` happens."""
    for _ in range(limit):
        moves = w.step(a)
        if any(m.event is event for m in moves):
            return moves
    raise AssertionError(f"no {event} within {limit} s")


START: dict[Stage, Callable[[], Walk]] = {Stage.RUNNING: running, Stage.HOLDING: holding, Stage.PAUSED: paused,
                                          Stage.PAUSED_RISE: paused_rise, Stage.ECO_PAUSED: eco_paused}

# (stage, event) -> how to get there and make it happen
DRIVE: dict[tuple[Stage, Event], Callable[[], tuple[Transition, ...]]] = {
    (Stage.IDLE, Event.ARRIVE): lambda: Walk().step(20.0),
    (Stage.RUNNING, Event.HOLD): lambda: running().step(12.0),
    (Stage.HOLDING, Event.HOLD_OVER): lambda: until(holding(), Event.HOLD_OVER, 12.0),
    (Stage.RUNNING, Event.PAUSE): lambda: running().step(3.0),
    (Stage.HOLDING, Event.PAUSE): lambda: holding().step(3.0),
    (Stage.RUNNING, Event.PAUSE_RISE): lambda: running().step(20.0, rise_a=16.0),
    (Stage.HOLDING, Event.PAUSE_RISE): lambda: holding().step(12.0, rise_a=8.0),
    (Stage.PAUSED, Event.RESTART): lambda: until(paused(), Event.RESTART),
    (Stage.RUNNING, Event.SWAP_OUT): lambda: tuple(m for m in swap() if m.charger == "a"),
    (Stage.HOLDING, Event.SWAP_OUT): lambda: tuple(m for m in swap(hold=True) if m.charger == "a"),
    (Stage.PAUSED_RISE, Event.RESTART): lambda: paused_rise().step(20.0),
    (Stage.ECO_PAUSED, Event.ECO_LIFT): lambda: eco_paused().step(20.0, allowed=32.0),
    **{(s, Event.ECO_CAP): (lambda s=s: START[s]().step(20.0, allowed=3.0))  # type: ignore[misc]
       for s in (Stage.RUNNING, Stage.HOLDING, Stage.PAUSED, Stage.PAUSED_RISE)},
    **{(s, Event.LEAVE): (lambda s=s: START[s]().step(20.0, GONE))  # type: ignore[misc]
       for s in START},
}

TABLE = [(s, e, to) for s, moves in TRANSITIONS.items() for e, to in moves.items()]


def test_every_transition_in_the_table_is_driven_here() -> None:
    assert set(DRIVE) == {(s, e) for s, e, _ in TABLE}
    assert set(TRANSITIONS) == set(Stage)  # every stage has its row (IDLE's: only ARRIVE)


@pytest.mark.parametrize(("stage", "event", "after"), TABLE, ids=[f"{s}-{e}" for s, e, _ in TABLE])
def test_each_transition_happens_through_update(stage: Stage, event: Event, after: Stage) -> None:
    moves = DRIVE[stage, event]()
    assert Transition("a", stage, event, after) in moves
    assert transition(stage, event) is after


ILLEGAL = [(s, e) for s in Stage for e in Event if e not in TRANSITIONS[s]]


@pytest.mark.parametrize(("stage", "event"), ILLEGAL, ids=[f"{s}-{e}" for s, e in ILLEGAL])
def test_a_transition_the_table_does_not_have_is_refused(stage: Stage, event: Event) -> None:
    with pytest.raises(IllegalTransition, match=f"{event.value} in stage {stage.value}"):
        transition(stage, event)


def test_a_bug_that_fires_an_illegal_event_raises_out_of_the_balancer() -> None:
    w = running()
    c = w.b._c["a"]
    with pytest.raises(IllegalTransition):
        w.b._fire(1.0, c, Event.RESTART)  # a running charger cannot restart
    assert w.stage is Stage.RUNNING  # and stays as it was


def test_the_stage_says_since_and_until_when() -> None:
    w = holding()  # cut at t=1, hold_s 10
    d = w.b.last
    assert d is not None and d.stages["a"].stage is Stage.HOLDING
    assert (d.stages["a"].since, d.stages["a"].until) == (1.0, 11.0)
    assert d.reasons["a"].startswith("decrease")
    w.step(20.0)
    assert w.b.last.reasons["a"].startswith("hold: 9 s after a decrease")  # type: ignore[union-attr]
    w = paused()  # paused at t=1: restart_delay_s 60
    st_ = w.b.last.stages["a"]  # type: ignore[union-attr]
    assert (st_.stage, st_.since, st_.until) == (Stage.PAUSED, 1.0, 61.0)
    for _ in range(55):  # from t=2 enough current: confirmed after 15 s, but the delay runs to 61
        w.step(20.0)
    assert w.b.last.stages["a"].until == 61.0  # type: ignore[union-attr]
    assert w.b.last.reasons["a"] == "paused: restart in 5 s"  # type: ignore[union-attr]
    w = paused_rise()
    assert w.b.last.stages["a"].until is None  # type: ignore[union-attr]  # as soon as current is back


def test_the_controller_shows_each_chargers_stage_with_its_setpoint() -> None:
    c = Controller(GridConfig(network="TN", fuse_a=25.0, safety_margin_a=2.0), [ChargerConfig("a", 32.0, 3, ROT)],
                   settings=S)
    c.use_headroom(room(0.0, 20.0))
    c.on_charger_states(0.0, [ev()])
    sp = c.decide(0.0, mode="protect").setpoints[0]
    assert (sp.current_a, sp.stage, sp.until) == (20.0, "running", None)
    c.use_headroom(room(1.0, 3.0))
    c.on_charger_states(1.0, [ev(20.0)])
    sp = c.decide(1.0, mode="protect").setpoints[0]
    assert (sp.current_a, sp.stage, sp.until) == (0.0, "paused", 61.0)
    assert sp.reason.startswith("paused: ")


def test_a_restart_inside_a_cuts_hold_still_holds_the_next_rise() -> None:
    """A cut at t=1, then a pause for list 1's rise, a restart at once: the cut's hold still runs."""
    w = running()
    w.step(12.0)  # t=1: cut, HOLDING until 11
    w.step(12.0, rise_a=8.0)  # t=2: provisional pause
    assert w.stage is Stage.PAUSED_RISE
    moves = w.step(12.0)  # t=3: restart at 12 A ...
    assert [m.event for m in moves] == [Event.RESTART, Event.HOLD] and w.b.setpoints == {"a": 12.0}
    out = [w.step(20.0) for _ in range(10)]  # ... which may not rise before t=11
    assert w.b.setpoints == {"a": 18.0} and Event.HOLD_OVER in [m.event for m in out[7]]


# --- properties -------------------------------------------------------------------------------------

_CHARGER = st.tuples(st.sampled_from([1, 3]), st.permutations(["L1", "L2", "L3"]), st.floats(6.0, 32.0))
_STEP = st.tuples(
    st.tuples(*(st.floats(-5.0, 60.0) for _ in range(3))),  # available per line
    st.lists(st.sampled_from(["connected", "charging", "disconnected", "finished"]), min_size=3, max_size=3),
    st.lists(st.floats(0.0, 1.2), min_size=3, max_size=3),  # EV draw as a fraction of its setpoint
    st.sampled_from([1.0, 1.0, 3.0, 30.0]),  # seconds to the next update
    st.sampled_from([0.0, 0.0, 2.0, 8.0]),  # list 1's unplaced rise
    st.sampled_from([None, None, 0.0, 3.0, 10.0, 32.0]),  # the eco plan's cap for c0
)


@settings(max_examples=150, deadline=None)
@given(network=st.sampled_from(["IT", "TN"]), chargers=st.lists(_CHARGER, min_size=1, max_size=3),
       steps=st.lists(_STEP, min_size=1, max_size=30), hold=st.sampled_from([0.0, 10.0, 60.0]),
       delay=st.sampled_from([0.0, 5.0, 60.0]))
def test_stages_follow_the_table_and_match_the_setpoints(network, chargers, steps, hold, delay) -> None:
    """Whatever happens, no update makes a move the table lacks, each reported move starts where the
    last one ended, and the stage agrees with the setpoint: 0 A when idle or paused, above 0 A when
    holding."""
    cfg = [ChargerConfig(f"c{i}", mx, ph, tuple(rot)) for i, (ph, rot, mx) in enumerate(chargers)]
    b = Balancer(network, cfg, BalancerSettings(hold_s=hold, restart_delay_s=delay))  # type: ignore[arg-type]
    stage = {c.id: Stage.IDLE for c in cfg}
    now = 0.0
    sp = {c.id: 0.0 for c in cfg}
    for avail, modes, draw, dt, up, eco in steps:
        now += dt
        head = dataclasses.replace(room(now, 0.0), network=network, rise_a=up,
                                   available_a=tuple(a - up for a in avail))
        states = {}
        for i, c in enumerate(cfg):
            m = modes[i]
            amps = min(sp[c.id], c.max_a) * draw[i] if m == "charging" and sp[c.id] > 0 else 0.0
            m = "connected" if m == "charging" and amps == 0 else m
            states[c.id] = ChargerState(c.id, m, terminal_currents(network, c.phases, amps),  # type: ignore[arg-type]
                                        c.phases if amps else None, sp[c.id], now)
        sp = b.update(now, head, states, allowed_a=None if eco is None else {"c0": eco})
        d = b.last
        assert d is not None
        for m in d.transitions:
            assert m.before is stage[m.charger] and transition(m.before, m.event) is m.after
            stage[m.charger] = m.after
        assert stage == b.stages == {cid: v.stage for cid, v in d.stages.items()}
        for cid, s in stage.items():
            if s in (Stage.IDLE, Stage.PAUSED, Stage.PAUSED_RISE, Stage.ECO_PAUSED):
                assert sp[cid] == 0.0, (cid, s)
            if s is Stage.HOLDING:
                assert sp[cid] > 0.0
        for line in range(3):
            total = sum(usage(network, c.phases, c.rotation)[line] * sp[c.id] for c in cfg)
            assert total <= max(0.0, head.available_a[line]) + 0.5 + 1e-6  # type: ignore[operator]
