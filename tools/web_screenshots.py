"""Screenshots of the web page for the docs: `apm run --demo` (simulated meter, chargers and EVs), its page
in headless chromium at phone (390x844) and desktop (1280x800) width -> docs/web-phone.png, docs/web-desktop.png.

    python -m tools.web_screenshots [--out docs] [--settle 20]      # `make screenshots`
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.cdp import Browser

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"phone": (390, 844, True), "desktop": (1280, 800, False)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--settle", type=float, default=25.0,
                    help="wall seconds of the demo (at --speed 2) before the shots, so the plot has a history")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="apm-shots-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "APM_BROKER_USERS": f"{tmp}/users.json",
               "XDG_STATE_HOME": f"{tmp}/state", "XDG_DATA_HOME": f"{tmp}/data", "APM_FLASH": f"{tmp}/flash.img"}
        port = 18000 + os.getpid() % 1000
        proc = subprocess.Popen([sys.executable, "-m", "apm", "run", "--demo", "--speed", "2", "--plain",
                                 "--broker-port", "0", "--http", f"127.0.0.1:{port}"],
                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            asyncio.run(shoot(f"http://127.0.0.1:{port}/", args.out, args.settle, proc))
        finally:
            proc.terminate()
            proc.wait(20)
    return 0


async def shoot(url: str, out: Path, settle: float, proc: subprocess.Popen[bytes]) -> None:
    async with Browser.start() as browser:
        page = await browser.page()
        deadline = time.monotonic() + 30
        while True:  # the demo's page comes up after its broker and world
            try:
                if await page.goto(url) == 200:
                    break
            except Exception:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the demo's page never came up at {url}")
            await asyncio.sleep(0.5)
        await page.wait_for("/^\\d+\\.\\d A$/.test(document.querySelector('.setpoint')?.textContent || '')", 30)
        # The first car asks Smart eco for 20 kWh by 07:00 through the page's form, so the shot has a plan.
        await page.wait_for("document.querySelector('#eco-cars form') !== null", 30)
        await page.eval("(f => { f.querySelector('input[type=checkbox]').checked = true;"
                        " f.querySelector('input[type=time]').value = '07:00';"
                        " f.querySelector('input[type=number]').value = '20'; f.querySelector('button').click(); })"
                        "(document.querySelector('#eco-cars form'))")
        await asyncio.sleep(settle)  # a picture, not a test: let the plot fill
        for name, (w, h, mobile) in SIZES.items():
            await page.size(w, h, mobile=mobile)
            await page.wait_for("document.readyState === 'complete'")
            await asyncio.sleep(1.5)  # one more event at this width
            path = out / f"web-{name}.png"
            await page.screenshot(path)
            print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
