"""The HTML run report (orchestrix.reports.report) and ``python -m orchestrix report``, on synthetic
run data; tests/test_report_browser.py opens the same report in a real browser."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from html.parser import HTMLParser

import pytest

from orchestrix.__main__ import main
from orchestrix.errors import OrchestrixError
from orchestrix.reports.charts import MAX_RECTS
from orchestrix.reports.report import load_run_data, render_report, write_report
from report_data import synthetic_run

EVIL = "<script>alert(1)</script>"
VOID = {"meta", "br", "hr", "img", "input", "link", "wbr"}  # HTML elements without an end tag


class _Structure(HTMLParser):
    """Checks that every element is closed, in order (a broken tag string would show), and
    collects the text of the script elements."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.scripts: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.open[-1] if self.open else None}>")
        else:
            self.open.pop()

    def handle_data(self, data):
        if self.open and self.open[-1] == "script":
            self.scripts.append(data)


def structure(document: str) -> _Structure:
    parser = _Structure()
    parser.feed(document)
    parser.close()
    assert not parser.problems, parser.problems[:5]
    assert parser.open == [], f"never closed: {parser.open}"
    return parser


def test_every_section_is_drawn():
    document = render_report(synthetic_run())
    structure(document)
    assert document.startswith("<!DOCTYPE html>")
    for section in ("timeline", "memory", "durations", "tables", "failures"):
        assert f'<h2 id="{section}">' in document
    assert document.count('data-chart="timeline"') == 1
    assert document.count('data-chart="memory"') == 1
    assert document.count('data-chart="histogram"') == 5  # one per task name
    assert "multiprocessing" in document and "host-1001" in document
    assert "Per task name" in document and "Per worker" in document and "Possible leaks" in document
    assert "200 tasks, one bar each" in document
    assert 'stroke="#d40000"' in document  # the failed task's outline


def test_the_report_fetches_nothing():
    document = render_report(synthetic_run())
    assert not re.search(r"\b(src|srcset|action|xlink:href)\s*=", document)
    assert re.findall(r'href="([^"]*)"', document) == [
        f"#{s}" for s in ("timeline", "memory", "durations", "tables", "failures")
    ]
    assert "url(" not in document and "@import" not in document
    assert not re.search(r"https?:|//", document)
    assert "default-src 'none'" in document


def test_the_content_security_policy_allows_the_report_script():
    document = render_report(synthetic_run())
    (script,) = structure(document).scripts
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in document


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"tasks": {}, "memory": {}, "failures": [], "summary": {}},
        synthetic_run(nb_tasks=0, nb_failures=0, memory=False),
    ],
    ids=["nothing", "empty-parts", "no-tasks"],
)
def test_an_empty_run_renders(data):
    document = render_report(data)
    structure(document)
    assert "no tasks recorded" in document
    assert "no memory samples recorded" in document
    assert "no failures" in document
    assert "<svg" not in document


def test_missing_and_null_values_render():
    data = synthetic_run(nb_tasks=10)
    data["nb_workers"] = None
    data["tasks"]["cpu"] = [None] * 10
    data["tasks"]["peak_rss_mb"] = [None] * 10
    del data["tasks"]["worker"]  # a missing column
    data["tasks"]["start"][3] = None
    data["tasks"]["wall"].append(1.0)  # a ragged one
    data["summary"]["by_name"]["smooth"]["max_peak_rss_mb"] = None
    data["failures"][0]["traceback"] = None
    document = render_report(data)
    structure(document)
    assert "none (in process)" in document
    assert "cpu: \u2014" in document


def test_user_text_is_escaped():
    data = synthetic_run(nb_tasks=20, names=(EVIL, 'quote " & amp'))
    data["tasks"]["worker"] = ["<b>worker</b>"] * 20
    data["tasks"]["key"] = [f"k{i}<img src=x onerror=alert(2)>" for i in range(20)]
    data["failures"] = [
        {
            "key": "<img src=x onerror=alert(3)>",
            "name": EVIL,
            "worker": "</td></tr></table><script>alert(4)</script>",
            "error": "ValueError: <script>alert(5)</script>",
            "traceback": "</pre></details><script>alert(6)</script>",
        }
    ]
    data["summary"]["workers"] = {"<b>worker</b>": {"tasks": 20, "peak_rss_mb": 1.0}}
    data["summary"]["leaks"] = {EVIL: {"growth_mb_per_run": 1.0, "runs": "<i>2</i>"}}
    document = render_report(data)
    assert len(structure(document).scripts) == 1  # ours, nothing injected
    assert "<script>alert" not in document and "<img" not in document
    assert "<b>worker" not in document and "<i>2" not in document
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert "quote &quot; &amp; amp" in document


@pytest.mark.parametrize(
    "names,workers", [(("a", "b", "c", "d"), 8), (("a",), 8), (("a", "b"), 2000)]
)
def test_a_large_run_stays_light(names, workers):
    document = render_report(synthetic_run(100_000, workers, names, memory=False))
    # the timeline's bars, 5 or so histograms of at most 30 bars, no other rect
    assert document.count("<rect") <= MAX_RECTS + 200
    assert "100,000 tasks drawn as" in document and "merged" in document
    structure(document)


def test_a_merged_bar_shows_what_it_holds():
    document = render_report(synthetic_run(nb_tasks=30_000, nb_workers=2, names=("a", "b")))
    assert re.search(r"<title>[\d,]+ tasks merged \(\d+ failed\)\na: ", document)


def test_histograms_are_log_binned_over_two_decades():
    data = synthetic_run(nb_tasks=100, names=("wide", "narrow"))
    data["tasks"]["wall"] = [
        10.0 ** (i % 5 - 3) if i % 2 == 0 else 1 + i / 1000 for i in range(100)
    ]
    document = render_report(data)
    assert re.search(r"<b>wide</b><br>n=49,.*?\(log bins\)", document)  # the failed one is left out
    assert re.search(r"<b>narrow</b><br>n=50,.*?\(linear bins\)", document)


def test_only_the_top_histograms_are_drawn():
    names = tuple(f"task{i:02d}" for i in range(15))
    document = render_report(synthetic_run(nb_tasks=300, names=names))
    assert document.count('data-chart="histogram"') == 12
    assert "3 more task names not shown" in document


def test_failures_are_listed_with_their_error():
    data = synthetic_run(nb_failures=3)
    document = render_report(data)
    assert document.count("ValueError: tile 3 is empty</code>") == 3
    assert document.count("<details><summary>traceback</summary>") == 3
    assert f"<code>{data['failures'][2]['key']}</code>" in document


def test_write_report_replaces_the_file_atomically(tmp_path):
    path = tmp_path / "report.html"
    path.write_text("old")
    assert write_report(synthetic_run(), path) == str(path)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert os.listdir(tmp_path) == ["report.html"]  # no temporary file left


def test_load_run_data_explains_a_missing_file(tmp_path):
    with pytest.raises(OrchestrixError, match="written when an Orchestrator with out_dir closes"):
        load_run_data(tmp_path)
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(OrchestrixError, match="cannot read"):
        load_run_data(tmp_path)


def test_cli_writes_the_report(tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps(synthetic_run()))
    assert main(["report", str(tmp_path)]) == 0
    written = tmp_path / "report.html"
    assert capsys.readouterr().out.strip() == str(written)
    assert "Tasks per worker" in written.read_text(encoding="utf-8")
    elsewhere = tmp_path / "elsewhere.html"
    assert main(["report", str(tmp_path), "-o", str(elsewhere)]) == 0
    assert capsys.readouterr().out.strip() == str(elsewhere)
    assert elsewhere.read_text(encoding="utf-8") == written.read_text(encoding="utf-8")


def test_cli_without_run_json_fails_in_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("orchestrix: OrchestrixError: ")
    assert "run.json not found: it is written when an Orchestrator with out_dir closes" in line
    assert not (tmp_path / "report.html").exists()


def test_cli_reports_an_unwritable_output_in_one_line(tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps(synthetic_run(nb_tasks=5)))
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "missing" / "r.html")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("orchestrix: OrchestrixError: cannot write ")
