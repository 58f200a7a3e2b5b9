"""A tiny headless-Chromium driver over the DevTools protocol (tornado's websocket client, no extra deps).

``load_page(path)`` opens a local HTML file, waits for the load event, and returns what the
page reported: console errors, uncaught exceptions, per-image ``naturalWidth``, and
optionally a PNG screenshot. Tests skip when no Chromium is installed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str:
    """Path of a Chromium binary, or ``pytest.skip`` saying how to install one."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    pytest.skip("no Chromium on this machine: apt-get install -y chromium (the Makefile's `browser` target does it)")
    raise AssertionError  # unreachable


_CHECK = """JSON.stringify({
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth})),
  svgs: document.querySelectorAll('svg').length,
  title: document.title,
  text: document.body.innerText.length})"""


def load_page(path: Path, *, screenshot: Path | None = None, width: int = 1300, height: int = 2400,
              timeout: float = 60.0) -> dict[str, Any]:
    """Load ``path`` in headless Chromium; return ``{images, svgs, title, console_errors, exceptions}``."""
    exe = chromium()
    profile = tempfile.mkdtemp(prefix="nf-chromium-")
    proc = subprocess.Popen(
        [exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
         f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        ws = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        return asyncio.run(asyncio.wait_for(_drive(ws, Path(path).resolve().as_uri(), screenshot), timeout))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


async def _drive(ws_url: str, url: str, screenshot: Path | None) -> dict[str, Any]:
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(ws_url, max_message_size=512 << 20)
    ids = iter(range(1, 10_000))
    events: list[dict[str, Any]] = []

    async def call(method: str, **params: Any) -> dict[str, Any]:
        i = next(ids)
        await conn.write_message(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = await conn.read_message()
            if msg is None:
                raise RuntimeError("DevTools connection closed")
            data = json.loads(msg)
            if data.get("id") == i:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})
            events.append(data)

    async def wait_event(name: str) -> None:
        if any(e.get("method") == name for e in events):
            return
        while True:
            msg = await conn.read_message()
            if msg is None:
                raise RuntimeError("DevTools connection closed")
            data = json.loads(msg)
            events.append(data)
            if data.get("method") == name:
                return

    for m in ("Page.enable", "Runtime.enable", "Log.enable"):
        await call(m)
    await call("Page.navigate", url=url)
    await wait_event("Page.loadEventFired")
    res = await call("Runtime.evaluate", expression=_CHECK, returnByValue=True)
    out = json.loads(res["result"]["value"])
    if screenshot is not None:
        shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    conn.close()
    out["console_errors"] = [
        e["params"] for e in events
        if (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert"))
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")
    ]
    out["exceptions"] = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
    return out


if __name__ == "__main__":  # manual use: python tests/_browser.py page.html shot.png
    import sys

    r = load_page(Path(sys.argv[1]), screenshot=Path(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(json.dumps({k: (v if k != "images" else len(v)) for k, v in r.items()}, indent=1))
    os._exit(0)
