"""Subscription tokens and revocations: Ed25519-signed JWTs (alg EdDSA).

The device holds only the issuer's public key and checks a token offline. A subscription token
carries the claims of `TokenClaims`; a revocation (published by the cloud when a payment is
declined) names the token ids it withdraws and is signed with the same issuer key, so nobody else
can revoke or grant access.

Verification is explicit about everything an attacker controls: the algorithm is taken from our
allow-list (``["EdDSA"]``), never from the token; the key must be an Ed25519 key; time checks use
the caller's ``now`` (a simulated clock in tests). Every refusal is a `Refusal` with a message.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHMS = ["EdDSA"]  # the allow-list; never derived from the token's own header
ISSUER = "apm-cloud"
KIND_SUBSCRIPTION = "subscription"
KIND_REVOCATION = "revocation"
# A device clock a little behind the cloud's must not refuse a token issued a moment ago.
NOT_BEFORE_LEEWAY = timedelta(minutes=5)

_SUBSCRIPTION_CLAIMS = ("kind", "installation_id", "serial", "plan", "features", "country", "max_chargers",
                        "exp", "jti", "iat", "nbf")
_REVOCATION_CLAIMS = ("kind", "installation_id", "serial", "revokes", "jti", "iat")


class Refusal(enum.Enum):
    """Why a token was not accepted."""

    MALFORMED = "malformed"  # not a JWT at all
    ALGORITHM = "algorithm"  # alg other than EdDSA, e.g. none or HS256
    SIGNATURE = "signature"  # forged, tampered, or signed by another key
    CLAIMS = "claims"  # a claim missing or of the wrong type
    KIND = "kind"  # a revocation offered as a subscription token, or the reverse
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    INSTALLATION = "installation"  # issued for another installation
    SERIAL = "serial"  # issued for another APM
    REVOKED = "revoked"


class IssuerKeyError(ValueError):
    """An issuer key that cannot be used (not PEM, not Ed25519)."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    installation_id: str
    serial: str
    plan: str
    features: tuple[str, ...]
    country: str
    max_chargers: int
    valid_until: datetime  # exp: the end of the prepaid period
    token_id: str  # jti
    issued_at: datetime  # iat
    not_before: datetime  # nbf


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of checking a subscription token: accepted with its claims, or refused with why."""

    ok: bool
    message: str
    refusal: Refusal | None = None
    claims: TokenClaims | None = None  # set when the signature verified, even if refused for time or id


@dataclass(frozen=True, slots=True)
class Revocation:
    installation_id: str
    serial: str
    revokes: tuple[str, ...]  # token ids (jti) withdrawn
    revocation_id: str
    issued_at: datetime
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RevocationVerdict:
    ok: bool
    message: str
    refusal: Refusal | None = None
    revocation: Revocation | None = None


# --- keys ----------------------------------------------------------------------------------------


def generate_keypair() -> tuple[bytes, bytes]:
    """A new issuer key pair as (private PEM, public PEM)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return private_pem, public_pem_of(private)


def public_pem_of(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(pem: str | bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    if isinstance(pem, Ed25519PublicKey):
        return pem
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise IssuerKeyError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise IssuerKeyError(f"issuer key is a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_private_key(pem: str | bytes | Ed25519PrivateKey) -> Ed25519PrivateKey:
    if isinstance(pem, Ed25519PrivateKey):
        return pem
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IssuerKeyError(f"not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IssuerKeyError(f"issuer key is a {type(key).__name__}, not an Ed25519 private key")
    return key


# --- signing (the issuer's side) -----------------------------------------------------------------


def new_token_id() -> str:
    return uuid.uuid4().hex


def sign_subscription(claims: TokenClaims, private_key: str | bytes | Ed25519PrivateKey) -> str:
    payload = {
        "iss": ISSUER,
        "kind": KIND_SUBSCRIPTION,
        "installation_id": claims.installation_id,
        "serial": claims.serial,
        "plan": claims.plan,
        "features": list(claims.features),
        "country": claims.country,
        "max_chargers": claims.max_chargers,
        "exp": _epoch(claims.valid_until),
        "jti": claims.token_id,
        "iat": _epoch(claims.issued_at),
        "nbf": _epoch(claims.not_before),
    }
    return jwt.encode(payload, load_private_key(private_key), algorithm="EdDSA")


def sign_revocation(revocation: Revocation, private_key: str | bytes | Ed25519PrivateKey) -> str:
    payload = {
        "iss": ISSUER,
        "kind": KIND_REVOCATION,
        "installation_id": revocation.installation_id,
        "serial": revocation.serial,
        "revokes": list(revocation.revokes),
        "jti": revocation.revocation_id,
        "iat": _epoch(revocation.issued_at),
        "reason": revocation.reason,
    }
    return jwt.encode(payload, load_private_key(private_key), algorithm="EdDSA")


# --- verification (the device's side) ------------------------------------------------------------


def verify(
    token: str,
    public_key: str | bytes | Ed25519PublicKey,
    *,
    now: datetime,
    installation_id: str,
    serial: str,
    revoked: Collection[str] = (),
) -> Verdict:
    """Check a subscription token for this device at ``now``; ``revoked`` holds revoked token ids."""
    payload, refusal = _decode(token, public_key, _SUBSCRIPTION_CLAIMS, KIND_SUBSCRIPTION)
    if refusal is not None:
        return Verdict(False, refusal[1], refusal[0])
    try:
        claims = _subscription_claims(payload)
    except (TypeError, ValueError, OverflowError) as exc:
        return Verdict(False, f"bad claim: {exc}", Refusal.CLAIMS)

    def refuse(why: Refusal, message: str) -> Verdict:
        return Verdict(False, message, why, claims)

    if claims.installation_id != installation_id:
        return refuse(Refusal.INSTALLATION, f"token is for installation {claims.installation_id!r}, "
                                            f"this APM belongs to {installation_id!r}")
    if claims.serial != serial:
        return refuse(Refusal.SERIAL, f"token is for APM {claims.serial!r}, this APM is {serial!r}")
    if claims.token_id in revoked:
        return refuse(Refusal.REVOKED, f"token {claims.token_id} was revoked by the issuer")
    now = _aware(now)
    if now + NOT_BEFORE_LEEWAY < claims.not_before:
        return refuse(Refusal.NOT_YET_VALID, f"token is not valid before {iso_z(claims.not_before)}")
    if now >= claims.valid_until:
        return refuse(Refusal.EXPIRED, f"token expired at {iso_z(claims.valid_until)}")
    return Verdict(True, f"valid until {iso_z(claims.valid_until)}", None, claims)


def verify_revocation(token: str, public_key: str | bytes | Ed25519PublicKey) -> RevocationVerdict:
    """Check a revocation's signature and form. A revocation has no expiry: it stays in force."""
    payload, refusal = _decode(token, public_key, _REVOCATION_CLAIMS, KIND_REVOCATION)
    if refusal is not None:
        return RevocationVerdict(False, refusal[1], refusal[0])
    try:
        revokes = payload["revokes"]
        if not isinstance(revokes, list) or not all(isinstance(x, str) for x in revokes):
            raise TypeError("revokes must be a list of token ids")
        revocation = Revocation(
            installation_id=_str(payload, "installation_id"),
            serial=_str(payload, "serial"),
            revokes=tuple(revokes),
            revocation_id=_str(payload, "jti"),
            issued_at=_from_epoch(payload, "iat"),
            reason=str(payload.get("reason", "")),
        )
    except (TypeError, ValueError, OverflowError) as exc:
        return RevocationVerdict(False, f"bad claim: {exc}", Refusal.CLAIMS)
    return RevocationVerdict(True, f"revokes {', '.join(revocation.revokes) or 'nothing'}", None, revocation)


def verify_revocation_for(
    token: str, public_key: str | bytes | Ed25519PublicKey, *, serial: str
) -> RevocationVerdict:
    """`verify_revocation`, and the revocation must name this APM: one for another serial is refused
    (`Refusal.SERIAL`) wherever a revocation is taken in (``apm token install``, the device's MQTT topic)."""
    verdict = verify_revocation(token, public_key)
    rv = verdict.revocation
    if verdict.ok and rv is not None and rv.serial != serial:
        return RevocationVerdict(False, f"revocation is for APM {rv.serial!r}, this APM is {serial!r}",
                                 Refusal.SERIAL, rv)
    return verdict


def revoked_ids(revocations: Collection[str], public_key: str | bytes | Ed25519PublicKey) -> frozenset[str]:
    """The token ids withdrawn by those of ``revocations`` that verify; forged ones count for nothing."""
    out: set[str] = set()
    for token in revocations:
        verdict = verify_revocation(token, public_key)
        if verdict.ok and verdict.revocation is not None:
            out.update(verdict.revocation.revokes)
    return frozenset(out)


def token_kind(token: str) -> str | None:
    """The ``kind`` claim read WITHOUT verification (to route a token to the right check), or None."""
    payload = peek(token)
    kind = payload.get("kind") if payload else None
    return kind if isinstance(kind, str) else None


def peek(token: str) -> dict[str, Any] | None:
    """The payload read WITHOUT verification, for display only; None if it is not a JWT."""
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return payload if isinstance(payload, dict) else None


def _decode(
    token: str, public_key: str | bytes | Ed25519PublicKey, required: tuple[str, ...], kind: str
) -> tuple[dict[str, Any], tuple[Refusal, str] | None]:
    try:
        key = load_public_key(public_key)
    except IssuerKeyError as exc:
        return {}, (Refusal.SIGNATURE, f"cannot verify: {exc}")
    token = token.strip()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        return {}, (Refusal.MALFORMED, f"not a JWT: {exc}")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        return {}, (Refusal.ALGORITHM, f"algorithm {alg!r} is not accepted (only {', '.join(ALGORITHMS)})")
    try:
        payload = jwt.decode(
            token,
            key,
            algorithms=ALGORITHMS,
            # Time claims are checked against the caller's clock below, not the host's.
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False,
                     "verify_iss": False, "require": list(required)},
        )
    except jwt.InvalidAlgorithmError as exc:
        return {}, (Refusal.ALGORITHM, f"algorithm refused: {exc}")
    except jwt.InvalidSignatureError:
        return {}, (Refusal.SIGNATURE,
                    "signature does not verify with the issuer key (forged, tampered, or signed by another key)")
    except jwt.MissingRequiredClaimError as exc:
        return {}, (Refusal.CLAIMS, f"claim {exc.claim!r} is missing")
    except jwt.PyJWTError as exc:
        return {}, (Refusal.MALFORMED, f"cannot decode: {exc}")
    if payload.get("kind") != kind:
        return {}, (Refusal.KIND, f"a {payload.get('kind')!r} token, expected a {kind} token")
    return payload, None


def _subscription_claims(payload: dict[str, Any]) -> TokenClaims:
    features = payload["features"]
    if not isinstance(features, list) or not all(isinstance(x, str) for x in features):
        raise TypeError("features must be a list of strings")
    max_chargers = payload["max_chargers"]
    if isinstance(max_chargers, bool) or not isinstance(max_chargers, int) or max_chargers < 0:
        raise TypeError("max_chargers must be a non-negative integer")
    return TokenClaims(
        installation_id=_str(payload, "installation_id"),
        serial=_str(payload, "serial"),
        plan=_str(payload, "plan"),
        features=tuple(features),
        country=_str(payload, "country"),
        max_chargers=max_chargers,
        valid_until=_from_epoch(payload, "exp"),
        token_id=_str(payload, "jti"),
        issued_at=_from_epoch(payload, "iat"),
        not_before=_from_epoch(payload, "nbf"),
    )


def _str(payload: dict[str, Any], name: str) -> str:
    value = payload[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


def _from_epoch(payload: dict[str, Any], name: str) -> datetime:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a NumericDate (seconds since 1970)")
    return datetime.fromtimestamp(value, UTC)


def _epoch(t: datetime) -> int:
    return int(_aware(t).timestamp())


def _aware(t: datetime) -> datetime:
    """Naive datetimes are taken as UTC, so a simulated clock may be written either way."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def iso_z(t: datetime) -> str:
    """UTC ISO 8601 with a Z, as every time the device shows or publishes."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")
