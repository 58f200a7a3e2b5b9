"""The explorer's web server: a small tornado application over :class:`~nemo_frames.explore.data.RunData`.

Tornado is already installed with Dask's distributed scheduler (its dashboard runs on it), so the
explorer adds no web framework. The page is static (``static/``, shipped in the package); it asks
JSON endpoints for one page of rows at a time and ``<img>`` endpoints for thumbnails, which are
made on demand from the shards by locator. Queries run in a thread pool, off the event loop.

Routes accept row numbers only (``/api/thumb/123``), never paths; static files are served from the
package's ``static`` directory by tornado's ``StaticFileHandler``, which refuses any path outside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tornado.web

from nemo_frames.explore.data import ExploreError, Query, RunData

STATIC = Path(__file__).resolve().parent / "static"
_MISSING = (b'<svg xmlns="http://www.w3.org/2000/svg" width="160" height="160"><rect width="160" height="160" '
            b'fill="#ddd"/><text x="80" y="84" text-anchor="middle" font-family="sans-serif" font-size="14" '
            b'fill="#777">no image</text></svg>')
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class _Base(tornado.web.RequestHandler):
    data: RunData
    pool: ThreadPoolExecutor

    def initialize(self, data: RunData, pool: ThreadPoolExecutor, hosts: set[str] | None) -> None:
        self.data, self.pool, self.hosts = data, pool, hosts

    def prepare(self) -> None:
        # A page on another site cannot reach a loopback server through DNS rebinding: the Host must be ours.
        if self.hosts is not None and self.request.host_name not in self.hosts:
            raise tornado.web.HTTPError(403, reason="unexpected Host header")

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    async def run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, lambda: fn(*args, **kw))
        except ExploreError as exc:
            self.send_error(exc.status, reason=str(exc).splitlines()[0][:200])
            raise _Handled() from None

    def write_json(self, obj: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(obj, default=str, allow_nan=False))

    def write_error(self, status_code: int, **kw: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": self._reason, "status": status_code}))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, _Handled):
            return
        super()._handle_request_exception(e)


class _Handled(Exception):
    """The response was already sent (an ExploreError became a 4xx)."""


class MetaHandler(_Base):
    async def get(self) -> None:
        self.write_json(await self.run(self.data.meta))


def _query(h: tornado.web.RequestHandler) -> Query:
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for spec in h.get_arguments("range"):
        col, _, rest = spec.partition(":")
        lo, _, hi = rest.partition(":")
        ranges[col] = (lo or None, hi or None)  # type: ignore[assignment]  # RunData checks the numbers
    return Query(status=h.get_argument("status", None) or None, reason=h.get_argument("reason", None) or None,
                 error=h.get_argument("error", None) or None, text=h.get_argument("q", None) or None, ranges=ranges,
                 sort=h.get_argument("sort", None) or None, desc=h.get_argument("desc", "0") in ("1", "true"))


def _int(h: tornado.web.RequestHandler, name: str, default: int) -> int:
    v = h.get_argument(name, None)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise tornado.web.HTTPError(400, reason=f"{name}: expected an integer, found {v[:20]!r}") from None


class SamplesHandler(_Base):
    async def get(self) -> None:
        q = _query(self)
        self.write_json(await self.run(self.data.samples, q, offset=_int(self, "offset", 0), limit=_int(self, "limit", 48)))


class SampleHandler(_Base):
    async def get(self, row: str) -> None:
        self.write_json(await self.run(self.data.detail, row))


class ImageHandler(_Base):
    def initialize(self, data: RunData, pool: ThreadPoolExecutor, hosts: set[str] | None, items: bool = False,
                   px: int = 0) -> None:
        super().initialize(data, pool, hosts)
        self.items, self.px = items, px

    async def get(self, row: str) -> None:
        px = self.px or max(16, min(_int(self, "px", 160), 512))
        fn = self.data.item_image if self.items else self.data.image
        blob = await self.run(fn, row, px)
        if blob is None:
            # A grey box, not a 404: an undecodable image is data (its error is in the ledger), not a broken page.
            self.set_header("X-NF-Image", "missing")
            self.set_header("Content-Type", "image/svg+xml")
            self.finish(_MISSING)
            return
        self.set_header("Content-Type", "image/jpeg")
        self.set_header("Cache-Control", "private, max-age=3600")
        self.finish(blob)


class WhatIfHandler(_Base):
    async def get(self) -> None:
        self.write_json(await self.run(self.data.whatif, self.get_argument("column", ""), self.get_argument("op", ">="),
                                       self.get_argument("value", ""), k=_int(self, "k", 12)))


class QuantilesHandler(_Base):
    async def get(self) -> None:
        self.write_json({"quantiles": await self.run(self.data.quantiles, self.get_argument("column", ""))})


class FragmentHandler(_Base):
    async def get(self) -> None:
        try:
            specs = json.loads(self.get_argument("t", "[]"))
            assert isinstance(specs, list) and all(isinstance(s, dict) for s in specs)
        except (ValueError, AssertionError):
            raise tornado.web.HTTPError(400, reason="t: expected a JSON list of {column, op, value, name}") from None
        text = await self.run(self.data.config_fragment, specs)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(text)


class DupsHandler(_Base):
    async def get(self) -> None:
        self.write_json(await self.run(self.data.dup_groups, self.get_argument("method", ""),
                                       offset=_int(self, "offset", 0), limit=_int(self, "limit", 20)))


class SweepHandler(_Base):
    async def get(self) -> None:
        self.write_json(await self.run(self.data.sweep_view))


class DocsHandler(_Base):
    async def get(self) -> None:
        self.write_json(await self.run(self.data.documents, offset=_int(self, "offset", 0),
                                       limit=_int(self, "limit", 50), dropped_only=self.get_argument("dropped", "0") == "1",
                                       text=self.get_argument("q", None) or None))


class DocHandler(_Base):
    async def get(self) -> None:
        self.write_json(await self.run(self.data.document, self.get_argument("id", "")))


class IndexHandler(_Base):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy",
                        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'")
        self.finish((STATIC / "index.html").read_bytes())


class _Static(tornado.web.StaticFileHandler):
    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")


def make_app(data: RunData, *, hosts: set[str] | None = None, workers: int = 4) -> tornado.web.Application:
    """The tornado application serving ``data`` (``hosts``: accepted Host names; None accepts any)."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nf-explore")
    kw = {"data": data, "pool": pool, "hosts": hosts}
    return tornado.web.Application([
        (r"/", IndexHandler, kw),
        (r"/api/meta", MetaHandler, kw),
        (r"/api/samples", SamplesHandler, kw),
        (r"/api/sample/(\d+)", SampleHandler, kw),
        (r"/api/thumb/(\d+)", ImageHandler, kw),
        (r"/api/image/(\d+)", ImageHandler, {**kw, "px": 1024}),
        (r"/api/item_image/(\d+)", ImageHandler, {**kw, "items": True}),
        (r"/api/whatif", WhatIfHandler, kw),
        (r"/api/fragment", FragmentHandler, kw),
        (r"/api/quantiles", QuantilesHandler, kw),
        (r"/api/dups", DupsHandler, kw),
        (r"/api/sweep", SweepHandler, kw),
        (r"/api/docs", DocsHandler, kw),
        (r"/api/doc", DocHandler, kw),
        (r"/static/(.*)", _Static, {"path": str(STATIC)}),
    ], compress_response=True, nf_pool=pool)


class Explorer:
    """A running explorer (in a background thread): its ``url``, ``stop()``, and an IFrame in notebooks.

    Made by :func:`nemo_frames.explore.explore`; the server stops when ``stop()`` is called or the
    process exits.
    """

    def __init__(self, data: RunData, *, host: str = "127.0.0.1", port: int = 0) -> None:
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets

        self.data = data
        self.host = host
        socks = bind_sockets(port, address=host)
        self.port = int(socks[0].getsockname()[1])
        hosts = (_LOOPBACK | {host}) if host in _LOOPBACK else None
        self._app = make_app(data, hosts=hosts)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._server = HTTPServer(self._app)
            self._server.add_sockets(socks)
            self._ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name="nf-explore-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        """Stop the server, its query threads and the run's database."""
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self._server.stop)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
        if self._loop is not None:
            self._app.settings["nf_pool"].shutdown(wait=False, cancel_futures=True)
            self.data.close()
        self._loop = None

    def __enter__(self) -> Explorer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<nemo_frames explorer of {self.data.run_dir} at {self.url}>"

    def _repr_html_(self) -> str:
        return (f'<p>nemo_frames explorer: <a href="{self.url}" target="_blank">{self.url}</a></p>'
                f'<iframe src="{self.url}" width="100%" height="720" style="border:1px solid #ccc"></iframe>')

    def iframe(self, width: str | int = "100%", height: int = 720) -> Any:
        """An ``IPython.display.IFrame`` of the explorer (for ``display(...)`` in a notebook)."""
        from IPython.display import IFrame

        return IFrame(self.url, width=width, height=height)


def explore_command(args: argparse.Namespace) -> int:
    """``nemo-frames explore RUN_DIR``: serve the explorer until Ctrl-C."""
    from nemo_frames.explore import explore

    if args.host not in _LOOPBACK:
        print(f"nemo-frames explore: serving on {args.host}: anyone who can reach this address can browse the run "
              "and its images (there is no login)", file=sys.stderr)
    try:
        ex = explore(args.run_dir, host=args.host, port=args.port, items=args.items,
                     storage_options=getattr(args, "storage_options", None))
    except (FileNotFoundError, ImportError) as exc:
        print(f"nemo-frames explore: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"nemo_frames explorer of {ex.data.run_dir}: {ex.url}  (Ctrl-C to stop)", flush=True)
        if args.open:
            import webbrowser

            webbrowser.open(ex.url)
        ex._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        ex.stop()
    return 0


if __name__ == "__main__":  # python -m nemo_frames.explore.server RUN_DIR
    from nemo_frames.cli import main as _cli_main

    raise SystemExit(_cli_main(["explore", *sys.argv[1:]]))
