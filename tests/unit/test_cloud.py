"""The simulated issuer: billing on a simulated clock, tokens, revocations, eligibility, its state file."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from apm.core import token as tok
from apm.core.eligibility import Ineligible
from sim.cloud import CloudError, IneligibleError, Installation, Issuer, add_months

T0 = datetime(2030, 1, 31, 8, 0, tzinfo=UTC)
HOME = Installation("inst-1", "APM1", meter="aidon")


@pytest.fixture()
def issuer(tmp_path) -> Issuer:
    return Issuer.keygen(tmp_path / "cloud.json")


def claims_of(issuer: Issuer, token: str, now: datetime, serial: str = "APM1") -> tok.TokenClaims:
    v = tok.verify(token, issuer.public_key_pem, now=now, installation_id="inst-1", serial=serial)
    assert v.ok, v.message
    return v.claims


def test_add_months_clamps_to_the_end_of_short_months():
    assert add_months(T0, 1) == datetime(2030, 2, 28, 8, 0, tzinfo=UTC)
    assert add_months(T0, 2) == datetime(2030, 3, 31, 8, 0, tzinfo=UTC)  # from the anchor, not from Feb 28
    assert add_months(datetime(2031, 12, 31, tzinfo=UTC), 2) == datetime(2032, 2, 29, tzinfo=UTC)
    assert add_months(datetime(2030, 11, 15, tzinfo=UTC), 14) == datetime(2032, 1, 15, tzinfo=UTC)


def test_token_is_valid_until_the_end_of_the_prepaid_period(issuer):
    issuer.subscribe(HOME, T0)
    c = claims_of(issuer, issuer.issue("APM1", T0 + timedelta(days=3)), T0 + timedelta(days=3))
    assert c.valid_until == datetime(2030, 2, 28, 8, 0, tzinfo=UTC)
    assert c.not_before == T0
    assert c.issued_at == T0 + timedelta(days=3)
    assert (c.installation_id, c.serial, c.country, c.plan) == ("inst-1", "APM1", "NO", "premium")
    assert c.features == ("eco", "fuse_protection") and c.max_chargers == 3


def test_renewal_at_each_billing_date_until_cancelled(issuer):
    issuer.subscribe(HOME, T0)
    issuer.advance(datetime(2030, 4, 1, tzinfo=UTC))
    sub = issuer.current("APM1")
    assert [c.at for c in sub.charges] == [T0, datetime(2030, 2, 28, 8, tzinfo=UTC),
                                          datetime(2030, 3, 31, 8, tzinfo=UTC)]
    assert sub.paid_until == datetime(2030, 4, 30, 8, tzinfo=UTC)
    issuer.cancel("APM1", datetime(2030, 4, 2, tzinfo=UTC))
    assert issuer.current("APM1").status == "cancelled"
    # Until the billing date a token can still be had, for the rest of the paid month.
    token = issuer.issue("APM1", datetime(2030, 4, 29, tzinfo=UTC))
    assert claims_of(issuer, token, datetime(2030, 4, 29, tzinfo=UTC)).valid_until == sub.paid_until
    issuer.advance(sub.paid_until)
    after = issuer.current("APM1")
    assert after.status == "ended" and after.ended_at == sub.paid_until
    assert len(after.charges) == 3
    with pytest.raises(CloudError, match="no running subscription"):
        issuer.issue("APM1", sub.paid_until + timedelta(days=1))
    with pytest.raises(CloudError, match="no running subscription"):
        issuer.cancel("APM1", sub.paid_until + timedelta(days=1))


def test_price_change_applies_from_the_next_billing_date(issuer):
    issuer.subscribe(HOME, T0, price_nok=39)
    issuer.change_price("APM1", 49, T0 + timedelta(days=10))
    sub = issuer.current("APM1")
    assert sub.price_nok == 39 and sub.next_price_nok == 49
    assert "49 NOK from 2030-02-28T08:00:00Z" in sub.describe()
    issuer.advance(datetime(2030, 3, 31, 8, tzinfo=UTC))
    assert [c.amount_nok for c in issuer.current("APM1").charges] == [39, 49, 49]


def test_decline_revokes_every_running_token_at_once(issuer):
    issuer.subscribe(HOME, T0)
    old = issuer.issue("APM1", T0)
    b1 = datetime(2030, 2, 28, 8, tzinfo=UTC)
    t1, t2 = issuer.issue("APM1", b1), issuer.issue("APM1", b1 + timedelta(hours=1))
    now = b1 + timedelta(days=2)
    revocation = issuer.decline("APM1", now)
    v = tok.verify_revocation(revocation, issuer.public_key_pem)
    assert v.ok
    ids = {claims_of(issuer, t, now).token_id for t in (t1, t2)}
    assert set(v.revocation.revokes) == ids  # the expired token of January needs no revocation
    assert claims_of(issuer, old, T0).token_id not in v.revocation.revokes
    assert v.revocation.issued_at == now and v.revocation.reason == "payment declined"
    assert issuer.revocations("APM1") == [revocation]
    sub = issuer.current("APM1")
    assert sub.status == "declined" and sub.ended_at == now
    assert sub.charges[-1].outcome == "declined"
    revoked = tok.revoked_ids(issuer.revocations("APM1"), issuer.public_key_pem)
    r = tok.verify(t2, issuer.public_key_pem, now=now, installation_id="inst-1", serial="APM1", revoked=revoked)
    assert r.refusal is tok.Refusal.REVOKED


def test_a_new_subscription_after_the_end_works_again(issuer):
    issuer.subscribe(HOME, T0)
    with pytest.raises(CloudError, match="already has a running subscription"):
        issuer.subscribe(HOME, T0 + timedelta(days=1))
    issuer.decline("APM1", T0 + timedelta(days=2))
    later = T0 + timedelta(days=40)
    sub = issuer.subscribe(HOME, later)
    assert sub.started == later and sub.status == "active"
    c = claims_of(issuer, issuer.issue("APM1", later), later)
    assert c.valid_until == add_months(later, 1)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"country": "SE"}, Ineligible.NOT_NORWAY),
        ({"installation_type": "BUSINESS"}, Ineligible.NOT_HOME),
        ({"chargers": 4}, Ineligible.TOO_MANY_CHARGERS),
        ({"meter": "echelon"}, Ineligible.UNSUPPORTED_METER),
    ],
)
def test_ineligible_installations_are_refused_with_the_reason(issuer, changes, reason):
    with pytest.raises(IneligibleError) as err:
        issuer.subscribe(dataclasses.replace(HOME, **changes), T0)
    assert err.value.result.reason is reason
    assert issuer.current("APM1") is None


def test_eligibility_is_checked_again_at_issue_time(issuer):
    issuer.subscribe(HOME, T0)
    with pytest.raises(IneligibleError, match="4 chargers"):
        issuer.issue("APM1", T0, dataclasses.replace(HOME, chargers=4))


def test_state_survives_reloading_and_the_clock_cannot_go_back(issuer):
    issuer.subscribe(HOME, T0)
    issuer.change_price("APM1", 45, T0 + timedelta(days=1))
    again = Issuer(issuer.state_path)
    assert again.current("APM1") == issuer.current("APM1")
    with pytest.raises(CloudError, match="clock went backwards"):
        again.issue("APM1", T0)


def test_keygen_refuses_to_replace_a_key_unless_forced(tmp_path, issuer):
    with pytest.raises(CloudError, match="refusing to replace"):
        Issuer.keygen(issuer.state_path)
    old = issuer.public_key_pem
    assert Issuer.keygen(issuer.state_path, force=True).public_key_pem != old
    assert (tmp_path / "cloud.json.key.pem").stat().st_mode & 0o077 == 0  # the private key is not shared


def test_missing_or_bad_state_is_a_clear_error(tmp_path):
    with pytest.raises(CloudError, match="apm cloud keygen"):
        Issuer(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": 1}))
    with pytest.raises(CloudError, match="bad issuer state"):
        Issuer(bad)
