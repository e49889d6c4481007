"""Starting and stopping the tests' local HTTP stand-ins of the price services (`PriceServer`,
`NordPoolServer`): each has a ``ThreadingHTTPServer`` as ``httpd`` and the thread that serves it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Protocol, TypeVar


class LocalServer(Protocol):
    httpd: ThreadingHTTPServer
    thread: threading.Thread


S = TypeVar("S", bound=LocalServer)


def serving(server: S) -> Iterator[S]:
    """``server`` serving while the generator is suspended (a fixture's ``yield from``), closed after."""
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
