"""The balancer: fair shares, immediate decreases, slow increases, pauses, fixed current."""

from __future__ import annotations

import dataclasses
import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apm.core.balancer import Balancer, BalancerSettings, Stage, water_fill
from apm.core.charger_state import ChargerState
from apm.core.config import ChargerConfig
from apm.core.headroom import Headroom
from apm.core.lines import terminal_currents, usage

ROT = ("L1", "L2", "L3")
ROT2 = ("L2", "L3", "L1")


def room(now: float, a1: float, a2: float, a3: float, network: str = "TN", measured_at: float | None = None,
         supply: int = 3) -> Headroom:
    t = now if measured_at is None else measured_at
    return Headroom(at=now, measured_at=t, network=network, supply_phases=supply, limit_a=23.0,  # type: ignore[arg-type]
                    available_a=(a1, a2, a3), measured_a=(0.0, 0.0, 0.0), house_a=(0.0, 0.0, 0.0),
                    own_a=(0.0, 0.0, 0.0), rise_a=0.0, age_s=now - t, fresh=True, reason="test")


def ev(cid: str, amps: float = 0.0, phases: int = 3, network: str = "TN", mode: str | None = None) -> ChargerState:
    m = mode or ("charging" if amps > 0 else "connected")
    return ChargerState(cid, m, terminal_currents(network, phases, amps), phases if amps > 0 else None,  # type: ignore[arg-type]
                        amps)


def test_water_fill_gives_small_caps_their_cap_and_reshares_the_rest() -> None:
    use = {"a": (1.0, 1.0, 1.0), "b": (1.0, 1.0, 1.0), "c": (1.0, 1.0, 1.0)}
    shares, why = water_fill({"a": 5.0, "b": 32.0, "c": 32.0}, use, (35.0, 40.0, 50.0))
    assert shares == pytest.approx({"a": 5.0, "b": 15.0, "c": 15.0})
    assert why == {"a": "own cap", "b": "L1 full", "c": "L1 full"}


def test_water_fill_respects_each_line_a_charger_uses() -> None:
    # a: 1-phase on L1 (TN), b: 3-phase; L1 is short, L2/L3 are not
    use = {"a": usage("TN", 1, ROT), "b": usage("TN", 3, ROT)}
    shares, _ = water_fill({"a": 32.0, "b": 16.0}, use, (20.0, 30.0, math.inf))
    assert shares == pytest.approx({"a": 10.0, "b": 10.0})
    # IT: a 1-phase charger on L2-L3 does not compete for L1
    use = {"a": usage("IT", 1, ROT2), "b": usage("IT", 1, ROT)}
    assert use["a"] == (0.0, 1.0, 1.0) and use["b"] == (1.0, 1.0, 0.0)
    shares, _ = water_fill({"a": 32.0, "b": 32.0}, use, (30.0, 24.0, 8.0))
    assert shares == pytest.approx({"a": 8.0, "b": 16.0})


def test_decrease_at_once_increase_after_hold_in_steps() -> None:
    s = BalancerSettings(hold_s=10.0, max_step_up_a=4.0, min_interval_s=5.0)
    b = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)], s)
    assert b.update(0.0, room(0.0, 20, 20, 20), {"a": ev("a")}) == {"a": 20.0}  # start at once
    assert b.update(1.0, room(1.0, 12.3, 20, 20), {"a": ev("a", 20.0)}) == {"a": 12.3}  # cut at once
    assert "decrease" in b.last.reasons["a"]  # type: ignore[union-attr]
    seen = []
    for t in range(2, 40):
        seen.append(b.update(float(t), room(float(t), 30, 30, 30), {"a": ev("a", seen[-1] if seen else 12.3)})["a"])
    assert seen[:9] == [12.3] * 9  # hold 10 s after the decrease
    assert seen[9] == pytest.approx(16.3)  # +4 A ...
    assert seen[10:14] == [pytest.approx(16.3)] * 4  # ... then 5 s between changes
    assert seen[14] == pytest.approx(20.3)
    assert seen[-1] == 30.0
    assert max(y - x for x, y in zip(seen, seen[1:], strict=False)) <= 4.0 + 1e-9


def test_small_wobbles_do_not_change_the_setpoint() -> None:
    b = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)])
    b.update(0.0, room(0.0, 20, 20, 20), {"a": ev("a")})
    changes = b.changes
    for t in range(1, 100):
        b.update(float(t), room(float(t), 20.0 + 0.4 * (t % 2), 25, 25), {"a": ev("a", 20.0)})
    assert b.changes == changes  # +0.4 A is below min_increase_a; never a decrease
    assert b.setpoints == {"a": 20.0}


def test_pause_below_six_amps_and_restart_after_delay_with_hysteresis() -> None:
    s = BalancerSettings(restart_delay_s=60.0, restart_hysteresis_a=1.0, restart_confirm_s=15.0)
    b = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)], s)
    b.update(0.0, room(0.0, 10, 10, 10), {"a": ev("a")})
    assert b.update(1.0, room(1.0, 5.5, 10, 10), {"a": ev("a", 10.0)}) == {"a": 0.0}
    assert b.last.reasons["a"].startswith("paused")  # type: ignore[union-attr]
    # 6.5 A available: enough to charge, not enough to restart (needs 7 A)
    for t in range(2, 100):
        assert b.update(float(t), room(float(t), 6.5, 10, 10), {"a": ev("a")})["a"] == 0.0
    # 7.5 A from t=100: ok for 15 s -> restart at 115 (60 s since the pause have long passed)
    out = {t: b.update(float(t), room(float(t), 7.5, 10, 10), {"a": ev("a")})["a"] for t in range(100, 130)}
    assert out[114] == 0.0 and out[115] == 7.5


def test_restart_delay_counts_from_the_pause() -> None:
    b = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)], BalancerSettings(restart_delay_s=60.0))
    b.update(0.0, room(0.0, 10, 10, 10), {"a": ev("a")})
    b.update(1.0, room(1.0, 3.0, 10, 10), {"a": ev("a", 10.0)})
    out = {t: b.update(float(t), room(float(t), 20, 20, 20), {"a": ev("a")})["a"] for t in range(2, 70)}
    assert out[60] == 0.0 and out[61] == 20.0


def rise(r: Headroom, amps: float, slack: float = 0.0) -> Headroom:
    """``r`` with list 1's unplaced power rise of ``amps`` taken off every line (as apm.core.headroom does);
    ``slack``: how far a line may go over to hold a charger at min_a (the headroom's ``rise_slack_a``)."""
    avail = tuple(None if a is None else a - amps for a in r.available_a)
    return dataclasses.replace(r, available_a=avail, rise_a=amps, rise_slack_a=slack)  # type: ignore[arg-type]


SLACK = 2.0 + 0.13 * 25.0  # margin + rise_hold_over_in x In on a 25 A fuse


def test_a_small_unplaced_rise_holds_a_charger_at_min_a_instead_of_pausing_it() -> None:
    """1-phase "a" at 8 A on a full L1; list 1 says the house took 2.2 A more, somewhere: 5.8 A would be
    left on L1 if it were there. With slack the charger stays at min_a (L1 at most 0.2 A over); without,
    it pauses as before. The next per-phase list places the load elsewhere: 8 A again, no delay."""
    s = BalancerSettings(min_interval_s=5.0, restart_delay_s=60.0)
    for slack, expect in ((SLACK, 6.0), (0.0, 0.0)):
        b = Balancer("TN", [ChargerConfig("a", 32.0, 1, ROT)], s)
        b.update(0.0, room(0.0, 8, 20, 20), {"a": ev("a", phases=1)})
        assert b.update(1.0, rise(room(1.0, 8, 20, 20), 2.2, slack), {"a": ev("a", 8.0, 1)}) == {"a": expect}
        assert b.last is not None
        assert b.stages["a"] is (Stage.RUNNING if expect else Stage.PAUSED_RISE)
        if expect:
            assert b.last.reasons["a"].startswith("decrease (provisional): held at min_a")
        out = {t: b.update(float(t), room(float(t), 8, 20, 20), {"a": ev("a", expect, 1)})["a"]
               for t in range(2, 12)}
        assert min(t for t, a in out.items() if a == 8.0) == (6 if expect else 2)  # min_interval_s / no delay


def test_the_hold_stops_where_a_line_could_exceed_the_slack() -> None:
    """8 A free on L1 and a rise of 7 A: at min_a L1 would be 5 A over what it may carry with the rise.
    That is within 5.25 A (25 A fuse: margin 2 A + 0.13 In) but not within 4.5 A: then it pauses."""
    for slack, expect in ((SLACK, 6.0), (4.5, 0.0)):
        b = Balancer("TN", [ChargerConfig("a", 32.0, 1, ROT)])
        b.update(0.0, room(0.0, 8, 20, 20), {"a": ev("a", phases=1)})
        assert b.update(1.0, rise(room(1.0, 8, 20, 20), 7.0, slack), {"a": ev("a", 8.0, 1)}) == {"a": expect}
    # a rise that is not the only reason (the line is short without it too) is no hold either
    b = Balancer("TN", [ChargerConfig("a", 32.0, 1, ROT)])
    b.update(0.0, room(0.0, 8, 20, 20), {"a": ev("a", phases=1)})
    assert b.update(1.0, rise(room(1.0, 5, 20, 20), 1.0, SLACK), {"a": ev("a", 8.0, 1)}) == {"a": 0.0}
    assert b.stages["a"] is Stage.PAUSED


def test_a_held_charger_the_next_list_pauses_restarts_without_the_restart_delay() -> None:
    """Held at min_a, then the per-phase list puts the load on its line: it pauses as it would have
    without the hold (for the rise: no restart delay), and restarts once min_a + hysteresis is free."""
    s = BalancerSettings(restart_delay_s=60.0, restart_confirm_s=15.0, decrease_deadband_a=0.0)
    b = Balancer("TN", [ChargerConfig("a", 32.0, 1, ROT)], s)
    b.update(0.0, room(0.0, 8, 20, 20), {"a": ev("a", phases=1)})
    b.update(1.0, rise(room(1.0, 8, 20, 20), 2.2, SLACK), {"a": ev("a", 8.0, 1)})
    assert b.update(2.0, room(2.0, 5.8, 20, 20), {"a": ev("a", 6.0, 1)}) == {"a": 0.0}
    assert b.stages["a"] is Stage.PAUSED_RISE
    assert b.update(3.0, room(3.0, 7.0, 20, 20), {"a": ev("a", phases=1)}) == {"a": 7.0}


def test_beside_a_held_charger_the_others_share_what_is_left() -> None:
    """TN, 25 A: 1-phase "a" on L1 and 3-phase "b", 16 A free on every line (8 A each). A rise of 4 A
    leaves 12 A: a held at 6 A, b gets the other 6 A, so L1 is allotted exactly what it may carry."""
    cfg = [ChargerConfig("a", 32.0, 1, ROT), ChargerConfig("b", 32.0, 3, ROT)]
    b = Balancer("TN", cfg, BalancerSettings(decrease_deadband_a=0.0))
    states = {"a": ev("a", 8.0, 1), "b": ev("b", 8.0)}
    assert b.update(0.0, room(0.0, 16, 16, 16), {"a": ev("a", phases=1), "b": ev("b")}) == {"a": 8.0, "b": 8.0}
    assert b.update(1.0, rise(room(1.0, 16, 16, 16), 4.0, SLACK), states) == {"a": 6.0, "b": 6.0}
    # 7 A of rise: 9 A left on L1; a at 6 A and b at 3 A would pause b, so b is held too: L1 3 A over
    assert b.update(2.0, rise(room(2.0, 16, 16, 16), 7.0, SLACK), states) == {"a": 6.0, "b": 6.0}
    assert b.stages == {"a": Stage.RUNNING, "b": Stage.RUNNING}


@settings(max_examples=150, deadline=None)
@given(avail=st.tuples(*(st.floats(0.0, 40.0) for _ in range(3))), amps=st.floats(0.1, 20.0),
       slack=st.floats(0.0, 8.0), phases=st.lists(st.sampled_from([1, 3]), min_size=1, max_size=3),
       rots=st.lists(st.permutations(["L1", "L2", "L3"]), min_size=3, max_size=3))
def test_a_hold_never_allots_a_line_more_than_the_slack_or_the_rise_over_its_headroom(
        avail, amps, slack, phases, rots) -> None:
    """After a steady run without the rise, one update with it: every line is allotted at most
    min(rise, slack) more than what it may carry with the rise (nothing more without a hold)."""
    cfg = [ChargerConfig("abc"[i], 32.0, p, tuple(rots[i])) for i, p in enumerate(phases)]  # type: ignore[arg-type]
    b = Balancer("TN", cfg, BalancerSettings(decrease_deadband_a=0.0, min_interval_s=0.0, hold_s=0.0,
                                             restart_delay_s=0.0, restart_confirm_s=0.0, max_step_up_a=80.0))
    sp = {c.id: 0.0 for c in cfg}
    for t in range(4):
        states = {c.id: ev(c.id, sp[c.id], c.phases) for c in cfg}
        sp = b.update(float(t), room(float(t), *avail), states)
    states = {c.id: ev(c.id, sp[c.id], c.phases) for c in cfg}
    sp = b.update(4.0, rise(room(4.0, *avail), amps, slack), states)
    for i in range(3):
        line = sum(usage("TN", c.phases, c.rotation, 3)[i] * sp[c.id] for c in cfg)
        assert line <= max(0.0, avail[i] - amps) + min(amps, slack) + 1e-6


def test_a_decrease_only_list_1s_rise_asks_for_is_at_once_but_holds_nothing() -> None:
    s = BalancerSettings(hold_s=10.0, min_interval_s=5.0, max_step_up_a=6.0)
    for provisional in (True, False):
        b = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)], s)
        b.update(0.0, room(0.0, 20, 20, 20), {"a": ev("a")})
        # list 1 says the house took 8 A more somewhere; or a per-phase list says it is on our lines
        cut = rise(room(1.0, 20, 20, 20), 8.0) if provisional else room(1.0, 12, 12, 12)
        assert b.update(1.0, cut, {"a": ev("a", 20.0)}) == {"a": 12.0}  # at once, either way
        assert ("provisional" in b.last.reasons["a"]) is provisional  # type: ignore[union-attr]
        # the next per-phase list places the load elsewhere: 20 A free again
        out = {t: b.update(float(t), room(float(t), 20, 20, 20), {"a": ev("a", 12.0)})["a"] for t in range(2, 20)}
        back = min(t for t, a in out.items() if a > 12.0)
        assert back == (6 if provisional else 11)  # 5 s between changes; else the 10 s hold too


def test_a_pause_only_list_1s_rise_asks_for_restarts_without_the_restart_delay() -> None:
    s = BalancerSettings(restart_delay_s=60.0, restart_confirm_s=15.0, min_interval_s=5.0)
    b = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)], s)
    b.update(0.0, room(0.0, 10, 10, 10), {"a": ev("a")})
    assert b.update(1.0, rise(room(1.0, 10, 10, 10), 6.0), {"a": ev("a", 10.0)}) == {"a": 0.0}
    out = {t: b.update(float(t), room(float(t), 10, 10, 10), {"a": ev("a")})["a"] for t in range(2, 20)}
    assert out[2] == 10.0
    # a rise that is not the only reason (4 A left without it too) keeps the delay
    b = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)], s)
    b.update(0.0, room(0.0, 10, 10, 10), {"a": ev("a")})
    assert b.update(1.0, rise(room(1.0, 4, 10, 10), 2.0), {"a": ev("a", 10.0)}) == {"a": 0.0}
    out = {t: b.update(float(t), room(float(t), 10, 10, 10), {"a": ev("a")})["a"] for t in range(2, 70)}
    assert out[60] == 0.0 and out[61] == 10.0


def test_two_chargers_share_fairly_and_one_pauses_when_both_cannot_get_six() -> None:
    cfg = [ChargerConfig("a", 32.0, 3, ROT), ChargerConfig("b", 32.0, 3, ROT2)]
    b = Balancer("TN", cfg)
    sp = b.update(0.0, room(0.0, 20, 20, 20), {"a": ev("a"), "b": ev("b")})
    assert sp == {"a": 10.0, "b": 10.0}
    sp = b.update(1.0, room(1.0, 11, 20, 20), {"a": ev("a", 10.0), "b": ev("b", 10.0)})
    # 5.5 A each is too little: one pauses; the other may rise only once the paused EV lets go
    assert sorted(sp.values()) == [0.0, 10.0]
    paused = [c for c, v in sp.items() if v == 0.0][0]
    other = "a" if paused == "b" else "b"
    assert "paused" in b.last.reasons[paused]  # type: ignore[union-attr]
    states = {paused: ev(paused), other: ev(other, 10.0)}
    out = [b.update(float(t), room(float(t), 11, 20, 20), states)[other] for t in range(2, 12)]
    assert out[-1] == 11.0 and b.setpoints[paused] == 0.0


def test_a_single_phase_charger_is_paused_before_a_three_phase_one() -> None:
    cfg = [ChargerConfig("one", 32.0, 1, ROT), ChargerConfig("three", 32.0, 3, ROT)]
    b = Balancer("TN", cfg)
    b.update(0.0, room(0.0, 30, 30, 30), {"one": ev("one"), "three": ev("three")})
    sp = b.update(1.0, room(1.0, 10, 30, 30), {"one": ev("one", 15.0, 1), "three": ev("three", 15.0)})
    assert sp == {"one": 0.0, "three": 10.0}


def test_ev_that_limits_itself_leaves_the_rest_to_the_other_charger() -> None:
    cfg = [ChargerConfig("a", 32.0, 3, ROT), ChargerConfig("b", 32.0, 3, ROT)]
    s = BalancerSettings(ev_settle_s=15.0, ev_slack_a=2.0, hold_s=0.0, min_interval_s=0.0, max_step_up_a=40.0)
    b = Balancer("TN", cfg, s)
    sp = b.update(0.0, room(0.0, 30, 30, 30), {"a": ev("a"), "b": ev("b")})
    assert sp == {"a": 15.0, "b": 15.0}
    for t in range(1, 40):  # a's EV takes 8 A only (on-board charger limit)
        sp = b.update(float(t), room(float(t), 30, 30, 30), {"a": ev("a", 8.0), "b": ev("b", sp["b"])})
    assert sp["a"] == pytest.approx(9.0) and sp["b"] == pytest.approx(21.0)
    assert "own cap" in b.last.reasons["a"] or "share" in b.last.reasons["a"]  # type: ignore[union-attr]


def test_eco_plan_cap_and_pause() -> None:
    cfg = [ChargerConfig("a", 32.0, 3, ROT), ChargerConfig("b", 32.0, 3, ROT2)]
    b = Balancer("TN", cfg)
    sp = b.update(0.0, room(0.0, 30, 30, 30), {"a": ev("a"), "b": ev("b")}, allowed_a={"a": 10.0, "b": 0.0})
    assert sp == {"a": 10.0, "b": 0.0}
    assert b.last.reasons["b"].startswith("eco plan")  # type: ignore[union-attr]
    sp = b.update(1.0, room(1.0, 30, 30, 30), {"a": ev("a", 10.0), "b": ev("b")}, allowed_a={"a": 10.0, "b": 32.0})
    assert sp["b"] == 20.0  # no restart delay after an eco pause


def test_stale_or_missing_data_falls_back_to_fixed_current() -> None:
    cfg = [ChargerConfig("a", 32.0, 3, ROT), ChargerConfig("b", 32.0, 3, ROT2)]
    s = BalancerSettings(fixed_current_a=16.0, stale_after_s=25.0)
    b = Balancer("TN", cfg, s)
    sp = b.update(0.0, None, {"a": ev("a"), "b": ev("b")})
    assert sp == {"a": 8.0, "b": 8.0}
    assert b.last.mode == "fixed: no meter data"  # type: ignore[union-attr]
    old = room(30.0, 30, 30, 30, measured_at=0.0)
    sp = b.update(30.0, old, {"a": ev("a", 8.0), "b": ev("b", 8.0)})
    assert sp == {"a": 8.0, "b": 8.0}
    assert b.last.mode.startswith("fixed: stale")  # type: ignore[union-attr]
    # fresh data again: protect
    b.update(31.0, room(31.0, 30, 30, 30), {"a": ev("a", 8.0), "b": ev("b", 8.0)})
    assert b.last.mode == "protect"  # type: ignore[union-attr]
    # fresh data that says less than the fixed share: the decrease is immediate
    sp = b.update(32.0, room(32.0, 12, 12, 12), {"a": ev("a", 8.0), "b": ev("b", 8.0)})
    assert sp == {"a": 6.0, "b": 6.0}
    # stale data: the fixed current applies, up (rate-limited) or down (at once)
    b2 = Balancer("TN", cfg[:1], s)
    b2.update(0.0, room(0.0, 14, 14, 14), {"a": ev("a")})
    assert b2.update(26.0, room(26.0, 14, 14, 14, measured_at=0.0), {"a": ev("a", 14.0)}) == {"a": 16.0}
    b3 = Balancer("TN", cfg[:1], BalancerSettings(fixed_current_a=10.0))
    b3.update(0.0, room(0.0, 14, 14, 14), {"a": ev("a")})
    assert b3.update(26.0, room(26.0, 14, 14, 14, measured_at=0.0), {"a": ev("a", 14.0)}) == {"a": 10.0}


def test_fixed_mode_ignores_headroom() -> None:
    b = Balancer("IT", [ChargerConfig("a", 32.0, 1, ROT)], BalancerSettings(fixed_current_a=32.0))
    assert b.update(0.0, room(0.0, 5, 5, 5, "IT"), {"a": ev("a", network="IT")}, mode="fixed") == {"a": 32.0}
    assert b.last.mode == "fixed"  # type: ignore[union-attr]


def test_disconnect_zeroes_and_a_new_session_starts_without_delay() -> None:
    b = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)])
    b.update(0.0, room(0.0, 3, 3, 3), {"a": ev("a")})  # paused at once: 3 A
    assert b.update(1.0, room(1.0, 20, 20, 20), {"a": ChargerState("a")}) == {"a": 0.0}
    assert b.last.reasons["a"] == "no EV"  # type: ignore[union-attr]
    assert b.update(2.0, room(2.0, 20, 20, 20), {"a": ev("a")}) == {"a": 20.0}


def test_settings_from_dict_checks_names_and_values() -> None:
    assert BalancerSettings.from_dict({"hold_s": 30}).hold_s == 30.0
    with pytest.raises(ValueError, match="unknown setting"):
        BalancerSettings.from_dict({"hold": 30})
    with pytest.raises(ValueError, match="not a number"):
        BalancerSettings.from_dict({"hold_s": "30"})
    with pytest.raises(ValueError):
        BalancerSettings.from_dict({"min_a": 0})
    with pytest.raises(ValueError):
        Balancer("TN", [ChargerConfig(str(i)) for i in range(4)])


# --- properties ------------------------------------------------------------------------------------

_CHARGER = st.tuples(st.sampled_from([1, 3]), st.permutations(["L1", "L2", "L3"]), st.floats(6.0, 32.0))
_STEP = st.tuples(
    st.tuples(*(st.floats(-5.0, 60.0) for _ in range(3))),  # available per line
    st.lists(st.sampled_from(["connected", "charging", "disconnected", "finished"]), min_size=3, max_size=3),
    st.lists(st.floats(0.0, 1.2), min_size=3, max_size=3),  # EV draw as a fraction of its setpoint
    st.sampled_from([1.0, 1.0, 3.0, 30.0]),  # seconds to the next update
    st.booleans(),  # fresh data
    st.sampled_from([0.0, 0.0, 2.0, 8.0]),  # list 1's unplaced rise (a provisional cut when alone)
)


@settings(max_examples=150, deadline=None)
@given(network=st.sampled_from(["IT", "TN"]), chargers=st.lists(_CHARGER, min_size=1, max_size=3),
       steps=st.lists(_STEP, min_size=1, max_size=25), mode=st.sampled_from(["protect", "fixed"]),
       fixed=st.floats(6.0, 40.0))
def test_setpoints_never_exceed_any_line_limit(network, chargers, steps, mode, fixed) -> None:
    """With fresh data no line's allocation exceeds its headroom; in fixed mode (or stale data) no
    line carries more than the fixed current; every setpoint is 0 or within [min_a, max_a]."""
    cfg = [ChargerConfig(f"c{i}", mx, ph, tuple(rot)) for i, (ph, rot, mx) in enumerate(chargers)]
    # strictly within the headroom: without the deadband (see the next test for it)
    b = Balancer(network, cfg, BalancerSettings(fixed_current_a=fixed, decrease_deadband_a=0.0))
    now = 0.0
    sp = {c.id: 0.0 for c in cfg}
    last_fresh = None
    for avail, modes, draw, dt, fresh, up in steps:
        now += dt
        if fresh:
            last_fresh = rise(room(now, *avail, network=network), up)
        head = last_fresh
        states = {}
        for i, c in enumerate(cfg):
            m = modes[i]
            amps = min(sp[c.id], c.max_a) * draw[i] if m == "charging" and sp[c.id] > 0 else 0.0
            m = "connected" if m == "charging" and amps == 0 else m
            states[c.id] = ChargerState(c.id, m, terminal_currents(network, c.phases, amps),  # type: ignore[arg-type]
                                        c.phases if amps else None, sp[c.id], now)
        sp = b.update(now, head, states, mode=mode)
        dec = b.last
        assert dec is not None
        protect = dec.mode == "protect"
        for c in cfg:
            v = sp[c.id]
            assert v == 0.0 or b.settings.min_a - 1e-9 <= v <= c.max_a + 1e-9
        for line in range(3):
            total = sum(usage(network, c.phases, c.rotation)[line] * sp[c.id] for c in cfg)
            if protect:
                assert head is not None
                assert total <= max(0.0, head.available_a[line]) + 1e-6  # type: ignore[operator]
            else:
                assert total <= fixed + 1e-6


@settings(max_examples=150, deadline=None)
@given(network=st.sampled_from(["IT", "TN"]), chargers=st.lists(_CHARGER, min_size=1, max_size=3),
       steps=st.lists(st.tuples(st.tuples(*(st.floats(-0.6, 0.6) for _ in range(3))),
                                st.sampled_from([1.0, 3.0, 10.0]), st.floats(0.0, 1.2)), min_size=1, max_size=40))
def test_deadband_keeps_lines_within_it_and_only_for_the_grace_time(network, chargers, steps) -> None:
    """With the default deadband: no line's allocation is ever more than decrease_deadband_a above its
    headroom (summed over every charger on it), and never for decrease_grace_s or longer. The headroom
    wobbles around the allocation, the way a fridge or noise moves it."""
    cfg = [ChargerConfig(f"c{i}", mx, ph, tuple(rot)) for i, (ph, rot, mx) in enumerate(chargers)]
    s = BalancerSettings()
    b = Balancer(network, cfg, s)
    now = 0.0
    states = {c.id: ev(c.id, network=network) for c in cfg}
    sp = b.update(now, room(now, 40.0, 40.0, 40.0, network=network), states)
    base = [sum(usage(network, c.phases, c.rotation)[i] * sp[c.id] for c in cfg) for i in range(3)]
    over_since = None
    for wobble, dt, draw in steps:
        now += dt
        avail = [max(0.0, base[i] + wobble[i]) for i in range(3)]
        states = {c.id: ev(c.id, min(sp[c.id], c.max_a) * draw, c.phases, network) if sp[c.id] > 0
                  else ev(c.id, network=network) for c in cfg}
        sp = b.update(now, room(now, *avail, network=network), states)
        over = 0.0
        for i in range(3):
            total = sum(usage(network, c.phases, c.rotation)[i] * sp[c.id] for c in cfg)
            if total > 0:
                over = max(over, total - avail[i])
        assert over <= s.decrease_deadband_a + 1e-6
        if over > 1e-6:
            over_since = now if over_since is None else over_since
            assert now - over_since < s.decrease_grace_s
        else:
            over_since = None


def test_a_small_excess_waits_a_large_one_does_not() -> None:
    b = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)], BalancerSettings(decrease_deadband_a=0.5,
                                                                        decrease_grace_s=30.0))
    assert b.update(0.0, room(0.0, 20, 20, 20), {"a": ev("a")}) == {"a": 20.0}
    # 0.3 A short on L1 (a fridge starting): wait, up to 30 s
    out, why = {}, {}
    for t in range(1, 40):
        out[t] = b.update(float(t), room(float(t), 19.7, 20, 20), {"a": ev("a", 20.0)})["a"]
        why[t] = b.last.reasons["a"]  # type: ignore[union-attr]
    assert out[30] == 20.0 and why[30].startswith("decrease to 19.7 A waits 1 s")
    assert out[31] == 19.7  # 30 s after the excess began
    assert b.changes == 2
    # back up, then 1 A short: at once
    b2 = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)])
    b2.update(0.0, room(0.0, 20, 20, 20), {"a": ev("a")})
    assert b2.update(1.0, room(1.0, 19.0, 20, 20), {"a": ev("a", 20.0)}) == {"a": 19.0}
    # a wobble that comes back within the grace time costs no change at all
    b3 = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)])
    b3.update(0.0, room(0.0, 20, 20, 20), {"a": ev("a")})
    for t in range(1, 20):
        b3.update(float(t), room(float(t), 19.6, 20, 20), {"a": ev("a", 20.0)})
    for t in range(20, 80):
        b3.update(float(t), room(float(t), 20, 20, 20), {"a": ev("a", 20.0)})
    assert b3.changes == 1 and b3.setpoints == {"a": 20.0}


def test_the_deadband_is_per_line_not_per_charger() -> None:
    """Two 1-phase chargers on L1 (TN), each 0.4 A over its share is 0.8 A over on the line: at once."""
    cfg = [ChargerConfig("a", 32.0, 1, ROT), ChargerConfig("b", 32.0, 1, ROT)]
    b = Balancer("TN", cfg)
    sp = b.update(0.0, room(0.0, 20, 20, 20), {"a": ev("a", phases=1), "b": ev("b", phases=1)})
    assert sp == {"a": 10.0, "b": 10.0}
    sp = b.update(1.0, room(1.0, 19.2, 20, 20), {"a": ev("a", 10.0, 1), "b": ev("b", 10.0, 1)})
    assert sp == {"a": 9.6, "b": 9.6}


def test_a_pause_waits_in_the_deadband_and_is_avoided_when_the_headroom_returns() -> None:
    cfg = [ChargerConfig("a", 32.0, 3, ROT), ChargerConfig("b", 32.0, 3, ROT2)]
    b = Balancer("TN", cfg)
    assert b.update(0.0, room(0.0, 12.2, 30, 30), {"a": ev("a"), "b": ev("b")}) == {"a": 6.1, "b": 6.1}
    states = {"a": ev("a", 6.1), "b": ev("b", 6.1)}
    for t in range(1, 25):  # 5.95 A each would be a pause; 0.3 A over on L1 may wait
        assert b.update(float(t), room(float(t), 11.9, 30, 30), states) == {"a": 6.1, "b": 6.1}
    for t in range(25, 120):
        assert b.update(float(t), room(float(t), 12.2, 30, 30), states) == {"a": 6.1, "b": 6.1}
    assert b.changes == 2  # the two starts


def test_max_energy_sharing_gives_a_shared_line_to_the_ev_that_makes_more_of_it() -> None:
    cfg = [ChargerConfig("one", 32.0, 1, ROT), ChargerConfig("three", 16.0, 3, ROT)]
    states = {"one": ev("one", phases=1), "three": ev("three")}
    fair = Balancer("TN", cfg)
    assert fair.update(0.0, room(0.0, 30, 30, 30), states) == {"one": 15.0, "three": 15.0}
    most = Balancer("TN", cfg, BalancerSettings.from_dict({"sharing": "max_energy"}))
    # an ampere of the 3-phase EV on L1 is worth 690 W, of the 1-phase one 230 W
    assert most.update(0.0, room(0.0, 30, 30, 30), states) == {"one": 14.0, "three": 16.0}
    assert "priority" in most.last.reasons["three"]  # type: ignore[union-attr]
    # 20 A on L1: fair 10 + 10 A (9.2 kW) against 16 A for the 3-phase EV alone (11 kW)
    most2 = Balancer("TN", cfg, BalancerSettings(sharing="max_energy"))
    assert most2.update(0.0, room(0.0, 20, 30, 30), states) == {"one": 0.0, "three": 16.0}
    # where the priorities gain less than max_energy_margin, the fair shares stay
    tie = Balancer("TN", [ChargerConfig("x", 32.0, 3, ROT), ChargerConfig("y", 32.0, 3, ROT2)],
                   BalancerSettings(sharing="max_energy"))
    assert tie.update(0.0, room(0.0, 20, 20, 20), {"x": ev("x"), "y": ev("y")}) == {"x": 10.0, "y": 10.0}


def test_sharing_setting_is_checked() -> None:
    assert BalancerSettings.from_dict({"sharing": "max_energy"}).sharing == "max_energy"
    assert BalancerSettings().sharing == "fair"
    with pytest.raises(ValueError, match="sharing"):
        BalancerSettings.from_dict({"sharing": "greedy"})
    with pytest.raises(ValueError, match="sharing"):
        BalancerSettings.from_dict({"sharing": 1})


def test_a_paused_single_phase_ev_is_not_counted_on_lines_it_does_not_use() -> None:
    """A 3-phase charger with a 1-phase EV (on L1): once seen charging on one phase, the balancer
    remembers it for the session, so while it is paused it can restart on L1 even with L2 and L3
    full (before, it was counted as 3-phase while paused and could never restart)."""
    b = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT)])
    assert b.update(0.0, room(0.0, 20, 20, 20), {"a": ev("a")}) == {"a": 20.0}
    b.update(1.0, room(1.0, 20, 20, 20), {"a": ev("a", 20.0, phases=1)})
    assert b.update(2.0, room(2.0, 3.0, 20, 20), {"a": ev("a", 20.0, phases=1)}) == {"a": 0.0}
    out = [b.update(float(t), room(float(t), 20, 0, 0), {"a": ev("a")})["a"] for t in range(3, 120)]
    assert out[-1] == 20.0
    # a new session forgets it
    b.update(200.0, room(200.0, 20, 20, 20), {"a": ChargerState("a")})
    assert b.update(201.0, room(201.0, 20, 0, 0), {"a": ev("a")}) == {"a": 0.0}


# --- which chargers run: swaps ----------------------------------------------------------------------

SWAP = BalancerSettings(restart_delay_s=60.0, restart_confirm_s=15.0, swap_min_run_s=120.0, swap_min_gain=0.1)


def run_two(b: Balancer, phases: tuple[int, int], until: int, avail=(10.0, 30.0, 30.0)) -> list[dict[str, float]]:
    """"a" charges from t=0, "b" arrives at t=1; each EV draws its last setpoint. The setpoints per second."""
    sp = {"a": 0.0, "b": 0.0}
    seen = []
    for t in range(until):
        states = {"a": ev("a", sp["a"], phases=phases[0]),
                  "b": ev("b", sp["b"], phases=phases[1]) if t >= 1 else ChargerState("b")}
        sp = b.update(float(t), room(float(t), *avail), states)
        seen.append(dict(sp))
    return seen


def test_a_paused_three_phase_ev_takes_a_one_phase_evs_place_on_a_full_shared_line() -> None:
    """10 A on L1 cannot give both 6 A: "b" (3-phase) arrives to find "a" (1-phase on L1) running and
    waits. The fair rule over both ranks them alike and keeps b (three times the power from L1's
    10 A): b takes a's place once a has run swap_min_run_s (b's restart delay is over by then). a then
    waits its own restart delay and, with the same current, stays paused: no swap back."""
    b = Balancer("TN", [ChargerConfig("a", 32.0, 1, ROT), ChargerConfig("b", 32.0, 3, ROT)], SWAP)
    seen = run_two(b, (1, 3), 121)
    assert seen[1] == seen[119] == {"a": 10.0, "b": 0.0}
    assert seen[120] == {"a": 0.0, "b": 0.0}  # a swapped out; b waits for a's current to go
    assert b.last.reasons["b"] == "waiting for current to be released"  # type: ignore[union-attr]
    b = Balancer("TN", [ChargerConfig("a", 32.0, 1, ROT), ChargerConfig("b", 32.0, 3, ROT)], SWAP)
    seen = run_two(b, (1, 3), 1000)
    assert seen[121] == {"a": 0.0, "b": 10.0}
    assert all(x == {"a": 0.0, "b": 10.0} for x in seen[121:])
    assert b.last.stages["a"].stage is Stage.PAUSED  # type: ignore[union-attr]


def test_no_swap_without_a_clear_gain_or_before_the_minimum_run() -> None:
    # two 3-phase EVs: the other one would charge with the same power, so the running one stays
    b = Balancer("TN", [ChargerConfig("a", 32.0, 3, ROT), ChargerConfig("b", 32.0, 3, ROT)], SWAP)
    assert all(x == {"a": 10.0, "b": 0.0} for x in run_two(b, (3, 3), 1000)[1:])
    # three times the power is not the 4x that swap_min_gain = 3 asks for
    s = msgspec.structs.replace(SWAP, swap_min_gain=3.0)
    b = Balancer("TN", [ChargerConfig("a", 32.0, 1, ROT), ChargerConfig("b", 32.0, 3, ROT)], s)
    assert all(x == {"a": 10.0, "b": 0.0} for x in run_two(b, (1, 3), 1000)[1:])
    # the swap waits for a's minimum run time, however long b has waited
    s = msgspec.structs.replace(SWAP, swap_min_run_s=600.0)
    b = Balancer("TN", [ChargerConfig("a", 32.0, 1, ROT), ChargerConfig("b", 32.0, 3, ROT)], s)
    seen = run_two(b, (1, 3), 700)
    assert seen[599] == {"a": 10.0, "b": 0.0} and seen[601] == {"a": 0.0, "b": 10.0}


def test_a_third_charger_restarts_beside_the_others_with_the_hysteresis() -> None:
    """Three 3-phase EVs on 17 A lines: two run, the third waits; at 20 A all three could have 6.7 A,
    but the third restarts only once it can have min_a + restart_hysteresis_a (7 A: 21 A on the
    lines), beside the others, not by a swap."""
    cfg = [ChargerConfig(x, 32.0, 3, ROT) for x in "abc"]
    b = Balancer("TN", cfg, SWAP)
    sp = {x: 0.0 for x in "abc"}
    out = {}
    events = []
    for t in range(400):
        a = 17.0 if t < 100 else 20.0 if t < 200 else 21.0
        sp = b.update(float(t), room(float(t), a, a, a), {x: ev(x, sp[x]) for x in "abc"})
        out[t] = dict(sp)
        events += [m.event.value for m in b.last.transitions]  # type: ignore[union-attr]
    assert out[99] == {"a": 8.5, "b": 8.5, "c": 0.0}
    assert out[199] == {"a": 10.0, "b": 10.0, "c": 0.0}
    assert out[399] == {"a": 7.0, "b": 7.0, "c": 7.0}
    assert events.count("restart") == 1 and "swap_out" not in events


_AVAIL = st.sampled_from([3.0, 7.0, 10.0, 13.0, 20.0, 40.0])


@settings(max_examples=150, deadline=None)
@given(network=st.sampled_from(["IT", "TN"]), chargers=st.lists(_CHARGER, min_size=2, max_size=3),
       steps=st.lists(st.tuples(st.tuples(_AVAIL, _AVAIL, _AVAIL), st.sampled_from([1.0, 5.0, 20.0, 60.0])),
                      min_size=1, max_size=60),
       confirm=st.sampled_from([0.0, 15.0]), run_s=st.sampled_from([0.0, 120.0]))
def test_pauses_and_restarts_are_never_more_frequent_than_the_rules_allow(network, chargers, steps, confirm,
                                                                         run_s) -> None:
    """Random headroom: a charger paused (for lack of current or by a swap) never restarts within
    restart_delay_s, and is never swapped out within swap_min_run_s of its start, so one charger is
    swapped out at most once per restart_delay_s + swap_min_run_s."""
    cfg = [ChargerConfig(f"c{i}", mx, ph, tuple(rot)) for i, (ph, rot, mx) in enumerate(chargers)]
    s = msgspec.structs.replace(SWAP, restart_confirm_s=confirm, swap_min_run_s=run_s)
    b = Balancer(network, cfg, s)
    sp = {c.id: 0.0 for c in cfg}
    paused_at: dict[str, float] = {}
    started_at: dict[str, float] = {}
    swaps = {c.id: 0 for c in cfg}
    now = 0.0
    for avail, dt in steps:
        now += dt
        states = {c.id: ev(c.id, sp[c.id], phases=c.phases, network=network) for c in cfg}
        sp = b.update(now, room(now, *avail, network=network), states)
        for m in b.last.transitions:  # type: ignore[union-attr]
            if m.event.value in ("pause", "swap_out"):
                paused_at[m.charger] = now
            if m.event.value == "swap_out":
                assert now - started_at[m.charger] >= run_s - 1e-9
                swaps[m.charger] += 1
            if m.event.value == "restart":
                assert now - paused_at[m.charger] >= s.restart_delay_s - 1e-9
            if m.event.value in ("arrive", "restart"):
                started_at[m.charger] = now
    for n in swaps.values():
        assert n <= 1 + now / (s.restart_delay_s + run_s)
