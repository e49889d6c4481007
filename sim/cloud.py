"""The cloud side of the subscription: an issuer of signed tokens, with billing on an explicit clock.

Model (Zaptec-style Premium, prepaid monthly):
- `subscribe` starts a subscription and charges the first month; the billing date is the day of the
  month it started (clamped to short months: the 31st bills on Feb 28/29).
- At each billing date the next month is charged (renewal) unless the subscription was cancelled.
- `issue` signs a token whose valid-until is the end of the prepaid period.
- `cancel` takes effect at the next billing date: tokens already issued stay valid until then.
- `decline` (a payment refused or charged back) ends access at once: the issuer signs a revocation of
  every token of that subscription still running, for the device (retained on MQTT).
- A later `subscribe` on the same APM starts a new subscription with a new billing date.
- `change_price` applies from the next billing date; the current month was paid at the old price.

Every operation takes ``now``, so tests and demos run on a simulated clock. State lives in a JSON
file; each operation loads it, changes it and writes it back atomically.
"""

from __future__ import annotations

import calendar
import json
import os
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apm.core import eligibility
from apm.core.token import (
    Revocation,
    TokenClaims,
    generate_keypair,
    iso_z,
    load_private_key,
    new_token_id,
    public_pem_of,
    sign_revocation,
    sign_subscription,
)

if TYPE_CHECKING:
    from apm.core.config import DeviceConfig

PLANS: dict[str, tuple[str, ...]] = {"premium": ("eco", "fuse_protection")}
DEFAULT_PLAN = "premium"
DEFAULT_PRICE_NOK = 39.0  # "from 39 kr/month" (Zaptec Premium, 2022)
STATE_FORMAT = 1

ACTIVE = "active"
CANCELLED = "cancelled"  # still running until the next billing date
ENDED = "ended"
DECLINED = "declined"


class CloudError(Exception):
    """An operation the issuer refuses; the message says why."""


class IneligibleError(CloudError):
    def __init__(self, result: eligibility.Eligibility) -> None:
        super().__init__(f"not eligible: {result.message}")
        self.result = result


@dataclass(frozen=True, slots=True)
class Installation:
    """What the owner declares about the installation; eligibility is judged on it."""

    installation_id: str
    serial: str
    country: str = "NO"
    installation_type: str = "HOME"
    chargers: int = 1
    meter: str = "kamstrup"

    def eligibility(self) -> eligibility.Eligibility:
        return eligibility.check(self.installation_type, self.chargers, self.country, self.meter)


@dataclass(frozen=True, slots=True)
class Charge:
    at: datetime
    period_start: datetime
    period_end: datetime
    amount_nok: float
    outcome: str  # "paid" | "declined"


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    installation: Installation
    plan: str
    started: datetime  # the billing anchor
    price_nok: float  # the price of the current period
    periods_paid: int = 1
    next_price_nok: float | None = None  # applies from the next billing date
    status: str = ACTIVE
    cancelled_at: datetime | None = None
    ended_at: datetime | None = None
    charges: tuple[Charge, ...] = ()
    token_ids: tuple[tuple[str, datetime], ...] = ()  # (jti, valid-until) of every token issued

    @property
    def paid_until(self) -> datetime:
        return add_months(self.started, self.periods_paid)

    @property
    def period_start(self) -> datetime:
        return add_months(self.started, self.periods_paid - 1)

    @property
    def running(self) -> bool:
        return self.status in (ACTIVE, CANCELLED)

    def describe(self) -> str:
        inst = self.installation
        head = f"subscription {self.id} ({self.plan}) for APM {inst.serial}, installation {inst.installation_id}: "
        if self.status == ACTIVE:
            price = f"{_money(self.price_nok)} NOK/month"
            if self.next_price_nok is not None:
                price += f", {_money(self.next_price_nok)} NOK from {iso_z(self.paid_until)}"
            return head + f"active, paid until {iso_z(self.paid_until)} (renews then; {price})"
        if self.status == CANCELLED:
            return head + f"cancelled, access until {iso_z(self.paid_until)}"
        when = iso_z(self.ended_at) if self.ended_at else "?"
        return head + f"{self.status}, access ended at {when}"


def add_months(t: datetime, months: int) -> datetime:
    """``t`` moved by whole months, the day clamped to the month's length (31 Jan + 1 = 28/29 Feb)."""
    y, m = divmod(t.month - 1 + months, 12)
    year, month = t.year + y, m + 1
    return t.replace(year=year, month=month, day=min(t.day, calendar.monthrange(year, month)[1]))


class Issuer:
    """The issuer with its state file; every public method saves the state it changed."""

    def __init__(self, state_path: str | os.PathLike[str]) -> None:
        self.state_path = Path(state_path)
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CloudError(f"no issuer state at {self.state_path}; run `apm cloud keygen --state "
                             f"{self.state_path}` first") from None
        except (OSError, ValueError) as exc:
            raise CloudError(f"{self.state_path}: unreadable issuer state: {exc}") from None
        try:
            if doc.get("format") != STATE_FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            self.private_key_path = Path(doc["private_key"])
            self.public_key_path = Path(doc["public_key"])
            self.clock = _parse_time(doc["clock"]) if doc.get("clock") else None
            self.subscriptions = [_subscription_from_json(s) for s in doc["subscriptions"]]
            self._revocations: list[dict[str, str]] = list(doc["revocations"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CloudError(f"{self.state_path}: bad issuer state: {exc}") from None

    # --- keys ----------------------------------------------------------------------------------

    @classmethod
    def keygen(
        cls,
        state_path: str | os.PathLike[str],
        private_path: str | os.PathLike[str] | None = None,
        public_path: str | os.PathLike[str] | None = None,
        force: bool = False,
    ) -> Issuer:
        """New Ed25519 key pair (PEM files) and an empty state file; refuses to overwrite unless forced."""
        state = Path(state_path)
        private = Path(private_path) if private_path else state.with_name(state.name + ".key.pem")
        public = Path(public_path) if public_path else state.with_name(state.name + ".pub.pem")
        if not force:
            for p in (state, private, public):
                if p.exists():
                    raise CloudError(f"{p} exists; refusing to replace the issuer key (use --force)")
        for p in (state, private, public):
            if not p.parent.is_dir():
                raise CloudError(f"{p.parent}: no such directory")
        private_pem, public_pem = generate_keypair()
        _write_atomic(private, private_pem, mode=0o600)
        _write_atomic(public, public_pem)
        doc = {"format": STATE_FORMAT, "private_key": str(private.resolve()), "public_key": str(public.resolve()),
               "clock": None, "subscriptions": [], "revocations": []}
        _write_atomic(state, json.dumps(doc, indent=2).encode())
        return cls(state)

    @property
    def public_key_pem(self) -> str:
        return self.public_key_path.read_text(encoding="ascii")

    def _private_key(self) -> Any:
        try:
            key = load_private_key(self.private_key_path.read_bytes())
        except OSError as exc:
            raise CloudError(f"cannot read the issuer's private key: {exc}") from None
        if public_pem_of(key).decode() != self.public_key_pem:
            raise CloudError(f"{self.private_key_path} and {self.public_key_path} are not one key pair")
        return key

    # --- lifecycle -----------------------------------------------------------------------------

    def subscribe(self, installation: Installation, now: datetime, plan: str = DEFAULT_PLAN,
                  price_nok: float = DEFAULT_PRICE_NOK) -> Subscription:
        now = self._tick(now)
        if plan not in PLANS:
            raise CloudError(f"unknown plan {plan!r} (known: {', '.join(PLANS)})")
        if price_nok < 0:
            raise CloudError(f"price {price_nok} is negative")
        result = installation.eligibility()
        if not result.ok:
            raise IneligibleError(result)
        current = self.current(installation.serial)
        if current is not None and current.running:
            raise CloudError(f"APM {installation.serial} already has a running subscription: {current.describe()}")
        sub = Subscription(id=uuid.uuid4().hex[:12], installation=installation, plan=plan, started=now,
                           price_nok=price_nok)
        sub = replace(sub, charges=(Charge(now, now, sub.paid_until, price_nok, "paid"),))
        self.subscriptions.append(sub)
        self._save()
        return sub

    def issue(self, serial: str, now: datetime, installation: Installation | None = None) -> str:
        """A token for the running subscription, valid until the end of the prepaid period.

        ``installation`` (optional) replaces the declared facts, e.g. a charger added; eligibility is
        checked again either way.
        """
        now = self._tick(now)
        sub = self._running(serial)
        if installation is not None:
            if installation.serial != serial:
                raise CloudError(f"installation is for APM {installation.serial}, not {serial}")
            sub = self._put(replace(sub, installation=installation))
        result = sub.installation.eligibility()
        if not result.ok:
            raise IneligibleError(result)
        inst = sub.installation
        claims = TokenClaims(
            installation_id=inst.installation_id,
            serial=inst.serial,
            plan=sub.plan,
            features=PLANS[sub.plan],
            country=inst.country,
            max_chargers=eligibility.MAX_CHARGERS,
            valid_until=sub.paid_until,
            token_id=new_token_id(),
            issued_at=now,
            not_before=sub.period_start,
        )
        token = sign_subscription(claims, self._private_key())
        self._put(replace(sub, token_ids=(*sub.token_ids, (claims.token_id, claims.valid_until))))
        self._save()
        return token

    def cancel(self, serial: str, now: datetime) -> Subscription:
        """Stop renewing: access continues until the next billing date."""
        now = self._tick(now)
        sub = self._running(serial)
        if sub.status == CANCELLED:
            raise CloudError(f"already cancelled: {sub.describe()}")
        sub = self._put(replace(sub, status=CANCELLED, cancelled_at=now))
        self._save()
        return sub

    def decline(self, serial: str, now: datetime) -> str:
        """A payment was declined: access ends now. Returns the signed revocation to publish."""
        now = self._tick(now)
        sub = self._running(serial)
        live = tuple(jti for jti, until in sub.token_ids if until > now)
        # The current period's payment is the one that bounced.
        charges = (*sub.charges[:-1], replace(sub.charges[-1], outcome="declined")) if sub.charges else ()
        sub = self._put(replace(sub, status=DECLINED, ended_at=now, charges=charges))
        inst = sub.installation
        revocation = Revocation(installation_id=inst.installation_id, serial=inst.serial, revokes=live,
                                revocation_id=new_token_id(), issued_at=now, reason="payment declined")
        token = sign_revocation(revocation, self._private_key())
        self._revocations.append({"serial": serial, "token": token})
        self._save()
        return token

    def change_price(self, serial: str, price_nok: float, now: datetime) -> Subscription:
        """The new price is charged from the next billing date on."""
        now = self._tick(now)
        if price_nok < 0:
            raise CloudError(f"price {price_nok} is negative")
        sub = self._running(serial)
        sub = self._put(replace(sub, next_price_nok=price_nok))
        self._save()
        return sub

    def advance(self, now: datetime) -> None:
        """Run the billing dates up to ``now`` (renewals, ends of cancelled subscriptions)."""
        self._tick(now)
        self._save()

    # --- queries -------------------------------------------------------------------------------

    def current(self, serial: str) -> Subscription | None:
        """The latest subscription of an APM, running or not."""
        subs = [s for s in self.subscriptions if s.installation.serial == serial]
        return subs[-1] if subs else None

    def revocations(self, serial: str) -> list[str]:
        return [r["token"] for r in self._revocations if r["serial"] == serial]

    # --- internals -----------------------------------------------------------------------------

    def _tick(self, now: datetime) -> datetime:
        now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
        now = now.replace(microsecond=0)  # tokens carry whole seconds; so do billing dates
        if self.clock is not None and now < self.clock:
            raise CloudError(f"the clock went backwards: {iso_z(now)} is before the last event at "
                             f"{iso_z(self.clock)}")
        self.clock = now
        self.subscriptions = [_bill(s, now) for s in self.subscriptions]
        return now

    def _running(self, serial: str) -> Subscription:
        sub = self.current(serial)
        if sub is None:
            raise CloudError(f"APM {serial} has no subscription")
        if not sub.running:
            raise CloudError(f"APM {serial} has no running subscription ({sub.describe()})")
        return sub

    def _put(self, sub: Subscription) -> Subscription:
        self.subscriptions = [sub if s.id == sub.id else s for s in self.subscriptions]
        return sub

    def _save(self) -> None:
        doc = {
            "format": STATE_FORMAT,
            "private_key": str(self.private_key_path),
            "public_key": str(self.public_key_path),
            "clock": iso_z(self.clock) if self.clock else None,
            "subscriptions": [_subscription_to_json(s) for s in self.subscriptions],
            "revocations": self._revocations,
        }
        _write_atomic(self.state_path, json.dumps(doc, indent=2).encode())


def provision(image: str | os.PathLike[str], config: DeviceConfig, cloud_dir: str | os.PathLike[str],
              now: datetime, meter: str = "aidon") -> Issuer:
    """A device as an installer leaves it: ``config`` in its flash ``image``, subscribed by a new issuer
    (its state in ``cloud_dir``) and that issuer's token and key installed, so `apm run` protects the fuse."""
    from apm.io.storage.flash import Flash

    issuer = Issuer.keygen(Path(cloud_dir) / "cloud.json")
    issuer.subscribe(Installation(config.installation_id, config.serial, country=config.country,
                                  installation_type=config.installation_type,
                                  chargers=max(1, len(config.chargers)), meter=meter), now)
    flash = Flash(image)
    flash.write_config(config)
    flash.write_token(issuer.issue(config.serial, now))
    flash.write_issuer_key(issuer.public_key_pem)
    return issuer


def _bill(sub: Subscription, now: datetime) -> Subscription:
    """Pass the billing dates up to ``now``: renew an active subscription, end a cancelled one."""
    while sub.running and sub.paid_until <= now:
        billing_date = sub.paid_until
        if sub.status == CANCELLED:
            return replace(sub, status=ENDED, ended_at=billing_date)
        price = sub.next_price_nok if sub.next_price_nok is not None else sub.price_nok
        charge = Charge(billing_date, billing_date, add_months(sub.started, sub.periods_paid + 1), price, "paid")
        sub = replace(sub, periods_paid=sub.periods_paid + 1, price_nok=price, next_price_nok=None,
                      charges=(*sub.charges, charge))
    return sub


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _money(x: float) -> str:
    return f"{x:g}"


def _subscription_to_json(s: Subscription) -> dict[str, Any]:
    d = asdict(s)
    for key in ("started", "cancelled_at", "ended_at"):
        d[key] = iso_z(d[key]) if d[key] else None
    d["charges"] = [{**asdict(c), "at": iso_z(c.at), "period_start": iso_z(c.period_start),
                     "period_end": iso_z(c.period_end)} for c in s.charges]
    d["token_ids"] = [[jti, iso_z(until)] for jti, until in s.token_ids]
    return d


def _subscription_from_json(d: dict[str, Any]) -> Subscription:
    def t(x: str | None) -> datetime | None:
        return _parse_time(x) if x else None

    return Subscription(
        id=d["id"],
        installation=Installation(**d["installation"]),
        plan=d["plan"],
        started=_parse_time(d["started"]),
        price_nok=float(d["price_nok"]),
        periods_paid=int(d["periods_paid"]),
        next_price_nok=None if d["next_price_nok"] is None else float(d["next_price_nok"]),
        status=d["status"],
        cancelled_at=t(d["cancelled_at"]),
        ended_at=t(d["ended_at"]),
        charges=tuple(Charge(_parse_time(c["at"]), _parse_time(c["period_start"]), _parse_time(c["period_end"]),
                             float(c["amount_nok"]), c["outcome"]) for c in d["charges"]),
        token_ids=tuple((jti, _parse_time(until)) for jti, until in d["token_ids"]),
    )

