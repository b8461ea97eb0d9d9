"""Real-browser check of the built docs site (``make docs-check``; docs/testing.md).

Headless Chromium (Debian's ``chromium``), driven over the DevTools protocol on a pipe (no
Python browser package), loads the home page, one API page and the page of every
``notebooks/*.ipynb`` from a local HTTP server of the built site, and reports:

- an image that did not load (``<img>`` not complete or 0 px wide, or an HTTP error for it),
- a console error, an uncaught exception or a failed request,
- a notebook page without output images (a notebook rendered without its outputs).

A full-page screenshot of each page goes to ``--out`` (not committed).

Usage: ``python -m tools.site_check SITE_DIR --out build/site-check [--page PATH ...]``
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = "api/model/index.html"
MAX_HEIGHT = 16000  # px of a full-page screenshot
PAGE_STATE = """JSON.stringify({
  broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
    .map(i => (i.currentSrc || i.src || '(no src)').slice(0, 120)),
  images: document.images.length,
  outputImages: document.querySelectorAll('.jp-OutputArea-output img').length,
  height: Math.ceil(document.documentElement.scrollHeight),
})"""


def notebook_pages(root: Path = ROOT) -> list[str]:
    """The site path of every notebook in ``notebooks/`` (file-name order)."""
    return [f"notebooks/{p.stem}/index.html" for p in sorted((root / "notebooks").glob("*.ipynb"))]


def screenshot_name(path: str) -> str:
    """``notebooks/01_quickstart/index.html`` -> ``notebooks_01_quickstart.png``."""
    stem = path.removesuffix("index.html").removesuffix(".html").strip("/").replace("/", "_")
    return (stem or "index") + ".png"


def find_chromium() -> str:
    """The Chromium executable, or a one-line error saying how to get it."""
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise SystemExit("site_check: no Chromium found; install it (`apt-get install -y chromium`) "
                     "or set CHROMIUM to its path")


class Browser:
    """One headless Chromium; DevTools protocol messages over ``--remote-debugging-pipe``."""

    def __init__(self, executable: str):
        self._profile = tempfile.mkdtemp(prefix="site-check-")
        to_child, self._write = os.pipe()  # Chromium reads commands on its fd 3
        self._read, from_child = os.pipe()  # and writes replies and events on its fd 4
        args = [executable, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
                "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", f"--user-data-dir={self._profile}", "about:blank"]
        self._proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_child} 4>&{from_child}', *args],
            pass_fds=(to_child, from_child), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._next, self._replies, self.events = 0, {}, queue.Queue()
        self._lock = threading.Condition()
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        buf = b""
        while chunk := os.read(self._read, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        self._replies[msg["id"]] = msg
                        self._lock.notify_all()
                else:
                    self.events.put(msg)

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params):
        """Send one command and wait for its result."""
        with self._lock:
            self._next += 1
            ident = self._next
        msg = {"id": ident, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        with self._lock:
            if not self._lock.wait_for(lambda: ident in self._replies, timeout):
                raise TimeoutError(f"Chromium did not answer {method} in {timeout} s")
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)


@dataclass
class PageResult:
    """What one page showed: its problems and the number of notebook output images."""

    path: str
    problems: list[str] = field(default_factory=list)
    output_images: int = 0


def _serve(site: Path) -> http.server.ThreadingHTTPServer:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _problems_of(event: dict) -> list[str]:
    method, p = event.get("method"), event.get("params", {})
    url = p.get("response", p.get("entry", {})).get("url", "")
    if urlsplit(url).path == "/favicon.ico":  # the browser's own guess, not a link of the page
        return []
    if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
        return ["console error: " + " ".join(str(a.get("value", a.get("description", "")))
                                             for a in p.get("args", []))[:300]]
    if method == "Runtime.exceptionThrown":
        d = p.get("exceptionDetails", {})
        text = d.get("exception", {}).get("description", d.get("text"))
        return [f"uncaught exception: {text}"[:300]]
    if method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
        e = p["entry"]
        return [f"console error: {e.get('text', '')} {e.get('url', '')}".strip()[:300]]
    if method == "Network.loadingFailed" and not p.get("canceled"):
        return [f"request failed: {p.get('errorText')} ({p.get('type')})"]
    if method == "Network.responseReceived" and p["response"].get("status", 200) >= 400:
        return [f"HTTP {p['response']['status']}: {p['response']['url']}"]
    return []


def check_page(browser: Browser, session: str, url: str, path: str, shot: Path | None,
               notebook: bool, min_images: int = 0, settle: float = 1.0) -> PageResult:
    """Load one page, collect its errors and images, and screenshot it."""
    result = PageResult(path)
    while not browser.events.empty():
        browser.events.get_nowait()
    browser.send("Page.navigate", session, url=url)
    deadline, loaded, last = time.monotonic() + 60, False, None
    while time.monotonic() < deadline:
        try:
            event = browser.events.get(timeout=0.2)
        except queue.Empty:
            if loaded and time.monotonic() - last > settle:
                break
            continue
        result.problems += _problems_of(event)
        if event.get("method") == "Page.loadEventFired":
            loaded = True
        last = time.monotonic()
    if not loaded:
        result.problems.append("the page did not finish loading in 60 s")
    state = json.loads(browser.send("Runtime.evaluate", session, expression=PAGE_STATE,
                                    returnByValue=True)["result"]["value"])
    result.problems += [f"image did not load: {src}" for src in state["broken"]]
    result.output_images = state["outputImages"]
    if notebook and not result.output_images:
        result.problems.append("notebook page without output images (stored or rendered empty?)")
    if state["images"] < min_images:
        result.problems.append(f"{state['images']} images, expected at least {min_images}")
    if shot is not None:
        height = min(state["height"], MAX_HEIGHT)
        browser.send("Emulation.setDeviceMetricsOverride", session, width=1280, height=height,
                     deviceScaleFactor=1, mobile=False)
        data = browser.send("Page.captureScreenshot", session, format="png",
                            captureBeyondViewport=True)["data"]
        browser.send("Emulation.setDeviceMetricsOverride", session, width=1280, height=900,
                     deviceScaleFactor=1, mobile=False)
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.write_bytes(base64.b64decode(data))
    return result


def check_site(site: Path, pages: list[str], notebooks: list[str],
               out: Path | None = None, min_images: int = 0) -> list[PageResult]:
    """Check ``pages`` and ``notebooks`` (site paths) of a built site; screenshots into ``out``.

    Each of ``pages`` must show at least ``min_images`` images, each notebook page an output image.
    """
    missing = [p for p in [*pages, *notebooks] if not (site / p).is_file()]
    if missing:
        return [PageResult(p, ["page missing from the built site"]) for p in missing]
    server, browser = _serve(site), Browser(find_chromium())
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session)
        browser.send("Emulation.setDeviceMetricsOverride", session, width=1280, height=900,
                     deviceScaleFactor=1, mobile=False)
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        results = []
        for path in [*pages, *notebooks]:
            shot = None if out is None else out / screenshot_name(path)
            notebook = path in notebooks
            results.append(check_page(browser, session, base + path, path, shot, notebook,
                                      0 if notebook else min_images))
        return results
    finally:
        browser.close()
        server.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, help="the built site (mkdocs build --site-dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site-check",
                        help="folder of the screenshots")
    parser.add_argument("--page", action="append", default=None,
                        help="a site path to check instead of the home and API pages (repeatable)")
    parser.add_argument("--no-notebooks", action="store_true", help="skip the notebook pages")
    parser.add_argument("--min-images", type=int, default=0,
                        help="images each --page must show (e.g. the report's figures)")
    args = parser.parse_args(argv)
    pages = args.page or ["index.html", API_PAGE]
    notebooks = [] if args.no_notebooks else notebook_pages()
    results = check_site(args.site, pages, notebooks, args.out, args.min_images)
    for r in results:
        status = "FAIL" if r.problems else "ok"
        extra = f", {r.output_images} output images" if r.path in notebooks else ""
        print(f"{status:4} {r.path}{extra}")
        for problem in r.problems:
            print(f"     - {problem}")
    failed = sum(bool(r.problems) for r in results)
    print(f"{len(results) - failed} of {len(results)} pages ok; screenshots in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
