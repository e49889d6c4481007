"""The latency benchmarks run end to end (`apm run --port PTY` auto-detecting 2400 8E1 on a pty, MQTT,
the balancer) and every frame gets its setpoint, at the broker or, through OCPP, at the charge point;
`make bench` gives the figures over 1,000 frames."""

from __future__ import annotations

import pytest

from bench import bench_latency

pytestmark = pytest.mark.timeout(120)


def test_every_frame_gets_a_setpoint_that_names_it() -> None:
    r = bench_latency.measure(frames=20, interval=0.02)
    assert r.missing == 0 and len(r.latencies_ms) == 20
    assert 0 < r.median_ms <= r.p99_ms
    # No bound on the latency: this checks the plumbing; `make bench` measures the speed.


def test_every_frame_moves_the_limit_at_the_ocpp_charge_point() -> None:
    from bench import bench_ocpp

    r = bench_ocpp.measure(frames=20, interval=0.05)
    assert r.missing == 0 and len(r.latencies_ms) == 20
    assert 0 < r.median_ms <= r.p99_ms
