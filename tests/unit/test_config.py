"""The device configuration: TOML in, validated Structs out, TOML back; every key's bounds from the schema."""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apm.core import config as cfg
from apm.core.config import (
    BalancerSettings,
    BrokerConfig,
    ChargerConfig,
    ConfigError,
    DeviceConfig,
    GridConfig,
    HeadroomSettings,
)

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.toml"


def test_empty_document_gives_the_defaults():
    assert cfg.loads("") == DeviceConfig()
    # the fixed current unset: fuse - margin (25 - 2 A)
    assert DeviceConfig().balancer == BalancerSettings(fixed_current_a=23.0) and DeviceConfig().headroom == HeadroomSettings()


def test_full_document():
    c = cfg.loads("""
        serial = "APM1"
        installation_id = "i-1"
        installation_type = "home"
        country = "no"
        port = "/dev/ttyAPM"
        fixed_current_a = 20
        [grid]
        network = "it"
        fuse_a = 63
        ct_ratio = 2.5
        safety_margin_a = 3
        [broker]
        url = "mqtts://broker.example:8883"
        username = "apm"
        password = "secret"
        tls = true
        [[chargers]]
        id = "a"
        max_a = 16
        phases = 1
        rotation = ["L3", "L1", "L2"]
        [balancer]
        hold_s = 20
        sharing = "max_energy"
        [headroom]
        i2_power_factor = 0.95
        two_wattmeter = false
    """)
    assert c == DeviceConfig(
        serial="APM1", installation_id="i-1", installation_type="HOME", country="NO", port="/dev/ttyAPM",
        fixed_current_a=20.0, grid=GridConfig("IT", 63.0, 2.5, 3.0),
        broker=BrokerConfig("mqtts://broker.example:8883", "apm", "secret", True),
        chargers=(ChargerConfig("a", 16.0, 1, ("L3", "L1", "L2")),),
        balancer=BalancerSettings(hold_s=20.0, sharing="max_energy"),
        headroom=HeadroomSettings(i2_power_factor=0.95, two_wattmeter=False),
    )
    # The balancer's fixed current is the top-level one (the subscription gate uses that one too).
    assert c.balancer.fixed_current_a == 20.0
    assert cfg.loads(cfg.dumps(c)) == c
    # Only what differs from the defaults is written to the settings tables.
    assert tomllib.loads(cfg.dumps(c))["balancer"] == {"hold_s": 20.0, "sharing": "max_energy"}


def test_a_made_up_balancer_key_is_refused_not_stored():
    """Earlier versions stored any [balancer] key (`ramp_up_s`) and `apm run` then died on it."""
    for key in ("ramp_up_s", "hold_sec"):
        with pytest.raises(ConfigError) as err:
            cfg.loads(f"[balancer]\n{key} = 60\n")
        assert err.value.path == f"balancer.{key}"
        assert str(err.value).startswith(f"balancer.{key}: unknown setting")
    with pytest.raises(ConfigError, match=r"^balancer\.hold_sec: unknown setting \(did you mean hold_s\?\)$"):
        cfg.loads("[balancer]\nhold_sec = 5\n")


@pytest.mark.parametrize(
    ("text", "path", "says"),
    [
        ("bogus = 1", "bogus", "unknown setting (known here: serial, installation_id"),
        ("[grid]\nfuse_amps = 1", "grid.fuse_amps", "unknown setting (did you mean fuse_a?)"),
        ('[[chargers]]\nid = "a"\ncolor = "red"', "chargers[0].color", "unknown setting"),
        ("[broker]\nport = 1883", "broker.port", "unknown setting"),
        ("[headroom]\nrefine = true", "headroom.refine", "unknown setting (did you mean refine_i2?)"),
        ("[grid]\nfuse_a = 401", "grid.fuse_a", "401 A is out of range (6..400 A)"),
        ("[grid]\nfuse_a = 5.9", "grid.fuse_a", "5.9 A is out of range (6..400 A)"),
        ("[grid]\nfuse_a = true", "grid.fuse_a", "True is not a number"),
        ('[grid]\nfuse_a = "25"', "grid.fuse_a", "'25' is not a number"),
        ("[grid]\nfuse_a = nan", "grid.fuse_a", "nan is not a number"),
        ("[grid]\nfuse_a = inf", "grid.fuse_a", "out of range"),
        ('[grid]\nnetwork = "TT"', "grid.network", "'TT' is not one of IT, TN"),
        ("[grid]\nct_ratio = 0", "grid.ct_ratio", "0 is out of range (0.01..10000)"),
        ("[grid]\nsafety_margin_a = -1", "grid.safety_margin_a", "out of range"),
        ("[grid]\nfuse_a = 10\nsafety_margin_a = 10", "grid.safety_margin_a", "leaves nothing"),
        ('[[chargers]]\nphases = 3', "chargers[0].id", "missing"),
        ('[[chargers]]\nid = ""', "chargers[0].id", "non-empty"),
        ('[[chargers]]\nid = "a"\nphases = 2', "chargers[0].phases", "2 is not one of 1, 3"),
        ('[[chargers]]\nid = "a"\nrotation = ["L1", "L2"]', "chargers[0].rotation", "length 3"),
        ('[[chargers]]\nid = "a"\nrotation = ["L1", "L2", "N"]', "chargers[0].rotation[2]", "not one of L1, L2, L3"),
        ('[[chargers]]\nid = "a"\nrotation = ["L1", "L2", "L1"]', "chargers[0].rotation", "permutation"),
        ('[[chargers]]\nid = "a"\nmax_a = 81', "chargers[0].max_a", "81 A is out of range (6..80 A)"),
        ('[[chargers]]\nid = "a"\n[[chargers]]\nid = "a"', "chargers[1].id", "duplicate"),
        ("".join(f'[[chargers]]\nid = "{c}"\n' for c in "abcd"), "chargers", "4 entries; at most 3"),
        ("chargers = 3", "chargers", "must be an array"),
        ('grid = "big"', "grid", "must be a table"),
        ('country = "Norway"', "country", "two-letter"),
        ('serial = "A B"', "serial", "serial number"),
        ('port = ""', "port", "non-empty"),
        ('[broker]\nurl = "http://x"', "broker.url", "not an MQTT URL"),
        ('[broker]\nurl = "mqtt://x:99999"', "broker.url", "not a URL"),
        ("[broker]\ntls = 1", "broker.tls", "true or false"),
        ("fixed_current_a = -1", "fixed_current_a", "out of range"),
        ("[balancer]\nhold_s = 1979-05-27", "balancer.hold_s", "is not a number"),
        ('[balancer]\nsharing = "greedy"', "balancer.sharing", "'greedy' is not one of fair, max_energy"),
        ("[balancer]\nmin_a = -3", "balancer.min_a", "-3 A is out of range (6..32 A)"),
        ("[balancer]\ndecrease_deadband_a = 50", "balancer.decrease_deadband_a", "out of range (0..10 A)"),
        # relations between keys
        ("[balancer]\ndecrease_deadband_a = 2", "balancer.decrease_deadband_a",
         "must stay below grid.safety_margin_a (2 A)"),
        ("[grid]\nsafety_margin_a = 0", "balancer.decrease_deadband_a", "must stay below grid.safety_margin_a"),
        ('[balancer]\nmin_a = 20\n[[chargers]]\nid = "a"\nmax_a = 16', "balancer.min_a",
         "20 A is above chargers[0].max_a (16 A)"),
        ("[balancer]\nmin_increase_a = 7", "balancer.min_increase_a", "above max_step_up_a (6 A)"),
        ("[balancer]\nfixed_current_a = 10", "balancer.fixed_current_a", "set it at the top level"),
        ("[headroom]\ni2_power_factor = 1.5", "headroom.i2_power_factor", "1.5 is out of range (0.1..1)"),
        ("[headroom]\nearly_rise = 1", "headroom.early_rise", "true or false"),
        ("[headroom]\nrise_hold_over_in = 0.2", "headroom.rise_hold_over_in", "0.2 is out of range (0..0.13)"),
    ],
)
def test_validation_names_the_key(text, path, says):
    with pytest.raises(ConfigError) as err:
        cfg.loads(text)
    assert err.value.path == path
    assert says in str(err.value) and str(err.value).startswith(path + ":")
    assert "\n" not in str(err.value) and "$." not in str(err.value)


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 1"):
        cfg.loads("a = = 1")
    with pytest.raises(ConfigError, match="no such file"):
        cfg.load(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[grid]\nfuse_a = 1000\n")
    with pytest.raises(ConfigError, match=r"grid.fuse_a: .*\(in .*bad.toml\)"):
        cfg.load(tmp_path / "bad.toml")


def test_settings_tables_alone_name_their_table():
    with pytest.raises(ConfigError, match=r"^balancer\.hold_s: -1 s is out of range \(0\.\.600 s\)$"):
        BalancerSettings.from_dict({"hold_s": -1})
    with pytest.raises(ConfigError, match=r"^headroom\.two_wattmeter: 'yes' must be true or false$"):
        HeadroomSettings.from_dict({"two_wattmeter": "yes"})
    assert BalancerSettings.from_dict({"hold_s": 3}) == BalancerSettings(hold_s=3.0)


def test_an_image_of_the_previous_version_reads_back():
    """The stored form did not change: a dict of the TOML tables (no [headroom] before this version)."""
    old = {"serial": "APM1", "installation_id": "i", "installation_type": "HOME", "country": "NO",
           "grid": {"network": "IT", "fuse_a": 40.0, "ct_ratio": 1.0, "safety_margin_a": 2.0},
           "chargers": [{"id": "a", "max_a": 32.0, "phases": 3, "rotation": ["L2", "L3", "L1"]}],
           "broker": {"tls": False}, "fixed_current_a": 16.0, "balancer": {"hold_s": 20}}
    c = cfg.from_dict(json.loads(json.dumps(old)))
    assert c.balancer == BalancerSettings(hold_s=20.0, fixed_current_a=16.0)
    assert c.chargers[0].rotation == ("L2", "L3", "L1")
    assert cfg.to_dict(c) == {**old, "balancer": {"hold_s": 20.0}}


# --- every numeric setting's bounds, found in the schema ---------------------------------------------

# Keys whose bound is only reachable with another key moved out of the way (the relations between keys).
ROOM = {
    "grid.safety_margin_a": {"grid.fuse_a": 400, "balancer.decrease_deadband_a": 0},
    "balancer.decrease_deadband_a": {"grid.fuse_a": 400, "grid.safety_margin_a": 50},
    "balancer.min_increase_a": {"balancer.max_step_up_a": 80},
    "balancer.max_step_up_a": {"balancer.min_increase_a": 0},
    "balancer.min_a": {"chargers[].max_a": 80},
    "capacity.step_kw": {"capacity.ladder": [[0, 100], [0.5, 200], [10000, 300]]},
    "fixed_current_a": {"grid.fuse_a": 400, "grid.safety_margin_a": 0, "balancer.decrease_deadband_a": 0},
    "ocpp.validity_s": {"ocpp.renew_s": 1},
    "ocpp.renew_s": {"ocpp.validity_s": 120},
}
NUMERIC = [k for k in cfg.schema_keys() if k.bounds != (None, None)]


def _document(values: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"chargers": [{"id": "a"}]}
    for path, value in values.items():
        *tables, name = path.split(".")
        where = doc
        for t in tables:
            where = where["chargers"][0] if t == "chargers[]" else where.setdefault(t, {})
        where[name] = value
    return doc


def _bound_cases() -> list[Any]:
    cases = []
    for k in NUMERIC:
        lo, hi = k.bounds
        for bound, outside in ((lo, -math.inf), (hi, math.inf)):
            if bound is not None:
                # a whole number (a port) steps by one; a float by the smallest step there is
                beyond = (int(bound + math.copysign(1, outside)) if isinstance(k.type, msgspec.inspect.IntType)
                          else math.nextafter(bound, outside))
                cases.append(pytest.param(k, bound, beyond, id=f"{k.path}={bound}"))
    return cases


def test_every_numeric_setting_is_bounded_and_covered():
    for k in cfg.schema_keys():
        if k.type.__class__.__name__ in ("FloatType", "IntType"):
            assert None not in k.bounds, f"{k.path} has no bound"
    assert {"grid.fuse_a", "balancer.hold_s", "balancer.min_a", "headroom.rise_threshold_w",
            "headroom.i2_power_factor", "chargers[].max_a"} <= {k.path for k in NUMERIC}


@pytest.mark.parametrize(("key", "bound", "outside"), _bound_cases())
def test_a_bound_is_accepted_and_just_beyond_it_refused(key, bound, outside):
    room = ROOM.get(key.path, {})
    c = cfg.from_dict(_document({**room, key.path: bound}))
    assert cfg.from_dict(cfg.to_dict(c)) == c
    with pytest.raises(ConfigError) as err:
        cfg.from_dict(_document({**room, key.path: outside}))
    assert err.value.path == key.path.replace("[]", "[0]")
    assert "out of range" in err.value.message


# --- the shipped sample and the help --------------------------------------------------------------


def test_the_sample_configuration_loads_and_has_every_key():
    text = SAMPLE.read_text(encoding="utf-8")
    assert cfg.loads(text).chargers  # it loads, with its example charger
    assert text == cfg.sample_toml(), "examples/config.toml is stale: write it from apm.core.config.sample_toml()"
    sections = re.split(r"^\[+([\w.]+)\]+$", text, flags=re.M)
    by_table = {"": sections[0], **dict(zip(sections[1::2], sections[2::2], strict=True))}
    for k in cfg.schema_keys():
        table = k.table.removesuffix("[]")
        assert re.search(rf"^(# )?{k.name} = ", by_table[table], re.M), f"{k.path} missing from the sample"
        assert k.description in by_table[table]


def test_describe_lists_every_key_with_default_and_bounds():
    text = cfg.describe()
    for k in cfg.schema_keys():
        assert re.search(rf"^  {re.escape(k.path)} ", text, re.M), k.path
    assert re.search(r"^  grid\.fuse_a +25 +6\.\.400 A +main fuse rating$", text, re.M)
    assert re.search(r"^  balancer\.sharing +\"fair\" +one of \"fair\", \"max_energy\"", text, re.M)


def test_json_schema_carries_the_bounds():
    schema = msgspec.json.schema(DeviceConfig)
    grid = schema["$defs"]["GridConfig"]["properties"]["fuse_a"]
    assert (grid["minimum"], grid["maximum"]) == (6.0, 400.0)
    assert schema["$defs"]["BalancerSettings"]["additionalProperties"] is False


# --- round trip -------------------------------------------------------------------------------------

LINES_PERMS = st.permutations(["L1", "L2", "L3"]).map(tuple)
NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
chargers = st.lists(
    st.builds(ChargerConfig, id=NAMES, max_a=st.floats(6, 80), phases=st.sampled_from([1, 3]), rotation=LINES_PERMS),
    max_size=3, unique_by=lambda c: c.id,
).map(tuple)
configs = st.builds(
    DeviceConfig,
    serial=NAMES.map(lambda s: "A" + s),
    installation_id=NAMES,
    port=st.none() | st.just("/dev/ttyAPM"),
    grid=st.builds(GridConfig, network=st.sampled_from(["IT", "TN"]), fuse_a=st.floats(10, 400),
                   ct_ratio=st.floats(0.01, 1000), safety_margin_a=st.floats(1, 5)),
    chargers=chargers,
    broker=st.builds(BrokerConfig, url=st.none() | st.just("mqtt://localhost:1883"),
                     username=st.none() | NAMES, password=st.none() | st.text(max_size=20), tls=st.booleans()),
    fixed_current_a=st.none() | st.floats(0, 5),  # at most fuse - margin (10 - 5)
    balancer=st.builds(BalancerSettings, hold_s=st.floats(0, 600), resolution_a=st.floats(0.01, 6),
                       sharing=st.sampled_from(["fair", "max_energy"]), decrease_deadband_a=st.floats(0, 0.9)),
    headroom=st.builds(HeadroomSettings, refine_i2=st.booleans(), i2_power_factor=st.none() | st.floats(0.1, 1)),
)


@settings(max_examples=150, deadline=None)
@given(configs)
def test_dump_then_load_is_the_identity(c):
    assert cfg.loads(cfg.dumps(c)) == c
    assert cfg.from_dict(cfg.to_dict(c)) == c


# --- [ocpp]: the failsafe's timing and current --------------------------------------------------------


def test_an_ocpp_renewal_must_leave_room_for_a_late_one():
    c = cfg.from_dict({"ocpp": {"validity_s": 6, "renew_s": 3}})
    assert (c.ocpp.validity_s, c.ocpp.renew_s) == (6, 3)
    with pytest.raises(ConfigError) as err:
        cfg.from_dict({"ocpp": {"validity_s": 6, "renew_s": 3.5}})
    assert err.value.path == "ocpp.renew_s" and "more than half of validity_s (6 s)" in err.value.message
    with pytest.raises(ConfigError, match="out of range"):
        cfg.from_dict({"ocpp": {"validity_s": 121}})  # the 2 minutes


_charger = st.builds(lambda phases, rot, max_a: {"phases": phases, "rotation": rot, "max_a": max_a},
                     st.sampled_from([1, 3]), st.permutations(["L1", "L2", "L3"]),
                     st.sampled_from([6, 10, 16, 32, 80]))


@settings(max_examples=200, deadline=None)
@given(network=st.sampled_from(["TN", "IT"]), fuse=st.sampled_from([16, 25, 40, 63, 125]),
       fixed=st.none() | st.floats(0, 60), chargers=st.lists(_charger, min_size=1, max_size=cfg.MAX_CHARGERS))
def test_failsafe_currents_of_all_chargers_at_once_stay_within_the_fuse(network, fuse, fixed, chargers):
    """Every charger falls back on its own when the device is gone: together they must not overload a line."""
    from apm.core.lines import usage
    from apm.services.runtime import safe_current

    doc = {"grid": {"network": network, "fuse_a": fuse},
           "chargers": [{"id": f"c{i}", **c} for i, c in enumerate(chargers)]}
    if fixed is not None and fixed <= fuse - 2:
        doc["fixed_current_a"] = fixed
    c = cfg.from_dict(doc)
    safe = {ch.id: safe_current(c, ch) for ch in c.chargers}
    for k in range(3):
        on_line = sum(safe[ch.id] * usage(network, ch.phases, ch.rotation)[k] for ch in c.chargers)
        assert on_line <= c.fallback_a + 1e-9 <= c.grid.fuse_a - c.grid.safety_margin_a + 1e-9
    assert all(0 <= safe[ch.id] <= ch.max_a for ch in c.chargers)


def test_chargers_on_separate_lines_each_keep_the_whole_fixed_current():
    from apm.services.runtime import safe_current

    c = cfg.from_dict({"grid": {"network": "TN", "fuse_a": 63}, "fixed_current_a": 20, "chargers": [
        {"id": "a", "phases": 1, "rotation": ["L1", "L2", "L3"]},
        {"id": "b", "phases": 1, "rotation": ["L2", "L3", "L1"]},
        {"id": "c", "phases": 3}]})
    # a on L1 and b on L2 share their line with c only; c shares L1 and L2 with one other each.
    assert {ch.id: safe_current(c, ch) for ch in c.chargers} == {"a": 10, "b": 10, "c": 10}
    two = cfg.from_dict({"grid": {"network": "TN", "fuse_a": 63}, "fixed_current_a": 20, "chargers": [
        {"id": "a", "phases": 1, "rotation": ["L1", "L2", "L3"]},
        {"id": "b", "phases": 1, "rotation": ["L2", "L3", "L1"]}]})
    assert {ch.id: safe_current(two, ch) for ch in two.chargers} == {"a": 20, "b": 20}
