"""`apm flash|token|cloud|info` run as subprocesses: each on success and on bad input.

Bad input must give a precise message on stderr, a non-zero exit status, and leave the image as it was.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from apm.core import config as cfg
from apm.core import token as tok
from apm.io.storage.flash import Flash, status_path
from sim.cloud import Installation, Issuer

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)

GOOD = """\
serial = "APM042"
installation_id = "inst-42"

[grid]
network = "IT"
fuse_a = 40

[[chargers]]
id = "garage"
rotation = ["L2", "L3", "L1"]

[[chargers]]
id = "carport"
phases = 1
max_a = 16

[balancer]
hold_s = 20
"""


def apm(*args: str | Path, cwd: Path, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("APM_FLASH", "APM_CLOUD_STATE")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["XDG_DATA_HOME"] = str(cwd / "xdg")  # never the user's own image
    proc = subprocess.run([sys.executable, "-m", "apm", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def refused(*args: str | Path, cwd: Path, says: str, status: int = 2) -> subprocess.CompletedProcess[str]:
    """Bad input: exit status 2 and one line ``apm CMD: what is wrong`` on stderr."""
    proc = apm(*args, cwd=cwd, check=None)
    assert proc.returncode == status, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith(f"apm {args[0]}"), proc.stderr
    assert says in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture()
def box(tmp_path: Path) -> Path:
    """A folder with a good config, an image holding it, and an issuer with a subscription for it."""
    # Built in-process to keep the suite fast; the commands that build them have tests of their own.
    (tmp_path / "good.toml").write_text(GOOD)
    Flash(tmp_path / "flash.img").write_config(cfg.loads(GOOD))
    return tmp_path


@pytest.fixture()
def cloud(box: Path) -> Path:
    issuer = Issuer.keygen(box / "cloud.json")
    issuer.subscribe(Installation("inst-42", "APM042", chargers=2, meter="aidon"), NOW)
    return box


def issue(box: Path, *extra: str, now: datetime = NOW, serial: str = "APM042") -> str:
    return apm("cloud", "issue", "--state", "cloud.json", "--serial", serial, "--now", now.isoformat(), *extra,
               cwd=box).stdout.strip()


# --- flash ---------------------------------------------------------------------------------------


def test_flash_write_and_read_round_trip(box):
    out = apm("flash", "read", "--image", "flash.img", cwd=box).stdout
    assert cfg.loads(out) == cfg.loads(GOOD)
    assert tomllib.loads(out)["balancer"] == {"hold_s": 20}
    # --image before the action, and $APM_FLASH, work too.
    assert apm("flash", "--image", "flash.img", "read", cwd=box).stdout == out


def test_flash_write_reports_what_it_stored(tmp_path):
    (tmp_path / "good.toml").write_text(GOOD)
    out = apm("flash", "write", "good.toml", "--image", "flash.img", cwd=tmp_path).stdout
    assert "APM042" in out and "2 chargers" in out and "40 A IT" in out and "version 1" in out


def test_flash_uses_the_per_user_default_image(tmp_path):
    (tmp_path / "good.toml").write_text(GOOD)
    apm("flash", "write", "good.toml", cwd=tmp_path)
    assert (tmp_path / "xdg" / "apm" / "flash.img").exists()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('serial = "x\n[grid', "not valid TOML"),
        ('serial = "APM1"\nfuse_a = 25\n', "apm flash write: fuse_a: unknown setting"),
        ('[grid]\nfuse = 25\n', "apm flash write: grid.fuse: unknown setting (did you mean fuse_a?)"),
        ('[grid]\nfuse_a = 500\n', "apm flash write: grid.fuse_a: 500 A is out of range (6..400 A)"),
        ('[grid]\nfuse_a = 3\n', "grid.fuse_a: 3 A is out of range"),
        ('[grid]\nnetwork = "TT"\n', "grid.network: 'TT' is not one of IT, TN"),
        ('[grid]\nct_ratio = -1\n', "grid.ct_ratio: -1 is out of range (0.01..10000)"),
        ('[[chargers]]\nid = "a"\nphases = 2\n', "chargers[0].phases: 2 is not one of 1, 3"),
        ('[[chargers]]\nid = "a"\nrotation = ["L1", "L2", "L2"]\n', "chargers[0].rotation"),
        ('[[chargers]]\nid = "a"\nmax_a = 5\n', "chargers[0].max_a: 5 A is out of range (6..80 A)"),
        ("".join(f'[[chargers]]\nid = "c{i}"\n' for i in range(4)), "chargers: 4 entries; at most 3"),
        # what `apm run` used to die on after `apm flash write` had stored it
        ("[balancer]\nhold_sec = 5\n", "apm flash write: balancer.hold_sec: unknown setting"),
        ("[balancer]\nramp_up_s = 90\n", "apm flash write: balancer.ramp_up_s: unknown setting"),
        ("[balancer]\nmin_a = -3\n", "apm flash write: balancer.min_a: -3 A is out of range (6..32 A)"),
        ("[balancer]\ndecrease_deadband_a = 50\n", "apm flash write: balancer.decrease_deadband_a: 50 A is out of "
                                                  "range (0..10 A)"),
        ("[balancer]\ndecrease_deadband_a = 3\n", "apm flash write: balancer.decrease_deadband_a: 3 A must stay "
                                                 "below grid.safety_margin_a (2 A)"),
        # the fallback must not trip the fuse by itself (issue 13 item 2), nor the other safety relations
        ("fixed_current_a = 63\n[grid]\nfuse_a = 16\n", "apm flash write: fixed_current_a: 63 A is above "
                                                         "grid.fuse_a - grid.safety_margin_a (16 - 2 = 14 A)"),
        ("fixed_current_a = 23.5\n", "fixed_current_a: 23.5 A is above grid.fuse_a - grid.safety_margin_a"),
        ("[balancer]\nstale_after_s = 61\n", "apm flash write: balancer.stale_after_s: 61 s is out of range "
                                             "(10..60 s)"),
        ("[balancer]\ndecrease_deadband_a = 2\n", "balancer.decrease_deadband_a: 2 A must stay below "
                                                  "grid.safety_margin_a (2 A)"),
        ("[balancer]\nmin_a = 5\n", "apm flash write: balancer.min_a: 5 A is out of range (6..32 A)"),
        ("[headroom]\nrise_threshold = 100\n", "apm flash write: headroom.rise_threshold: unknown setting"),
        ("[headroom]\ni2_power_factor = 0\n", "apm flash write: headroom.i2_power_factor: 0 is out of range"),
    ],
)
def test_flash_write_refuses_bad_config_and_keeps_the_image(box, text, says):
    before = (box / "flash.img").read_bytes()
    (box / "bad.toml").write_text(text)
    proc = refused("flash", "write", "bad.toml", "--image", "flash.img", cwd=box, says=says)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("apm flash write: ")
    assert "bad.toml" in proc.stderr
    assert (box / "flash.img").read_bytes() == before


def test_flash_write_help_lists_every_key_from_the_schema(tmp_path):
    out = apm("flash", "write", "--help", cwd=tmp_path).stdout
    for k in cfg.schema_keys():
        assert f"  {k.path} " in out, k.path
    assert "balancer.hold_s " in out and "0..600 s" in out


def test_flash_write_missing_file(box):
    refused("flash", "write", "nope.toml", "--image", "flash.img", cwd=box, says="nope.toml: no such file")


def _corrupt(image: Path) -> bytes:
    data = bytearray(image.read_bytes())
    data[0:8] = b"XXXXXXXX"  # the only written slot
    image.write_bytes(bytes(data))
    return bytes(data)


def test_corrupt_image_is_refused_by_every_command_but_erase(cloud):
    token = issue(cloud)
    image = cloud / "flash.img"
    before = _corrupt(image)
    for args in (("flash", "read"), ("flash", "verify"), ("flash", "write", "good.toml"), ("token", "show"),
                 ("token", "install", token), ("info",)):
        refused(*args, "--image", image, cwd=cloud, says="corrupt image")
        assert image.read_bytes() == before, args
    assert "erased" in apm("flash", "erase", "--image", image, cwd=cloud).stdout
    assert "holds no configuration" in refused("flash", "read", "--image", image, cwd=cloud, says="blank").stderr


def test_flash_read_of_missing_image(tmp_path):
    refused("flash", "read", "--image", "none.img", cwd=tmp_path, says="no image at none.img")


def test_flash_erase(box):
    apm("flash", "erase", "--image", "flash.img", cwd=box)
    refused("flash", "read", "--image", "flash.img", cwd=box, says="holds no configuration (blank)")
    assert "contents: blank" in apm("flash", "verify", "--image", "flash.img", cwd=box).stdout


def test_flash_erase_where_no_image_can_be(box):
    (box / "afile").write_text("")
    refused("flash", "erase", "--image", "afile/flash.img", cwd=box, says="apm flash erase:")


def test_flash_verify(cloud):
    apm("token", "install", issue(cloud), "--issuer-key", "cloud.json.pub.pem", "--image", "flash.img", cwd=cloud)
    out = apm("flash", "verify", "--image", "flash.img", cwd=cloud).stdout
    assert "slot 0: valid, version 1" in out and "slot 1: valid, version 2" in out and "(current)" in out
    assert "issuer key: Ed25519 public key" in out
    assert "token: subscription valid" in out


def test_flash_verify_reports_a_bad_slot_but_passes_with_the_other(box):
    apm("flash", "write", "good.toml", "--image", "flash.img", cwd=box)  # unchanged: still one version
    Flash(box / "flash.img").outbox_append({"x": 1})  # version 2 in slot 1
    data = bytearray((box / "flash.img").read_bytes())
    data[256 * 1024 + 40] ^= 0xFF
    (box / "flash.img").write_bytes(bytes(data))
    out = apm("flash", "verify", "--image", "flash.img", cwd=box).stdout
    assert "slot 1: corrupt, version 2" in out and "CRC mismatch" in out
    assert "slot 0: valid, version 1" in out and "(current)" in out


def test_flash_verify_fails_on_an_unusable_stored_key(box):
    Flash(box / "flash.img").write_issuer_key("-----BEGIN PUBLIC KEY-----\nbroken\n-----END PUBLIC KEY-----\n")
    refused("flash", "verify", "--image", "flash.img", cwd=box, says="the stored issuer key is unusable")


def test_flash_verify_missing_image(tmp_path):
    refused("flash", "verify", "--image", "none.img", cwd=tmp_path, says="no image at none.img")


# --- token ---------------------------------------------------------------------------------------


def test_token_install_from_string_and_file_then_show(cloud):
    token = issue(cloud)
    out = apm("token", "install", token, "--issuer-key", "cloud.json.pub.pem", "--image", "flash.img",
              cwd=cloud).stdout
    assert "installed token" in out and "subscription: valid" in out
    (cloud / "t2.jwt").write_text(issue(cloud) + "\n")
    apm("token", "install", "t2.jwt", "--image", "flash.img", cwd=cloud)  # the key is in flash now
    assert Flash(cloud / "flash.img").read().token == (cloud / "t2.jwt").read_text().strip()
    show = apm("token", "show", "--image", "flash.img", cwd=cloud).stdout
    assert "APM042" in show and "eco, fuse_protection" in show and "subscription     valid" in show
    doc = json.loads(apm("token", "show", "--json", "--image", "flash.img", cwd=cloud).stdout)
    assert doc["claims"]["serial"] == "APM042" and doc["subscription"]["state"] == "valid"


def test_token_install_refusals_keep_the_image(cloud):
    good = issue(cloud)
    # Another issuer (forged), an expired token, another APM, garbage, a missing key.
    apm("cloud", "keygen", "--state", "evil.json", cwd=cloud)
    apm("cloud", "subscribe", "--state", "evil.json", "--config", "good.toml", "--meter", "aidon", cwd=cloud)
    forged = apm("cloud", "issue", "--state", "evil.json", "--serial", "APM042", cwd=cloud).stdout.strip()
    long_ago = NOW - timedelta(days=90)
    expired = tok.sign_subscription(
        tok.TokenClaims("inst-42", "APM042", "premium", ("eco",), "NO", 3, long_ago + timedelta(days=30), "old-1",
                        long_ago, long_ago),
        (cloud / "cloud.json.key.pem").read_bytes())
    image = cloud / "flash.img"
    refused("token", "install", good, "--image", image, cwd=cloud, says="no issuer public key stored")
    apm("token", "install", good, "--issuer-key", "cloud.json.pub.pem", "--image", image, cwd=cloud)
    before = image.read_bytes()
    refused("token", "install", forged, "--image", image, cwd=cloud, says="token refused (signature)")
    refused("token", "install", expired, "--image", image, cwd=cloud, says="token refused (expired)")
    refused("token", "install", "not-a-token", "--image", image, cwd=cloud, says="neither a file nor a token")
    refused("token", "install", "a.b.c", "--image", image, cwd=cloud, says="token refused (malformed)")
    refused("token", "install", good, "--issuer-key", "good.toml", "--image", image, cwd=cloud,
            says="--issuer-key good.toml: not a PEM public key")
    assert image.read_bytes() == before


def test_token_install_checks_the_serial_and_installation(cloud):
    apm("cloud", "subscribe", "--state", "cloud.json", "--serial", "APM777", "--installation", "inst-42",
        "--meter", "kamstrup", "--now", NOW.isoformat(), cwd=cloud)
    other = issue(cloud, serial="APM777")
    refused("token", "install", other, "--issuer-key", "cloud.json.pub.pem", "--image", "flash.img", cwd=cloud,
            says="token refused (serial): token is for APM 'APM777', this APM is 'APM042'")


def test_token_install_needs_a_configuration(cloud):
    apm("flash", "erase", "--image", "flash.img", cwd=cloud)
    refused("token", "install", issue(cloud), "--issuer-key", "cloud.json.pub.pem", "--image", "flash.img",
            cwd=cloud, says="holds no configuration")
    refused("token", "install", issue(cloud), "--image", "missing.img", cwd=cloud, says="no image at missing.img")


def test_revocation_installed_with_token_install_revokes(cloud):
    token = issue(cloud)
    apm("token", "install", token, "--issuer-key", "cloud.json.pub.pem", "--image", "flash.img", cwd=cloud)
    later = (NOW + timedelta(hours=1)).isoformat()
    apm("cloud", "decline", "--state", "cloud.json", "--serial", "APM042", "--now", later, "--out", "rev.jwt",
        cwd=cloud)
    out = apm("token", "install", "rev.jwt", "--image", "flash.img", cwd=cloud).stdout
    assert "stored revocation" in out and "subscription: revoked" in out
    refused("token", "install", token, "--image", "flash.img", cwd=cloud, says="token refused (revoked)")
    assert "revoked" in apm("token", "show", "--image", "flash.img", cwd=cloud).stdout


def test_token_show_without_token(box):
    refused("token", "show", "--image", "flash.img", cwd=box, says="no token installed")


def test_token_show_bad_clock(box):
    refused("token", "show", "--now", "yesterday", "--image", "flash.img", cwd=box, says="not an ISO 8601 time")


def test_token_show_on_simulated_clock(cloud):
    apm("token", "install", issue(cloud), "--issuer-key", "cloud.json.pub.pem", "--image", "flash.img", cwd=cloud)
    late = (NOW + timedelta(days=40)).isoformat()
    assert "subscription     expired" in apm("token", "show", "--now", late, "--image", "flash.img", cwd=cloud).stdout


# --- cloud ---------------------------------------------------------------------------------------


def test_cloud_keygen(tmp_path):
    out = apm("cloud", "keygen", "--state", "c.json", cwd=tmp_path).stdout
    assert "c.json.pub.pem" in out
    assert "BEGIN PUBLIC KEY" in (tmp_path / "c.json.pub.pem").read_text()
    assert "BEGIN PRIVATE KEY" in (tmp_path / "c.json.key.pem").read_text()
    refused("cloud", "keygen", "--state", "c.json", cwd=tmp_path, says="refusing to replace the issuer key")
    refused("cloud", "keygen", "--state", "nodir/c.json", cwd=tmp_path, says="nodir: no such directory")


def test_cloud_subscribe(box):
    apm("cloud", "keygen", "--state", "cloud.json", cwd=box)
    out = apm("cloud", "subscribe", "--state", "cloud.json", "--serial", "APM1", "--installation", "i1",
              "--meter", "Kaifa", "--price", "49", "--now", "2030-01-31T10:00:00Z", cwd=box).stdout
    assert "active, paid until 2030-02-28T10:00:00Z" in out and "49 NOK/month" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--country", "SE"), "not eligible: country 'SE' is not eligible (Norway only)"),
        (("--type", "BUSINESS"), "HOME only"),
        (("--chargers", "4"), "4 chargers; at most 3"),
        (("--meter", "echelon"), "meter 'echelon' is not supported"),
    ],
)
def test_cloud_subscribe_refuses_ineligible(box, args, says):
    apm("cloud", "keygen", "--state", "cloud.json", cwd=box)
    base = {"--serial": "APM1", "--installation": "i1", "--meter": "aidon"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    refused("cloud", "subscribe", "--state", "cloud.json", *[x for kv in base.items() for x in kv], cwd=box,
            says=says)


def test_cloud_subscribe_without_state_or_serial(box):
    refused("cloud", "subscribe", "--state", "none.json", "--config", "good.toml", "--meter", "aidon", cwd=box,
            says="run `apm cloud keygen --state none.json` first")
    apm("cloud", "keygen", "--state", "cloud.json", cwd=box)
    refused("cloud", "subscribe", "--state", "cloud.json", "--meter", "aidon", cwd=box, says="--serial and")


def test_cloud_issue(cloud):
    token = issue(cloud, "--out", "t.jwt")
    assert token == ""  # with --out the token goes to the file
    assert (cloud / "t.jwt").read_text().count(".") == 2


def test_cloud_issue_refusals(cloud):
    refused("cloud", "issue", "--state", "cloud.json", "--serial", "APM9", cwd=cloud, says="APM9 has no subscription")
    refused("cloud", "issue", "--state", "cloud.json", "--serial", "APM042", "--meter", "echelon", cwd=cloud,
            says="not eligible: meter 'echelon'")
    refused("cloud", "issue", "--state", "cloud.json", "--serial", "APM042", "--now", "2001-01-01", cwd=cloud,
            says="clock went backwards")
    refused("cloud", "issue", "--state", "cloud.json", "--serial", "APM042", "--now", "soon", cwd=cloud,
            says="not an ISO 8601 time")


def test_cloud_cancel(cloud):
    out = apm("cloud", "cancel", "--state", "cloud.json", "--serial", "APM042", cwd=cloud).stdout
    assert "cancelled, access until" in out
    refused("cloud", "cancel", "--state", "cloud.json", "--serial", "APM042", cwd=cloud, says="already cancelled")


def test_cloud_decline(cloud):
    proc = apm("cloud", "decline", "--state", "cloud.json", "--serial", "APM042", cwd=cloud)
    assert proc.stdout.strip().count(".") == 2 and "declined" in proc.stderr
    refused("cloud", "decline", "--state", "cloud.json", "--serial", "APM042", cwd=cloud,
            says="no running subscription")


def test_cloud_price_and_show(cloud):
    out = apm("cloud", "price", "--state", "cloud.json", "--serial", "APM042", "--price", "59", cwd=cloud).stdout
    assert "59 NOK from" in out
    show = apm("cloud", "show", "--state", "cloud.json", "--serial", "APM042", cwd=cloud).stdout
    assert "39 NOK  paid" in show and "tokens issued: 0" in show
    refused("cloud", "price", "--state", "cloud.json", "--serial", "APM042", "--price", "-1", cwd=cloud,
            says="price -1.0 is negative")
    refused("cloud", "show", "--state", "cloud.json", "--serial", "APM9", cwd=cloud, says="APM9 has no subscription")


# --- info ----------------------------------------------------------------------------------------


def _set_port_and_broker(box: Path, port: str | None, url: str | None) -> None:
    text = GOOD.replace('installation_id = "inst-42"\n', 'installation_id = "inst-42"\n' +
                        (f'port = "{port}"\n' if port else ""))
    if url:
        text += f'\n[broker]\nurl = "{url}"\n'
    (box / "c.toml").write_text(text)
    apm("flash", "write", "c.toml", "--image", "flash.img", cwd=box)


def test_info_with_reachable_port_and_broker(cloud):
    master, slave = os.openpty()
    tty = os.ttyname(slave)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        _set_port_and_broker(cloud, tty, f"mqtt://127.0.0.1:{listener.getsockname()[1]}")
        apm("token", "install", issue(cloud), "--issuer-key", "cloud.json.pub.pem", "--image", "flash.img",
            cwd=cloud)
        # As a running device writes it: its pid (this process stands in for it), a frame seconds ago.
        last_frame = datetime.fromtimestamp(time.time() - 2, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status_path(cloud / "flash.img").write_text(json.dumps(
            {"meter": "aidon", "han_state": "fresh", "last_frame_at": last_frame, "pid": os.getpid()}))
        out = apm("info", "--image", "flash.img", cwd=cloud).stdout
    finally:
        listener.close()
        os.close(master)
        os.close(slave)
    assert "firmware:       apm 0.1.0" in out
    assert "serial:         APM042" in out
    assert "detected meter: aidon" in out
    assert f"han state:      fresh (last frame {last_frame})" in out
    assert "subscription:   valid" in out
    assert "garage: 3-phase, max 32 A, rotation L2 L3 L1" in out and "carport: 1-phase, max 16 A" in out
    assert f"port:           {tty}: present, opens" in out
    assert ": reachable (TCP connect to 127.0.0.1:" in out


def test_info_with_missing_port_dead_broker_and_no_han_data(box):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again before apm tries it
    _set_port_and_broker(box, "/dev/ttyAPM-missing", f"mqtt://127.0.0.1:{dead}")
    doc = json.loads(apm("info", "--json", "--image", "flash.img", cwd=box).stdout)
    assert doc["port"] == "/dev/ttyAPM-missing: missing"
    assert doc["broker"].startswith(f"mqtt://127.0.0.1:{dead}: unreachable")
    assert doc["detected_meter"] == "no HAN data yet" and doc["han_state"] == "no HAN data yet"
    assert doc["subscription"].startswith("none")


def test_info_defaults(box):
    out = apm("info", "--image", "flash.img", cwd=box).stdout
    assert "broker:         embedded broker (started by apm run)" in out
    assert "port:           not configured" in out


def test_info_on_a_blank_device(tmp_path):
    out = apm("info", "--image", "new.img", cwd=tmp_path).stdout
    assert "missing: blank device" in out and "none stored" in out


def test_info_bad_clock(box):
    refused("info", "--now", "noon", "--image", "flash.img", cwd=box, says="apm info: --now 'noon'")


# --- room, the pinned issuer key, images of older versions -----------------------------------------------


def test_a_full_outbox_leaves_room_for_a_configuration_and_a_revocation(cloud):
    """70 days of hourly records with the broker away: the oldest are dropped and counted, and
    `apm flash write` and `apm token install REVOCATION` still work."""
    from apm.io.storage import flash as fl
    from apm.io.storage.outbox import FlashOutbox

    apm("token", "install", issue(cloud), "--issuer-key", "cloud.json.pub.pem", "--image", "flash.img", cwd=cloud)
    image = Flash(cloud / "flash.img")
    start = datetime(2030, 1, 1, tzinfo=UTC)
    records = [{"id": f"APM042/{(start + timedelta(hours=h)).isoformat()}", "import_wh": 1000.0 + h * 1.37,
                "export_wh": 0.0, "hours": 1, "hour_start": (start + timedelta(hours=h)).isoformat(),
                "hour_end": (start + timedelta(hours=h + 1)).isoformat(), "meter_id": "7359992890941742"}
               for h in range(70 * 24)]
    box = FlashOutbox(image)
    # All but the last hour in one write (short), the last one as the device adds it.
    queued = tuple(fl.OutboxRecord(i + 1, r) for i, r in enumerate(records[:-1]))
    image.update(lambda c: replace(c, outbox=queued, next_record_id=len(records)))
    box.add(records[-1])
    kept = image.read().outbox
    dropped = 70 * 24 - len(kept)
    assert dropped > 0 and image.read().outbox_dropped == box.dropped == dropped and kept[-1].data == records[-1]

    (cloud / "new.toml").write_text(GOOD.replace("hold_s = 20", "hold_s = 30"))
    apm("flash", "write", "new.toml", "--image", "flash.img", cwd=cloud)
    later = (NOW + timedelta(hours=1)).isoformat()
    apm("cloud", "decline", "--state", "cloud.json", "--serial", "APM042", "--now", later, "--out", "rev.jwt",
        cwd=cloud)
    assert "subscription: revoked" in apm("token", "install", "rev.jwt", "--image", "flash.img", cwd=cloud).stdout
    after = image.read()
    assert after.outbox == kept and after.config.balancer.hold_s == 30 and len(after.revocations) == 1
    info = json.loads(apm("info", "--json", "--image", "flash.img", cwd=cloud).stdout)
    assert info["outbox"].startswith(f"{len(kept)} records unsent") and f"{dropped} dropped when full" in info["outbox"]
    assert f"{dropped} dropped when full" in apm("flash", "verify", "--image", "flash.img", cwd=cloud).stdout


def test_the_issuer_key_is_pinned_unless_replaced_on_purpose(cloud):
    apm("token", "install", issue(cloud), "--issuer-key", "cloud.json.pub.pem", "--image", "flash.img", cwd=cloud)
    apm("cloud", "keygen", "--state", "evil.json", cwd=cloud)
    apm("cloud", "subscribe", "--state", "evil.json", "--config", "good.toml", "--meter", "aidon", cwd=cloud)
    forged = apm("cloud", "issue", "--state", "evil.json", "--serial", "APM042", cwd=cloud).stdout.strip()
    image = cloud / "flash.img"
    before = image.read_bytes()
    refused("token", "install", forged, "--issuer-key", "evil.json.pub.pem", "--image", image, cwd=cloud,
            says="--issuer-key evil.json.pub.pem: the image holds another issuer key, pinned")
    refused("token", "install", forged, "--replace-issuer-key", "--image", image, cwd=cloud,
            says="--replace-issuer-key needs --issuer-key")
    assert image.read_bytes() == before
    assert "--replace-issuer-key" in apm("token", "install", "--help", cwd=cloud).stdout
    # The same key again (another copy of the file) is no change.
    (cloud / "copy.pem").write_text((cloud / "cloud.json.pub.pem").read_text())
    apm("token", "install", issue(cloud), "--issuer-key", "copy.pem", "--image", image, cwd=cloud)
    # On purpose: replaced, with a warning.
    proc = apm("token", "install", forged, "--issuer-key", "evil.json.pub.pem", "--replace-issuer-key",
               "--image", image, cwd=cloud)
    assert "warning: replaced the pinned issuer key" in proc.stderr and "subscription: valid" in proc.stdout
    assert Flash(image).read().issuer_key == (cloud / "evil.json.pub.pem").read_text()


def test_token_install_refuses_a_revocation_for_another_apm(cloud):
    apm("token", "install", issue(cloud), "--issuer-key", "cloud.json.pub.pem", "--image", "flash.img", cwd=cloud)
    apm("cloud", "subscribe", "--state", "cloud.json", "--serial", "APM777", "--installation", "inst-42",
        "--meter", "kamstrup", "--now", NOW.isoformat(), cwd=cloud)
    issue(cloud, serial="APM777")
    apm("cloud", "decline", "--state", "cloud.json", "--serial", "APM777", "--now", NOW.isoformat(), "--out",
        "other.jwt", cwd=cloud)
    before = (cloud / "flash.img").read_bytes()
    refused("token", "install", "other.jwt", "--image", "flash.img", cwd=cloud,
            says="revocation refused (serial): revocation is for APM 'APM777', this APM is 'APM042'")
    assert (cloud / "flash.img").read_bytes() == before


def test_a_stored_configuration_this_version_refuses(cloud):
    """An image from another version holds `[balancer] ramp_up_s`: run and read say so; info shows it;
    flash write replaces it and keeps the token."""
    from apm.io.storage import flash as fl
    apm("token", "install", issue(cloud), "--issuer-key", "cloud.json.pub.pem", "--image", "flash.img", cwd=cloud)
    image = cloud / "flash.img"
    doc = json.loads(fl._encode(Flash(image).read()))
    doc["config"]["balancer"]["ramp_up_s"] = 5
    image.write_bytes(fl._slot_bytes(99, json.dumps(doc).encode()).ljust(fl.IMAGE_SIZE, b"\xff"))
    says = "the stored configuration is refused by this version of apm: balancer.ramp_up_s: unknown setting"
    refused("flash", "read", "--image", image, cwd=cloud, says=says)
    refused("run", "--image", image, "--sim", "kaifa", "--plain", cwd=cloud, says=says)
    info = apm("info", "--image", image, cwd=cloud).stdout
    assert "configuration:  " + says in info
    out = apm("flash", "write", "good.toml", "--image", image, cwd=cloud).stdout
    assert "wrote configuration of APM APM042" in out
    assert "subscription     valid" in apm("token", "show", "--image", image, cwd=cloud).stdout


def test_flash_write_refuses_a_configuration_larger_than_its_room(box):
    (box / "big.toml").write_text(GOOD.replace('"inst-42"', '"' + "i" * 9000 + '"'))
    before = (box / "flash.img").read_bytes()
    refused("flash", "write", "big.toml", "--image", "flash.img", cwd=box,
            says="the configuration would take 9,")
    assert (box / "flash.img").read_bytes() == before
