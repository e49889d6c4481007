"""Benchmarks (``make bench``): each ``bench_*.py`` module exposes ``run() -> None`` printing its section."""
