"""The device's subscription state and feature gating, driven by the simulated cloud on a simulated clock."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from apm.core import eligibility, token
from apm.core.config import ChargerConfig, DeviceConfig
from apm.core.subscription import (
    ECO,
    FUSE_PROTECTION,
    NO_SUBSCRIPTION,
    State,
    SubscriptionState,
    SubscriptionTracker,
    evaluate,
    features,
    gate,
    transition,
)
from sim.cloud import CloudError, Installation, Issuer

T0 = datetime(2030, 1, 15, 9, 0, tzinfo=UTC)
BOTH = frozenset({ECO, FUSE_PROTECTION})
CONFIG = DeviceConfig(serial="APM7", installation_id="inst-7", fixed_current_a=20.0,
                      chargers=(ChargerConfig("garage"), ChargerConfig("drive", phases=1)))
HOME = Installation("inst-7", "APM7", chargers=2, meter="kaifa")


class Device:
    """What the device keeps in flash and what its loop computes from it."""

    def __init__(self, public_key: str) -> None:
        self.public_key = public_key
        self.token: str | None = None
        self.revocations: list[str] = []
        self.tracker = SubscriptionTracker()
        self.log: list[str] = []

    def state(self, now: datetime, meter: str | None = "kaifa") -> SubscriptionState:
        s = evaluate(now, token=self.token, public_key=self.public_key, config=CONFIG,
                     revocations=self.revocations, meter=meter)
        change = self.tracker.update(s, now)
        if change:
            self.log.append(change.log_line())
        return s


def expect(state: SubscriptionState, want: State, *, active: bool) -> None:
    """Assert the state and what the balancer gets in it, with and without fresh HAN data."""
    assert state.state is want, state
    g_fresh, g_stale = gate(state, True, CONFIG.fixed_current_a), gate(state, False, CONFIG.fixed_current_a)
    if active:
        assert features(state, han_fresh=True) == BOTH
        assert features(state, han_fresh=False) == {ECO}
        assert g_fresh.fuse_protection and g_fresh.eco and g_fresh.fixed_current_a is None
        assert g_stale.eco and not g_stale.fuse_protection and g_stale.fixed_current_a == 20.0
    else:
        assert features(state, han_fresh=True) == frozenset()
        assert features(state, han_fresh=False) == frozenset()
        for g in (g_fresh, g_stale):
            assert not g.eco and not g.fuse_protection and g.fixed_current_a == 20.0


@pytest.fixture()
def issuer(tmp_path) -> Issuer:
    return Issuer.keygen(tmp_path / "cloud.json")


def test_lifecycle_subscribe_renew_cancel_resubscribe_decline(issuer):
    dev = Device(issuer.public_key_pem)
    expect(dev.state(T0), State.NONE, active=False)

    # Subscribe: paid until 15 Feb.
    sub = issuer.subscribe(HOME, T0)
    dev.token = issuer.issue("APM7", T0)
    s = dev.state(T0)
    expect(s, State.VALID, active=True)
    assert s.valid_until == datetime(2030, 2, 15, 9, 0, tzinfo=UTC)
    expect(dev.state(datetime(2030, 2, 13, 9, 0, tzinfo=UTC)), State.EXPIRING, active=True)

    # Renewal 1 at the billing date: the cloud pushes the new token, valid until 15 Mar.
    b1 = datetime(2030, 2, 15, 9, 0, tzinfo=UTC)
    dev.token = issuer.issue("APM7", b1)
    s = dev.state(b1)
    expect(s, State.VALID, active=True)
    assert s.valid_until == datetime(2030, 3, 15, 9, 0, tzinfo=UTC)

    # Renewal 2.
    b2 = datetime(2030, 3, 15, 9, 0, tzinfo=UTC)
    dev.token = issuer.issue("APM7", b2)
    expect(dev.state(b2 + timedelta(hours=1)), State.VALID, active=True)
    assert [c.amount_nok for c in issuer.current("APM7").charges] == [39.0, 39.0, 39.0]

    # Cancel on 20 Mar: the features stay until the billing date (15 Apr), then go.
    issuer.cancel("APM7", datetime(2030, 3, 20, tzinfo=UTC))
    b3 = datetime(2030, 4, 15, 9, 0, tzinfo=UTC)
    expect(dev.state(datetime(2030, 3, 21, tzinfo=UTC)), State.VALID, active=True)
    expect(dev.state(b3 - timedelta(seconds=1)), State.EXPIRING, active=True)
    expect(dev.state(b3), State.EXPIRED, active=False)
    with pytest.raises(CloudError, match="no running subscription"):
        issuer.issue("APM7", b3)
    assert issuer.current("APM7").status == "ended"
    assert len(issuer.current("APM7").charges) == 3  # no charge for April

    # Subscribe again later on the same APM: a new billing date, access again.
    t4 = datetime(2030, 5, 2, 18, 30, tzinfo=UTC)
    sub2 = issuer.subscribe(HOME, t4)
    assert sub2.id != sub.id
    dev.token = issuer.issue("APM7", t4)
    s = dev.state(t4)
    expect(s, State.VALID, active=True)
    assert s.valid_until == datetime(2030, 6, 2, 18, 30, tzinfo=UTC)

    # Declined payment: features go at once, as soon as the revocation arrives.
    t5 = datetime(2030, 5, 10, tzinfo=UTC)
    dev.revocations.append(issuer.decline("APM7", t5))
    expect(dev.state(t5), State.REVOKED, active=False)

    # Every change was reported once, with its reason.
    states = [line.split(":")[0] for line in dev.log]
    assert states == [
        "subscription start -> none",
        "subscription none -> valid",
        "subscription valid -> expiring",
        "subscription expiring -> valid",
        "subscription valid -> valid",  # renewed: the same state, a later valid-until
        "subscription valid -> expiring",
        "subscription expiring -> expired",
        "subscription expired -> valid",
        "subscription valid -> revoked",
    ]
    assert "was revoked by the issuer" in dev.log[-1]
    assert "expired at 2030-04-15T09:00:00Z" in dev.log[6]


def test_no_token_and_no_key():
    assert evaluate(T0, token=None, public_key=None, config=CONFIG) == NO_SUBSCRIPTION
    s = evaluate(T0, token="a.b.c", public_key=None, config=CONFIG)
    assert s.state is State.NONE and "issuer key" in s.reason


def test_token_of_another_apm_means_no_subscription(issuer):
    issuer.subscribe(dataclasses.replace(HOME, serial="APM8"), T0)
    other = issuer.issue("APM8", T0)
    s = evaluate(T0, token=other, public_key=issuer.public_key_pem, config=CONFIG)
    assert s.state is State.NONE and "APM8" in s.reason
    assert features(s, True) == frozenset()


@pytest.mark.parametrize(
    ("config_changes", "meter", "why"),
    [
        ({}, "landisgyr", "meter"),
        ({"installation_type": "BUSINESS"}, "aidon", "HOME"),
        ({"country": "SE"}, "aidon", "Norway"),
    ],
)
def test_ineligible_device_gets_no_features(issuer, config_changes, meter, why):
    issuer.subscribe(HOME, T0)
    tok = issuer.issue("APM7", T0)
    config = msgspec.structs.replace(CONFIG, **config_changes)
    s = evaluate(T0, token=tok, public_key=issuer.public_key_pem, config=config, meter=meter)
    assert s.state is State.INELIGIBLE and why in s.reason
    assert features(s, True) == frozenset()
    assert gate(s, True, 32.0).fixed_current_a == 32.0


def test_unknown_meter_is_not_held_against_the_device(issuer):
    issuer.subscribe(HOME, T0)
    tok = issuer.issue("APM7", T0)
    s = evaluate(T0, token=tok, public_key=issuer.public_key_pem, config=CONFIG, meter=None)
    assert s.state is State.VALID


def test_more_chargers_than_the_token_covers_is_ineligible():
    private, public = token.generate_keypair()
    claims = token.TokenClaims("inst-7", "APM7", "premium", ("eco", "fuse_protection"), "NO", 1,
                               T0 + timedelta(days=30), "t1", T0, T0)
    s = evaluate(T0, token=token.sign_subscription(claims, private), public_key=public, config=CONFIG)
    assert s.state is State.INELIGIBLE and "covers 1" in s.reason


def test_features_follow_the_tokens_feature_claim():
    private, public = token.generate_keypair()
    claims = token.TokenClaims("inst-7", "APM7", "eco-only", ("eco",), "NO", 3, T0 + timedelta(days=30), "t1",
                               T0, T0)
    s = evaluate(T0, token=token.sign_subscription(claims, private), public_key=public, config=CONFIG)
    assert s.state is State.VALID
    assert features(s, han_fresh=True) == {ECO}
    assert gate(s, True, 32.0).fixed_current_a == 32.0


def test_hand_built_valid_state_grants_everything():
    s = SubscriptionState(State.VALID, "simulation", T0 + timedelta(days=30))
    assert features(s, True) == BOTH and features(s, False) == {ECO}
    assert s.to_status()["state"] == "valid" and s.to_status()["valid_until"] == "2030-02-14T09:00:00Z"


def test_transition_reports_changes_only():
    a = SubscriptionState(State.VALID, "valid until X", T0)
    assert transition(a, a, T0) is None
    assert transition(None, a, T0).log_line() == "subscription start -> valid: valid until X"
    renewed = SubscriptionState(State.VALID, "valid until Y", T0 + timedelta(days=30))
    change = transition(a, renewed, T0)
    assert change is not None and change.to_status()["previous"] == "valid"
    assert change.to_status()["at"] == "2030-01-15T09:00:00Z"


@pytest.mark.parametrize(
    ("args", "ok", "reason"),
    [
        (("HOME", 3, "NO", "aidon"), True, None),
        (("home", 1, "no", "Kamstrup"), True, None),
        (("HOME", 2, "NO", "Nuri"), True, None),
        (("HOME", 1, "NO", None), True, None),
        (("BUSINESS", 1, "NO", "aidon"), False, eligibility.Ineligible.NOT_HOME),
        (("HOME", 4, "NO", "aidon"), False, eligibility.Ineligible.TOO_MANY_CHARGERS),
        (("HOME", 1, "SE", "aidon"), False, eligibility.Ineligible.NOT_NORWAY),
        (("HOME", 1, "NO", "echelon"), False, eligibility.Ineligible.UNSUPPORTED_METER),
    ],
)
def test_eligibility(args, ok, reason):
    result = eligibility.check(*args)
    assert result.ok is ok and result.reason is reason
    assert result.message
