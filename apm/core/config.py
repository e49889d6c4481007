"""The device's configuration, declared once: what `apm flash write CONFIG.toml` stores and `apm run` uses.

The TOML form is the Structs' fields by name; a charger is one ``[[chargers]]`` table:

    serial = "APM000123"
    installation_id = "inst-42"
    port = "/dev/ttyAPM"

    [grid]
    network = "TN"
    fuse_a = 25

    [[chargers]]
    id = "garage"
    phases = 3
    rotation = ["L2", "L3", "L1"]

    [balancer]          # apm.core.balancer's thresholds (BalancerSettings)
    hold_s = 20

    [headroom]          # apm.core.headroom's options (HeadroomSettings)
    i2_power_factor = 0.95

    [capacity]          # the capacity-charge guard (CapacitySettings, apm.core.eco.capacity)
    enabled = true
    step_kw = 5

Every key is declared here with its type, default and bounds (``Meta(ge=..., le=...)``), and every
table refuses unknown keys, so the file is validated at its edge: an unknown key, a wrong type, a
value out of range or a cross-field relation that `apm run` could not work with (a safety margin
that eats the fuse, a ``min_a`` above a charger's ``max_a``) is a `ConfigError` naming the key's
path: ``balancer.hold_sec: unknown setting``, ``grid.fuse_a: 500 A is out of range (6..400 A)``.
``examples/config.toml`` and ``apm flash write --help`` are generated from these declarations
(`sample_toml`, `describe`); `sim.closed_loop` reuses them for scenarios.

Why msgspec rather than pydantic: a small C extension with wheels for the Pi; Structs are frozen
values with bounds (`Meta`), ``forbid_unknown_fields``, fast conversion from the TOML/JSON dict
(`msgspec.convert`) and JSON Schema generation (`msgspec.json.schema`), and it is the library the
decoder's JSON output and the MQTT payloads use, so the device carries one validation library.

A Struct's constructor does not check types or bounds (only the cross-field checks in
``__post_init__`` run): build configurations from outside data with `from_dict` / `loads` / `load`.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
import tomli_w
from msgspec import Meta, Struct, field
from msgspec import inspect as mi

Network = Literal["IT", "TN"]
Line = Literal["L1", "L2", "L3"]
Sharing = Literal["fair", "max_energy"]
ChargerProtocol = Literal["mqtt", "ocpp", "goe"]
LINES: tuple[Line, Line, Line] = ("L1", "L2", "L3")

MAX_CHARGERS = 3
BROKER_SCHEMES = ("mqtt", "mqtts")
# A per-phase list is two missed 10 s lists plus slack old before it counts as stale (SmartEVSE gives
# up after 11 s of a 2 s meter; OpenEVSE after 120 s).
STALE_AFTER_S = 25.0
HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"  # a local time of day, 00:00..23:59
ECO_DEPARTURE, ECO_ENERGY_KWH = "07:00", 20.0  # a charger's Smart eco default: overnight, ~100 km
MAX_ECO_KWH = 200.0  # above the largest car battery on the road (~120 kWh)

T = TypeVar("T")


def _doc(text: str, **meta: Any) -> Meta:
    return Meta(description=text, **meta)


# --- the schema ----------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A configuration that does not parse or does not validate; ``path`` names the key."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class ChargerConfig(Struct, frozen=True, forbid_unknown_fields=True):
    """One charger on the installation.

    ``rotation`` names the grid lines the charger's own L1, L2, L3 terminals are wired to, e.g.
    ("L2", "L3", "L1"). A 1-phase charger uses its L1 terminal only; on an IT network (3x230 V)
    that single-phase load sits between the first two lines of its rotation and loads both.
    """

    id: Annotated[str, _doc("the charger's name, unique on the installation", min_length=1,
                            examples=["garage"])]
    # 6 A: IEC 61851-1's lowest signalled current; 80 A: the most an IEC 61851 AC charger offers.
    max_a: Annotated[float, _doc("the charger's rated current per phase", ge=6.0, le=80.0)] = 32.0
    phases: Annotated[Literal[1, 3], _doc("phases the charger is wired for")] = 3
    rotation: Annotated[tuple[Line, Line, Line],
                        _doc("the grid lines its L1, L2, L3 terminals are wired to")] = LINES
    protocol: Annotated[ChargerProtocol, _doc("how the device limits it: mqtt (the generic topics), ocpp "
                                              "(OCPP 1.6J: the charger connects to [ocpp]), goe (a go-e "
                                              "on the MQTT broker)")] = "mqtt"
    ocpp_id: Annotated[Annotated[str, Meta(min_length=1, max_length=64)] | None,
                       _doc("protocol ocpp: its charge point id (unset: the charger's id)",
                            examples=["ZAP000123"])] = None
    goe_serial: Annotated[Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$")] | None,
                          _doc("protocol goe: the go-e's serial number", examples=["012345"])] = None
    # Smart eco's daily default for this charger ([eco] enabled): ready by this time with this much.
    eco_departure: Annotated[str, _doc("Smart eco: the car's usual departure, HH:MM local time",
                                       pattern=HHMM)] = ECO_DEPARTURE
    eco_energy_kwh: Annotated[float, _doc("Smart eco: the energy to charge by then", ge=1.0,
                                          le=MAX_ECO_KWH)] = ECO_ENERGY_KWH

    def __post_init__(self) -> None:
        if sorted(self.rotation) != list(LINES):
            raise ConfigError("rotation", f"{list(self.rotation)!r} is not a permutation of L1, L2, L3")
        if self.protocol == "goe" and self.goe_serial is None:
            raise ConfigError("goe_serial", "a go-e charger (protocol goe) needs its serial number")

    @property
    def charge_point_id(self) -> str:
        """The id an OCPP charger connects with."""
        return self.ocpp_id or self.id


class OcppConfig(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The OCPP 1.6J central system chargers with ``protocol = "ocpp"`` connect to (docs/chargers.md)."""

    # The chargers are on the LAN: unknown ids are refused, passwords from `apm ocpp password <id>`.
    listen: Annotated[str, _doc("address the central system listens on", min_length=1)] = "0.0.0.0"
    port: Annotated[int, _doc("its TCP port (ws://HOST:PORT/<charge point id>)", ge=1, le=65535)] = 9000
    cert_file: Annotated[str | None, _doc("PEM certificate (chain) for wss:// (OCPP Security Profile 2); "
                                          "unset: ws://", examples=["/etc/apm/ocpp-cert.pem"])] = None
    key_file: Annotated[str | None, _doc("PEM private key of cert_file", examples=["/etc/apm/ocpp-key.pem"])] = None
    # The failsafe (issue 14): a charger that stops hearing from us is back at its safe current within
    # 2 minutes, because every limit we send runs out by itself; a few seconds suit a test.
    validity_s: Annotated[float, _doc("a limit sent to a charger runs out this long after it was sent (the "
                                      "charger then falls back to its safe current by itself)",
                                      ge=2.0, le=120.0)] = 90.0
    renew_s: Annotated[float, _doc("the limit is sent again this often; at most validity_s / 2, so one "
                                   "late or lost renewal does not let it run out", ge=1.0, le=60.0)] = 30.0

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("cert_file", "give both cert_file and key_file for TLS, or neither")
        if self.renew_s > self.validity_s / 2:
            raise ConfigError("renew_s", f"{_fmt(self.renew_s)} s is more than half of validity_s "
                                         f"({_fmt(self.validity_s)} s): one late renewal would let the limit "
                                         "run out while the device is running")


# Declared once, used by GridConfig and by the simulator's scenarios (sim.closed_loop).
NetworkKey = Annotated[Network, _doc("IT (3x230 V, no neutral) or TN (400 V with neutral)")]
# 6 A..400 A: the main fuses of a dwelling, from a small cabin to a block of flats.
FuseAmps = Annotated[float, _doc("main fuse rating", ge=6.0, le=400.0)]
MarginAmps = Annotated[float, _doc("kept free below the fuse rating on every line", ge=0.0, le=50.0)]
FixedAmps = Annotated[float, _doc("current the chargers share on each line when there is no valid "
                                  "subscription or no fresh meter data", ge=0.0, le=400.0)]


class GridConfig(Struct, frozen=True, forbid_unknown_fields=True):
    network: NetworkKey = "TN"
    fuse_a: FuseAmps = 25.0
    ct_ratio: Annotated[float, _doc("current transformer ratio the meter's values are scaled by",
                                    ge=0.01, le=10000.0)] = 1.0
    safety_margin_a: MarginAmps = 2.0

    def __post_init__(self) -> None:
        if self.safety_margin_a >= self.fuse_a:
            raise ConfigError("safety_margin_a", f"{_fmt(self.safety_margin_a)} A leaves nothing of the "
                                                 f"{_fmt(self.fuse_a)} A fuse (grid.fuse_a)")


class BrokerConfig(Struct, frozen=True, forbid_unknown_fields=True):
    url: Annotated[str | None, _doc("MQTT broker, mqtt://host[:port] or mqtts://...; "
                                    "unset: the embedded broker on localhost",
                                    examples=["mqtts://broker.example:8883"])] = None
    username: Annotated[str | None, _doc("broker user name", examples=["apm"])] = None
    password: Annotated[str | None, _doc("broker password", examples=["secret"])] = None
    tls: Annotated[bool, _doc("connect with TLS")] = False
    ca_file: Annotated[str | None, _doc("PEM file of the CA(s) that sign the broker's certificate "
                                        "(implies TLS); unset: the system's CAs",
                                        examples=["/etc/apm/broker-ca.pem"])] = None

    def __post_init__(self) -> None:
        if self.ca_file is not None and not self.ca_file.strip():
            raise ConfigError("ca_file", "must be the path of a PEM file")
        if self.url is None:
            return
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError as exc:
            raise ConfigError("url", f"{self.url!r} is not a URL: {exc}") from None
        if parts.scheme not in BROKER_SCHEMES or not parts.hostname:
            raise ConfigError("url", f"{self.url!r} is not an MQTT URL (mqtt://host[:port] or mqtts://...)")


class BalancerSettings(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Thresholds of the balancer (`apm.core.balancer`); the device config's ``[balancer]`` table."""

    # IEC 61851-1 cannot signal less than 6 A; some cars need 7-10 A, none more than 32 A.
    min_a: Annotated[float, _doc("lowest current an EV charges at", ge=6.0, le=32.0)] = 6.0
    # Volttime waits 10 s; against a see-saw with a cycling load.
    hold_s: Annotated[float, _doc("after a decrease, the wait before that charger may increase again",
                                  ge=0.0, le=600.0)] = 10.0
    # SmartEVSE rises by a quarter of the gap per 2 s cycle.
    max_step_up_a: Annotated[float, _doc("largest single increase", ge=0.1, le=80.0)] = 6.0
    # IEC 61851 PWM changes at most every 5 s (EVerest IEC_PWM_MAX_UPDATE_INTERVAL).
    min_interval_s: Annotated[float, _doc("least time between two changes of one charger's setpoint, "
                                          "except decreases", ge=0.0, le=600.0)] = 5.0
    min_increase_a: Annotated[float, _doc("an increase smaller than this is not worth a change "
                                          "(unless it reaches the charger's cap)", ge=0.0, le=80.0)] = 1.0
    # Zaptec takes 0.1 A; 0.5 A means ~15 % fewer changes but gives away ~2 % of a winter evening's energy.
    resolution_a: Annotated[float, _doc("setpoints are rounded down to this step", ge=0.01, le=6.0)] = 0.1
    # Relay wear: SmartEVSE waits 60 s, OpenEVSE 300 s, Easee ~10 min.
    restart_delay_s: Annotated[float, _doc("a paused charger stays paused at least this long",
                                           ge=0.0, le=3600.0)] = 60.0
    restart_hysteresis_a: Annotated[float, _doc("a paused charger restarts only when it could get "
                                                "min_a + this much ...", ge=0.0, le=16.0)] = 1.0
    restart_confirm_s: Annotated[float, _doc("... continuously for this long",
                                             ge=0.0, le=3600.0)] = 15.0
    # A swap costs a pause and a restart: only for a clear gain, and not again soon (no ping-pong).
    swap_min_gain: Annotated[float, _doc("a paused charger takes a running one's place (the fair rule "
                                         "ranking them alike) only if the chargers then draw this "
                                         "fraction more power", ge=0.0, le=10.0)] = 0.1
    swap_min_run_s: Annotated[float, _doc("... and only once the one it replaces has run this long",
                                          ge=0.0, le=3600.0)] = 120.0
    # Below the meters' 10 s list interval every gap between lists would count as stale; beyond 120 s
    # (OpenEVSE's limit) the headroom is too old to protect the fuse.
    # At most 60 s: an EV's step up found out a minute late is what a fuse's overload curve forgives.
    stale_after_s: Annotated[float, _doc("per-phase meter data older than this is stale: hold the last "
                                         "setpoints, then come down (apm.core.controller)", ge=10.0,
                                         le=60.0)] = STALE_AFTER_S
    # Zaptec's default offline current is 32 A. In the device config this is the top-level
    # fixed_current_a (the subscription gate uses it too); `[balancer] fixed_current_a` is refused there.
    fixed_current_a: Annotated[float, _doc("current all chargers share on each line without meter data "
                                           "or without a subscription", ge=0.0, le=400.0)] = 32.0
    ev_settle_s: Annotated[float, _doc("an EV still drawing ev_slack_a less than offered this long "
                                       "after a change limits itself", ge=0.0, le=600.0)] = 15.0
    ev_slack_a: Annotated[float, _doc("see ev_settle_s; such an EV is offered what it draws + half "
                                      "of this when others need the rest", ge=0.0, le=16.0)] = 2.0
    # The line may run this much above fuse - margin: it must stay below grid.safety_margin_a.
    decrease_deadband_a: Annotated[float, _doc("small excesses up to this wait up to decrease_grace_s "
                                               "before a decrease (0: off)", ge=0.0, le=10.0)] = 0.5
    # A C-curve breaker holds 1.13 x In for an hour; a few minutes above the limit but below In is safe.
    decrease_grace_s: Annotated[float, _doc("see decrease_deadband_a", ge=0.0, le=300.0)] = 30.0
    sharing: Annotated[Sharing, _doc("fair (max-min fairness) or max_energy (the most power)")] = "fair"
    max_energy_margin: Annotated[float, _doc("max_energy must beat the fair shares' power by this "
                                             "fraction to be used", ge=0.0, le=1.0)] = 0.02

    def __post_init__(self) -> None:
        if self.min_increase_a > self.max_step_up_a:
            raise ConfigError("min_increase_a", f"{_fmt(self.min_increase_a)} A is above max_step_up_a "
                                                f"({_fmt(self.max_step_up_a)} A): no increase could be made")

    @classmethod
    def from_dict(cls, overrides: Mapping[str, Any]) -> BalancerSettings:
        """Settings with ``overrides`` (a ``[balancer]`` table); a `ConfigError` names a bad key."""
        return convert(dict(overrides), cls, "balancer")


class HeadroomSettings(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Options of the headroom estimate (`apm.core.headroom`); the device config's ``[headroom]`` table."""

    refine_i2: Annotated[bool, _doc("IT without I2: take our chargers' draw out of I1 and I3 before "
                                    "the Kirchhoff bound")] = True
    early_rise: Annotated[bool, _doc("between per-phase lists, add list 1's power rise to every line")] = True
    rise_threshold_w: Annotated[float, _doc("a power rise below this is noise, not a new load",
                                            ge=0.0, le=5000.0)] = 150.0
    # A charger that list 1's unplaced rise alone would pause is held at the balancer's min_a instead
    # while its lines stay within safety margin + rise_hold_over_in x In of what they may carry with the
    # rise: if the rise is on such a line, the line runs at most that x In above the fuse rating, until
    # the next per-phase list and the EV's response (docs: apm.core.balancer, step 4). At most 0.13:
    # a breaker carries 1.13 In for an hour (IEC 60898-1; a gG fuse 1.25 In).
    rise_hold: Annotated[bool, _doc("hold a charger at min_a, rather than pause it, for list 1's "
                                    "unplaced power rise alone (see rise_hold_over_in)")] = True
    rise_hold_over_in: Annotated[float, _doc("... while no line can then be more than this fraction of "
                                             "the fuse rating above it", ge=0.0, le=0.13)] = 0.13
    # A bound on I2 from the list's power, assuming every household load has at least this power factor.
    i2_power_factor: Annotated[Annotated[float, Meta(ge=0.1, le=1.0)] | None,
                               _doc("IT without I2: the household's lowest power factor, for a bound "
                                    "from the list's power (unset: off)", examples=[0.95])] = None
    two_wattmeter: Annotated[bool, _doc("IT without I2: bound I2 from P, Q, I1, I3 and the voltages")] = True
    # Meters do not sample a list's values at one instant: powers up to this long before currents
    # (issue 15), and list 1 between list 2s. List 1's rise is judged against our chargers' power
    # anywhere in that window, so a step of our own is never taken for a household rise.
    power_skew_s: Annotated[float, _doc("how long before its currents a meter may measure its powers (s); "
                                        "list 1's rise check tolerates it", ge=0.0, le=10.0)] = 2.0
    # IT without I2: which of the triangle's two solutions is true, learned from our own steps
    # (apm.core.it_learner, docs/it-l2-inference.md).
    learn_mirror: Annotated[bool, _doc("IT without I2: learn from our chargers' steps which two-wattmeter "
                                       "solution is true and use the smaller one when it is")] = True
    # A wrong inference can then put at most 1.13 In on L2 (fuse - margin + this), the current an
    # MCB must carry for an hour without tripping (IEC 60898-1; a gG fuse 1.25 In).
    learned_gain_max_in: Annotated[float, _doc("the most the learned I2 may lie below the conservative "
                                               "bound, as a fraction of the fuse rating plus the safety "
                                               "margin", ge=0.0, le=0.13)] = 0.13
    phase_sequence: Annotated[Literal["unknown", "L1-L2-L3", "L1-L3-L2"],
                              _doc("the supply's phase sequence if the installer measured it")] = "unknown"

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> HeadroomSettings:
        """Settings from a ``[headroom]`` table; a `ConfigError` names a bad key."""
        return convert(dict(options), cls, "headroom")


# Elvia's household ladder from 2026-07-01, the common 0-2-5-10-15-20-25-50-75-100 kW steps (research
# notes balancing-and-fuses.md 4.3; apm.core.eco.capacity.DEFAULT_LADDER), NOK/month ex VAT.
DEFAULT_LADDER: tuple[tuple[float, float], ...] = (
    (0.0, 120.0), (2.0, 200.0), (5.0, 336.0), (10.0, 468.0), (15.0, 604.0), (20.0, 740.0),
    (25.0, 1408.0), (50.0, 2080.0), (75.0, 2752.0), (100.0, 5440.0),
)
LadderStep = tuple[Annotated[float, Meta(ge=0.0, le=10000.0)], Annotated[float, Meta(ge=0.0, le=1e6)]]


class CapacitySettings(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The capacity-charge guard (`apm.core.eco.capacity`); the device config's ``[capacity]`` table."""

    enabled: Annotated[bool, _doc("keep each hour's energy so that the month stays in step_kw")] = False
    step_kw: Annotated[float, _doc("the step to stay in: one of the ladder's upper bounds",
                                   ge=0.5, le=10000.0)] = 5.0
    ladder: Annotated[tuple[LadderStep, ...],
                      _doc("the grid company's steps, [from_kw, NOK per month] each, the first from 0; "
                           "the last is open upwards", min_length=1, max_length=30)] = DEFAULT_LADDER
    peaks_counted: Annotated[int, _doc("daily peaks averaged into the month's figure", ge=1, le=10)] = 3
    # A car takes a few seconds to follow a lower setpoint; at 11 kW, 10 s is 0.03 kWh.
    margin_kwh: Annotated[float, _doc("left unused each hour for the chargers' lag", ge=0.0, le=5.0)] = 0.05

    def __post_init__(self) -> None:
        if self.ladder[0][0] != 0:
            raise ConfigError("ladder", f"the first step starts at {_fmt(self.ladder[0][0])} kW; it must start at 0")
        for i, (a, b) in enumerate(zip(self.ladder, self.ladder[1:], strict=False)):
            if b[0] <= a[0]:
                raise ConfigError("ladder", f"step {i + 1} starts at {_fmt(b[0])} kW, not above step {i}'s "
                                            f"{_fmt(a[0])} kW")
        bounds = [lo for lo, _ in self.ladder[1:]]
        if self.step_kw not in bounds:
            raise ConfigError("step_kw", f"{_fmt(self.step_kw)} kW is not a step's upper bound on the ladder "
                                         f"({', '.join(_fmt(b) for b in bounds) or 'none'})")


class EcoSettings(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Smart eco as an owner setting; the device config's ``[eco]`` table. Each charger's
    ``eco_departure`` and ``eco_energy_kwh`` are its daily request while this is on."""

    enabled: Annotated[bool, _doc("Smart eco: charge each car in the cheapest hours before its departure "
                                  "(off: charge at once)")] = False


class DeviceConfig(Struct, frozen=True, forbid_unknown_fields=True):
    serial: Annotated[str, _doc("the device's serial number: letters, digits, '-', '_', '.'",
                                pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "APM000000"
    installation_id: Annotated[str, _doc("the installation this device belongs to", min_length=1)] = "inst-0"
    installation_type: Annotated[str, _doc("installation type, e.g. HOME", min_length=1)] = "HOME"
    country: Annotated[str, _doc("two-letter country code (ISO 3166-1, e.g. NO)", pattern=r"^[A-Z]{2}$")] = "NO"
    port: Annotated[Annotated[str, Meta(min_length=1)] | None,
                    _doc("serial port of the M-Bus adapter", examples=["/dev/ttyUSB0"])] = None
    grid: GridConfig = field(default_factory=GridConfig)
    chargers: Annotated[tuple[ChargerConfig, ...], Meta(max_length=MAX_CHARGERS)] = ()
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    fixed_current_a: Annotated[Annotated[float, Meta(ge=0.0, le=400.0)] | None,
                               _doc("current the chargers share on each line without a valid subscription "
                                    "or meter data; at most grid.fuse_a - grid.safety_margin_a (unset: "
                                    "exactly that)", examples=[16])] = None
    balancer: BalancerSettings = field(default_factory=BalancerSettings)
    headroom: HeadroomSettings = field(default_factory=HeadroomSettings)
    capacity: CapacitySettings = field(default_factory=CapacitySettings)
    eco: EcoSettings = field(default_factory=EcoSettings)
    ocpp: OcppConfig = field(default_factory=OcppConfig)

    def __post_init__(self) -> None:
        check_charger_ids(self.chargers, "chargers")
        check_balancer(self.balancer, self.grid, self.chargers, "chargers")
        fixed = check_fixed_current(self.fixed_current_a, self.grid)
        # One fixed current: the balancer's is the top-level one (the subscription gate's too).
        if self.balancer.fixed_current_a != fixed:
            synced = msgspec.structs.replace(self.balancer, fixed_current_a=fixed)
            msgspec.structs.force_setattr(self, "balancer", synced)

    @property
    def fallback_a(self) -> float:
        """The fixed current in force: ``fixed_current_a``, or fuse - margin when it is unset."""
        return self.balancer.fixed_current_a


def check_charger_ids(chargers: tuple[ChargerConfig, ...], key: str) -> None:
    seen: set[str] = set()
    for i, c in enumerate(chargers):
        if c.id in seen:
            raise ConfigError(f"{key}[{i}].id", f"duplicate charger id {c.id!r}")
        seen.add(c.id)
    # Two chargers answering to one charge point id or go-e serial: the second could never be limited.
    for name, ids in (("ocpp_id", [c.charge_point_id if c.protocol == "ocpp" else None for c in chargers]),
                      ("goe_serial", [c.goe_serial if c.protocol == "goe" else None for c in chargers])):
        taken: set[str] = set()
        for i, v in enumerate(ids):
            if v is not None and v in taken:
                raise ConfigError(f"{key}[{i}].{name}", f"{v!r} is used by another charger")
            if v is not None:
                taken.add(v)


def check_balancer_table(data: Mapping[str, Any]) -> None:
    """A document's ``[balancer]`` may not set ``fixed_current_a``: the top-level key is the one."""
    balancer = data.get("balancer")
    if isinstance(balancer, Mapping) and "fixed_current_a" in balancer:
        raise ConfigError("balancer.fixed_current_a", "set it at the top level (fixed_current_a), "
                                                      "which the subscription gate uses too")


def check_fixed_current(fixed_a: float | None, grid: GridConfig, key: str = "fixed_current_a") -> float:
    """The fixed current in force (unset: fuse - margin); one above fuse - margin is refused, since the
    chargers alone could then load a line beyond what the fuse may carry."""
    limit = grid.fuse_a - grid.safety_margin_a
    if fixed_a is None:
        return limit
    if fixed_a > limit:
        raise ConfigError(key, f"{_fmt(fixed_a)} A is above grid.fuse_a - grid.safety_margin_a "
                               f"({_fmt(grid.fuse_a)} - {_fmt(grid.safety_margin_a)} = {_fmt(limit)} A): "
                               "the chargers alone could overload the fuse (unset: exactly that limit)")
    return fixed_a


def check_balancer(settings: BalancerSettings, grid: GridConfig, chargers: tuple[ChargerConfig, ...],
                   chargers_key: str) -> None:
    """The relations between the balancer's settings and the installation (device config and scenarios)."""
    deadband, margin = settings.decrease_deadband_a, grid.safety_margin_a
    if deadband > 0 and deadband >= margin:
        raise ConfigError("balancer.decrease_deadband_a",
                          f"{_fmt(deadband)} A must stay below grid.safety_margin_a ({_fmt(margin)} A), or the "
                          "fuse could see more than its rating (0 turns the deadband off)")
    for i, c in enumerate(chargers):
        if settings.min_a > c.max_a:
            raise ConfigError("balancer.min_a", f"{_fmt(settings.min_a)} A is above {chargers_key}[{i}].max_a "
                                                f"({_fmt(c.max_a)} A): that charger could never start")


# --- loading -------------------------------------------------------------------------------------


def loads(text: str) -> DeviceConfig:
    """Parse and validate a TOML document."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}") from None
    return from_dict(data)


def load(path: str | Path) -> DeviceConfig:
    """Read, parse and validate a TOML file; errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"{path}: cannot read: {exc}") from None
    try:
        return loads(text)
    except ConfigError as exc:
        raise ConfigError(exc.path, f"{exc.message} (in {path})") from None


# Keys compared without case or surrounding blanks (as TOML files are written by hand).
_UPPER = ("country", "installation_type")
_STRIP = ("serial", "installation_id", "installation_type", "country")


def from_dict(data: Mapping[str, Any]) -> DeviceConfig:
    """Build a validated `DeviceConfig` from the TOML/JSON dict form (images of older versions too)."""
    data = dict(data)
    for key in _STRIP:
        if isinstance(data.get(key), str):
            data[key] = data[key].strip().upper() if key in _UPPER else data[key].strip()
    grid = data.get("grid")
    if isinstance(grid, Mapping) and isinstance(grid.get("network"), str):
        data["grid"] = {**grid, "network": grid["network"].strip().upper()}
    check_balancer_table(data)
    return convert(data, DeviceConfig)


def convert(data: Any, type_: type[T], root: str = "") -> T:
    """``msgspec.convert`` with its ValidationError translated into a `ConfigError` naming the key.

    ``root`` is the path of ``data`` in the document (e.g. "balancer")."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise _explain(str(exc), data, type_, root) from None


# --- errors: msgspec's text -> key path and a sentence ---------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.S)
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")
_OWN = re.compile(r"^(?P<key>[A-Za-z_][\w.\[\]]*): (?P<msg>.*)$", re.S)
_UNITS = {"_a": "A", "_s": "s", "_w": "W", "_kwh": "kWh", "_kw": "kW", "_c": "C"}
_MISSING = object()
_TYPE_WORDS = {"float": "is not a number", "int": "is not a whole number", "bool": "must be true or false",
               "object": "must be a table", "array": "must be an array", "str": "must be a string"}


def _explain(text: str, data: Any, type_: Any, root: str) -> ConfigError:
    m = _AT.match(text)
    assert m is not None
    msg, at = m["msg"], m["at"] or ""
    steps: list[str | int] = [k if k else int(i) for k, i in _STEP.findall(at)]
    key = _join(root, steps)
    value = _value_at(data, steps)
    info = _info_at(mi.type_info(type_), steps)
    if found := re.match(r"Object contains unknown field `(.+)`$", msg):
        name = found[1]
        return ConfigError(_join(key, [name]), "unknown setting" + _hint(name, info))
    if found := re.match(r"Object missing required field `(.+)`$", msg):
        return ConfigError(_join(key, [found[1]]), "missing (required)")
    if own := _OWN.match(msg):  # a ConfigError from a __post_init__: its path is relative to `key`
        return ConfigError(_join(key, [own["key"]]), own["msg"])
    return ConfigError(key, _sentence(msg, value, info, steps[-1] if steps else ""))


def _sentence(msg: str, value: Any, info: Any, name: str | int) -> str:
    base = _unwrap(info)
    if isinstance(value, float) and math.isnan(value):
        return "nan is not a number"
    if isinstance(base, mi.LiteralType) and msg.startswith("Invalid enum value"):
        return f"{value!r} is not one of {', '.join(str(v) for v in base.values)}"
    if found := re.match(r"Expected `([\w ]+?)(?: \| null)?`, got `(\w+)`$", msg):
        expected = found[1].split()[0]
        return f"{value!r} {_TYPE_WORDS.get(expected, 'is not a ' + expected)}"
    if isinstance(base, mi.FloatType | mi.IntType) and value is not _MISSING:
        unit = _unit(str(name))
        return f"{_fmt(value)}{' ' + unit if unit else ''} is out of range ({_range(base, unit)})"
    if isinstance(base, mi.StrType) and base.pattern and "regex" in msg:
        return f"{value!r} is not valid here: {_description(info)}"
    if isinstance(base, mi.StrType) and "length >=" in msg:
        return f"{value!r} must be a non-empty string"
    if "length <=" in msg and isinstance(value, list | tuple):
        return f"{len(value)} entries; at most {getattr(base, 'max_length', '?')}"
    return msg[:1].lower() + msg[1:]


def _hint(name: str, info: Any) -> str:
    import difflib  # only for a message

    known = [f.name for f in getattr(_unwrap(info), "fields", ())]
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (known here: {', '.join(known)})" if known else ""


def _join(root: str, steps: list[str | int] | list[str]) -> str:
    out = root
    for s in steps:
        if isinstance(s, int):
            out += f"[{s}]"
        elif s.startswith("["):
            out += s
        else:
            out = f"{out}.{s}" if out else s
    return out


def _value_at(data: Any, steps: list[str | int]) -> Any:
    for s in steps:
        try:
            data = data[s]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return data


def _unwrap(info: Any) -> Any:
    while isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.UnionType):  # "X | None": the X
        rest = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(rest) == 1:
            return _unwrap(rest[0])
    return info


def _info_at(info: Any, steps: list[str | int]) -> Any:
    """The msgspec type info at ``steps`` (None when the path leaves the schema)."""
    for s in steps:
        base = _unwrap(info)
        if isinstance(s, str) and isinstance(base, mi.StructType):
            info = next((f.type for f in base.fields if f.name == s), None)
        elif isinstance(s, int) and isinstance(base, mi.VarTupleType | mi.ListType):
            info = base.item_type
        elif isinstance(s, int) and isinstance(base, mi.TupleType) and s < len(base.item_types):
            info = base.item_types[s]
        else:
            return None
    return info


def _description(info: Any) -> str:
    while isinstance(info, mi.Metadata):
        text = (info.extra_json_schema or {}).get("description")
        if text:
            return str(text)
        info = info.type
    return ""


def _unit(name: str) -> str:
    return next((u for suffix, u in _UNITS.items() if name.endswith(suffix)), "")


def _range(t: mi.FloatType | mi.IntType, unit: str) -> str:
    """"6..400 A"; a bound that excludes its value or a missing one reads "> 0", "<= 1"."""
    u = f" {unit}" if unit else ""
    if t.ge is not None and t.le is not None:
        return f"{_fmt(t.ge)}..{_fmt(t.le)}{u}"
    parts = [f"{op} {_fmt(v)}" for op, v in ((">=", t.ge), (">", t.gt), ("<=", t.le), ("<", t.lt)) if v is not None]
    return ", ".join(parts) + u


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return repr(x)
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() else str(x)


# --- the keys, for help texts, the sample file and tests ------------------------------------------

# Set at the top level of the device config, not in its [balancer] table (see DeviceConfig).
_TOP_LEVEL_ONLY = ("balancer.fixed_current_a",)


class Key(Struct, frozen=True):
    """One key of the configuration file: ``path`` like "grid.fuse_a" or "chargers[].max_a"."""

    path: str
    type: Any  # msgspec.inspect type info, Meta unwrapped ("X | None": the X)
    required: bool
    default: Any  # None: unset (or required)
    description: str
    example: Any
    unit: str

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """The inclusive bounds of a number (None: none that way)."""
        t = self.type
        return (getattr(t, "ge", None), getattr(t, "le", None)) if _is_number(t) else (None, None)

    @property
    def table(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]


def schema_keys(type_: Any = DeviceConfig) -> list[Key]:
    """Every leaf key of a configuration Struct, in declaration order."""
    info = mi.type_info(type_)
    assert isinstance(info, mi.StructType), type_
    return list(_walk(info, ""))


def _walk(info: mi.StructType, prefix: str) -> Iterator[Key]:
    for f in info.fields:
        path = f"{prefix}{f.name}"
        base = _unwrap(f.type)
        if isinstance(base, mi.StructType):
            yield from _walk(base, path + ".")
        elif isinstance(base, mi.VarTupleType) and isinstance(base.item_type, mi.StructType):
            yield from _walk(base.item_type, path + "[].")
        elif path not in _TOP_LEVEL_ONLY:
            default = None if f.default is mi.NODEFAULT else f.default
            examples = _meta(f.type, "examples") or [None]
            yield Key(path, base, f.required, default, _description(f.type), examples[0], _unit(f.name))


def _meta(info: Any, name: str) -> Any:
    while isinstance(info, mi.Metadata):
        if (info.extra_json_schema or {}).get(name) is not None:
            return info.extra_json_schema[name]  # type: ignore[index]
        info = info.type
    return None


def _is_number(t: Any) -> bool:
    return isinstance(t, mi.FloatType | mi.IntType)


def _toml(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _fmt(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return tomli_w.dumps({"x": value})[4:].strip()


def _limits(k: Key) -> str:
    """What a key takes: its bounds and unit, its choices or its type."""
    if _is_number(k.type):
        return _range(k.type, k.unit)
    if isinstance(k.type, mi.LiteralType):
        return "one of " + ", ".join(_toml(v) for v in k.type.values)
    if isinstance(k.type, mi.TupleType) and isinstance(k.type.item_types[0], mi.LiteralType):
        return "a permutation of " + ", ".join(str(v) for v in k.type.item_types[0].values)
    if isinstance(k.type, mi.BoolType):
        return "true or false"
    return "text" if isinstance(k.type, mi.StrType) else ""


def describe() -> str:
    """The configuration's keys with default and bounds, for ``apm flash write --help``."""
    rows = [(k.path, "required" if k.required else "unset" if k.default is None else _toml(k.default),
             _limits(k), k.description) for k in schema_keys()]
    w0, w1, w2 = (max(len(r[i]) for r in rows) for i in range(3))
    lines = ["configuration keys (examples/config.toml has them all, commented):",
             f"  {'KEY':<{w0}}  {'DEFAULT':<{w1}}  {'TAKES':<{w2}}  MEANING"]
    lines += [f"  {a:<{w0}}  {b:<{w1}}  {c:<{w2}}  {d}" for a, b, c, d in rows]
    lines.append(f"Tables: [grid], [broker], [balancer], [headroom], [capacity], [eco], and one [[chargers]] per charger "
                 f"(at most {MAX_CHARGERS}). Strings: {', '.join(_STRIP)} are trimmed, "
                 "grid.network, country and installation_type taken in upper case.")
    return "\n".join(lines)


_SAMPLE_HEAD = """\
# A sample configuration of the APM, every key with its default and what it takes; a key whose
# line is commented out is unset by default. Generated from apm/core/config.py (`apm.core.config.sample_toml()`);
# `apm flash write --help` lists the same keys. Store it with:
#
#     apm flash write examples/config.toml
"""


def sample_toml() -> str:
    """``examples/config.toml``: every key, commented, set to its default (one example charger)."""
    tables: dict[str, list[str]] = {}
    for k in schema_keys():
        value = k.example if k.required or k.default is None else k.default
        line = f"{k.name} = {_toml(value)}"
        if k.default is None and not k.required:
            line = "# " + line
        limits = _limits(k)
        about = f"{k.description} ({limits})" if limits not in ("text", "") else k.description
        tables.setdefault(k.table, []).append(f"# {about}\n{line}")
    out = [_SAMPLE_HEAD]
    for table, entries in sorted(tables.items(), key=lambda t: t[0].endswith("[]")):  # [[chargers]] last
        if table:
            name = table.removesuffix("[]")
            out.append(f"[[{name}]]" if table.endswith("[]") else f"[{name}]")
        out.append("\n\n".join(entries) + "\n")
    return "\n".join(out)


# --- dumping -------------------------------------------------------------------------------------


def to_dict(config: DeviceConfig) -> dict[str, Any]:
    """The TOML/JSON form: plain dicts and lists; unset values (TOML has no null), empty tables and
    the settings tables' defaults left out."""
    d = _drop_none(msgspec.json.decode(msgspec.json.encode(config)))  # tuples as lists
    d.get("balancer", {}).pop("fixed_current_a", None)  # the top-level fixed_current_a
    for c in d.get("chargers", ()):
        if c.get("protocol") == "mqtt":  # the default, as images before the protocols stored it
            del c["protocol"]
        for key in ("eco_departure", "eco_energy_kwh"):  # defaults, as images before Smart eco's settings
            if c.get(key) == _CHARGER_DEFAULTS[key]:
                del c[key]
    for key in ("chargers", "balancer", "headroom", "capacity", "eco", "ocpp"):
        if not d.get(key):
            d.pop(key, None)
    return d


_CHARGER_DEFAULTS = {"eco_departure": ECO_DEPARTURE, "eco_energy_kwh": ECO_ENERGY_KWH}


def _drop_none(d: Any) -> Any:
    if isinstance(d, list):  # the chargers' tables
        return [_drop_none(v) for v in d]
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d


def dumps(config: DeviceConfig) -> str:
    """The configuration as TOML; `loads(dumps(c)) == c`."""
    return _INLINE_ARRAY.sub(_inline, tomli_w.dumps(to_dict(config)))


# tomli-w writes every array one item a line; short arrays of plain values read better on one line.
_INLINE_ARRAY = re.compile(r"\[\n((?:[ ]+[^\[\]{}\n]+,\n)+)[ ]*\]")


def _inline(match: re.Match[str]) -> str:
    items = [line.strip().removesuffix(",") for line in match.group(1).splitlines()]
    return "[" + ", ".join(items) + "]"
