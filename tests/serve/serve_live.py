"""A ``longclip-serve`` process on 127.0.0.1 and an ephemeral port, for the service's tests: every wait bounded,
the process (and so its port) always gone at the end."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

START_TIMEOUT = 180.0  # seconds to listen and load the tiny model on a loaded 2-core machine: a hang guard
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@dataclass
class Live:
    process: subprocess.Popen[str]
    url: str = ""
    stderr: list[str] = field(default_factory=list)

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120.0, headers=headers)

    def metric(self, line_start: str) -> float:
        """The value of the first /metrics line starting with ``line_start``."""
        text = httpx.get(f"{self.url}/metrics", timeout=60).text
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {line_start!r} in:\n{text}")

    def wait_for(self, what: str, check, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
        """Poll ``check()`` until true; a hang guard, not a timing assertion."""
        deadline = time.monotonic() + timeout
        while not check():
            assert self.process.poll() is None, f"the server died while waiting for {what}:\n{self.log()}"
            assert time.monotonic() < deadline, f"no {what} in {timeout}s:\n{self.log()}"
            time.sleep(0.05)

    def log(self) -> str:
        return "".join(self.stderr[-40:])


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def live_server(model_dir, *args: str) -> Iterator[Live]:  # type: ignore[no-untyped-def]
    cmd = [sys.executable, "-c", "from longclip.runtime.cli.serve import main; main()", "-m", str(model_dir),
           "--port", "0", "--decode-workers", "1", *map(str, args)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    live = Live(process)
    port: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            live.stderr.append(line)
            if not port and (match := _LISTENING.search(line)):
                port.append(match[1])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        live.wait_for("listening line", lambda: bool(port), START_TIMEOUT)
        live.url = f"http://127.0.0.1:{port[0]}"
        live.wait_for("/ready 200", lambda: _ready(live.url), START_TIMEOUT)
        yield live
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
        reader.join(30)
