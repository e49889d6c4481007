"""The device config's [capacity] table: declared with bounds, unknown keys refused, a ladder that joins."""

from __future__ import annotations

import pytest

from apm.core import config
from apm.core.eco.capacity import DEFAULT_LADDER, ladder_pairs


def test_default_is_off_with_the_common_ladder() -> None:
    cfg = config.loads("")
    assert cfg.capacity.enabled is False
    assert cfg.capacity.step_kw == 5.0
    assert cfg.capacity.ladder == ladder_pairs(DEFAULT_LADDER)  # the same figures as the guard's default
    assert "capacity" not in config.to_dict(cfg)  # defaults are not written


def test_a_grid_companys_ladder_round_trips() -> None:
    text = "[capacity]\nenabled = true\nstep_kw = 5\nladder = [[0, 150], [5, 300], [10, 500]]\n"
    cfg = config.loads(text)
    assert cfg.capacity.ladder == ((0, 150), (5, 300), (10, 500))
    assert config.loads(config.dumps(cfg)) == cfg


@pytest.mark.parametrize(("text", "path", "words"), [
    ("[capacity]\nstep_kw = 4", "capacity.step_kw", "not a step's upper bound"),
    ("[capacity]\nladder = [[1, 100], [5, 200]]", "capacity.ladder", "must start at 0"),
    ("[capacity]\nladder = [[0, 100], [5, 200], [5, 300]]", "capacity.ladder", "not above"),
    ("[capacity]\nstep_kw = 0.1", "capacity.step_kw", "out of range (0.5..10000 kW)"),
    ("[capacity]\nmargin_kwh = 9", "capacity.margin_kwh", "out of range (0..5 kWh)"),
    ("[capacity]\nstep = 5", "capacity.step", "unknown setting"),
    ("[capacity]\nladder = [[0, 1, 2]]", "capacity.ladder[0]", ""),
])
def test_bad_tables_name_the_key(text: str, path: str, words: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.loads(text)
    assert err.value.path == path
    assert words in err.value.message


def test_the_keys_are_described() -> None:
    assert "capacity.step_kw" in config.describe()
    assert "[capacity]" in config.sample_toml()
