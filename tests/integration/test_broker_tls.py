"""TLS with a configured CA to an external broker (mosquitto), for every link the device opens: its own
link, and (through `apm run`) the balancer's and Smart eco's; a broker whose certificate another CA
signed is refused (issue 13, item 5)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apm.core.config import BrokerConfig
from apm.io.mqtt.link import Backoff, LinkError, MqttLink
from apm.io.mqtt.topics import Topics
from tests.mqtt_broker import Mosquitto

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
T = Topics("APMTLS01")
USER, PASSWORD = "apm-device", "s3cret-for-the-test"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path, name: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("tls")
    ca, ca_key, ca_cert = make_ca(d, "test-ca")
    other, _, _ = make_ca(d, "other-ca")
    cert, key = make_server_cert(d, ca_key, ca_cert)
    with Mosquitto(d / "mosquitto", users={USER: PASSWORD}, tls=(cert, key)) as broker:
        yield broker, ca, other


def _connect(url: str, ca: Path) -> MqttLink:
    return MqttLink.for_device(T, BrokerConfig(url=url, username=USER, password=PASSWORD, ca_file=str(ca)),
                               backoff=Backoff(0.05, 0.2), timeout_s=5)


def test_the_device_link_verifies_the_broker_with_the_configured_ca(tls_broker) -> None:
    broker, ca, other = tls_broker
    assert broker.url.startswith("mqtts://")

    async def main() -> None:
        async with _connect(broker.url, ca) as link:
            assert await link.wait_connected(15), link.stats.last_error
        # A CA file alone means TLS, even on an mqtt:// URL.
        plain = broker.url.replace("mqtts://", "mqtt://")
        async with _connect(plain, ca) as link:
            assert link.address.tls
            assert await link.wait_connected(15), link.stats.last_error
        async with _connect(broker.url, other) as link:
            assert not await link.wait_connected(1.5)
            assert "certificate" in (link.stats.last_error or "").lower()

    asyncio.run(main())


def test_an_unreadable_ca_file_is_an_error_at_once(tmp_path: Path) -> None:
    with pytest.raises(LinkError, match="CA file"):
        _connect("mqtts://127.0.0.1:1", tmp_path / "missing.pem")


CONFIG = """
serial = "APMTLS01"
[grid]
fuse_a = 25
[[chargers]]
id = "garage"
"""


def _apm_run(tmp_path: Path, url: str, ca: Path, duration: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "APM_FLASH": str(tmp_path / "flash.img"),
           "APM_SERIAL_CACHE": str(tmp_path / "serial.json")}
    return subprocess.run(
        [sys.executable, "-m", "apm", "run", "--config", str(cfg), "--sim", "aidon:3p-tn", "--plain",
         "--duration", duration, "--broker", url, "--username", USER, "--password", PASSWORD, "--ca-file", str(ca),
         "--prices", str(ROOT / "apm" / "core" / "eco" / "data" / "no1-sample-week.csv")],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def test_apm_run_opens_every_link_with_tls_and_the_ca_the_eco_link_included(tls_broker, tmp_path: Path) -> None:
    broker, ca, other = tls_broker
    r = _apm_run(tmp_path, broker.url, ca, "4")
    assert r.returncode == 0, r.stderr
    for client in ("apm-APMTLS01", "apm-APMTLS01-balancer", "apm-APMTLS01-eco"):
        assert f"MQTT connected to {broker.url} as {client}\n" in r.stderr
    assert PASSWORD not in r.stderr

    refused = _apm_run(tmp_path, broker.url, other, "3")
    assert refused.returncode == 1
    assert "MQTT connected" not in refused.stderr
    assert "certificate verify failed" in refused.stderr
    assert f"never reached the broker at {broker.url}" in refused.stderr


def test_apm_run_refuses_a_missing_ca_file_as_bad_input(tmp_path: Path) -> None:
    r = _apm_run(tmp_path, "mqtts://127.0.0.1:1", tmp_path / "nope.pem", "1")
    assert r.returncode == 2
    assert "CA file" in r.stderr and "Traceback" not in r.stderr


def test_the_configuration_takes_a_ca_file() -> None:
    from apm.core import config as cfg
    c = cfg.loads('[broker]\nurl = "mqtts://nas.local:8883"\nca_file = "/etc/apm/ca.pem"\n')
    assert c.broker.ca_file == "/etc/apm/ca.pem"
    assert cfg.loads(cfg.dumps(c)) == c
    with pytest.raises(cfg.ConfigError, match="broker.ca_file"):
        cfg.loads("[broker]\nca_file = 3\n")
