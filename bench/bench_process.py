"""`apm decode` as a whole process against amshan, and the peak memory of `apm decode` / `apm replay`.

- Throughput: `apm decode DUMP > /dev/null` (interpreter start, imports, reading, decoding, JSON lines
  out) on the core corpus repeated to ``frames`` frames, as a child process; against amshan's
  in-process decode (its frame reader and AutoDecoder, fed one frame at a time as a port delivers a
  push) on the same frames. The figure is microseconds of the child's CPU per frame; target 30x.
- Memory: peak RSS (``ru_maxrss`` of the child) of `apm decode` and `apm replay --fast --json` on a
  dump of ``big_frames`` frames (2 M: about two months of one meter) generated in a temporary folder
  from the bundled example dumps; the target is under 60 MB, and flat in the dump's size.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import peer
from han.dump import numbered_lines, parse_line
from tests.vectors import frame, records

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 30.0
TARGET_RSS_MB = 60.0
BIG_FRAMES = 2_000_000
AMSHAN_FRAMES = 3_000  # amshan is slow: its per-frame figure comes from this many of the same frames


@dataclass(frozen=True, slots=True)
class Child:
    """One child process, measured by the kernel."""

    argv: tuple[str, ...]
    status: int
    wall_s: float
    cpu_s: float  # user + system
    max_rss_mb: float


@dataclass(frozen=True, slots=True)
class Report:
    frames: int
    decode: Child  # apm decode of the corpus
    amshan_us: float | None  # amshan, in process, per frame
    amshan_problem: str | None
    big_frames: int
    big_mb: float
    small: tuple[Child, ...]  # decode and replay of a dump a tenth of the size (flatness)
    big: tuple[Child, ...]  # decode and replay of the big dump

    @property
    def apm_us(self) -> float:
        return self.decode.cpu_s / self.frames * 1e6

    @property
    def ratio(self) -> float | None:
        return self.amshan_us / self.apm_us if self.amshan_us else None


def run_child(argv: list[str]) -> Child:
    """Run ``argv`` with stdout to /dev/null; its status, wall and CPU time and peak RSS (wait4)."""
    env = os.environ | {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(os.devnull, "wb") as null:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=null, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait again
    return Child(tuple(argv), proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def apm(*args: str) -> list[str]:
    return [sys.executable, "-m", "apm", *args]


def example_frames() -> list[bytes]:
    """Every frame of the bundled example dumps (all vendors and kinds, every list; one per line)."""
    out = []
    for path in sorted((ROOT / "examples" / "dumps").glob("*.hex")):
        with open(path, "rb") as f:
            out += [chunk for _, line in numbered_lines(f) if (chunk := parse_line(line))]
    return out


def write_dump(path: Path, frames: list[bytes], count: int) -> int:
    """``count`` frames cycled from ``frames`` into a raw binary dump at ``path``; its size."""
    size = 0
    with open(path, "wb") as f:
        batch: list[bytes] = []
        for data in itertools.islice(itertools.cycle(frames), count):
            batch.append(data)
            if len(batch) >= 10_000:
                size += f.write(b"".join(batch))
                batch.clear()
        size += f.write(b"".join(batch))
    return size


def amshan_per_frame(frames: list[bytes]) -> float:
    """Microseconds per frame of amshan's in-process decode, fed one frame at a time (best of 3)."""
    p = peer.load()
    best = float("inf")
    for _ in range(3):
        reader = peer.PeerReader(p)
        started = time.process_time()
        for data in frames:
            reader.feed(data)
        best = min(best, time.process_time() - started)
    return best / len(frames) * 1e6


def measure(frames: int = 200_000, big_frames: int = BIG_FRAMES, with_amshan: bool = True) -> Report:
    core = [frame(r) for r in records("core")]
    with tempfile.TemporaryDirectory(prefix="apm-bench-") as tmp:
        corpus = Path(tmp) / "core.bin"
        write_dump(corpus, core, frames)
        decode = run_child(apm("decode", "-q", str(corpus)))
        if decode.status != 0:
            raise RuntimeError(f"apm decode {corpus} exited with {decode.status}")
        amshan_us, problem = None, "not requested"
        if with_amshan:
            try:
                amshan_us, problem = amshan_per_frame(list(itertools.islice(itertools.cycle(core), AMSHAN_FRAMES))), None
            except peer.PeerUnavailable as exc:
                problem = str(exc)
        examples = example_frames()
        runs: dict[str, tuple[Child, ...]] = {}
        size = 0
        for name, count in (("small", max(big_frames // 10, 1)), ("big", big_frames)):
            dump = Path(tmp) / f"{name}.bin"
            size = write_dump(dump, examples, count)
            runs[name] = (run_child(apm("decode", "-q", str(dump))),
                          run_child(apm("replay", str(dump), "--fast", "--json", "-q")))
            dump.unlink()
    return Report(frames, decode, amshan_us, problem, big_frames, size / 1e6, runs["small"], runs["big"])


def render(report: Report, out=None) -> None:
    out = out or sys.stdout
    say = lambda text="": print(text, file=out)  # noqa: E731
    say(f"apm decode as a whole process: {report.frames:,} core frames, JSON lines to /dev/null")
    say(f"  apm decode  {report.decode.cpu_s:7.2f} s CPU ({report.decode.wall_s:.2f} s wall), "
        f"{report.apm_us:6.2f} us/frame, {report.frames / report.decode.cpu_s:,.0f} frames/s")
    if report.amshan_us is None:
        say(f"  amshan      not measured ({report.amshan_problem})")
    else:
        ratio = report.ratio or 0.0
        verdict = "meets" if ratio >= TARGET_RATIO else "is BELOW"
        say(f"  amshan      {report.amshan_us:6.2f} us/frame in process (fed one frame at a time)")
        say(f"  apm decode is {ratio:.1f}x amshan, which {verdict} the {TARGET_RATIO:.0f}x target")
    say(f"Peak RSS on a generated dump of {report.big_frames:,} frames ({report.big_mb:,.0f} MB), "
        f"and on one a tenth of it:")
    for small, big in zip(report.small, report.big, strict=True):
        ok = "ok" if big.max_rss_mb < TARGET_RSS_MB else "ABOVE"
        say(f"  apm {big.argv[3]:7} {big.max_rss_mb:6.1f} MB ({small.max_rss_mb:.1f} MB for a tenth), "
            f"{big.wall_s:6.1f} s wall, exit {big.status}: {ok} (target < {TARGET_RSS_MB:.0f} MB)")


def run() -> None:
    render(measure())


if __name__ == "__main__":
    run()
