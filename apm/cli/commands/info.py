"""`apm info`: what the device is, what it holds, and whether its serial port and broker are reachable."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from apm.cli.support import add_image_option, add_now_option, command, load_image, now_arg, read_status

FIRMWARE_FALLBACK = "0.1.0"
BROKER_TIMEOUT_S = 1.0
# A running device rewrites its status every 2 s (apm.services.device.STATUS_EVERY_S); older than this, it is not running.
STATUS_STALE_S = 10.0
FUTURE_SLACK_S = 2.0  # clock steps between two processes on one machine, not a simulated clock
EMBEDDED_BROKER = "embedded broker (started by apm run)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="firmware, serial, meter, HAN state, subscription, chargers, port, broker")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_image_option(p)
    add_now_option(p)
    p.set_defaults(func=run)


def firmware_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("apm-emulator")
    except metadata.PackageNotFoundError:
        return FIRMWARE_FALLBACK


def port_status(port: str | None) -> str:
    if not port:
        return "not configured"
    if not os.path.exists(port):
        return f"{port}: missing"
    import serial  # pyserial

    try:
        with serial.Serial(port, baudrate=2400, timeout=0):
            pass
    except (serial.SerialException, OSError, ValueError) as exc:
        return f"{port}: present, cannot be opened ({exc})"
    return f"{port}: present, opens"


def broker_status(url: str | None) -> str:
    if not url:
        return EMBEDDED_BROKER
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    try:
        with socket.create_connection((host, port), timeout=BROKER_TIMEOUT_S):
            pass
    except OSError as exc:
        return f"{url}: unreachable ({exc.strerror or exc})"
    return f"{url}: reachable (TCP connect to {host}:{port})"


def capacity_lines(c: dict[str, Any]) -> list[str]:
    """The capacity guard's status (`apm.core.capacity_guard.CapacityGuard.to_dict`) as `apm info` shows it."""
    def kwh(v: Any) -> str:
        return "no cap" if v is None else f"{v:.2f} kWh"

    try:
        step = c["step"]
        to = f"{step['from_kw']:g}-{step['to_kw']:g} kW" if step["to_kw"] is not None else f"above {step['from_kw']:g} kW"
        peaks = ", ".join(f"{p['day']} {p['kwh']:.2f}" for p in c["peaks"]) or "none yet"
        return [f"{c['month']}: peaks {peaks} kWh, average {c['figure_kw']:.2f} kW: step {to} "
                f"({step['nok_per_month']:g} NOK/month); goal {c['goal_kw']:g} kW",
                f"this hour: {kwh(c['hour_used_kwh'])} used, {kwh(c['hour_left_kwh'])} still allowed",
                f"chargers: {', '.join(f'{k} {v:g} A' for k, v in c.get('caps_a', {}).items()) or 'not capped'}"]
    except (KeyError, TypeError, ValueError) as exc:
        return [f"unreadable in the status file ({type(exc).__name__}: {exc})"]


@command("info")
def run(args: argparse.Namespace) -> int:
    from apm.core.subscription import evaluate

    now = now_arg(args)
    from apm.io.storage.flash import outbox_capacity, refused_config_message

    image, contents = load_image(args, must_exist=False, lenient=True)
    config = contents.config
    status = read_status(image.path) or {}
    written = _written_at(image.path) if status else None
    meter = status.get("meter") if isinstance(status.get("meter"), str) else None
    info: dict[str, Any] = {
        "firmware": f"apm {firmware_version()}",
        "image": str(image.path) + ("" if image.exists() else " (missing: blank device)"),
        "serial": config.serial if config else None,
        "installation": config.installation_id if config else None,
        "detected_meter": meter or "no HAN data yet",
        "han_state": han_state(status, time.time(), written, _pid_running(status.get("pid"))),
    }
    if written is not None:
        info["status_written"] = _iso(written)
    if contents.unreadable_config is not None:
        info["configuration"] = refused_config_message(contents.unreadable_config)
        info["subscription"] = "unknown: no usable configuration"
    elif config is None:
        info["configuration"] = "none stored (apm flash write CONFIG.toml)"
        info["subscription"] = "none"
    else:
        state = evaluate(now, token=contents.token, public_key=contents.issuer_key, config=config,
                         revocations=contents.revocations, meter=meter)
        info["subscription"] = f"{state.state.value} ({state.reason})"
        links = status.get("chargers") if isinstance(status.get("chargers"), dict) else {}
        live = not info["han_state"].startswith("stale")
        info["chargers"] = [f"{c.id}: {c.phases}-phase, max {c.max_a:g} A, rotation {' '.join(c.rotation)}; "
                            + charger_link(c.protocol, links.get(c.id), live) for c in config.chargers]
        if links and args.json:
            info["charger_links"] = links
        info["fuse"] = f"{config.grid.fuse_a:g} A, {config.grid.network} network, CT ratio {config.grid.ct_ratio:g}"
        info["port"] = port_status(config.port)
        info["broker"] = broker_status(config.broker.url)
    if image.exists():
        info["outbox"] = (f"{len(contents.outbox)} records unsent (room for about {outbox_capacity() // 24} days), "
                          f"{contents.outbox_dropped} dropped when full")
    advice = status.get("advice")  # the running device's, from what its meter reports
    if isinstance(advice, list) and advice:
        info["advice"] = [str(a) for a in advice]
    capacity = status.get("capacity")  # the running device's capacity guard ([capacity] enabled)
    if isinstance(capacity, dict):
        info["capacity"] = capacity if args.json else capacity_lines(capacity)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        label = key.replace("_", " ")
        if isinstance(value, list):
            print(f"{label + ':':16}{'none' if not value else ''}".rstrip())
            for line in value:
                print(f"  {line}")
        else:
            print(f"{label + ':':16}{value if value is not None else '-'}")
    return 0


def han_state(status: dict[str, Any], now: float, written: float | None, running: bool | None) -> str:
    """The HAN state the device last wrote (``han_state``, ``last_frame_at``), judged by the reader.

    ``now`` and ``written`` (when the status file was written) are POSIX times; ``running``: whether the
    writer's pid is alive (None: not known). The device's own verdict holds only while it runs and keeps
    its status current, and never for a last frame after ``now`` (a replay or simulation runs its own
    clock): then it is "stale", or "simulated", with the reason.
    """
    if not status:
        return "no HAN data yet"
    state = str(status.get("han_state") or status.get("han") or "unknown")
    last = status.get("last_frame_at")
    frame = f"last frame {last}" if last else "no frame"
    if running is False:
        when = f", status written {_iso(written)}" if written is not None else ""
        return f"stale: the device is not running (pid {status.get('pid')} ended{when}; {frame})"
    if written is not None and now - written > STATUS_STALE_S:
        return f"stale: the status was last written {_iso(written)}, {now - written:.0f} s ago ({frame})"
    last_at = _parse_time(last)
    if last_at is not None and last_at > now + FUTURE_SLACK_S:
        return f"simulated: the device's clock is ahead of this one ({state}, {frame})"
    return f"{state} ({frame})" if last else state


def charger_link(protocol: str, link: object, live: bool) -> str:
    """``ocpp connected, last report 2030-03-17T17:46:38.000Z, limit 16.0 A``: what the running device
    wrote about one charger's link (only the protocol when it is not running, or has not said)."""
    if not isinstance(link, dict) or not live:
        return f"{protocol}" + ("" if live else " (the device is not running)")
    connected = link.get("connected")
    parts = [str(link.get("protocol", protocol))
             + ("" if connected is None else " connected" if connected else " NOT connected")]
    last = link.get("last_report_at")
    parts.append(f"last report {last}" if last else "no report yet")
    limit = link.get("limit_a")
    parts.append(f"limit {limit:.1f} A" if isinstance(limit, int | float) else "no limit sent yet")
    session = link.get("session")
    if isinstance(session, dict) and isinstance(energy := session.get("energy_kwh"), int | float):
        # The charging session (apm.core.sessions): the open one, else the last.
        how = "charger's register" if session.get("source") == "charger" else "integrated"
        which = "session" if session.get("active") else "last session"
        parts.append(f"{which} {energy:.2f} kWh since {session.get('started_at')} ({how})")
    return ", ".join(parts)


def _written_at(image: Any) -> float | None:
    from apm.io.storage.flash import status_path

    try:
        return status_path(image).stat().st_mtime
    except OSError:
        return None


def _pid_running(pid: object) -> bool | None:
    """Whether a process ``pid`` exists (a reused pid is caught by the status's age)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but it exists
    except OverflowError:
        return False
    return True


def _parse_time(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

