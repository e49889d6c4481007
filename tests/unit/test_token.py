"""Subscription token verification: the acceptance list of issue 5, each with its reason."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa

from apm.core import token as tok
from apm.core.token import Refusal, Revocation, TokenClaims

NOW = datetime(2030, 3, 10, 12, 0, tzinfo=UTC)
INST, SERIAL = "inst-42", "APM000123"


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return tok.generate_keypair()


@pytest.fixture(scope="module")
def other_keys() -> tuple[bytes, bytes]:
    return tok.generate_keypair()


def claims(**changes: object) -> TokenClaims:
    base = TokenClaims(
        installation_id=INST,
        serial=SERIAL,
        plan="premium",
        features=("eco", "fuse_protection"),
        country="NO",
        max_chargers=3,
        valid_until=NOW + timedelta(days=20),
        token_id="tok-1",
        issued_at=NOW - timedelta(days=10),
        not_before=NOW - timedelta(days=10),
    )
    return dataclasses.replace(base, **changes)


def check(token: str, public: bytes, now: datetime = NOW, revoked: frozenset[str] = frozenset()) -> tok.Verdict:
    return tok.verify(token, public, now=now, installation_id=INST, serial=SERIAL, revoked=revoked)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_valid_token_is_accepted_with_its_claims(keys):
    private, public = keys
    c = claims()
    v = check(tok.sign_subscription(c, private), public)
    assert v.ok and v.refusal is None
    assert v.claims == c
    assert "2030-03-30T12:00:00Z" in v.message


def test_expired_token_is_refused_at_valid_until(keys):
    private, public = keys
    token = tok.sign_subscription(claims(), private)
    until = NOW + timedelta(days=20)
    assert check(token, public, now=until - timedelta(seconds=1)).ok
    v = check(token, public, now=until)
    assert not v.ok and v.refusal is Refusal.EXPIRED
    assert "expired at 2030-03-30T12:00:00Z" in v.message
    assert v.claims is not None  # the signature did verify: the claims are there to show


def test_not_yet_valid_token_is_refused(keys):
    private, public = keys
    start = NOW + timedelta(days=2)
    token = tok.sign_subscription(claims(not_before=start, issued_at=start), private)
    v = check(token, public)
    assert not v.ok and v.refusal is Refusal.NOT_YET_VALID
    assert "not valid before" in v.message
    # A device clock a minute behind the cloud's still accepts a token issued just now.
    assert check(token, public, now=start - timedelta(minutes=1)).ok


def test_token_for_another_installation_is_refused(keys):
    private, public = keys
    v = check(tok.sign_subscription(claims(installation_id="inst-7"), private), public)
    assert not v.ok and v.refusal is Refusal.INSTALLATION
    assert "inst-7" in v.message and INST in v.message


def test_token_for_another_serial_is_refused(keys):
    private, public = keys
    v = check(tok.sign_subscription(claims(serial="APM999"), private), public)
    assert not v.ok and v.refusal is Refusal.SERIAL
    assert "APM999" in v.message


def test_tampered_payload_is_refused(keys):
    private, public = keys
    header, payload, signature = tok.sign_subscription(claims(), private).split(".")
    doc = json.loads(unb64(payload))
    doc["exp"] += 365 * 86400  # a free year
    forged = ".".join((header, b64(json.dumps(doc).encode()), signature))
    v = check(forged, public)
    assert not v.ok and v.refusal is Refusal.SIGNATURE


def test_every_single_character_change_of_the_payload_is_refused(keys):
    private, public = keys
    header, payload, signature = tok.sign_subscription(claims(), private).split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, ch in enumerate(payload):
        swapped = alphabet[(alphabet.index(ch) + 1) % len(alphabet)]
        v = check(".".join((header, payload[:i] + swapped + payload[i + 1:], signature)), public)
        assert not v.ok, f"change at {i} accepted"
        assert v.refusal in (Refusal.SIGNATURE, Refusal.MALFORMED)


def test_tampered_signature_is_refused(keys):
    private, public = keys
    header, payload, signature = tok.sign_subscription(claims(), private).split(".")
    raw = bytearray(unb64(signature))
    raw[10] ^= 0x01
    v = check(".".join((header, payload, b64(bytes(raw)))), public)
    assert not v.ok and v.refusal is Refusal.SIGNATURE
    assert "signature does not verify" in v.message


def test_token_signed_with_another_key_is_refused(keys, other_keys):
    _, public = keys
    other_private, _ = other_keys
    v = check(tok.sign_subscription(claims(), other_private), public)
    assert not v.ok and v.refusal is Refusal.SIGNATURE


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_refused(keys, alg):
    private, public = keys
    _, payload, _ = tok.sign_subscription(claims(), private).split(".")
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    for signature in ("", b64(b"x" * 64)):
        v = check(f"{header}.{payload}.{signature}", public)
        assert not v.ok and v.refusal is Refusal.ALGORITHM
        assert "only EdDSA" in v.message


def test_hs256_signed_with_the_public_key_is_refused(keys):
    """The classic confusion attack: the public key, which everyone has, used as an HMAC secret."""
    private, public = keys
    _, payload, _ = tok.sign_subscription(claims(), private).split(".")
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    mac = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    v = check(f"{header}.{payload}.{b64(mac)}", public)
    assert not v.ok and v.refusal is Refusal.ALGORITHM
    assert "'HS256'" in v.message


def _payload(c: TokenClaims) -> dict:
    return {"kind": "subscription", "installation_id": c.installation_id, "serial": c.serial, "plan": c.plan,
            "features": list(c.features), "country": c.country, "max_chargers": c.max_chargers,
            "exp": int(c.valid_until.timestamp()), "jti": c.token_id, "iat": int(c.issued_at.timestamp()),
            "nbf": int(c.not_before.timestamp())}


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256"])
def test_other_asymmetric_algorithms_are_refused(keys, alg):
    _, public = keys
    key = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else rsa.generate_private_key(65537, 2048)
    v = check(jwt.encode(_payload(claims()), key, algorithm=alg), public)
    assert not v.ok and v.refusal is Refusal.ALGORITHM


def test_ed448_signature_under_eddsa_header_is_refused(keys):
    _, public = keys
    v = check(jwt.encode(_payload(claims()), ed448.Ed448PrivateKey.generate(), algorithm="EdDSA"), public)
    assert not v.ok and v.refusal is Refusal.SIGNATURE


def test_revoked_token_is_refused(keys):
    private, public = keys
    token = tok.sign_subscription(claims(token_id="tok-9"), private)
    revocation = tok.sign_revocation(
        Revocation(INST, SERIAL, ("tok-9",), "rev-1", NOW, "payment declined"), private)
    revoked = tok.revoked_ids([revocation], public)
    assert revoked == {"tok-9"}
    v = check(token, public, revoked=revoked)
    assert not v.ok and v.refusal is Refusal.REVOKED
    assert "tok-9" in v.message
    # Another token of the same APM (a new subscription) is not touched by that revocation.
    assert check(tok.sign_subscription(claims(token_id="tok-10"), private), public, revoked=revoked).ok


def test_forged_revocation_counts_for_nothing(keys, other_keys):
    private, public = keys
    forged = tok.sign_revocation(Revocation(INST, SERIAL, ("tok-1",), "rev-x", NOW), other_keys[0])
    verdict = tok.verify_revocation(forged, public)
    assert not verdict.ok and verdict.refusal is Refusal.SIGNATURE
    assert tok.revoked_ids([forged, "garbage"], public) == frozenset()
    assert check(tok.sign_subscription(claims(), private), public, revoked=tok.revoked_ids([forged], public)).ok


def test_revocation_and_subscription_are_not_interchangeable(keys):
    private, public = keys
    revocation = tok.sign_revocation(Revocation(INST, SERIAL, ("tok-1",), "rev-1", NOW), private)
    v = check(revocation, public)
    assert not v.ok and v.refusal in (Refusal.KIND, Refusal.CLAIMS)
    rv = tok.verify_revocation(tok.sign_subscription(claims(), private), public)
    assert not rv.ok and rv.refusal in (Refusal.KIND, Refusal.CLAIMS)
    assert tok.token_kind(revocation) == "revocation"


def test_missing_and_mistyped_claims_are_refused(keys):
    private, public = keys
    p = _payload(claims())
    del p["jti"]
    v = check(jwt.encode(p, tok.load_private_key(private), algorithm="EdDSA"), public)
    assert not v.ok and v.refusal is Refusal.CLAIMS and "jti" in v.message
    p = {**_payload(claims()), "features": "eco"}
    v = check(jwt.encode(p, tok.load_private_key(private), algorithm="EdDSA"), public)
    assert not v.ok and v.refusal is Refusal.CLAIMS and "features" in v.message


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9.e30"])
def test_malformed_tokens_are_refused(keys, garbage):
    v = check(garbage, keys[1])
    assert not v.ok and v.refusal in (Refusal.MALFORMED, Refusal.ALGORITHM, Refusal.SIGNATURE)


def test_only_ed25519_issuer_keys_are_accepted():
    from cryptography.hazmat.primitives import serialization

    rsa_pem = rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(tok.IssuerKeyError, match="not an Ed25519"):
        tok.load_public_key(rsa_pem)
    with pytest.raises(tok.IssuerKeyError, match="not a PEM"):
        tok.load_public_key("hello")


def test_time_checks_use_the_callers_clock_not_the_hosts(keys):
    private, public = keys
    far = datetime(2045, 1, 1, tzinfo=UTC)
    token = tok.sign_subscription(claims(not_before=far, issued_at=far, valid_until=far + timedelta(days=30)),
                                  private)
    assert check(token, public, now=far + timedelta(days=1)).ok
    assert check(token, public, now=NOW).refusal is Refusal.NOT_YET_VALID


def test_verdict_and_claims_are_frozen(keys):
    private, public = keys
    v = check(tok.sign_subscription(claims(), private), public)
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.ok = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.claims.serial = "x"  # type: ignore[union-attr, misc]
