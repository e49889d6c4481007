"""`apm cloud ...`: the simulated subscription issuer (sim.cloud) from the command line.

Every action takes ``--state FILE`` (the issuer's JSON state; default $APM_CLOUD_STATE, else
$XDG_DATA_HOME/apm/cloud.json) and ``--now TIME`` (a simulated clock; default the real time).
Exit status: 0 done; 2 bad input or a refusal of the issuer; 1 a revocation that could not be published.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apm.cli.support import FAILURE, USAGE, Failure, UsageError, add_now_option, fail, now_arg
from apm.io.storage import paths

if TYPE_CHECKING:
    from sim.cloud import Issuer

ENV_VAR = paths.CLOUD_ENV


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cloud", help="the simulated subscription issuer (keygen, subscribe, issue, ...)")
    actions = p.add_subparsers(dest="cloud_action", metavar="ACTION", required=True)

    def action(name: str, help_text: str, func: Callable[[argparse.Namespace], int], serial: bool = True) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help_text)
        a.add_argument("--state", metavar="FILE", help=f"issuer state (default: ${ENV_VAR}, "
                                                        "else $XDG_DATA_HOME/apm/cloud.json)")
        add_now_option(a)
        if serial:
            a.add_argument("--serial", required=True, help="the APM's serial number")
        a.set_defaults(func=func)
        return a

    k = action("keygen", "make the issuer's Ed25519 key pair (PEM files) and an empty state", run_keygen,
               serial=False)
    k.add_argument("--private", metavar="PEM", help="private key file (default: STATE.key.pem)")
    k.add_argument("--public", metavar="PEM", help="public key file (default: STATE.pub.pem)")
    k.add_argument("--force", action="store_true", help="replace an existing key pair and state")

    s = action("subscribe", "start a monthly prepaid subscription for an APM (eligibility checked)",
               run_subscribe, serial=False)
    s.add_argument("--config", metavar="CONFIG.toml", help="take serial, installation, country, type and "
                                                          "chargers from a device configuration")
    s.add_argument("--serial", help="the APM's serial number")
    s.add_argument("--installation", metavar="ID", help="installation id")
    s.add_argument("--country", help="country code (default NO)")
    s.add_argument("--type", dest="installation_type", help="installation type (default HOME)")
    s.add_argument("--chargers", type=int, help="number of chargers (default 1)")
    s.add_argument("--meter", required=True, help="the AMS meter vendor (kamstrup, aidon, kaifa)")
    s.add_argument("--plan", default="premium")
    s.add_argument("--price", type=float, default=None, help="NOK per month (default 39)")

    i = action("issue", "sign a token valid until the end of the prepaid period", run_issue)
    i.add_argument("--out", metavar="FILE", help="write the token to FILE instead of stdout")
    i.add_argument("--meter", help="re-declare the meter vendor (eligibility is checked again)")
    i.add_argument("--chargers", type=int, help="re-declare the number of chargers")

    action("cancel", "stop renewing; access stays until the next billing date", run_cancel)

    d = action("decline", "a payment was declined: end access now and sign a revocation", run_decline)
    d.add_argument("--out", metavar="FILE", help="write the revocation to FILE instead of stdout")
    d.add_argument("--broker", metavar="URL", help="also publish it, retained, on "
                                                   "apm/SERIAL/subscription/revocation (mqtt://host:port)")

    pr = action("price", "change the monthly price from the next billing date", run_price)
    pr.add_argument("--price", type=float, required=True, help="NOK per month")

    action("show", "print the APM's subscription and its charges", run_show)


def _state_path(args: argparse.Namespace) -> Path:
    return Path(args.state) if args.state else paths.cloud_state()


def _run(name: str, args: argparse.Namespace, body: Callable[[Any, datetime], int]) -> int:
    """Common error handling: every refusal of the issuer is one line on stderr and exit status 2."""
    from sim.cloud import CloudError, Issuer

    try:
        now = now_arg(args)
        if name == "keygen":
            return body(None, now)
        return body(Issuer(_state_path(args)), now)
    except Failure as exc:
        return fail(f"cloud {name}", str(exc), FAILURE)
    except (CloudError, UsageError, ValueError, OSError) as exc:
        return fail(f"cloud {name}", str(exc), USAGE)


def run_keygen(args: argparse.Namespace) -> int:
    from sim.cloud import Issuer

    def body(_issuer: Issuer | None, _now: datetime) -> int:
        state = _state_path(args)
        if not args.state and not os.environ.get(ENV_VAR):
            state.parent.mkdir(parents=True, exist_ok=True)  # the per-user default folder
        issuer = Issuer.keygen(state, args.private, args.public, force=args.force)
        print(f"issuer state: {issuer.state_path}")
        print(f"private key:  {issuer.private_key_path}")
        print(f"public key:   {issuer.public_key_path}  (give it to the device: "
              f"apm token install TOKEN --issuer-key {issuer.public_key_path})")
        return 0

    return _run("keygen", args, body)


def run_subscribe(args: argparse.Namespace) -> int:
    from apm.core import config as cfg
    from sim.cloud import DEFAULT_PRICE_NOK, Installation

    def body(issuer: Issuer, now: datetime) -> int:
        facts: dict[str, object] = {}
        if args.config:
            try:
                c = cfg.load(args.config)
            except cfg.ConfigError as exc:
                raise ValueError(f"{args.config}: {exc}" if exc.path else str(exc)) from None
            facts = {"installation_id": c.installation_id, "serial": c.serial, "country": c.country,
                     "installation_type": c.installation_type, "chargers": len(c.chargers) or 1}
        given = {"installation_id": args.installation, "serial": args.serial, "country": args.country,
                 "installation_type": args.installation_type, "chargers": args.chargers}
        facts.update({k: v for k, v in given.items() if v is not None})
        missing = [opt for opt, key in (("--serial", "serial"), ("--installation", "installation_id"))
                   if key not in facts]
        if missing:
            raise ValueError(f"{' and '.join(missing)} needed (or --config CONFIG.toml)")
        if int(facts.get("chargers", 1)) < 1:  # type: ignore[call-overload]
            raise ValueError("--chargers must be at least 1")
        installation = Installation(meter=args.meter, **facts)  # type: ignore[arg-type]
        price = DEFAULT_PRICE_NOK if args.price is None else args.price
        sub = issuer.subscribe(installation, now, plan=args.plan, price_nok=price)
        print(sub.describe())
        return 0

    return _run("subscribe", args, body)


def run_issue(args: argparse.Namespace) -> int:
    from dataclasses import replace

    def body(issuer: Issuer, now: datetime) -> int:
        current = issuer.current(args.serial)
        installation = None
        if current is not None and (args.meter is not None or args.chargers is not None):
            changes = {k: v for k, v in (("meter", args.meter), ("chargers", args.chargers)) if v is not None}
            installation = replace(current.installation, **changes)
        token = issuer.issue(args.serial, now, installation)
        _emit(token, args.out, "token")
        return 0

    return _run("issue", args, body)


def run_cancel(args: argparse.Namespace) -> int:
    def body(issuer: Issuer, now: datetime) -> int:
        print(issuer.cancel(args.serial, now).describe())
        return 0

    return _run("cancel", args, body)


def run_decline(args: argparse.Namespace) -> int:
    from apm.io.mqtt.link import BrokerAddress
    from apm.io.mqtt.topics import Topics

    def body(issuer: Issuer, now: datetime) -> int:
        # Both checked before the payment is declined, so bad input changes nothing.
        broker = BrokerAddress.parse(args.broker) if args.broker else None
        topics = Topics(args.serial) if broker else None
        revocation = issuer.decline(args.serial, now)
        print(issuer.current(args.serial).describe(), file=sys.stderr)
        _emit(revocation, args.out, "revocation")
        if broker is not None and topics is not None:
            _publish(broker, topics.revocation_message(revocation))
            print(f"revocation published (retained) to {broker.url} on {topics.subscription_revocation}",
                  file=sys.stderr)
        return 0

    return _run("decline", args, body)


def run_price(args: argparse.Namespace) -> int:
    def body(issuer: Issuer, now: datetime) -> int:
        print(issuer.change_price(args.serial, args.price, now).describe())
        return 0

    return _run("price", args, body)


def run_show(args: argparse.Namespace) -> int:
    from apm.core.token import iso_z
    from sim.cloud import CloudError

    def body(issuer: Issuer, now: datetime) -> int:
        issuer.advance(now)
        sub = issuer.current(args.serial)
        if sub is None:
            raise CloudError(f"APM {args.serial} has no subscription")
        print(sub.describe())
        for c in sub.charges:
            print(f"  {iso_z(c.at)}  {c.amount_nok:g} NOK  {c.outcome}  "
                  f"({iso_z(c.period_start)} .. {iso_z(c.period_end)})")
        print(f"  tokens issued: {len(sub.token_ids)}; revocations: {len(issuer.revocations(args.serial))}")
        return 0

    return _run("show", args, body)


def _publish(broker: Any, msg: Any) -> None:
    """One message to the broker (a `BrokerAddress`, an `OutMessage`), acknowledged before returning."""
    import asyncio
    import ssl

    import aiomqtt

    async def send() -> None:
        async with aiomqtt.Client(broker.host, broker.port, username=broker.username, password=broker.password,
                                  timeout=10, tls_context=ssl.create_default_context() if broker.tls else None
                                  ) as client:
            await client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)

    try:
        asyncio.run(send())
    except (aiomqtt.MqttError, OSError) as exc:
        raise Failure(f"the payment is declined and the revocation emitted, but it was not published to "
                         f"{broker.url}: {exc}") from None


def _emit(text: str, out: str | None, what: str) -> None:
    if out:
        Path(out).write_text(text + "\n", encoding="ascii")
        print(f"{what} written to {out}", file=sys.stderr)
    else:
        print(text)
