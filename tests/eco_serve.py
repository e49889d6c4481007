"""The energy each charger gets when the balancer serves eco plans under one shared current budget.

An oracle for the planner tests (the device itself never needs the sum): requests over the budget are
water-filled as the balancer shares current. Exact, because the requests are constant between their
change times.
"""

from __future__ import annotations

from collections.abc import Iterable

from apm.core.eco.planner import Plan, water_fill
from apm.core.eco.schedule import allowed_current, change_times


def serve(plans: Iterable[Plan], budget_a: float) -> dict[str, float]:
    """Energy (kWh) per charger id."""
    plans = list(plans)
    chargers = {cp.charger.id: cp.charger for p in plans for cp in p.chargers}
    owner = {cp.charger.id: p for p in plans for cp in p.chargers}
    times = sorted({t for cid in chargers for t in change_times(owner[cid], cid)})
    got = dict.fromkeys(chargers, 0.0)
    for t, nxt in zip(times, times[1:], strict=False):
        hours = (nxt - t).total_seconds() / 3600
        want = {cid: allowed_current(owner[cid], cid, t) for cid in chargers}
        for cid, a in water_fill(want, budget_a).items():
            got[cid] += a * chargers[cid].kw_per_a * hours
    return got
