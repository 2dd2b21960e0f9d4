"""Every page of the built docs site, and the report.html of a `regplug compare` run, opened in
headless Chromium at 1280x900: no console error, no failed request, no missing image, no
same-site link to a missing page or anchor. A full-page screenshot of each is kept (the run
prints where). Run by tox -e docs; conftest.py says how to run them by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def _shot_name(page: str) -> str:
    """loops/torch/index.html -> loops-torch; index.html -> index; 404.html -> 404."""
    parts = page.removesuffix(".html").split("/")
    if len(parts) > 1 and parts[-1] == "index":
        parts.pop()
    return "-".join(parts)


def test_the_site_was_built(site: Path) -> None:
    assert (site / "index.html").is_file(), f"{site} has no index.html: not a built site"
    assert (site / "api" / "index.html").is_file(), f"{site} has no API reference (api/)"


def test_site_page(site_page: str | None, site: Path, site_server: Any,
                   page_checker: Any) -> None:
    """site_page: each HTML file of the build (conftest.py's pytest_generate_tests)."""
    assert site_page is not None, f"no HTML page in {site}"
    relative = site_page.removesuffix("index.html")  # the folder's URL, as a reader has it
    report = page_checker(site_server, relative, f"site/{_shot_name(site_page)}")
    if report.problems():
        pytest.fail(report.describe(), pytrace=False)


# Fast runs (two strategies, two epochs, torch): one seed, and two (the seeds' report).
REPORT_RUNS = {
    "one-seed": ["--preset", "notebook", "--framework", "torch", "--strategies", "none,l2",
                 "--epochs", "2"],
    "two-seeds": ["--preset", "notebook", "--framework", "torch", "--strategies", "none,l2",
                  "--epochs", "2", "--seeds", "2"],
}


@pytest.fixture(scope="module", params=sorted(REPORT_RUNS))
def compare_report(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A `regplug compare --out DIR` folder (report.html, figures, results files)."""
    name = request.param
    out = tmp_path_factory.mktemp(f"compare-{name}") / "out"
    command = [sys.executable, "-m", "regplug", "compare", *REPORT_RUNS[name], "-q",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          cwd=out.parent)
    assert done.returncode == 0, (f"{' '.join(command)} exited with {done.returncode}:\n"
                                  f"{done.stdout}\n{done.stderr}")
    assert (out / "report.html").is_file(), f"no report.html in {out}: {sorted(out.iterdir())}"
    return name, out


def test_compare_report(compare_report: tuple[str, Path], serve: Any,
                        page_checker: Any) -> None:
    name, out = compare_report
    with serve(out) as server:
        report = page_checker(server, "report.html", f"report/{name}")
    if report.problems():
        pytest.fail(report.describe(), pytrace=False)
    # The figures and the links to the results files were there to check.
    figures = sorted(p.name for p in out.glob("*.png"))
    assert report.images == len(figures) >= 3, (report.images, figures)
    assert report.links >= 2, report.links  # results.csv, results.json


def test_search_finds_a_plugin(browser: Any, site_server: Any, screenshots: Path) -> None:
    """The site's search (material's, from the local index, in a web worker) answers in the
    browser, and its results lead to pages of the build."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(site_server.url(""), wait_until="load")
        page.fill("input.md-search__input", "ProximalL1")
        page.wait_for_selector(".md-search-result__item", timeout=15_000)
        links = page.eval_on_selector_all(".md-search-result__item a",
                                          "links => links.map(a => a.href)")
        page.screenshot(path=str(screenshots / "site" / "search-ProximalL1.png"))
    finally:
        context.close()
    assert errors == []
    assert links, "no search result for ProximalL1"
    missing = [link for link in links if site_server.file_for(link) is None]
    assert missing == [], f"search results that lead nowhere: {missing}"


VIEWPORT = {"width": 1280, "height": 900}  # conftest.py's: the laptop window checked


def test_compare_report_fits_the_window(compare_report: tuple[str, Path], serve: Any,
                                        browser: Any, screenshots: Path) -> None:
    """At 1280x900 the report scrolls only down: no table wider than the window, and each
    row of the seeds' table on one line (a mean ± std never wraps), the folded table of
    every run included once opened."""
    name, out = compare_report
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        with serve(out) as server:
            page.goto(server.url("report.html"), wait_until="load")
            page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            width = page.evaluate("document.documentElement.scrollWidth")
            tables = page.evaluate("""Array.from(document.querySelectorAll('table')).map(t =>
                [t.className, t.getBoundingClientRect().right])""")
            rows = page.evaluate("""Array.from(document.querySelectorAll('table.summary tbody tr'))
                .map(r => [r.getBoundingClientRect().height,
                           parseFloat(getComputedStyle(r.cells[0]).lineHeight) ||
                           1.4 * parseFloat(getComputedStyle(r.cells[0]).fontSize)])""")
            page.screenshot(path=str(screenshots / "report" / f"{name}-window.png"))
    finally:
        context.close()
    assert width <= VIEWPORT["width"], f"report.html is {width} px wide at {VIEWPORT}"
    assert all(right <= VIEWPORT["width"] for _, right in tables), tables
    if name != "one-seed":
        assert rows, "no seeds table in a run with --seeds"
    too_tall = [(h, line) for h, line in rows if h > 1.9 * line]  # 2 lines: a cell wrapped
    assert too_tall == [], f"seeds table rows over one line (height, line height): {too_tall}"
