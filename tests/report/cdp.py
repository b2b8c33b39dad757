"""A tiny Chrome DevTools Protocol client: headless Chromium, one websocket, one page.

Enough to load a page, record its console errors, uncaught exceptions and network requests, evaluate JavaScript
and take a screenshot, from Python (no node, no selenium). Needs ``websocket-client`` (the ``test`` extra).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Browser:
    """``with Browser(exe, folder) as b: b.open(url); b.evaluate("1 + 1")``; ``b.events`` holds every event,
    ``errors()`` and ``requests()`` those since the last ``open``."""

    def __init__(self, exe: str, folder: Path, width: int = 1280, height: int = 1600, timeout: float = 30,
                 starts: int = 3):
        import websocket

        self.timeout = timeout
        self.ws = None
        try:
            port, path = self._launch(exe, folder, width, height, starts)
            # No Origin header: Chromium refuses DevTools websockets from origins not allowed on its command line.
            self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout,
                                                  suppress_origin=True)
            self._id = 0
            self.events: list[dict[str, Any]] = []
            self._opened = 0  # index in events of the last open()
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Runtime", "Log", "Page", "Network"):
                self.page(f"{domain}.enable")
            self.page("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
        except BaseException:
            self.close()
            raise

    def _launch(self, exe: str, folder: Path, width: int, height: int, starts: int) -> list[str]:
        """Start Chromium and return its DevTools port and path. A start that has not opened its port in
        ``timeout`` seconds is ended (with every process it spawned) and tried again on a fresh profile, up to
        ``starts`` times: on a loaded 2-core CI machine a start has once taken longer than 30 s, so one slow start
        must not fail the suite. The error names Chromium's own last lines (its stderr is kept beside its profile,
        in ``folder``)."""
        for start in range(1, starts + 1):
            profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=folder))  # never a stale port file
            log = profile.with_suffix(".log")
            with open(log, "wb") as stderr:
                self.proc = subprocess.Popen(
                    [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--no-default-browser-check",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
                     "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
                    stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if port_file.is_file() and len(lines := port_file.read_text().splitlines()) >= 2:
                    return lines[:2]
                time.sleep(0.05)
            code = self.proc.poll()
            self._end(grace=0)
            tail = " | ".join(log.read_text(errors="replace").splitlines()[-5:])
            if start == starts:
                raise RuntimeError(f"{exe} did not open its DevTools port in {starts} starts of {self.timeout} s "
                                   f"(last exit code {code}); its last lines: {tail}")
        raise AssertionError("unreachable")

    def _end(self, grace: float = 10) -> None:
        """End Chromium and every process it started (its own session), after ``grace`` seconds for it to end
        itself."""
        if getattr(self, "proc", None) is None:
            return
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None  # ended once: a second close() must not signal a group that may be another's now

    def _receive(self) -> dict[str, Any]:
        message = json.loads(self.ws.recv())
        if "method" in message:
            self.events.append(message)
        return message

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer, keeping the events that arrive meanwhile."""
        self._id += 1
        request: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            request["sessionId"] = session
        self.ws.send(json.dumps(request))
        while True:
            message = self._receive()
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, session=self.session, **params)

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        seen = self._opened = len(self.events)
        self.page("Page.navigate", url=url)
        deadline = time.monotonic() + self.timeout
        while not any(e["method"] == "Page.loadEventFired" for e in self.events[seen:]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load in {self.timeout} s")
            self._receive()

    def before_each_page(self, source: str) -> None:
        """Run ``source`` in every page opened from now on, before the page's own scripts (DevTools injects it: the
        page's Content-Security-Policy does not apply to it)."""
        self.page("Page.addScriptToEvaluateOnNewDocument", source=source)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression; a thrown exception is an error here."""
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (CSP violations, failed loads) of the page
        opened last."""
        found = []
        for event in self.events[self._opened:]:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"log: {params['entry'].get('text')}")
        return found

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events[self._opened:]
                if e["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        asked = False
        try:
            if getattr(self, "ws", None) is not None:
                asked = True
                self.call("Browser.close")
                self.ws.close()
        except Exception:  # the browser may already be gone; the process is ended below either way
            pass
        self._end(grace=10 if asked else 0)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
