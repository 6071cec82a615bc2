"""
A real browser talks to wsrpc: ``examples/browser/`` in headless Chromium.

The example's server runs as a reader would run it (its own process, in
development mode: its stderr must stay empty), serving the page and the
WebSocket on one port with the origin check on. Playwright drives Debian's
Chromium (``/usr/bin/chromium``), whose page connects with TGrid's own
``WebSocketConnector``, bundled by esbuild. ``make test`` installs Chromium
and builds the bundle first (``make browser``); nothing here is skipped.

The tests wait with Playwright's ``expect`` (which retries until its
timeout) and on the server's output lines, never with sleep().

``WSRPC_UPDATE_SCREENSHOT=1`` also saves the page's screenshot as
``docs/img/browser.png`` (``make screenshot``).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Origin

from tests.conftest import UNIT
from tests.system.test_examples import SLOW_CALLBACK, python_env

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "browser"
SCREENSHOT = ROOT / "docs" / "img" / "browser.png"
CHROMIUM = Path("/usr/bin/chromium")
SETUP = "run `make browser` (make test does it before pytest)"

# Headless, as root, with the network closed: no sandbox (it needs a user
# namespace), and none of the background traffic Chromium would try.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000 * UNIT
"""How long an expectation on the page may take: generous for a loaded machine."""


@dataclass
class RunningServer:
    """examples/browser/server.py, running."""

    process: subprocess.Popen[str]
    url: str

    def next_line(self) -> str:
        """The server's next output line (waits for it; pytest-timeout bounds the wait)."""
        assert self.process.stdout is not None
        return self.process.stdout.readline().rstrip("\n")


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    if not (EXAMPLE / "dist" / "main.js").is_file():
        pytest.fail(f"the page's bundle examples/browser/dist/main.js is missing: {SETUP}")
    process = subprocess.Popen(
        [sys.executable, "-X", "dev", str(EXAMPLE / "server.py"), "--port", "0"],
        cwd=ROOT,
        env=python_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        running = RunningServer(process, "")
        running.url = running.next_line()
        if not running.url.startswith("http://127.0.0.1:"):
            _, err = process.communicate(timeout=30 * UNIT)
            pytest.fail(f"server.py did not start: {running.url!r} {err}")
        yield running
        # No input, then end of file: the server exits when its stdin closes.
        out, err = process.communicate("", timeout=30 * UNIT)
    finally:
        if process.returncode is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    # The tests read every line they caused: one more is an unexpected event
    # (a refused origin reaching the handler, say).
    assert out == ""
    # As in test_examples: only asyncio's slow-callback reports may show.
    assert [line for line in err.splitlines() if not SLOW_CALLBACK.match(line)] == []


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: {SETUP}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Browser, url: str) -> Page:
    """The example's page in a fresh context (its own cookies and storage)."""
    context = browser.new_context(viewport={"width": 900, "height": 600})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(url)
    return page


def connect(page: Page, name: str, token: str) -> None:
    """Fill in the header and press connect."""
    page.fill("#name", name)
    page.fill("#token", token)
    page.click("#connect")


def test_rejections_are_shown_with_code_and_reason(browser: Browser, server: RunningServer) -> None:
    page = open_page(browser, server.url)
    try:
        connect(page, "ann", "wrong")
        # TGrid's WebSocketError: the close code and the reason given to reject().
        expect(page.locator("#status")).to_have_text("rejected: 4001 bad token", timeout=WAIT_MS)
        assert server.next_line() == "rejected a bad token"
        connect(page, "  ", "letmein")
        expect(page.locator("#status")).to_have_text(
            "rejected: 4000 a name is required", timeout=WAIT_MS
        )
        assert server.next_line() == "rejected a page without a name"
        expect(page.locator("#add")).to_be_disabled()
        expect(page.locator("#items li")).to_have_count(0)
    finally:
        page.context.close()


def test_calls_and_pushes(browser: Browser, server: RunningServer, tmp_path: Path) -> None:
    ann = open_page(browser, server.url)
    bob: Page | None = None
    try:
        connect(ann, "ann", "letmein")
        expect(ann.locator("#status")).to_have_text("connected as ann", timeout=WAIT_MS)
        # Pushed by the server right after accept(): to ann, then to every page.
        expect(ann.locator("#items li")).to_have_text(
            ["welcome, ann", "ann joined"], timeout=WAIT_MS
        )
        assert server.next_line() == "accepted ann"

        ann.fill("#a", "2")
        ann.fill("#b", "40")
        ann.click("#add")
        expect(ann.locator("#sum")).to_have_text("42", timeout=WAIT_MS)
        ann.click("#split")
        expect(ann.locator("#words")).to_have_text('["calls","go","both","ways"]', timeout=WAIT_MS)
        ann.fill("#message", "hello")
        ann.click("#post")
        expect(ann.locator("#posted")).to_have_text("reached 1 page(s)", timeout=WAIT_MS)

        # A second browser: what it posts reaches ann's page by a server push
        # that ann's page did not ask for.
        bob = open_page(browser, server.url)
        connect(bob, "bob", "letmein")
        expect(bob.locator("#items li")).to_have_text(
            ["welcome, bob", "bob joined"], timeout=WAIT_MS
        )
        assert server.next_line() == "accepted bob"
        bob.fill("#message", "hi ann")
        bob.click("#post")
        expect(bob.locator("#posted")).to_have_text("reached 2 page(s)", timeout=WAIT_MS)
        expect(ann.locator("#items li")).to_have_text(
            ["welcome, ann", "ann joined", "ann: hello", "bob joined", "bob: hi ann"],
            timeout=WAIT_MS,
        )
        expect(bob.locator("#items li")).to_have_text(
            ["welcome, bob", "bob joined", "bob: hi ann"], timeout=WAIT_MS
        )
        expect(ann.locator("#error")).to_have_text("")

        shot = tmp_path / "browser.png"
        ann.screenshot(path=shot)
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", png[16:24]) == (900, 600)  # the IHDR's width, height
        if os.environ.get("WSRPC_UPDATE_SCREENSHOT"):
            SCREENSHOT.parent.mkdir(exist_ok=True)
            SCREENSHOT.write_bytes(png)

        # A Python exception reaches the page as {name, message}: "x" is NaN,
        # which JSON sends as null, and None + 3 raises TypeError.
        ann.fill("#a", "x")
        ann.fill("#b", "3")
        ann.click("#add")
        expect(ann.locator("#error")).to_have_text(
            "TypeError: unsupported operand type(s) for +: 'NoneType' and 'int'", timeout=WAIT_MS
        )

        # Bob's page closing ends his connection on the server.
        bob.context.close()
        bob = None
        assert server.next_line() == "bob left (code 1001)"  # going away
    finally:
        if bob is not None:
            bob.context.close()
        ann.context.close()
    assert server.next_line() == "ann left (code 1001)"


def test_origin_check(server: RunningServer) -> None:
    ws_url = server.url.replace("http://", "ws://") + "rpc"
    # Another site's page, and a client sending no Origin: both refused
    # before the handler runs (which would print a line: the server fixture
    # checks that none is left unread).
    for origin in [Origin("http://evil.example"), None]:
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(ws_url, origin=origin, open_timeout=30 * UNIT).close()
        assert refused.value.response.status_code == 403
    # Plain HTTP: the page, its script, and nothing else.
    with urllib.request.urlopen(server.url, timeout=30 * UNIT) as response:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert b'<script src="/main.js">' in response.read()
    with urllib.request.urlopen(server.url + "main.js", timeout=30 * UNIT) as response:
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.url + "secret.txt", timeout=30 * UNIT)
    assert missing.value.code == 404
    missing.value.close()


def test_missing_bundle_is_a_clear_error(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-X",
            "dev",
            str(EXAMPLE / "server.py"),
            "--bundle",
            str(tmp_path / "x.js"),
        ],
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )
    assert completed.returncode == 1
    assert completed.stdout == ""
    assert completed.stderr.startswith(f"error: {tmp_path / 'x.js'} is missing: ")
    assert "`make browser`" in completed.stderr
