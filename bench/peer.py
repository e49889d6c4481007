"""The peer decoder ``amshan`` (PyPI), loaded beside our own ``han`` in one process.

amshan's top-level package is also named ``han`` and imports itself absolutely (``from han import
cosem``), so it cannot sit in the virtualenv next to ours. It is installed aside, into
``.bench/amshan``, and imported while our ``han`` modules are out of ``sys.modules``; its modules
keep working afterwards because each holds references to the others it imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

VERSION = "2.1.1"
ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / ".bench" / "amshan"


class PeerUnavailable(RuntimeError):
    """amshan could not be installed (no registry reachable) or imported."""


@dataclass(frozen=True, slots=True)
class Peer:
    version: str
    path: Path
    hdlc: ModuleType  # han.hdlc of amshan: HdlcFrameReader
    autodecoder: ModuleType  # han.autodecoder of amshan: AutoDecoder


def _installed(target: Path) -> bool:
    return (target / "han" / "autodecoder.py").is_file() and (
        target / f"amshan-{VERSION}.dist-info"
    ).is_dir()


def ensure_installed(target: Path = TARGET) -> Path:
    """Install amshan (without its dependencies: construct is ours too) into ``target`` if missing."""
    if _installed(target):
        return target
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--upgrade", "--target", str(target), f"amshan=={VERSION}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not _installed(target):
        raise PeerUnavailable(f"pip could not install amshan=={VERSION} into {target}: "
                              f"{(done.stderr or done.stdout).strip()[-500:]}")
    importlib.invalidate_caches()
    return target


def _ours(name: str) -> bool:
    return name == "han" or name.startswith("han.")


def load(target: Path = TARGET) -> Peer:
    """Import amshan's ``han`` from ``target`` and give our ``han`` modules and ``sys.path`` back."""
    ensure_installed(target)
    saved_modules = {name: mod for name, mod in sys.modules.items() if _ours(name)}
    saved_path = list(sys.path)
    for name in saved_modules:
        del sys.modules[name]
    sys.path.insert(0, str(target))
    try:
        # An explicit spec, so that no finder (our editable install's among them) can hand back our han.
        spec = importlib.util.spec_from_file_location(
            "han", target / "han" / "__init__.py", submodule_search_locations=[str(target / "han")])
        if spec is None or spec.loader is None:
            raise PeerUnavailable(f"no importable package han under {target}")
        package = importlib.util.module_from_spec(spec)
        sys.modules["han"] = package
        spec.loader.exec_module(package)
        hdlc = importlib.import_module("han.hdlc")
        autodecoder = importlib.import_module("han.autodecoder")
    except ImportError as exc:
        raise PeerUnavailable(f"amshan under {target} does not import: {exc}") from exc
    finally:
        for name in [n for n in sys.modules if _ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path
    if not str(getattr(hdlc, "__file__", "")).startswith(str(target)):
        raise PeerUnavailable(f"han.hdlc came from {hdlc.__file__}, not from {target}")
    return Peer(VERSION, target, hdlc, autodecoder)


class PeerReader:
    """amshan's pipeline for one stream: ``HdlcFrameReader.read`` then ``AutoDecoder`` on each payload.

    ``feed(bytes)`` returns amshan's dicts, one per frame it could decode (None results are dropped).
    """

    def __init__(self, peer: Peer) -> None:
        self.frames = peer.hdlc.HdlcFrameReader()
        self.decoder = peer.autodecoder.AutoDecoder()

    def feed(self, data: bytes) -> list[dict]:
        out = []
        decode = self.decoder.decode_message_payload
        for frame in self.frames.read(data):
            if frame.is_valid:
                decoded = decode(frame.payload)
                if decoded is not None:
                    out.append(decoded)
        return out
