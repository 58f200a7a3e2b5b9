"""The explorer over HTTP: routes, errors, and that nothing from the browser reads a file outside the run."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

pytest.importorskip("duckdb")


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def raw_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """A request with the path sent byte for byte (urllib would normalise ``..``)."""
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    c.putheader("Host", host)
    c.endheaders()
    r = c.getresponse()
    return r.status, r.read()


def test_binds_loopback_and_serves_the_page(explorer):
    assert explorer.url.startswith("http://127.0.0.1:")
    status, body, ctype = get(explorer.url)
    assert status == 200 and b"nemo_frames explorer" in body and ctype.startswith("text/html")
    status, body, _ = get(explorer.url + "api/meta")
    meta = json.loads(body)
    assert meta["total"] == 32 and meta["dup_methods"] == ["exact", "perceptual", "semantic"] and meta["has_items"]
    assert "<iframe" in explorer._repr_html_()


def test_thumbnail_and_errors_over_http(explorer):
    status, body, ctype = get(explorer.url + "api/thumb/0?px=64")
    assert status == 200 and ctype == "image/jpeg" and body[:2] == b"\xff\xd8"
    status, body, _ = get(explorer.url + "api/samples?sort=nope")
    assert status == 400 and "unknown column" in json.loads(body)["error"]
    assert get(explorer.url + "api/sample/999999")[0] == 404
    assert get(explorer.url + "api/whatif?column=blur_score&op=>=&value=nan")[0] == 400


def test_crafted_paths_and_keys_cannot_read_outside_the_run(explorer, explore_run, tmp_path):
    secret = explore_run.parent / "secret.txt"  # beside the run: outside it
    secret.write_text("NF-SECRET-7d1f")
    rel = "../" * 12
    paths = [
        f"/static/{rel}etc/passwd", "/static/..%2f..%2f..%2f..%2fetc%2fpasswd", "/static/%2e%2e/%2e%2e/data.py",
        f"/static/{rel}{secret.relative_to('/')}", f"/static//{secret}", "/static/../explore/data.py",
        f"/api/thumb/{rel}etc/passwd", "/api/thumb/0/../../../../etc/passwd", f"/api/image/..%2F..%2F{secret.name}",
        f"/api/sample/{secret}", "/api/doc?id=../../../../etc/passwd", f"/api/doc?id={secret}",
        f"/api/item_image/{rel}etc/passwd", f"/{rel}etc/passwd", f"/api/dups?method=../../{secret.name}",
        "/api/samples?sort=read_csv('/etc/passwd')", "/api/samples?range=read_csv('/etc/passwd'):0:1",
        "/api/fragment?t=" + urllib.request.quote(json.dumps([{"column": "/etc/passwd", "op": ">=", "value": 1}])),
    ]
    for path in paths:
        status, body = raw_get(explorer.port, path)
        assert status in (400, 403, 404), (path, status)
        assert b"NF-SECRET" not in body and b"root:" not in body and b"import" not in body, path


def test_foreign_host_header_is_refused(explorer):
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host header.
    assert raw_get(explorer.port, "/api/meta", host="evil.example")[0] == 403
    assert raw_get(explorer.port, "/api/meta", host=f"localhost:{explorer.port}")[0] == 200


def test_fragment_endpoint_returns_yaml(explorer):
    t = urllib.request.quote(json.dumps([{"column": "blur_score", "op": ">=", "value": 321, "name": "blur"}]))
    status, body, ctype = get(explorer.url + f"api/fragment?t={t}")
    assert status == 200 and ctype.startswith("text/plain") and b"value: 321.0" in body


def test_nf_explore_is_callable_from_the_package(explore_run):
    import nemo_frames as nf
    import nemo_frames.explore  # binds the submodule as nf.explore: calling it must still work

    ex = nf.explore(explore_run)
    try:
        assert get(ex.url + "api/meta")[0] == 200
    finally:
        ex.stop()


def test_cli_explore_on_a_non_run_directory(tmp_path, capsys):
    from nemo_frames.cli import main

    assert main(["explore", str(tmp_path), "--port", "0"]) == 2
    assert "curate" in capsys.readouterr().err


def test_curate_ends_by_printing_the_explore_command(tmp_path, capsys):
    from nemo_frames.pipeline import curate
    from tests._demo import demo_config, demo_shards

    data, _ = demo_shards(tmp_path)
    out = tmp_path / "out"
    cfg = demo_config(data, out, **{"export.enabled": False, "report.enabled": False, "dedup.exact": False,
                                    "dedup.perceptual": None, "score.qr": False, "filters": [{"blur": 100}]})
    curate(cfg, progress=True)
    err = capsys.readouterr().err.rstrip().splitlines()
    assert err[-1] == f"[nemo_frames] explore the run: nemo-frames explore {out}"


def test_cli_serves_until_ctrl_c(explore_run):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    p = subprocess.Popen([sys.executable, "-m", "nemo_frames.cli", "explore", str(explore_run), "--port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    try:
        line = p.stdout.readline()
        url = line.split(": ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and "Ctrl-C" in line
        assert json.loads(get(url + "api/meta")[1])["total"] == 32
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
