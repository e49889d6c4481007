"""Headless chromium driven over the Chrome DevTools Protocol (its websocket), for the web page's test
and screenshots: no Selenium or Playwright, only Debian's ``chromium`` and the ``websockets`` package.

    async with Browser.start() as browser:
        page = await browser.page()
        await page.size(390, 844, mobile=True)
        status = await page.goto("http://127.0.0.1:8080/")
        await page.wait_for("document.getElementById('cur-L1').textContent.endsWith(' A')")
        png = await page.screenshot()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, NAMES) if p), None)


class CdpError(Exception):
    pass


class Page:
    """One tab: commands answered by id, events kept for `wait_event`."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._new_event = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self._pending:
                fut = self._pending.pop(msg["id"])
                if "error" in msg:
                    fut.set_exception(CdpError(str(msg["error"])))
                else:
                    fut.set_result(msg.get("result", {}))
            elif "method" in msg:
                self._events.append(msg)
                self._new_event.set()

    async def send(self, method: str, **params: Any) -> Any:
        i = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        return await asyncio.wait_for(fut, 30)

    async def wait_event(self, method: str, match: Any = None, timeout: float = 20) -> dict[str, Any]:
        """The first event ``method`` (since the page opened) for which ``match(params)`` holds."""
        async def find() -> dict[str, Any]:
            seen = 0
            while True:
                for e in self._events[seen:]:
                    if e["method"] == method and (match is None or match(e["params"])):
                        return dict(e["params"])
                seen = len(self._events)
                self._new_event.clear()
                await self._new_event.wait()

        return await asyncio.wait_for(find(), timeout)

    async def size(self, width: int, height: int, *, mobile: bool = False) -> None:
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=2 if mobile else 1, mobile=mobile)

    async def headers(self, headers: dict[str, str]) -> None:
        await self.send("Network.setExtraHTTPHeaders", headers=headers)

    async def goto(self, url: str) -> int:
        """Load ``url``; the document's HTTP status."""
        self._events.clear()
        frame = await self.send("Page.navigate", url=url)
        response = await self.wait_event("Network.responseReceived",
                                         lambda p: p.get("type") == "Document" and p["frameId"] == frame["frameId"])
        return int(response["response"]["status"])

    async def eval(self, expression: str) -> Any:
        out = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in out:
            raise CdpError(out["exceptionDetails"].get("exception", {}).get("description", str(out)))
        return out["result"].get("value")

    async def wait_for(self, condition: str, timeout: float = 20) -> Any:
        """Wait (in the page, checking as it changes) until the JS expression ``condition`` is truthy; its value."""
        js = f"""new Promise((resolve, reject) => {{
          const check = () => {{ try {{ const v = ({condition}); if (v) {{ done(v); }} }} catch (e) {{}} }};
          const obs = new MutationObserver(check);
          const timer = setTimeout(() => {{ obs.disconnect(); reject(new Error("timed out: " + {json.dumps(condition)})); }},
                                   {int(timeout * 1000)});
          const done = (v) => {{ obs.disconnect(); clearTimeout(timer); resolve(v); }};
          obs.observe(document, {{subtree: true, childList: true, characterData: true, attributes: true}});
          check();
        }})"""
        return await self.eval(js)

    async def screenshot(self, path: Path | None = None) -> bytes:
        data = base64.b64decode((await self.send("Page.captureScreenshot", format="png",
                                                 captureBeyondViewport=False))["data"])
        if path is not None:
            path.write_bytes(data)
        return data

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.ws.close()


class Browser:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, home: tempfile.TemporaryDirectory[str]) -> None:
        self.proc, self.port, self.home = proc, port, home
        self.pages: list[Page] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, binary: str | None = None, timeout: float = 30):  # type: ignore[no-untyped-def]
        binary = binary or find_chromium()
        if binary is None:
            raise CdpError("no chromium: apt-get install chromium")
        # Chromium's helper processes can still write into the profile after the browser has exited:
        # cleaning it up is best effort, never a test failure.
        home = tempfile.TemporaryDirectory(prefix="apm-chromium-", ignore_cleanup_errors=True)
        proc = subprocess.Popen([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-port=0",
                                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                 "--disable-quic",
                                 f"--user-data-dir={home.name}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        browser: Browser | None = None
        try:
            # Chromium writes the port it took into this file once it listens.
            active = Path(home.name, "DevToolsActivePort")
            deadline = time.monotonic() + timeout
            while not (active.exists() and active.read_text().strip()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise CdpError(f"chromium did not start (exit {proc.poll()})")
                await asyncio.sleep(0.05)
            browser = cls(proc, int(active.read_text().split()[0]), home)
            yield browser
        finally:
            for p in browser.pages if browser is not None else []:
                await p.close()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            home.cleanup()

    async def page(self) -> Page:
        targets = await asyncio.to_thread(self._json, "list")
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        ws = await websockets.connect(url, max_size=64 * 2**20)
        page = Page(ws)
        self.pages.append(page)
        for domain in ("Page", "Runtime", "Network"):
            await page.send(f"{domain}.enable")
        return page

    def _json(self, what: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/{what}", timeout=10) as r:
            return json.load(r)
