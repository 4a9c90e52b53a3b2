"""Open a real run's `report.html` in headless Chromium and check every image loaded and every table is shown.

Chromium runs with a fresh profile, no network features and no sandbox (tests may run as root),
and is driven through the DevTools protocol over a pipe (`--remote-debugging-pipe`), so that no
port is opened. The tests skip when Chromium is not installed (Debian: `apt-get install -y chromium`).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time

import pytest
from PIL import Image

from trainer import classifier, config as config_module, disentanglement, evaluation, figures, loop, presets

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--remote-debugging-pipe")
BROWSER_TIMEOUT_SECONDS = 60

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian package `chromium`: apt-get install -y chromium)")

# Runs in the page after its load event: every image decoded with a size, every table laid out.
PAGE_CHECK = """
(async () => {
  const images = Array.from(document.images);
  const decoded = await Promise.all(images.map(image => image.decode().then(() => true, () => false)));
  return {
    images: images.map((image, index) => ({
      alt: image.alt, complete: image.complete, decoded: decoded[index],
      naturalWidth: image.naturalWidth, naturalHeight: image.naturalHeight,
      shownWidth: image.getBoundingClientRect().width})),
    tables: Array.from(document.querySelectorAll("table")).map(table => ({
      caption: table.closest("figure")?.querySelector("figcaption")?.textContent ?? null,
      rows: table.rows.length, cells: table.querySelectorAll("td").length,
      shownHeight: table.getBoundingClientRect().height})),
  };
})()
"""


class DevToolsPipe:
    """A headless Chromium driven by DevTools protocol messages over its fds 3 (in) and 4 (out)."""

    def __init__(self, profile_dir: str):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # Bash moves the pipe ends onto fds 3 and 4, where Chromium expects them, then runs it
        # (dash, Debian's /bin/sh, rejects redirections of descriptors above 9).
        command = ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{to_browser_read} 4>&{from_browser_write}',
                   CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"]
        self.process = subprocess.Popen(command, pass_fds=(to_browser_read, from_browser_write),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(remaining, 0))
            if not ready:
                raise TimeoutError(f"Chromium sent no DevTools message within {BROWSER_TIMEOUT_SECONDS} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ConnectionError(f"Chromium closed the DevTools pipe: {self.process.stderr.read()[-2000:]!r}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept in `events`."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + BROWSER_TIMEOUT_SECONDS
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for_event(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + BROWSER_TIMEOUT_SECONDS
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self.events.append(self._read_message(deadline))

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=10)
        except (OSError, TimeoutError, ConnectionError, RuntimeError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            self.process.stderr.close()


def inspect_page(path: str, profile_dir: str) -> dict:
    """Load a local HTML file in Chromium; return `PAGE_CHECK`'s result and every requested URL."""
    url = f"file://{os.path.abspath(path)}"
    browser = DevToolsPipe(profile_dir)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.send("Page.enable", session=session)
        browser.send("Network.enable", session=session)
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait_for_event("Page.loadEventFired", session)
        evaluated = browser.send("Runtime.evaluate", {"expression": PAGE_CHECK, "awaitPromise": True,
                                                      "returnByValue": True}, session=session)
    finally:
        browser.close()
    if "exceptionDetails" in evaluated:
        raise RuntimeError(f"the page check threw: {evaluated['exceptionDetails']}")
    page = evaluated["result"]["value"]
    page["requested_urls"] = [event["params"]["request"]["url"] for event in browser.events
                              if event.get("method") == "Network.requestWillBeSent"]
    return page


@pytest.fixture(scope="module")
def split_gmvae_report(tiny_digits, tmp_path_factory):
    """A briefly trained SPLIT-GMVAE run with its metrics, disentanglement table, figures and report."""
    config = config_module.override(presets.get_preset("digits-split-gmvae"), {
        "training_steps": 2, "batch_size": 16, "checkpoint_every": 2, "log_every": 2})
    run_dir = str(tmp_path_factory.mktemp("split-gmvae"))
    loop.train(config, str(tiny_digits), run_dir)
    evaluation.evaluate_run(run_dir)
    classifier_dir = str(tmp_path_factory.mktemp("classifier"))
    classifier.train_classifier(str(tiny_digits), classifier_dir, epochs=1)
    disentanglement.evaluate_disentanglement(run_dir, classifier_dir=classifier_dir, num_draws=2)
    paths = figures.draw_figures(run_dir)
    return run_dir, [path for path in paths if path.endswith(".png")], paths[-1]


@pytest.fixture(scope="module")
def report_page(split_gmvae_report, tmp_path_factory):
    _, _, report_path = split_gmvae_report
    return inspect_page(report_path, str(tmp_path_factory.mktemp("profile")))


def test_report_images_load_in_chromium(split_gmvae_report, report_page):
    _, png_paths, _ = split_gmvae_report
    page = report_page

    assert len(page["images"]) == len(png_paths) == 7
    for image, png_path in zip(page["images"], png_paths):
        with Image.open(png_path) as png:
            expected_size = png.size
        assert image["complete"], image["alt"]
        assert image["decoded"], image["alt"]
        assert (image["naturalWidth"], image["naturalHeight"]) == expected_size, image["alt"]
        assert image["shownWidth"] > 0, image["alt"]


def test_report_tables_shown_in_chromium(split_gmvae_report, report_page):
    _, _, report_path = split_gmvae_report
    page = report_page
    with open(report_path, encoding="utf-8") as handle:
        source_tables = handle.read().count("<table")

    # metrics.json gives the clustering table and the factor table; disentanglement.json one more.
    assert len(page["tables"]) == source_tables == 3
    captions = [table["caption"] for table in page["tables"]]
    assert captions.count("Metrics (metrics.json)") == 2
    assert "Disentanglement (disentanglement.json)" in captions
    for table in page["tables"]:
        assert table["rows"] >= 2, table["caption"]
        assert table["cells"] > 0, table["caption"]
        assert table["shownHeight"] > 0, table["caption"]


def test_report_requests_nothing_outside_itself(split_gmvae_report, report_page):
    _, _, report_path = split_gmvae_report
    page = report_page
    page_url = f"file://{os.path.abspath(report_path)}"
    outside = [url for url in page["requested_urls"] if url != page_url and not url.startswith("data:")]
    assert outside == []


def test_broken_image_is_detected(tmp_path):
    # The check must be able to fail: a truncated PNG data URI never decodes.
    page_path = tmp_path / "broken.html"
    page_path.write_text('<!DOCTYPE html><html><body><img alt="broken" src="data:image/png;base64,iVBORw0KGgo=">'
                         "<table><tr><td>1</td></tr></table></body></html>")
    page = inspect_page(str(page_path), str(tmp_path / "profile"))
    [image] = page["images"]
    assert not image["decoded"]
    assert image["naturalWidth"] == 0
    assert page["tables"][0]["cells"] == 1
