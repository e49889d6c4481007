"""`apm sim run --protocol`: the same scenario with every charger on one protocol."""

from __future__ import annotations

import typing

import pytest

from apm.cli import sim_run
from apm.core.config import ChargerProtocol
from sim.closed_loop import scenario_from_dict
from sim.pipeline import PROTOCOLS, device_config, with_protocol

SCENARIO = {
    "duration_s": 60,
    "grid": {"network": "TN", "fuse_a": 25},
    "meter": {"vendor": "kamstrup", "kind": "3p-tn"},
    "charger": [{"id": "a", "max_a": 16, "phases": 3, "rotation": ["L2", "L3", "L1"]},
                {"id": "b.1", "protocol": "ocpp", "ocpp_id": "ZAP000123"}],
}


def test_every_charger_takes_the_protocol_and_keeps_the_rest() -> None:
    sc = scenario_from_dict(SCENARIO)
    for protocol in PROTOCOLS:
        chargers = with_protocol(sc, protocol).chargers
        assert [c.protocol for c in chargers] == [protocol, protocol]
        assert [(c.id, c.max_a, c.rotation) for c in chargers] == [(c.id, c.max_a, c.rotation) for c in sc.chargers]
        device_config(with_protocol(sc, protocol))  # the device accepts it
    goe = with_protocol(sc, "goe").chargers
    assert [c.goe_serial for c in goe] == ["a", "b_1"]  # the id, in what a go-e topic allows
    assert with_protocol(sc, "ocpp").chargers[1].charge_point_id == "ZAP000123"
    with pytest.raises(ValueError, match="protocol must be one of"):
        with_protocol(sc, "modbus")


def test_the_command_line_offers_every_protocol_the_config_knows() -> None:
    assert sim_run.PROTOCOLS == PROTOCOLS == typing.get_args(ChargerProtocol)
