"""The reports open in a real browser: headless Chromium renders every figure, logs no error
and fetches nothing.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands
on file descriptor 3, replies on 4, each message JSON ended by a NUL byte), so the test needs
no driver package, no WebDriver binary and no network port. Page scripts are disabled: the
reports must render without JavaScript (DevTools' own ``Runtime.evaluate`` still works).

The test is skipped when Chromium is not installed, and fails then when ``CI`` is set
(``make browser`` installs Debian's ``chromium``; CI runs it).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from evaluation.html import Report, pyplot
from evaluation.model_report import add_model_sections
from evaluation.policy_report import add_engine_mix_section
from journeyml.cli import app
from journeyml.config import SIMULATOR_CONFIG_DIR
from tests.evaluation.test_report import (
    build_report_workspace,
    literal_engine_decisions,
    literal_records,
)
from tests.services import require

CHROMIUM = os.environ.get("JOURNEYML_CHROMIUM", "/usr/bin/chromium")
WIDTH = 1200
INK = 235  # a pixel with a channel below this is drawn on (the page background is #f6f7f9)
PAGE_INK_SHARE = 0.03  # share of drawn pixels on the whole page
FIGURE_INK_SHARE = 0.01  # ... and inside each figure: a blank figure has none


@pytest.fixture(autouse=True)
def _chromium_installed() -> None:
    """Skips without Chromium, fails when CI is set (``make browser`` installs it)."""
    require(
        Path(CHROMIUM).exists(),
        f"Chromium at {CHROMIUM} (run `make browser`: Debian's chromium)",
    )


class DevToolsError(RuntimeError):
    """Chromium answered a command with an error, or did not answer in time."""


class Chromium:
    """A headless Chromium process and a DevTools protocol session over its pipe."""

    def __init__(self, executable: str, profile: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        commands_in, self._commands = os.pipe()  # we write, Chromium reads on fd 3
        self._replies, replies_out = os.pipe()  # Chromium writes on fd 4, we read

        def plug_pipes() -> None:  # in the child, before exec: the pipes become fds 3 and 4
            high_in = fcntl.fcntl(commands_in, fcntl.F_DUPFD, 10)
            high_out = fcntl.fcntl(replies_out, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",  # root in containers; the pages are our own files
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # fds 3 and 4 must survive exec; Python's own fds are not inherited
            preexec_fn=plug_pipes,
        )
        os.close(commands_in)
        os.close(replies_out)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Sends a command and waits for its reply (events meanwhile go to ``events``)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_for(self, method: str, session: str, since: int = 0) -> dict[str, Any]:
        """The first event ``method`` of ``session`` from ``events[since]`` on, or the next."""
        for event in self.events[since:]:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            event = self._receive()
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise DevToolsError(f"no message from Chromium within {self.timeout:.0f} s")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise DevToolsError(f"Chromium exited (status {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return dict(json.loads(message))

    def close(self) -> None:
        with contextlib.suppress(DevToolsError, OSError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)


@dataclass
class Rendering:
    """What Chromium made of one page."""

    screenshot: np.ndarray  # RGB, one pixel per CSS pixel
    figures: list[dict[str, float]]  # box and drawn elements of each figure's SVG
    errors: list[str] = field(default_factory=list)  # console errors and exceptions
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    layout: list[str] = field(default_factory=list)  # what overflows, is cut off or unlabelled


def render(browser: Chromium, page: Path, scripts: bool = False, width: int = WIDTH) -> Rendering:
    """Opens ``page`` in a new tab ``width`` CSS pixels wide, screenshots it whole and
    inspects its figures and layout.

    Page scripts are off unless ``scripts``: the reports must not need them.
    """
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session)
        browser.send("Emulation.setScriptExecutionDisabled", session, value=not scripts)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        seen = len(browser.events)
        browser.send("Page.navigate", session, url=page.resolve().as_uri())
        browser.wait_for("Page.loadEventFired", session, since=seen)
        boxes = browser.send(
            "Runtime.evaluate",
            session,
            returnByValue=True,
            expression=FIGURE_BOXES,
        )["result"]["value"]
        layout = browser.send(
            "Runtime.evaluate",
            session,
            returnByValue=True,
            expression=LAYOUT_PROBLEMS,
        )["result"]["value"]
        size = browser.send("Page.getLayoutMetrics", session)["cssContentSize"]
        shot = browser.send(
            "Page.captureScreenshot",
            session,
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1},
        )["data"]
    finally:
        browser.send("Target.closeTarget", targetId=target)
    image = Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB")
    events = [e for e in browser.events[seen:] if e.get("sessionId") == session]
    return Rendering(np.asarray(image), boxes, _errors(events), _requests(events), layout)


FIGURE_BOXES = """[...document.querySelectorAll('figure svg')].map(s => {
    const r = s.getBoundingClientRect();
    return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height,
            drawn: s.querySelectorAll('path,rect,image,use,line,polyline').length};
})"""
"""Where each figure's SVG is on the page, and how many drawing elements it holds."""

LAYOUT_PROBLEMS = """(() => {
    const out = [], vw = document.documentElement.clientWidth;
    const name = e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '')
        + ' "' + (e.textContent || '').trim().slice(0, 40) + '"';
    if (document.documentElement.scrollWidth > vw + 1)
        out.push('the page scrolls sideways: ' + document.documentElement.scrollWidth + ' > ' + vw);
    const nav = document.querySelector('nav'), nr = nav.getBoundingClientRect();
    for (const a of nav.querySelectorAll('a')) {
        const r = a.getBoundingClientRect();
        if (r.right > nr.right + 1 || r.left < nr.left - 1 || r.right > vw
            || a.scrollWidth > a.clientWidth + 1 || r.width === 0)
            out.push('navigation link cut off: ' + name(a));
    }
    for (const s of document.querySelectorAll('section')) {
        const sr = s.getBoundingClientRect();
        for (const e of s.querySelectorAll('table, figure, svg, .tw, .kpis, .note, p, ul')) {
            const r = e.getBoundingClientRect();
            if (r.right > sr.right + 1) out.push('spills out of its section: ' + name(e));
        }
        for (const w of s.querySelectorAll('.tw'))
            if (w.scrollWidth > w.clientWidth + 1)
                out.push('table wider than its section (' + w.scrollWidth + ' > '
                         + w.clientWidth + '): ' + name(w.querySelector('caption') || w));
    }
    document.querySelectorAll('figure').forEach((f, i) => {
        if (!f.querySelector('svg g[id^="legend"]'))
            out.push('figure ' + (i + 1) + ' has no legend: '
                     + (f.querySelector('figcaption') || f).textContent.slice(0, 60));
    });
    return out;
})()"""
"""Layout faults a reader sees: sideways scrolling, navigation links cut off, tables or
figures wider than their card, charts without a legend."""


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in events:
        params = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif e["method"] == "Runtime.exceptionThrown":
            out.append(str(params["exceptionDetails"].get("text")))
        elif e["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
            out.append(f"{params['entry'].get('source')}: {params['entry'].get('text')}")
    return out


def _requests(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"
    ]


def ink_share(pixels: np.ndarray) -> float:
    """Share of pixels that are drawn on (not white or the near-white page background)."""
    if pixels.size == 0:
        return 0.0
    return float((pixels.min(axis=2) < INK).mean())


def figure_problems(rendering: Rendering) -> list[str]:
    """Figures that have no size, draw nothing, or come out blank on the screenshot."""
    problems = []
    height, width = rendering.screenshot.shape[:2]
    for i, box in enumerate(rendering.figures):
        if box["width"] < 50 or box["height"] < 50:
            problems.append(f"figure {i + 1} is {box['width']:.0f}x{box['height']:.0f} px")
            continue
        if box["y"] + box["height"] > height:
            problems.append(f"figure {i + 1} lies below the screenshot of the whole page")
            continue
        if box["drawn"] == 0:
            problems.append(f"figure {i + 1} has no drawn SVG element")
        top, left = max(int(box["y"]), 0), max(int(box["x"]), 0)
        crop = rendering.screenshot[
            top : min(int(box["y"] + box["height"]), height),
            left : min(int(box["x"] + box["width"]), width),
        ]
        share = ink_share(crop)
        if share < FIGURE_INK_SHARE:
            problems.append(f"figure {i + 1} is blank on screen ({share:.2%} drawn)")
    return problems


def outside_requests(rendering: Rendering, page: Path) -> list[str]:
    """Requests for anything but the page itself and inline data."""
    own = page.resolve().as_uri()
    return [u for u in rendering.requests if u != own and not u.startswith("data:")]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    chromium = Chromium(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    chromium.send("Browser.getVersion")
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three reports of ``journeyml report``, and a model report of the kinds the small
    workspace does not train (next step, uplift: their figures differ from churn's)."""
    shared = build_report_workspace(tmp_path_factory.getbasetemp())
    # the shared workspace has no journey analytics (the content test checks the note that
    # asks for them); here a workspace that links to its data gets them, so the funnel,
    # time-to-convert, moments and persona sections are laid out too
    root = tmp_path_factory.mktemp("browser-workspace")
    for name in ("lake", "features", "feast", "sim", "mlflow_settings"):
        (root / name).symlink_to(shared.root / name)
    (root / "evaluation").mkdir()
    for name in ("monitoring", "policy"):
        (root / "evaluation" / name).symlink_to(shared.root / "evaluation" / name)
    runner = CliRunner()
    configs = ["--config-dir", str(SIMULATOR_CONFIG_DIR)]
    analyzed = runner.invoke(app, [*configs, "analyze", "--data-dir", str(root)])
    assert analyzed.exit_code == 0, analyzed.output
    out = tmp_path_factory.mktemp("browser-reports")
    args = ["report", "--data-dir", str(root), "--config", str(shared.config)]
    result = runner.invoke(app, [*configs, *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    pages = {kind: out / f"{kind}.html" for kind in ("model", "journey", "policy")}
    assert "Time to convert" in pages["journey"].read_text()
    other = Report("Model report (next step and uplift)")
    add_model_sections(other, literal_records(out))
    pages["model, other kinds"] = other.write(out / "model_other_kinds.html")
    mix = Report("Policy report (journeyml's own decisions)")
    add_engine_mix_section(mix, literal_engine_decisions(), "journeyml lists churn-risk")
    pages["engine mix"] = mix.write(out / "engine_mix.html")
    return pages


# -- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["model", "journey", "policy", "model, other kinds", "engine mix"])
def test_report_renders_in_chromium(browser: Chromium, reports: dict[str, Path], kind: str) -> None:
    page = reports[kind]
    rendering = render(browser, page)
    assert rendering.errors == []
    assert outside_requests(rendering, page) == []
    expected = page.read_text().count("<figure>")
    assert expected >= (1 if kind == "engine mix" else 3) and len(rendering.figures) == expected
    assert figure_problems(rendering) == []
    assert ink_share(rendering.screenshot) > PAGE_INK_SHARE
    assert rendering.screenshot.shape[1] == WIDTH


@pytest.mark.parametrize("width", [1280, 1920])
@pytest.mark.parametrize("kind", ["model", "journey", "policy", "model, other kinds", "engine mix"])
def test_report_layout_holds_at_common_widths(
    browser: Chromium, reports: dict[str, Path], kind: str, width: int
) -> None:
    """At a laptop's and a desktop's width: nothing scrolls sideways or spills out of its
    card, every navigation link shows whole, and every chart has a legend."""
    rendering = render(browser, reports[kind], width=width)
    assert rendering.layout == []
    assert rendering.screenshot.shape[1] == width


def test_the_checks_catch_a_broken_page(browser: Chromium, tmp_path: Path) -> None:
    """A blank figure, a zero-size figure, a console error and a remote image are all caught."""
    plt = pyplot()
    report = Report("Broken on purpose")
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    report.figure(fig, caption="a drawn figure")
    blank = plt.figure(figsize=(4, 3))  # nothing drawn: a white rectangle
    report.figure(blank, caption="a blank figure")
    report.table(pd.DataFrame({f"column_{i}": ["x" * 40] for i in range(12)}), caption="wide")
    page = report.write(tmp_path / "broken.html")
    html = page.read_text().replace(
        "</main>",
        '<figure><svg width="0" height="0"></svg></figure>'
        '<img src="http://127.0.0.1:9/remote.png" alt="">'
        "<script>console.error('boom')</script></main>",
    )
    page.write_text(html)
    rendering = render(browser, page)
    assert any(p.startswith("table wider than its section") for p in rendering.layout)
    assert any(p.startswith("figure 1 has no legend") for p in rendering.layout)
    problems = figure_problems(rendering)
    assert not any(p.startswith("figure 1 ") for p in problems)
    assert any(p.startswith("figure 2 is blank") for p in problems)
    assert any(p.startswith("figure 3 is 0x0") for p in problems)
    assert outside_requests(rendering, page) == ["http://127.0.0.1:9/remote.png"]
    assert any(e.startswith("network: Failed to load resource") for e in rendering.errors)
    # scripts are off, so the console.error never runs: the reports cannot rely on them
    assert not any("boom" in e for e in rendering.errors)
    # with scripts on, it is caught
    assert any("boom" in e for e in render(browser, page, scripts=True).errors)
