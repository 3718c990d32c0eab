"""A page in a real browser: headless Chromium (the Debian package, scripts/install-system-deps.sh)
driven over the DevTools protocol, to check what a person would see.

    seen = open_page("file:///tmp/run/index.html", screenshot=tmp_path / "page.png")
    seen.images          # [{"src", "complete", "width", "height", "shown_width", ...}] from the DOM
    seen.console_errors  # console errors, uncaught exceptions, failed loads (Log domain)

The DevTools socket is reached with websocket-client (a dependency of the kubernetes client).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install-system-deps.sh"
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")
_IMAGES = """JSON.stringify([...document.images].map(i => {
  const box = i.getBoundingClientRect();
  return {src: i.currentSrc || i.src, complete: i.complete, width: i.naturalWidth,
          height: i.naturalHeight, shown_width: box.width, shown_height: box.height};
}))"""


@dataclass
class PageSeen:
    images: list[dict] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    title: str = ""
    text: str = ""
    values: dict = field(default_factory=dict)
    """What each expression passed as `evaluate` gave, after the load event."""


def open_page(url: str, screenshot: Path | None = None, timeout: float = 60,
              evaluate: dict[str, str] | None = None) -> PageSeen:
    """Load `url` in a fresh headless Chromium, wait for its load event (every non-lazy image has
    loaded or failed by then) and report the DOM's images, the console's errors and the values
    of the JavaScript expressions in `evaluate` (run by DevTools, which no page policy stops)."""
    import websocket

    browser = chromium()
    if browser is None:
        raise RuntimeError("chromium is not installed: run scripts/install-system-deps.sh")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        # Its own process group: the browser's helper processes end with it (see _close).
        process = subprocess.Popen(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--remote-debugging-port=0", "--window-size=1280,900",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            socket = websocket.create_connection(_devtools_url(process, timeout), timeout=timeout,
                                                 suppress_origin=True)
            try:
                session = _Session(socket)
                seen = _inspect(session, url, screenshot, evaluate or {})
                session.session_id = None
                session.send("Browser.close")
                return seen
            finally:
                socket.close()
        finally:
            _close(process)


def chromium() -> str | None:
    """The Chromium binary; scripts/install-system-deps.sh is run (once) when it is missing."""
    if shutil.which("chromium") is None and not _install_attempted:
        _install_attempted.append(True)
        subprocess.run([str(INSTALL_SCRIPT)], check=False, timeout=900)
    return shutil.which("chromium")


_install_attempted: list[bool] = []


def _close(process: subprocess.Popen) -> None:
    """Wait for the browser to exit (Browser.close asked it to), else end its process group; its
    helpers write the profile until they are gone, which then can be deleted."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _devtools_url(process: subprocess.Popen, timeout: float) -> str:
    """The browser's DevTools address, from the line Chromium prints to stderr when it listens."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen = []
    while (line := lines.get(timeout=timeout)) is not None:
        seen.append(line)
        if match := _LISTENING.search(line):
            return match.group(1)
    raise RuntimeError("chromium exited before listening:\n" + "".join(seen[-20:]))


class _Session:
    """One page target, attached in flat mode: commands carry its session id; events are kept."""

    def __init__(self, socket):
        self.socket, self.next_id, self.session_id = socket, 0, None
        self.events: list[dict] = []

    def send(self, method: str, **params) -> None:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session_id:
            message["sessionId"] = self.session_id
        self.socket.send(json.dumps(message))

    def call(self, method: str, **params) -> dict:
        self.send(method, **params)
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str) -> dict:
        while True:
            for index, seen in enumerate(self.events):
                if seen.get("method") == event:
                    return self.events.pop(index)
            self.events.append(json.loads(self.socket.recv()))


def _inspect(session: _Session, url: str, screenshot: Path | None, evaluate: dict[str, str]) -> PageSeen:
    target = session.call("Target.createTarget", url="about:blank")["targetId"]
    session.session_id = session.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        session.call(f"{domain}.enable")
    session.call("Page.navigate", url=url)
    session.wait_for("Page.loadEventFired")
    seen = PageSeen(images=json.loads(_evaluate(session, _IMAGES)),
                    title=_evaluate(session, "document.title"),
                    text=_evaluate(session, "document.body.innerText"),
                    values={name: _evaluate(session, code) for name, code in evaluate.items()})
    if screenshot is not None:
        shot = session.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
    seen.console_errors = _errors(session.events)
    return seen


def _evaluate(session: _Session, expression: str):
    return session.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"]["value"]


def _errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif method == "Runtime.exceptionThrown":
            errors.append(params.get("exceptionDetails", {}).get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"{entry.get('text')} {entry.get('url', '')}".strip())
    return errors
