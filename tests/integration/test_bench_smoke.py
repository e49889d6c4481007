"""The benchmark code runs and produces its figures, so `make bench` cannot rot unnoticed.

One pass per measurement (no repeats, no minimum time): this checks the plumbing, not the speed.
The timeout leaves room for a first-time `pip install` of amshan into .bench/ on a fresh clone.
"""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console

import han
from bench import bench_decode, peer
from bench import run as bench_run
from tests.vectors import frame, records

pytestmark = pytest.mark.timeout(60)
MODES = {"frame reader", "per frame", "stream", "cold"}


@pytest.fixture(scope="module")
def amshan() -> peer.Peer:
    try:
        return peer.load()
    except peer.PeerUnavailable as exc:  # no registry reachable: the rest of the bench still runs
        pytest.skip(f"amshan not installable here: {exc}")


def _rendered(report: bench_decode.Report) -> str:
    out = io.StringIO()
    bench_decode.render(report, Console(file=out, width=140))
    return out.getvalue()


def test_amshan_loads_beside_our_han_without_replacing_it(amshan):
    assert amshan.hdlc.__file__.startswith(str(peer.TARGET))
    assert sys.modules["han"] is han
    assert sys.modules["han.hdlc"].__file__.startswith(str(peer.ROOT / "han"))
    assert not any(str(peer.TARGET) in p for p in sys.path)
    # Both decoders work on the same frame in the same process.
    data = frame(records("core")[0])
    assert peer.PeerReader(amshan).feed(data)
    assert len(han.HanReader().feed(data)) == 1


def test_decode_benchmark_gives_figures_and_ratios(amshan):
    report = bench_decode.measure(repeat=1, min_time=0.0)
    assert report.frames == len(records("core"))
    assert {row.mode for row in report.rows} == MODES
    assert 0 < report.amshan_decoded <= report.frames
    assert report.amshan_own_vendor <= report.amshan_decoded
    assert {row.mode for row in report.groups} >= {"aidon list 1", "kaifa list 2", "kamstrup list 2"}
    assert {row.mode for row in report.hours} == {"aidon hour", "kaifa hour", "kamstrup hour"}
    for row in report.rows + report.groups + report.hours:
        assert row.ours.seconds > 0 and row.ours.frames > 0, row.mode
        assert row.ratio is not None and row.ratio > 0, row.mode
    assert report.headline == report.row("per frame").ratio
    text = _rendered(report)
    assert "ours/amshan" in text and f"{report.headline:.1f}x amshan" in text


def test_decode_benchmark_without_amshan_still_measures_ours():
    report = bench_decode.measure(repeat=1, min_time=0.0, with_amshan=False)
    assert all(row.amshan is None and row.ratio is None for row in report.rows)
    assert all(row.ours.frames_per_s > 0 for row in report.rows)
    assert "amshan: not measured" in _rendered(report)


def test_best_time_reports_the_fastest_pass():
    calls = []
    timing = bench_decode.best_time(lambda: calls.append(1), frames=4, repeat=3, min_time=0.0)
    assert len(calls) == 1 + 1 + 3  # warm-up, calibration, three timed passes
    assert timing.frames == 4 and timing.us_per_frame == timing.seconds / 4 * 1e6


def test_runner_discovers_benchmark_modules(capsys):
    assert "decode" in bench_run.discover()
    assert bench_run.main(["--list"]) == 0
    assert "decode" in capsys.readouterr().out.split()
    assert bench_run.main(["no-such-benchmark"]) == 2
    assert "no benchmark named no-such-benchmark" in capsys.readouterr().err


def test_process_benchmark_measures_decode_and_peak_memory_of_children():
    from bench import bench_process

    report = bench_process.measure(frames=300, big_frames=300, with_amshan=False)
    assert report.decode.status == 0 and report.decode.cpu_s > 0 and report.apm_us > 0
    assert [c.argv[3] for c in report.big] == ["decode", "replay"]
    assert all(c.status == 0 and c.max_rss_mb > 0 for c in report.small + report.big)
    out = io.StringIO()
    bench_process.render(report, out)
    assert "amshan      not measured" in out.getvalue() and "Peak RSS" in out.getvalue()
