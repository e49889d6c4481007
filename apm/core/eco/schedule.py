"""What the balancer asks of a Smart eco plan: the current a charger may draw now.

Outside its planned slots a charger gets 0 A. A planned current below the charger's minimum (a partial
slot) is given as the minimum over the last part of the slot instead, the same energy: a car will not
charge below ~6 A. A manual "charge now" lifts the plan for that charger until its car leaves.
The balancer still caps the result by the fuse headroom.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from apm.core.eco.planner import AMP_TOL, Plan, SlotPlan
from apm.core.eco.prices import OSLO


def next_clock_time(text: str, now: datetime) -> datetime:
    """The next ``HH:MM`` (Oslo time) after ``now``: a departure as an owner gives it. ValueError if
    ``text`` is not HH:MM."""
    hh, sep, mm = text.strip().partition(":")
    if not sep or not (hh.isdigit() and mm.isdigit() and len(mm) == 2):
        raise ValueError(f"{text!r} is not HH:MM")
    clock = time(int(hh), int(mm))
    local = now.astimezone(OSLO)
    d = datetime.combine(local.date(), clock, OSLO)
    return d if d > local else datetime.combine(local.date() + timedelta(days=1), clock, OSLO)


def _on_from(slot: SlotPlan, min_a: float) -> datetime:
    """When a slot's current is switched on: its start, or for a current below ``min_a`` the point
    from which ``min_a`` to the slot's end gives the same energy (as late as possible in the slot)."""
    if slot.current_a >= min_a - AMP_TOL or min_a <= 0:
        return slot.start
    return slot.end - (slot.end - slot.start) * (slot.current_a / min_a)


def allowed_current(plan: Plan, charger_id: str, now: datetime) -> float:
    """Amperes the plan allows ``charger_id`` at ``now``; KeyError if the plan has no such charger."""
    cp = plan.charger(charger_id)
    slot = cp.slot_at(now)
    if slot is None:
        return 0.0
    min_a = cp.charger.min_a
    if now < _on_from(slot, min_a):
        return 0.0
    return min_a if slot.current_a < min_a - AMP_TOL else slot.current_a


def change_times(plan: Plan, charger_id: str) -> list[datetime]:
    """Every time at which ``allowed_current`` for the charger may change (piecewise constant between)."""
    cp = plan.charger(charger_id)
    times: set[datetime] = set()
    for slot in cp.slots:
        times.update((slot.start, slot.end, _on_from(slot, cp.charger.min_a)))
    return sorted(times)


@dataclass(slots=True)
class EcoSchedule:
    """The device's Smart eco state: the current plan and the chargers under a manual override."""

    plan: Plan | None = None
    overrides: set[str] = field(default_factory=set)

    def charge_now(self, charger_id: str) -> None:
        """The user pressed "charge now": full current (within the fuse) until the car leaves."""
        self.overrides.add(charger_id)

    def car_left(self, charger_id: str) -> None:
        self.overrides.discard(charger_id)

    def allowed_current(self, charger_id: str, now: datetime, max_a: float) -> float:
        """``max_a`` under an override; the plan's current otherwise (0 A with no plan for it)."""
        if charger_id in self.overrides:
            return max_a
        if self.plan is None or charger_id not in self.plan.charger_ids:
            return 0.0
        return min(max_a, allowed_current(self.plan, charger_id, now))
