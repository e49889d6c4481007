"""The device configuration: TOML in, validated dataclasses out, TOML back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apm import config as cfg
from apm.config import BrokerConfig, ChargerConfig, ConfigError, DeviceConfig, GridConfig


def test_empty_document_gives_the_defaults():
    assert cfg.loads("") == DeviceConfig()


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
        ramp_up_s = 60
        nested = { x = [1, 2] }
    """)
    assert c == DeviceConfig(
        serial="APM1", installation_id="i-1", installation_type="HOME", country="NO", port="/dev/ttyAPM",
        fixed_current_a=20.0, grid=GridConfig("IT", 63.0, 2.5, 3.0),
        broker=BrokerConfig("mqtts://broker.example:8883", "apm", "secret", True),
        chargers=(ChargerConfig("a", 16.0, 1, ("L3", "L1", "L2")),), balancer={"ramp_up_s": 60, "nested": {"x": [1, 2]}},
    )
    assert cfg.loads(cfg.dumps(c)) == c


@pytest.mark.parametrize(
    ("text", "path", "says"),
    [
        ("bogus = 1", "bogus", "unknown key"),
        ("[grid]\nfuse_amps = 1", "grid.fuse_amps", "unknown key (known keys here: network, fuse_a"),
        ('[[chargers]]\nid = "a"\ncolor = "red"', "chargers[0].color", "unknown key"),
        ("[broker]\nport = 1883", "broker.port", "unknown key"),
        ("[grid]\nfuse_a = 401", "grid.fuse_a", "401 A is out of range (6..400 A)"),
        ("[grid]\nfuse_a = 5.9", "grid.fuse_a", "out of range"),
        ("[grid]\nfuse_a = true", "grid.fuse_a", "True is not a number"),
        ("[grid]\nfuse_a = nan", "grid.fuse_a", "is not a number"),
        ('[grid]\nnetwork = "TT"', "grid.network", "not a network type"),
        ("[grid]\nct_ratio = 0", "grid.ct_ratio", "greater than 0"),
        ("[grid]\nsafety_margin_a = -1", "grid.safety_margin_a", "out of range"),
        ("[grid]\nfuse_a = 10\nsafety_margin_a = 10", "grid.safety_margin_a", "leaves nothing"),
        ('[[chargers]]\nphases = 3', "chargers[0].id", "missing"),
        ('[[chargers]]\nid = "a"\nphases = 2', "chargers[0].phases", "not 1 or 3"),
        ('[[chargers]]\nid = "a"\nrotation = ["L1", "L2"]', "chargers[0].rotation", "permutation"),
        ('[[chargers]]\nid = "a"\nrotation = ["L1", "L2", "N"]', "chargers[0].rotation", "permutation"),
        ('[[chargers]]\nid = "a"\nmax_a = 81', "chargers[0].max_a", "81 A is out of range (6..80 A)"),
        ('[[chargers]]\nid = "a"\n[[chargers]]\nid = "a"', "chargers[1].id", "duplicate"),
        ("chargers = 3", "chargers", "array of tables"),
        ('grid = "big"', "grid", "must be a table"),
        ('country = "Norway"', "country", "two-letter"),
        ('serial = "A B"', "serial", "not a serial number"),
        ('port = ""', "port", "non-empty"),
        ('[broker]\nurl = "http://x"', "broker.url", "not an MQTT URL"),
        ("[broker]\ntls = 1", "broker.tls", "true or false"),
        ("fixed_current_a = -1", "fixed_current_a", "out of range"),
        ("[balancer]\nwhen = 1979-05-27", "balancer.when", "date values are not supported"),
    ],
)
def test_validation_names_the_key(text, path, says):
    with pytest.raises(ConfigError) as err:
        cfg.loads(text)
    assert err.value.path == path
    assert says in str(err.value) and str(err.value).startswith(path + ":")


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 1"):
        cfg.loads("a = = 1")
    with pytest.raises(ConfigError, match="no such file"):
        cfg.load(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[grid]\nfuse_a = 1000\n")
    with pytest.raises(ConfigError, match=r"grid.fuse_a: .*\(in .*bad.toml\)"):
        cfg.load(tmp_path / "bad.toml")


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
                   ct_ratio=st.floats(0.01, 1000), safety_margin_a=st.floats(0, 5)),
    chargers=chargers,
    broker=st.builds(BrokerConfig, url=st.none() | st.just("mqtt://localhost:1883"),
                     username=st.none() | NAMES, password=st.none() | st.text(max_size=20), tls=st.booleans()),
    fixed_current_a=st.floats(0, 400),
    balancer=st.dictionaries(NAMES.filter(lambda s: s[0].isalpha()), st.integers(-1000, 1000) | st.floats(0, 10),
                             max_size=4),
)


@settings(max_examples=150, deadline=None)
@given(configs)
def test_dump_then_load_is_the_identity(c):
    assert cfg.loads(cfg.dumps(c)) == c
    assert cfg.from_dict(cfg.to_dict(c)) == c
