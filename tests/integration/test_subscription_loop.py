"""The subscription lifecycle on the closed loop: the balancer protects the fuse only while subscribed."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pytest

from apm.core.subscription import State
from sim.closed_loop import load_scenario
from sim.cloud import Issuer
from sim.subscription_loop import (
    DECLINE_AT,
    DEFAULT_SCENARIO,
    DeviceInbox,
    Phase,
    PhaseResult,
    device_config,
    lifecycle,
    loaded_steps,
    main,
    run_lifecycle,
    run_phase,
)
from tests.unit.test_subscription import HOME, T0, expect

SC = load_scenario(DEFAULT_SCENARIO)
FIXED = SC.fixed_current_a  # 20 A
HOUSE_L1 = 15.0  # the household's heavy window on L1 (lifecycle-house.csv)
PROTECTED = SC.limit_a - HOUSE_L1  # 8 A: what fuse protection leaves the charger then

# phase -> the device's state at the end of its window, and whether the paid features are on
EXPECTED = {
    "not subscribed": (State.NONE, False),
    "subscribed": (State.VALID, True),
    "renewal 1": (State.VALID, True),
    "renewal 2": (State.VALID, True),
    "cancelled, before the billing date": (State.VALID, True),
    "cancelled, just before the billing date": (State.EXPIRING, True),
    "cancelled, billing date passed": (State.EXPIRED, False),
    "subscribed again": (State.VALID, True),
    "payment declined: the moment": (State.REVOKED, False),
    "payment declined": (State.REVOKED, False),
}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer.keygen(tmp_path_factory.mktemp("cloud") / "cloud.json")


@pytest.fixture(scope="module")
def results(cloud: Issuer) -> dict[str, PhaseResult]:
    return {r.phase.name: r for r in run_lifecycle(SC, cloud, HOME, T0)}


def test_the_scenario_overloads_a_line_with_the_fixed_current() -> None:
    loaded = loaded_steps(SC)
    assert (loaded[0], loaded[-1]) == (180, 1079)  # 03:00 to 18:00 into the window
    ratio = (HOUSE_L1 + FIXED) / SC.fuse_a
    assert ratio > 1.3  # above the C curve's thermal trip ratio
    assert PROTECTED < FIXED


def test_the_phases_come_in_lifecycle_order(results: dict[str, PhaseResult]) -> None:
    assert list(results) == list(EXPECTED)
    starts = [r.phase.window_start for r in results.values()]
    assert starts == sorted(starts)


def test_the_cloud_billed_the_lifecycle(cloud: Issuer, results: dict[str, PhaseResult]) -> None:
    first, second = [s for s in cloud.subscriptions if s.installation.serial == HOME.serial]
    assert first.status == "ended" and [c.outcome for c in first.charges] == ["paid"] * 3  # no 4th month
    assert second.status == "declined" and second.charges[-1].outcome == "declined"


@pytest.mark.parametrize("name", [n for n, (_, on) in EXPECTED.items() if on])
def test_with_a_valid_subscription_the_balancer_protects_the_fuse(results: dict[str, PhaseResult],
                                                                  name: str) -> None:
    res = results[name]
    want, _ = EXPECTED[name]
    expect(res.state, want, active=True)
    row = res.row()
    assert row["mode"] == "protect" and row["time_in_mode_s"] == {"protect": SC.duration_s}
    assert [t["mode"] for t in row["transitions"]] == ["protect"]
    # the house loaded: the charger gets what the fuse leaves, below the fixed current
    assert row["loaded_setpoints_a"] == {"garage": [PROTECTED]}
    assert max(row["setpoints_a"]["garage"]) <= SC.limit_a - 4.0  # 4 A of house outside the window
    assert row["trips"] == 0
    assert row["max_ratio"]["L1"] < 1.45  # the household's step, until the next list
    assert row["seconds_above_in"]["L1"] <= 10


@pytest.mark.parametrize("name", ["not subscribed", "cancelled, billing date passed", "payment declined"])
def test_without_one_the_chargers_get_the_fixed_current(results: dict[str, PhaseResult], name: str) -> None:
    res = results[name]
    want, _ = EXPECTED[name]
    expect(res.state, want, active=False)
    row = res.row()
    assert row["mode"] == "fixed" and row["time_in_mode_s"] == {"fixed": SC.duration_s}
    assert row["setpoints_a"] == {"garage": [FIXED]}  # the meter ignored: house load or not
    assert row["loaded_setpoints_a"] == {"garage": [FIXED]}
    # the over-current the judge reports: house + fixed on L1 for the whole heavy window
    assert row["max_ratio"]["L1"] == pytest.approx((HOUSE_L1 + FIXED) / SC.fuse_a, abs=0.01)
    assert row["seconds_above_in"]["L1"] >= len(loaded_steps(SC)) - 10
    assert row["trips"] >= 1


def test_reasons_name_the_dates(results: dict[str, PhaseResult]) -> None:
    assert "expired at" in results["cancelled, billing date passed"].state.reason
    assert "revoked" in results["payment declined"].state.reason
    # features stay after the cancellation, up to the billing date the first subscription was paid to
    until = results["cancelled, before the billing date"].state.valid_until
    assert until == results["renewal 2"].state.valid_until
    assert results["cancelled, billing date passed"].phase.window_start >= until


def test_a_declined_payment_ends_protection_the_second_the_revocation_arrives(
        results: dict[str, PhaseResult]) -> None:
    row = results["payment declined: the moment"].row()
    at = DECLINE_AT.total_seconds()
    assert [(t["t_s"], t["state"], t["mode"]) for t in row["transitions"]] == [
        (0.0, "valid", "protect"), (at, "revoked", "fixed")]
    assert row["mode"] == "protect -> fixed"
    assert row["time_in_mode_s"] == {"protect": at, "fixed": SC.duration_s - at}
    assert row["time_in_state_s"] == {"valid": at, "revoked": SC.duration_s - at}
    assert max(row["setpoints_a"]["garage"]) == FIXED
    assert PROTECTED in row["loaded_setpoints_a"]["garage"]  # loaded and protected before
    assert row["trips"] >= 1


def test_a_token_counts_only_from_its_delivery(tmp_path: Path) -> None:
    """A window across the subscription: fixed until the token arrives, then protection."""
    issuer = Issuer.keygen(tmp_path / "c.json")
    inbox, _ = lifecycle(issuer, HOME, T0)
    res = run_phase(SC, Phase("across subscribe", T0 - timedelta(seconds=240), "fixed, then protect"),
                    inbox, device_config(SC, HOME), loaded_steps(SC))
    sub = res.report["subscription"]
    assert [(t["t_s"], t["state"], t["mode"]) for t in sub["transitions"]] == [
        (0.0, "none", "fixed"), (240.0, "valid", "protect")]
    assert sub["time_in_state_s"] == {"none": 240.0, "valid": SC.duration_s - 240.0}
    assert PROTECTED in res.loaded_setpoints_a["garage"] and FIXED in res.loaded_setpoints_a["garage"]


def test_a_valid_subscription_without_fresh_han_data_is_fixed(tmp_path: Path) -> None:
    issuer = Issuer.keygen(tmp_path / "c.json")
    inbox, phases = lifecycle(issuer, HOME, T0)
    sc = dataclasses.replace(SC, outages=((400.0, 700.0),))  # the HAN port goes quiet
    res = run_phase(sc, phases[1], inbox, device_config(sc, HOME), loaded_steps(sc))
    sub = res.report["subscription"]
    assert res.state.state is State.VALID
    fixed = [t for t in sub["transitions"] if t["mode"] == "fixed"]
    assert len(fixed) == 1 and fixed[0]["state"] == "valid" and "no fresh HAN data" in fixed[0]["reason"]
    assert 400 < fixed[0]["t_s"] < 400 + 60  # once the last list is older than the stale limit
    assert sub["transitions"][-1]["mode"] == "protect" and 700 <= sub["transitions"][-1]["t_s"] < 720
    assert FIXED in sub["setpoints_a"]["garage"]


def test_deliveries_must_come_in_order() -> None:
    inbox = DeviceInbox("key")
    inbox.token(T0, "a")
    with pytest.raises(ValueError, match="time order"):
        inbox.token(T0 - timedelta(seconds=1), "b")
    assert inbox.token_at(T0 - timedelta(seconds=1)) is None and inbox.token_at(T0) == "a"
    assert inbox.revocations_at(T0) == ()


def test_command_line_prints_the_table_and_writes_the_report(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lifecycle.json"
    assert main(["--report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "payment declined" in text and "protect" in text and "fixed" in text
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [r["phase"] for r in doc["phases"]] == list(EXPECTED)
    assert [r["state"] for r in doc["phases"]] == [s.value for s, _ in EXPECTED.values()]


def test_command_line_refuses_a_bad_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
