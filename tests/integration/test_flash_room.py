"""Room in the flash image: fixed budgets for what matters, the outbox bounded by what really fits,
an hour's record and baseline in one write, the pinned issuer key, and images of older versions."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest

from apm.core import config as cfg
from apm.core import token as tok
from apm.core.meter_state import Baseline, HourlyEnergy
from apm.io.mqtt.topics import Topics
from apm.io.storage import flash as fl
from apm.io.storage.flash import (
    Flash,
    FlashBaseline,
    FlashContents,
    IssuerKeyPinned,
    OutboxRecord,
    PartTooLarge,
)
from apm.io.storage.outbox import FlashOutbox
from apm.services.device import Device
from sim.frames import MeterSpec
from sim.meter import Meter

CONFIG = cfg.DeviceConfig(serial="APMROOM1", installation_id="inst-room",
                          chargers=(cfg.ChargerConfig("garage"), cfg.ChargerConfig("carport", phases=1)))
TOPICS = Topics(CONFIG.serial)
OSLO = timezone(timedelta(hours=1))
T0 = datetime(2025, 1, 1, tzinfo=OSLO)


def hour(h: int) -> dict:
    """The device's record of hour ``h`` after T0, with real-looking counters."""
    start = T0 + timedelta(hours=h)
    return TOPICS.energy_record(HourlyEnergy(start.isoformat(), (start + timedelta(hours=1)).isoformat(), 1,
                                             1234.5 + 1.37 * h, 0.0, "7359992890941742"))


def baseline_after(h: int) -> Baseline:
    return Baseline((T0 + timedelta(hours=h + 1, seconds=10)).isoformat(), 1_000_000.0 + 1500.0 * h, 0.0,
                    "7359992890941742")


def signed_revocation(private_pem: bytes, serial: str = CONFIG.serial) -> str:
    rv = tok.Revocation(CONFIG.installation_id, serial, (tok.new_token_id(),), tok.new_token_id(),
                        datetime.now(UTC), "payment declined")
    return tok.sign_revocation(rv, private_pem)


def test_the_budgets_leave_the_outbox_two_months_of_hourly_records():
    assert fl.OUTBOX_BUDGET + sum(fl.BUDGETS.values()) + fl.HEADER.size == fl.SLOT_SIZE
    assert fl.outbox_capacity() >= 24 * 60
    # The estimate from one record is close to what really fits of the records the device makes.
    records = tuple(OutboxRecord(i + 1, hour(i)) for i in range(24 * 80))
    fits = max(n for n in range(24 * 60, 24 * 80, 8) if fl.outbox_size(records[:n]) <= fl.OUTBOX_BUDGET)
    assert abs(fl.outbox_capacity(records[:fits]) - fits) < 0.03 * fits


def test_seventy_days_with_the_broker_away_still_take_a_configuration_and_a_revocation(tmp_path):
    private_pem, public_pem = tok.generate_keypair()
    image = Flash(tmp_path / "flash.img")
    # 60 days the device queued while the broker was away (as one write, to keep the test short) ...
    days60 = tuple(OutboxRecord(h + 1, hour(h)) for h in range(60 * 24))
    image.write(FlashContents(config=CONFIG, token="t.o.k", issuer_key=public_pem.decode(), outbox=days60,
                              next_record_id=len(days60) + 1, baseline=baseline_after(60 * 24 - 1)))
    # ... and 10 more days the way the device queues them: each hour's record with its baseline.
    box = FlashOutbox(image)
    for h in range(60 * 24, 70 * 24):
        box.add(hour(h), baseline=baseline_after(h))
    c = image.read()
    kept = [r.id for r in c.outbox]
    assert kept == list(range(70 * 24 - len(kept) + 1, 70 * 24 + 1))  # the newest, in order, none lost between
    assert c.outbox_dropped == box.dropped == 70 * 24 - len(kept) > 0  # the oldest, counted
    assert len(kept) >= 60 * 24 and c.baseline == baseline_after(70 * 24 - 1)
    assert [r.data for r in c.outbox[-2:]] == [hour(70 * 24 - 2), hour(70 * 24 - 1)]

    # A new configuration (as large as a configuration gets) and a revocation still go in, and cost no record.
    big = msgspec.structs.replace(CONFIG, installation_id="i" * 2000, serial="APMROOM1")
    image.write_config(big)
    revocation = signed_revocation(private_pem)
    image.add_revocation(revocation)
    after = image.read()
    assert after.config == big and after.revocations == (revocation,)
    assert after.outbox == c.outbox and after.outbox_dropped == c.outbox_dropped
    assert image.inspect().active.length <= fl.SLOT_SIZE - fl.HEADER.size


def test_an_image_an_older_version_filled_reads_and_takes_a_configuration(tmp_path):
    """Format 1: the outbox as a list of objects, as many real records as filled the slot (the issue
    saw 1,192; ours are a little longer)."""
    old = tmp_path / "old.img"
    n = 1192
    while True:
        records = [{"id": i + 1, "data": hour(i)} for i in range(n)]
        doc = {"format": 1, "config": cfg.to_dict(CONFIG), "token": "t.o.k", "issuer_key": "PEM",
               "revocations": [], "outbox": records, "next_record_id": n + 1}
        payload = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        if fl.HEADER.size + len(payload) <= fl.SLOT_SIZE:
            break
        n -= 1
    assert n > 1100  # the old code could add no more than that
    old.write_bytes(fl._slot_bytes(1, payload).ljust(fl.IMAGE_SIZE, b"\xff"))
    image = Flash(old)
    c = image.read()
    assert [r.data for r in c.outbox] == [r["data"] for r in records] and c.outbox_dropped == 0
    image.write_config(msgspec.structs.replace(CONFIG, fixed_current_a=10.0))
    again = image.read()
    assert again.outbox == c.outbox and again.config.fixed_current_a == 10.0 and again.token == "t.o.k"
    assert json.loads(old.read_bytes()[fl.SLOT_SIZE + fl.HEADER.size:].rstrip(b"\xff"))["format"] == fl.FORMAT


def test_records_of_other_shapes_keep_their_keys(tmp_path):
    image = Flash(tmp_path / "flash.img")
    for data in ({"a": 1, "b": [1, 2]}, {"x": None}, {}, {"a": 2, "b": {"c": 3}}):
        image.outbox_append(data)
    assert [r.data for r in Flash(image.path).read().outbox] == [{"a": 1, "b": [1, 2]}, {"x": None}, {},
                                                                  {"a": 2, "b": {"c": 3}}]


@pytest.mark.parametrize(("change", "says"), [
    (lambda c: replace(c, token="x" * 3000), "the token would take 3,002 bytes"),
    (lambda c: replace(c, issuer_key="k" * 2000), "the issuer key would take"),
    (lambda c: replace(c, config=msgspec.structs.replace(CONFIG, installation_id="i" * 9000)),
     "the configuration would take"),
    (lambda c: replace(c, revocations=tuple("r" * 500 + str(i) for i in range(60))),
     r"the revocations \(60\) would take"),
])
def test_a_part_over_its_budget_is_refused_and_nothing_is_written(tmp_path, change, says):
    image = Flash(tmp_path / "flash.img")
    image.write(FlashContents(config=CONFIG, outbox=(OutboxRecord(1, hour(0)),), next_record_id=2))
    before = image.path.read_bytes()
    with pytest.raises(PartTooLarge, match=says):
        image.update(change)
    assert image.path.read_bytes() == before


def test_an_hours_record_and_baseline_are_one_write(tmp_path, monkeypatch):
    image = Flash(tmp_path / "flash.img")
    image.write_config(CONFIG)
    box, store = FlashOutbox(image), FlashBaseline(image)
    seq = image.inspect().active.sequence
    box.add(hour(0), baseline=replace(baseline_after(0), at=42.0))
    assert image.inspect().active.sequence == seq + 1
    store.save(baseline_after(0))  # what the device does next: the same baseline, nothing to write
    assert image.inspect().active.sequence == seq + 1
    assert store.load() == baseline_after(0) and [r.data for r in box.pending()] == [hour(0)]


def test_the_device_closes_an_hour_with_one_flash_write(tmp_path, monkeypatch):
    """Two hourly lists of a simulated Kaifa meter: the first sets the baseline (one write), the second
    closes the hour: its record and the new baseline in ONE write."""
    image = Flash(tmp_path / "flash.img")
    image.write_config(CONFIG)
    writes: list[FlashContents] = []
    real_write = Flash._write

    def counted(self, fd, contents, report):
        writes.append(contents)
        return real_write(self, fd, contents, report)

    monkeypatch.setattr(Flash, "_write", counted)
    meter = Meter(MeterSpec("kaifa", "3p-tn"), datetime.fromisoformat("2025-01-15T09:59:00+01:00"), seed=3)

    async def main() -> Device:
        device = Device(CONFIG, url="mqtt://127.0.0.1:9", outbox=FlashOutbox(image),
                        baseline_store=FlashBaseline(image))
        for t0 in (0.0, 3600.0):  # 09:59-10:01 and 10:59-11:01: one hourly list each
            for push in meter.pushes_between(t0, t0 + 120.0):
                device.feed(push.frame)
        return device

    device = asyncio.run(main())
    assert len(device.hourly) == 1
    assert len(writes) == 2, [(len(w.outbox), w.baseline) for w in writes]
    assert writes[0].baseline is not None and not writes[0].outbox  # the first hourly list
    assert len(writes[1].outbox) == 1 and writes[1].baseline == device.state.baseline != writes[0].baseline


def test_the_issuer_key_is_pinned(tmp_path):
    image = Flash(tmp_path / "flash.img")
    _, first = tok.generate_keypair()
    _, other = tok.generate_keypair()
    image.write_issuer_key(first.decode())
    seq = image.inspect().active.sequence
    image.write_issuer_key("text before\n" + first.decode().replace("\n", "\r\n") + "\n")  # the same key
    assert image.inspect().active.sequence == seq and image.read().issuer_key == first.decode()
    with pytest.raises(IssuerKeyPinned, match="another issuer key"):
        image.write_issuer_key(other.decode())
    assert image.read().issuer_key == first.decode()
    image.write_issuer_key(other.decode(), replace_key=True)
    assert image.read().issuer_key == other.decode()
    image.erase()
    image.write_issuer_key(first.decode())
    assert image.read().issuer_key == first.decode()


def test_a_revocation_for_another_serial_is_refused():
    private_pem, public_pem = tok.generate_keypair()
    ours, theirs = signed_revocation(private_pem), signed_revocation(private_pem, "APMOTHER")
    assert tok.verify_revocation_for(ours, public_pem, serial=CONFIG.serial).ok
    v = tok.verify_revocation_for(theirs, public_pem, serial=CONFIG.serial)
    assert not v.ok and v.refusal is tok.Refusal.SERIAL and "'APMOTHER'" in v.message
    assert tok.verify_revocation_for(theirs, tok.generate_keypair()[1], serial=CONFIG.serial).refusal \
        is tok.Refusal.SIGNATURE


def _image_with_an_old_config(path: Path) -> dict:
    """An image an older version wrote: its configuration has a key this schema does not know."""
    stored = cfg.to_dict(CONFIG)
    stored["balancer"] = {"ramp_up_s": 5.0}
    doc = json.loads(fl._encode(FlashContents(token="t.o.k", issuer_key="PEM", revocations=("r1",),
                                              outbox=(OutboxRecord(1, hour(0)),), next_record_id=2,
                                              baseline=baseline_after(0))))
    doc["config"] = stored
    path.write_bytes(fl._slot_bytes(1, json.dumps(doc).encode()).ljust(fl.IMAGE_SIZE, b"\xff"))
    return stored


def test_a_stored_configuration_the_schema_refuses_is_named_and_can_be_replaced(tmp_path):
    image = Flash(tmp_path / "flash.img")
    stored = _image_with_an_old_config(image.path)
    with pytest.raises(fl.StoredConfigRefused, match=r"balancer\.ramp_up_s: unknown setting.*apm flash write"):
        image.read()
    lenient = image.read(lenient=True)
    assert lenient.config is None and "balancer.ramp_up_s" in lenient.unreadable_config.problem
    # Other writes keep it as it was ...
    image.outbox_append(hour(1))
    assert image.read(lenient=True).unreadable_config.raw == stored
    # ... and a configuration replaces it, keeping everything else.
    image.write_config(CONFIG)
    c = image.read()
    assert c.config == CONFIG and c.unreadable_config is None
    assert (c.token, c.issuer_key, c.revocations, c.baseline) == ("t.o.k", "PEM", ("r1",), baseline_after(0))
    assert [r.data for r in c.outbox] == [hour(0), hour(1)]
