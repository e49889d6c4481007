"""One convention for every `apm` command: exit statuses, time arguments, --version, paths, light start-up."""

from __future__ import annotations

import argparse
import json
import os
import pkgutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

import pytest

from apm.cli import commands
from apm.cli.main import COMMANDS, build_parser, main
from apm.cli.support import now_arg, parse_time
from apm.io.storage import paths

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("asyncio", "amqtt", "aiomqtt", "rich", "cryptography", "sim", "serial", "msgspec")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APM_", "XDG_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        env[name] = str(tmp_path / name.lower())
    return env


def _imported_after(argv: list[str], tmp_path: Path) -> tuple[int, set[str]]:
    """Run ``apm ARGV`` in a fresh interpreter; its exit status and the top-level modules it imported."""
    code = ("import sys, json\nfrom apm.cli.main import main\ntry:\n    rc = main(sys.argv[1:])\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "sys.stderr.write('\\nMODULES ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                          env=_env(tmp_path), cwd=tmp_path)
    modules = set(json.loads(proc.stderr.rsplit("MODULES ", 1)[1]))
    return proc.returncode, modules


# --- light start-up ----------------------------------------------------------------------------


def test_help_imports_no_heavy_module(tmp_path):
    status, modules = _imported_after(["--help"], tmp_path)
    assert status == 0
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_decode_imports_only_the_decoder(tmp_path):
    dump = REPO / "examples" / "dumps" / "aidon-3p-it.hex"
    status, modules = _imported_after(["decode", "-q", str(dump)], tmp_path)
    assert status == 0
    assert not modules & {"asyncio", "amqtt", "aiomqtt", "rich", "cryptography", "sim", "serial"}


def test_run_with_an_external_broker_does_not_import_the_embedded_one(tmp_path):
    dump = REPO / "examples" / "dumps" / "aidon-3p-it.hex"
    config = tmp_path / "c.toml"
    config.write_text("")
    status, modules = _imported_after(["run", "--broker", "mqtt://127.0.0.1:9", "--replay", str(dump), "--speed",
                                       "1000", "--duration", "0.3", "--plain", "--config", str(config)], tmp_path)
    assert status == 1  # it ran, but never reached the (closed) broker
    assert "amqtt" not in modules and "sim" not in modules


def test_the_command_table_lists_every_command_module_with_its_own_help():
    modules = {m.name for m in pkgutil.iter_modules(commands.__path__)}
    assert set(COMMANDS) == modules
    full = build_parser()  # every command registered in full
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert helps == COMMANDS


def test_only_the_named_command_is_built():
    parser = build_parser(["decode", "x.hex"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.choices["decode"].get_default("func") is not None
    assert sub.choices["replay"].get_default("func") is None


# --- --version, exit statuses --------------------------------------------------------------------


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"apm {metadata.version('apm-emulator')}"


def test_no_command_is_bad_input(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "says"), [
    (["flash", "write", "none.toml", "--image", "f.img"], "apm flash write: "),
    (["token", "show", "--image", "none.img"], "apm token show: no image at none.img"),
    (["cloud", "issue", "--state", "none.json", "--serial", "X"], "apm cloud issue: "),
    (["decode", "none.hex"], "apm decode: cannot read none.hex"),
    (["replay", "none.hex"], "apm replay: cannot read none.hex"),
    (["info", "--now", "soon"], "apm info: --now 'soon' is not an ISO 8601 time"),
    (["eco", "plan", "--now", "soon", "--departure", "07:00", "--hours", "1"], "apm eco plan: --now 'soon'"),
    (["sim", "meter", "--vendor", "aidon", "--start", "soon", "--hex", "--duration", "1"],
     "apm sim meter: --start 'soon'"),
])
def test_bad_input_exits_2_with_one_line(argv, says, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "apm", *argv], capture_output=True, text=True, timeout=60,
                          env=_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), proc.stderr


# --- one time parser -------------------------------------------------------------------------------


def test_a_time_without_offset_is_oslo_local_time():
    winter = parse_time("2026-01-12T17:00")
    assert winter.utcoffset() == timedelta(hours=1)
    assert parse_time("2026-07-01T12:00").utcoffset() == timedelta(hours=2)  # summer time
    assert parse_time("2026-01-12T17:00Z") == datetime(2026, 1, 12, 17, tzinfo=UTC)
    assert parse_time("2026-01-12T17:00+03:00").utcoffset() == timedelta(hours=3)
    with pytest.raises(ValueError, match="--start 'x' is not an ISO 8601 time"):
        parse_time("x", "--start")


def test_now_means_the_same_in_every_command():
    args = argparse.Namespace(now="2030-01-31T12:00")
    assert now_arg(args) == datetime(2030, 1, 31, 11, tzinfo=UTC)
    # every --now says what an offset-less time means, in its own help
    for argv in (["info"], ["token", "show"], ["flash", "verify"], ["cloud", "show"], ["eco", "plan"],
                 ["sim", "meter"]):
        text = _help(argv)
        assert "Europe/Oslo" in text, argv


def _help(argv: list[str]) -> str:
    parser = build_parser(argv)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args([*argv, "--help"])
    return out.getvalue()


# --- paths ----------------------------------------------------------------------------------------


def test_paths_follow_xdg(monkeypatch, tmp_path):
    for name in ("APM_FLASH", "APM_CLOUD_STATE", "APM_SERIAL_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert paths.image() == tmp_path / "data" / "apm" / "flash.img"
    assert paths.status_file(paths.image()) == tmp_path / "data" / "apm" / "flash.img.status.json"
    assert paths.cloud_state() == tmp_path / "data" / "apm" / "cloud.json"
    assert paths.serial_settings() == tmp_path / "state" / "apm" / "serial.json"
    assert paths.price_cache() == tmp_path / "cache" / "apm" / "prices"
    monkeypatch.setenv("XDG_STATE_HOME", "relative")  # ignored, as the spec says
    assert paths.state_dir() == Path.home() / ".local" / "state" / "apm"


def test_default_paths_without_xdg(monkeypatch, tmp_path):
    for name in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "APM_FLASH", "APM_CLOUD_STATE",
                 "APM_SERIAL_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.image() == tmp_path / ".local" / "share" / "apm" / "flash.img"  # where images always were
    assert paths.price_cache() == tmp_path / ".cache" / "apm" / "prices"


def test_variables_and_options_win(monkeypatch, tmp_path):
    monkeypatch.setenv("APM_FLASH", str(tmp_path / "dev.img"))
    monkeypatch.setenv("APM_CLOUD_STATE", str(tmp_path / "c.json"))
    monkeypatch.delenv("APM_SERIAL_CACHE", raising=False)
    assert paths.image() == tmp_path / "dev.img"
    assert paths.image("given.img") == Path("given.img")
    assert paths.cloud_state() == tmp_path / "c.json"
    assert paths.serial_settings() == tmp_path / "dev.img.serial.json"
    monkeypatch.setenv("APM_SERIAL_CACHE", str(tmp_path / "s.json"))
    assert paths.serial_settings() == tmp_path / "s.json"


def test_serial_settings_remembered_before_the_move_are_still_found(monkeypatch, tmp_path):
    for name in ("APM_FLASH", "APM_SERIAL_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    legacy = tmp_path / "cache" / "apm" / "serial.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text("{}")
    assert paths.serial_settings() == legacy
    new = tmp_path / "state" / "apm" / "serial.json"
    new.parent.mkdir(parents=True)
    new.write_text("{}")
    assert paths.serial_settings() == new
