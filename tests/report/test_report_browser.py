"""The report in a real browser: headless Chromium renders it, offline.

Skipped with the reason when no Chromium is installed, except under ``CI=true`` (``.ci/run``
installs Debian's ``chromium``), where it must run.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import pytest

from sil_core.report import write_report

from ._stores import build, make_guard

#: Chromium's own background traffic (component and extension updates, network time, sign-in);
#: Debian's build makes it whatever the flags say, so the check below ignores these hosts only
BROWSER_OWN = re.compile(r"^(?:CONNECT |GET |POST )(?:https?://)?(?:update\.googleapis\.com|clients2\.google\.com|"
                         r"accounts\.google\.com|optimizationguide-pa\.googleapis\.com|"
                         r"content-autofill\.googleapis\.com|safebrowsing\.googleapis\.com)[:/]")
#: the ROLLED BACK badge's red (#b91c1c), as the screenshot must show it
BAD_RED = (0xB9, 0x1C, 0x1C)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or \
        next((p for p in ("/usr/bin/chromium", "/usr/lib/chromium/chromium") if os.access(p, os.X_OK)), None)
    if found:
        return found
    reason = "no headless Chromium installed (apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires the browser test: {reason}")
    pytest.skip(reason)


class Proxy:
    """A do-nothing HTTP proxy on a free local port that notes every connection made to it:
    the browser is pointed at it for every request, so a request the page makes is seen."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    first = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                except OSError:
                    first = "(no request line)"
                self.requests.append(first)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def run_chromium(binary: str, url: str, proxy: Proxy, *extra: str) -> subprocess.CompletedProcess:
    args = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
            "--metrics-recording-only", f"--proxy-server=http://127.0.0.1:{proxy.port}",
            "--proxy-bypass-list=<-loopback>", "--window-size=1280,2000", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def png_rows(path: Path, rows: int) -> tuple[int, list[bytes]]:
    """Width and the first ``rows`` unfiltered scanlines (RGB or RGBA, 8 bits) of a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    out, prev = [], bytearray(stride)
    for y in range(min(rows, height)):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out.append(bytes(line))
        prev = line
    return width, [bytes(px) for row in out for px in (row[i:i + 3] for i in range(0, stride, bpp))]


def test_the_report_renders_offline_in_chromium(tmp_path):
    binary = chromium()
    guard = make_guard(f"sqlite:///{tmp_path / 'sil.db'}")
    try:
        changes = build(guard)
        page = tmp_path / "report.html"
        write_report(guard, page)
    finally:
        guard.close()
    html = page.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)

    # the detector works: a page with external resources is caught making requests
    probe = tmp_path / "probe.html"
    probe.write_text('<!DOCTYPE html><link rel="stylesheet" href="https://cdn.sil-probe.invalid/x.css">'
                     '<img src="http://img.sil-probe.invalid/x.png"><p>probe</p>')
    proxy = Proxy()
    try:
        run_chromium(binary, probe.as_uri(), proxy, "--dump-dom", "--virtual-time-budget=2000")
    finally:
        proxy.close()
    assert any("sil-probe.invalid" in r for r in proxy.requests), proxy.requests

    proxy = Proxy()
    try:
        shot = tmp_path / "shot.png"
        got = run_chromium(binary, page.as_uri(), proxy, f"--screenshot={shot}")
        assert shot.exists(), got.stderr[-2000:]
        dom = run_chromium(binary, page.as_uri(), proxy, "--dump-dom", "--virtual-time-budget=2000")
        assert dom.returncode == 0, dom.stderr[-2000:]
    finally:
        proxy.close()
    made = [r for r in proxy.requests if not BROWSER_OWN.match(r)]
    assert made == [], f"the page made network requests: {made}"

    # the screenshot is not blank: the top of the page has text, badges and the red of ROLLED BACK
    _, pixels = png_rows(shot, 400)
    colours = set(pixels)
    assert len(colours) > 50, f"only {len(colours)} colours in the top of the screenshot"
    assert any(abs(r - BAD_RED[0]) < 12 and abs(g - BAD_RED[1]) < 12 and abs(b - BAD_RED[2]) < 12
               for r, g, b in colours), "no ROLLED BACK badge in the screenshot"

    # the DOM has every change, its verdict in words and its chart
    text = dom.stdout
    for change in changes.values():
        article = re.search(rf'<article [^>]*data-change-id="{re.escape(change.id)}"[^>]*>(.*?)</article>', text, re.S)
        assert article, f"change {change.id} is not in the DOM"
        body = article.group(1)
        assert re.search(r'<p class="headline verdict">[^<]{20,}</p>', body), body[:500]
        assert "<svg" in body and "<path" in body, f"change {change.id} has no chart"
    assert text.count('class="badge bad">ROLLED BACK<') >= 4  # twice each: the summary and the change
