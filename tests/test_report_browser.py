"""The HTML run report in a real browser: headless Chromium loads a synthetic report, and the
test reads back what it saw.

How, with command-line flags only (no driver library):

- a probe script is put at the top of <head>, before the report's Content-Security-Policy (a
  policy set by <meta> only governs what follows it); it records uncaught errors, unhandled
  rejections, CSP violations (a fetch, a blocked script) and console.error calls into an
  attribute of <html>, and after the load event clicks every table header (running the
  report's own script) and writes each chart's bounding box there too;
- ``--dump-dom`` prints the DOM after the load event: the test parses those attributes;
- ``--enable-logging=stderr`` also prints every console message, uncaught errors included:
  a second witness, should the probe itself fail;
- ``--screenshot`` renders the page: the PNG is decoded here (zlib and struct) and must show
  many non-white pixels in several distinct colours.

``test_the_checks_catch_a_broken_page`` breaks the page on purpose and asserts each check fails.
Each run has a time limit; the browser's process group and its helpers are killed after it
(``test_a_hung_browser_is_killed_with_its_helpers``, which needs no browser). Without a browser
on PATH the other tests skip.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from orchestrix.reports.report import render_report
from report_data import NAMES, synthetic_run

BROWSER = next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
)
TIMEOUT = 120  # seconds for one browser run; a cold first start takes a few
WINDOW = (1280, 2400)  # CSS pixels: the whole synthetic report
SCALE = 0.5  # device pixels per CSS pixel: a smaller PNG to decode in pure Python

PROBE = """<script>
(function () {
  var root = document.documentElement, problems = [];
  function note(text) {
    problems.push(String(text));
    root.setAttribute("data-probe-problems", JSON.stringify(problems));
  }
  window.addEventListener("error", function (event) {
    note("error: " + (event.message || (event.target && event.target.outerHTML)));
  }, true);
  window.addEventListener("unhandledrejection", function (event) {
    note("unhandled rejection: " + event.reason);
  });
  document.addEventListener("securitypolicyviolation", function (event) {
    note("CSP violation: " + event.violatedDirective + " " + event.blockedURI);
  });
  var consoleError = console.error;
  console.error = function () {
    note("console.error: " + Array.prototype.join.call(arguments, " "));
    consoleError.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    document.querySelectorAll("th").forEach(function (th) { th.click(); });
    var charts = Array.prototype.map.call(document.querySelectorAll("svg.chart"), function (svg) {
      var box = svg.getBoundingClientRect();
      return [svg.getAttribute("data-chart"), box.width, box.height];
    });
    root.setAttribute("data-probe-charts", JSON.stringify(charts));
    root.setAttribute("data-probe-sorted", document.querySelectorAll("th[data-order]").length);
    root.setAttribute("data-probe-done", "1");
  });
})();
</script>"""
CHARSET = '<meta charset="utf-8">'


@dataclass
class Seen:
    attributes: dict[str, str]  # data-probe-* of <html>, from the dumped DOM
    console: list[str]  # the console lines Chromium logged
    png: bytes
    log: str  # Chromium's stderr, for failure messages


def _flags(profile: str, screenshot: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",  # needed as root, and in containers without user namespaces
        "--disable-gpu",
        "--disable-dev-shm-usage",  # a container's small /dev/shm must not crash the renderer
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--force-device-scale-factor={SCALE}",
        "--enable-logging=stderr",
        f"--screenshot={screenshot}",
        "--dump-dom",
    ]


def _stop(process: subprocess.Popen, profile: str) -> None:
    """Kills what is left of a browser run, and waits until it is gone: its process group (the
    browser and its helpers), and the helpers that left the group (crashpad starts a session of
    its own), found by the run's own profile folder in their command line."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    strays = []
    for candidate in psutil.process_iter(["cmdline", "status"]):
        try:
            ours = any(profile in arg for arg in candidate.info["cmdline"] or ())
            if candidate.info["status"] != psutil.STATUS_ZOMBIE and (
                ours or os.getpgid(candidate.pid) == process.pid
            ):
                candidate.kill()
                strays.append(candidate)
        except (psutil.Error, OSError):
            continue  # gone meanwhile
    deadline = time.monotonic() + 10  # SIGKILL is not instant: wait, or the test would race it
    while any(map(_alive, strays)) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(process: psutil.Process) -> bool:
    """Running, as opposed to gone or a zombie (an orphan's zombie only goes when init reaps it)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def browser() -> str:
    """The browser, when it starts at all (Ubuntu's chromium-browser can be a stub for a snap)."""
    if BROWSER is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH (apt install chromium)")
    try:
        run = subprocess.run(
            [BROWSER, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"{BROWSER} --version did not answer in 60 s")
    if run.returncode != 0 or "chrom" not in run.stdout.lower():
        pytest.skip(f"{BROWSER} --version failed: {(run.stdout + run.stderr).strip()[-300:]}")
    return BROWSER


def open_in_browser(browser: str, document: str, tmp_path: Path, timeout: float = TIMEOUT) -> Seen:
    assert document.count(CHARSET) == 1
    page = tmp_path / "report.html"
    page.write_text(document.replace(CHARSET, CHARSET + PROBE), encoding="utf-8")
    screenshot, out, err = tmp_path / "shot.png", tmp_path / "dom.html", tmp_path / "stderr.txt"
    with tempfile.TemporaryDirectory(prefix="orchestrix-chromium-") as profile:
        # everything the browser writes (profile, cache, crash database) in one temporary place
        env = {**os.environ, "HOME": profile, "XDG_CONFIG_HOME": profile, "XDG_CACHE_HOME": profile}
        with out.open("wb") as stdout, err.open("wb") as stderr:  # files: no pipe to fill up
            process = subprocess.Popen(
                [browser, *_flags(profile, screenshot), page.as_uri()],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
                start_new_session=True,  # a process group of its own, to kill as a whole
            )
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"chromium did not finish in {timeout} s:\n{_tail(err)}")
            finally:
                _stop(process, profile)
    log = err.read_text(errors="replace")
    if process.returncode != 0 or not screenshot.exists():
        pytest.fail(f"chromium failed (exit {process.returncode}):\n{_tail(err)}")
    # the serializer escapes '"' in attribute values (not '>'): [^"]* spans a whole value
    attributes = dict(re.findall(r'data-probe-(\w+)="([^"]*)"', out.read_text(errors="replace")))
    return Seen(
        attributes={key: html.unescape(value) for key, value in attributes.items()},
        console=[line for line in log.splitlines() if ":CONSOLE" in line],
        png=screenshot.read_bytes(),
        log=log,
    )


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-30:])


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, compressed, header = 8, [], None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        chunk = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            compressed.append(chunk)
        position += 12 + length
    assert header is not None, "no IHDR"
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG format {header}"
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(b"".join(compressed)), width * bpp
    previous, pixels = bytearray(stride), []
    for y in range(height):
        start = y * (stride + 1)
        line = _unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, bpp)
        pixels += zip(line[0::bpp], line[1::bpp], line[2::bpp], strict=True)
        previous = line
    return width, height, pixels


def _unfilter(kind: int, line: bytearray, up: bytearray, bpp: int) -> bytearray:
    """Undoes one scanline's PNG filter (RFC 2083, 6.3)."""
    if kind == 2:
        return bytearray((a + b) & 255 for a, b in zip(line, up, strict=True))
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 255
        elif kind == 3:
            line[i] = (line[i] + (left + up[i]) // 2) & 255
        elif kind == 4:
            corner = up[i - bpp] if i >= bpp else 0
            p = left + up[i] - corner
            pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - corner)
            line[i] = (
                line[i] + (left if pa <= pb and pa <= pc else up[i] if pb <= pc else corner)
            ) & 255
        else:
            assert kind == 0, f"unknown PNG filter {kind}"
            break
    return line


def problems(seen: Seen, charts: Counter) -> list[str]:
    """What is wrong with the page the browser saw; empty when nothing is."""
    found = [f"console: {line}" for line in seen.console]  # the report logs nothing
    attributes = seen.attributes
    if attributes.get("done") != "1":
        found.append("the probe did not finish: the page did not load or its script broke")
    found += [f"page: {p}" for p in json.loads(attributes.get("problems", "[]"))]
    if int(attributes.get("sorted", 0)) == 0:
        found.append("no table was sorted: the report's script did not run")
    boxes = json.loads(attributes.get("charts", "[]"))
    found += [f"chart {kind} is {w}x{h} px" for kind, w, h in boxes if not (w > 0 and h > 0)]
    if Counter(kind for kind, _, _ in boxes) != charts:
        found.append(
            f"charts {dict(Counter(kind for kind, _, _ in boxes))}, expected {dict(charts)}"
        )
    width, height, pixels = png_pixels(seen.png)
    inked = sum(1 for r, g, b in pixels if min(r, g, b) < 235)
    if inked < 0.02 * width * height:
        found.append(f"blank screenshot: {inked} of {width * height} pixels are not white")
    # colours of charts, not of text: saturated, counted in coarse bins, on many pixels each
    colours = Counter(
        (r >> 5, g >> 5, b >> 5) for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 64
    )
    distinct = [colour for colour, count in colours.items() if count >= 100]
    if len(distinct) < 4:
        found.append(f"screenshot has {len(distinct)} distinct colours, expected several")
    return found


def report() -> tuple[str, Counter]:
    """The synthetic report and the charts it must show."""
    document = render_report(synthetic_run(nb_tasks=300, nb_workers=4, nb_failures=2))
    return document, Counter({"timeline": 1, "memory": 1, "histogram": len(NAMES)})


def test_the_report_renders_in_chromium(browser, tmp_path):
    document, charts = report()
    seen = open_in_browser(browser, document, tmp_path)
    assert problems(seen, charts) == [], seen.log[-3000:]


def _early(script: str):
    """Puts a script after the probe, before the report's CSP (which would block it)."""
    return lambda document: document.replace(CHARSET, CHARSET + f"<script>{script}</script>")


BREAKAGES = {  # what is done to the page, and what the checks must then report
    "uncaught-error": (_early("undefinedFunction();"), "undefinedFunction"),
    "error-in-a-handler": (_early('addEventListener("load", () => null.x);'), "page: error:"),
    "rejected-promise": (_early('Promise.reject(new Error("nope"));'), "unhandled rejection"),
    "console-error": (_early('console.error("bad news");'), "bad news"),
    "altered-report-script": (lambda d: d.replace("var order", "var  order"), "did not run"),
    "a-fetch": (
        lambda d: d.replace("</h1>", '</h1><img src="http://192.0.2.1/x.png">'),
        "CSP violation",
    ),
    "an-injected-script": (
        lambda d: d.replace("</h1>", "</h1><script>1</script>"),
        "CSP violation",
    ),
    "empty-body": (
        lambda d: re.sub(r"<body>.*</body>", "<body></body>", d, flags=re.S),
        "blank screenshot",
    ),
    "a-hidden-chart": (lambda d: d.replace("</style>", "svg.chart{display:none}</style>"), "0x0"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_the_checks_catch_a_broken_page(browser, tmp_path, breakage):
    document, charts = report()
    break_page, symptom = BREAKAGES[breakage]
    broken = break_page(document)
    assert broken != document
    found = problems(open_in_browser(browser, broken, tmp_path), charts)
    assert any(symptom in problem for problem in found), found


HUNG_BROWSER = """#!/bin/sh
# Starts a helper in its own process group and one in a session of its own (as crashpad does),
# writes their pids, then never finishes.
for arg; do case $arg in --user-data-dir=*) profile=$arg ;; esac; done
sleeper="import time; time.sleep(600)"
python3 -c "$sleeper" "$profile" & echo $! >> "$PIDS"
setsid python3 -c "$sleeper" "$profile" & echo $! >> "$PIDS"
exec python3 -c "$sleeper"
"""


def test_a_hung_browser_is_killed_with_its_helpers(tmp_path, monkeypatch):
    fake, pids = tmp_path / "browser", tmp_path / "pids"
    fake.write_text(HUNG_BROWSER)
    fake.chmod(0o755)
    monkeypatch.setenv("PIDS", str(pids))
    with pytest.raises(pytest.fail.Exception, match="did not finish in 3 s"):
        open_in_browser(str(fake), report()[0], tmp_path, timeout=3)
    helpers = [int(pid) for pid in pids.read_text().split()]
    assert len(helpers) == 2
    for pid in helpers:
        try:
            status = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            continue
        assert status == psutil.STATUS_ZOMBIE, f"helper {pid} still runs ({status})"
