"""The device's view of its subscription, and what the subscription unlocks.

`evaluate` is a pure function of the clock, the installed token, the revocations received, the
configuration and the meter seen on the HAN port; it gives a `SubscriptionState`. `transition`
compares two states so that the device loop publishes and logs every change with its reason.

`features` / `gate` are the balancer's side: Smart eco mode needs a valid subscription; fuse
protection needs a valid subscription AND fresh HAN data. Without fuse protection the balancer
ignores the meter and the chargers share ``fixed_current_a`` among themselves only.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apm.core import eligibility
from apm.core.config import DeviceConfig
from apm.core.token import Refusal, TokenClaims, iso_z, revoked_ids, verify

ECO = "eco"
FUSE_PROTECTION = "fuse_protection"
FEATURES = (ECO, FUSE_PROTECTION)
EXPIRING_WITHIN = timedelta(days=3)


class State(enum.StrEnum):
    NONE = "none"  # no token, or one that does not verify for this APM
    VALID = "valid"
    EXPIRING = "expiring"  # valid, but less than EXPIRING_WITHIN left
    EXPIRED = "expired"
    REVOKED = "revoked"
    INELIGIBLE = "ineligible"  # a good token, but the installation does not qualify


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    state: State
    reason: str
    valid_until: datetime | None = None
    claims: TokenClaims | None = None

    @property
    def valid(self) -> bool:
        return self.state in (State.VALID, State.EXPIRING)

    def to_status(self) -> dict[str, Any]:
        """The JSON form the device publishes as status."""
        c = self.claims
        return {
            "state": self.state.value,
            "reason": self.reason,
            "valid_until": iso_z(self.valid_until) if self.valid_until else None,
            "plan": c.plan if c else None,
            "features": list(c.features) if c else [],
            "token_id": c.token_id if c else None,
        }


NO_SUBSCRIPTION = SubscriptionState(State.NONE, "no subscription token installed")


def evaluate(
    now: datetime,
    *,
    token: str | None,
    public_key: str | bytes | None,
    config: DeviceConfig,
    revocations: Collection[str] = (),
    meter: str | None = None,
    expiring_within: timedelta = EXPIRING_WITHIN,
) -> SubscriptionState:
    """The subscription state at ``now``. ``meter`` is the vendor detected on HAN, None if none yet."""
    if not token:
        return NO_SUBSCRIPTION
    if not public_key:
        return SubscriptionState(State.NONE, "no issuer key stored; the token cannot be verified")
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now
    verdict = verify(token, public_key, now=now, installation_id=config.installation_id, serial=config.serial,
                     revoked=revoked_ids(revocations, public_key))
    claims = verdict.claims
    until = claims.valid_until if claims else None
    if not verdict.ok:
        state = {Refusal.EXPIRED: State.EXPIRED, Refusal.REVOKED: State.REVOKED}.get(
            verdict.refusal, State.NONE) if verdict.refusal is not None else State.NONE
        reason = verdict.message if state is not State.NONE else f"installed token refused: {verdict.message}"
        return SubscriptionState(state, reason, until, claims)
    assert claims is not None
    fit = eligibility.check_config(config, meter)
    if not fit.ok:
        return SubscriptionState(State.INELIGIBLE, fit.message, until, claims)
    if len(config.chargers) > claims.max_chargers:
        return SubscriptionState(State.INELIGIBLE, f"{len(config.chargers)} chargers configured; the "
                                 f"subscription covers {claims.max_chargers}", until, claims)
    if claims.country.upper() != config.country.upper():
        return SubscriptionState(State.INELIGIBLE, f"subscription is for country {claims.country!r}, "
                                 f"the APM is configured for {config.country!r}", until, claims)
    if claims.valid_until - now < expiring_within:
        # The reason names the instant, not the time left, so it changes only when the token does.
        return SubscriptionState(State.EXPIRING, f"expires at {iso_z(claims.valid_until)}", until, claims)
    return SubscriptionState(State.VALID, f"valid until {iso_z(claims.valid_until)}", until, claims)


# --- changes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transition:
    at: datetime
    previous: SubscriptionState | None
    current: SubscriptionState

    def log_line(self) -> str:
        before = self.previous.state.value if self.previous else "start"
        return f"subscription {before} -> {self.current.state.value}: {self.current.reason}"

    def to_status(self) -> dict[str, Any]:
        return {**self.current.to_status(), "at": iso_z(self.at),
                "previous": self.previous.state.value if self.previous else None}


def transition(previous: SubscriptionState | None, current: SubscriptionState, at: datetime) -> Transition | None:
    """The change from ``previous`` to ``current``, or None if nothing a user would see changed.

    A renewal (same state, later valid-until) is a change too: it is worth a log line.
    """
    if previous is not None and (previous.state, previous.reason, previous.valid_until) == (
        current.state, current.reason, current.valid_until
    ):
        return None
    return Transition(at, previous, current)


class SubscriptionTracker:
    """Remembers the last state so that the device loop gets each change once."""

    def __init__(self) -> None:
        self.current: SubscriptionState | None = None

    def update(self, state: SubscriptionState, at: datetime) -> Transition | None:
        change = transition(self.current, state, at)
        self.current = state
        return change


# --- gating --------------------------------------------------------------------------------------


def features(state: SubscriptionState, han_fresh: bool) -> frozenset[str]:
    """The paid features active now: eco with a valid subscription; fuse protection also needs HAN data.

    A state without claims (built by hand, e.g. in a simulation) grants every feature.
    """
    if not state.valid:
        return frozenset()
    granted = set(state.claims.features) if state.claims is not None else set(FEATURES)
    active = {ECO} & granted
    if han_fresh:
        active |= {FUSE_PROTECTION} & granted
    return frozenset(active)


@dataclass(frozen=True, slots=True)
class Gate:
    """What the balancer may do now."""

    features: frozenset[str]
    # None when the balancer works from meter data (fuse protection); otherwise the current the
    # chargers share among themselves, ignoring the rest of the house.
    fixed_current_a: float | None

    @property
    def eco(self) -> bool:
        return ECO in self.features

    @property
    def fuse_protection(self) -> bool:
        return FUSE_PROTECTION in self.features


def gate(state: SubscriptionState, han_fresh: bool, fixed_current_a: float) -> Gate:
    active = features(state, han_fresh)
    return Gate(active, None if FUSE_PROTECTION in active else fixed_current_a)
