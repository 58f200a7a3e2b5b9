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


class Page:
    """A live headless-Chromium page for interactive tests: navigate, evaluate, wait, click, screenshot.

    Use as a context manager; the DevTools connection runs on its own event-loop thread so the test
    (and a server under test in another thread) stay synchronous::

        with Page() as page:
            page.goto("http://127.0.0.1:8765/")
            page.wait_for("document.body.dataset.ready === '1'")
            page.click("#tabs button[data-tab=dups]")
            assert page.errors() == []
    """

    def __init__(self, *, width: int = 1300, height: int = 1000, timeout: float = 60.0) -> None:
        self.width, self.height, self.timeout = width, height, timeout
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Page:
        import threading

        exe = chromium()
        self._profile = tempfile.mkdtemp(prefix="nf-chromium-")
        self._proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(self._profile) / "DevToolsActivePort"
            deadline = time.monotonic() + self.timeout
            while not (port_file.is_file() and port_file.read_text().strip()):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Chromium did not start (exit code {self._proc.poll()})")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            ws = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            self._thread.start()
            self._pending: dict[int, Any] = {}
            self._ids = iter(range(1, 1_000_000))
            self._run(self._connect(ws))
            for m in ("Page.enable", "Runtime.enable", "Log.enable"):
                self.call(m)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            conn = getattr(self, "_conn", None)
            if conn is not None:
                loop.call_soon_threadsafe(conn.close)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout or self.timeout)

    async def _connect(self, ws_url: str) -> None:
        from tornado.websocket import websocket_connect

        self._conn = await websocket_connect(ws_url, max_message_size=512 << 20)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self._conn.read_message()
            if msg is None:
                for f in self._pending.values():
                    if not f.done():
                        f.set_exception(RuntimeError("DevTools connection closed"))
                return
            data = json.loads(msg)
            fut = self._pending.pop(data["id"], None) if "id" in data else None
            if fut is not None:
                fut.set_result(data)
            else:
                self.events.append(data)

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        i = next(self._ids)
        fut = self._loop.create_future()
        self._pending[i] = fut
        await self._conn.write_message(json.dumps({"id": i, "method": method, "params": params}))
        data = await fut
        if "error" in data:
            raise RuntimeError(f"{method}: {data['error']}")
        return data.get("result", {})

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command; return its result."""
        return self._run(self._call(method, params))

    def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        n = len(self.events)
        self.call("Page.navigate", url=url)
        self.wait(lambda: any(e.get("method") == "Page.loadEventFired" for e in self.events[n:]), what="load event")

    def eval(self, expression: str) -> Any:
        """Evaluate JavaScript (promises awaited) and return its JSON value; a thrown error raises."""
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:80]}: {res['exceptionDetails'].get('exception', {}).get('description')}")
        return res["result"].get("value")

    def wait(self, cond: Any, *, what: str = "condition", timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def wait_for(self, expression: str, *, timeout: float | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        box: list[Any] = []

        def ok() -> bool:
            box[:] = [self.eval(expression)]
            return bool(box[0])

        self.wait(ok, what=expression, timeout=timeout)
        return box[0]

    def click(self, selector: str) -> None:
        """Click the first element matching ``selector`` (raises when there is none)."""
        found = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                          "if (!e) return false; e.scrollIntoView(); e.click(); return true; })()")
        if not found:
            raise AssertionError(f"no element matches {selector!r}")

    def set_value(self, selector: str, value: Any, event: str = "input") -> None:
        """Set an input's value and fire ``event`` (``input`` or ``change``) as a user edit would."""
        self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.value = {json.dumps(str(value))}; "
                  f"e.dispatchEvent(new Event({json.dumps(event)}, {{bubbles: true}})); }})()")

    def screenshot(self, path: Path) -> Path:
        shot = self.call("Page.captureScreenshot", format="png")
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return Path(path)

    def errors(self) -> list[dict[str, Any]]:
        """Console errors, error log entries (failed loads, CSP violations) and uncaught exceptions so far."""
        return [
            e["params"] for e in self.events
            if (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert"))
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")
            or e.get("method") == "Runtime.exceptionThrown"
        ]


if __name__ == "__main__":  # manual use: python tests/_browser.py page.html shot.png
    import sys

    r = load_page(Path(sys.argv[1]), screenshot=Path(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(json.dumps({k: (v if k != "images" else len(v)) for k, v in r.items()}, indent=1))
    os._exit(0)
