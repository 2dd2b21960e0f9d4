"""The page checker fails where it should: small pages with one fault each (a console error, an
uncaught exception, a missing script, a missing or undecodable image, a link to a missing page
or anchor, a request to another site) are reported, and a clean page is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# A 1x1 PNG: an image that loads.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360f8cfc0f01f0005000201a5d6b5f10000000049454e44ae426082")

PAGES = {
    "clean.html": """<h1 id="top">clean</h1><img src="dot.png" alt="dot">
        <a href="clean.html#top">here</a> <a href="sub/">folder</a> <a href="#top">top</a>
        <a href="dot.png">image</a> <a href="https://example.org/">another site</a>
        <a name="named"></a><a href="#named">named</a> <a href="mailto:x@example.org">mail</a>
        <script>console.log("fine"); console.warn("only a warning");</script>""",
    "sub/index.html": """<h1 id="sub">sub</h1><a href="../clean.html">back</a>""",
    "console_error.html": """<p>x</p><script>console.error("boom from the page")</script>""",
    "uncaught.html": """<p>x</p><script>throw new Error("thrown by the page")</script>""",
    "missing_script.html": """<p>x</p><script src="no-such-script.js"></script>""",
    "missing_image.html": """<img src="no-such-image.png" alt="gone">""",
    "undecodable_image.html": """<img src="data:image/png;base64,AAAA" alt="broken">""",
    "lazy_missing_image.html": """<div style="height:5000px"></div>
        <img loading="lazy" src="lazy-gone.png" alt="below the fold">""",
    "broken_links.html": """<h1 id="here">x</h1>
        <a href="nowhere.html">missing page</a> <a href="clean.html#no-such-anchor">bad
        anchor</a> <a href="#not-here">bad own anchor</a> <a href="clean.html#top">fine</a>
        <a href="sub/#sub">fine folder anchor</a> <a href="missing-folder/">missing folder</a>""",
    "absolute_links.html": """<a href="/docs/clean.html">inside</a>
        <a href="/clean.html">outside the prefix</a>""",
    "external.html": """<link rel="stylesheet" href="https://fonts.example.org/font.css">
        <p>x</p>""",
}


@pytest.fixture(scope="module")
def fixture_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("checker-site")
    for name, body in PAGES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{name}"
                        f"</title></head><body>{body}</body></html>", encoding="utf-8")
    (root / "dot.png").write_bytes(PNG)
    return root


@pytest.fixture
def check(fixture_site: Path, serve: Any, page_checker: Any) -> Any:
    def run(page: str) -> Any:
        with serve(fixture_site) as server:
            return page_checker(server, page,
                                f"checker/{page.removesuffix('.html').replace('/', '-')}")
    return run


def test_a_clean_page_has_no_problem(check: Any) -> None:
    report = check("clean.html")
    assert report.problems() == [], report.describe()
    assert report.images == 1
    # the same-site links, each distinct URL checked once: clean.html#top (also written
    # #top), sub/, dot.png, #named
    assert report.links == 4, report.links
    assert report.screenshot is not None and report.screenshot.stat().st_size > 0


def test_a_console_error_is_reported(check: Any) -> None:
    report = check("console_error.html")
    assert any("boom from the page" in e for e in report.console_errors), report.describe()
    assert report.problems()


def test_an_uncaught_exception_is_reported(check: Any) -> None:
    report = check("uncaught.html")
    assert any("thrown by the page" in e for e in report.console_errors), report.describe()


def test_a_missing_script_is_a_failed_request(check: Any) -> None:
    report = check("missing_script.html")
    assert any("no-such-script.js: HTTP 404" in r for r in report.failed_requests), \
        report.describe()


def test_a_missing_image_is_reported(check: Any) -> None:
    report = check("missing_image.html")
    assert report.missing_images == ["no-such-image.png"], report.describe()
    assert any("no-such-image.png: HTTP 404" in r for r in report.failed_requests)


def test_an_image_that_does_not_decode_is_missing(check: Any) -> None:
    # No failed request here: only the naturalWidth check can see it.
    report = check("undecodable_image.html")
    assert report.missing_images == ["data:image/png;base64,AAAA"], report.describe()
    assert report.failed_requests == []


def test_a_lazy_image_below_the_fold_is_checked_too(check: Any) -> None:
    report = check("lazy_missing_image.html")
    assert report.missing_images == ["lazy-gone.png"], report.describe()


def test_broken_links_are_reported(check: Any) -> None:
    report = check("broken_links.html")
    broken = "\n".join(report.broken_links)
    assert len(report.broken_links) == 4, report.describe()
    assert "nowhere.html: no such file" in broken
    assert "missing-folder/: no such file" in broken
    assert "clean.html#no-such-anchor: no element with id 'no-such-anchor' in clean.html" \
        in broken
    assert "#not-here: no element with id 'not-here' in broken_links.html" in broken
    assert report.links == 6


def test_a_request_to_another_site_is_reported(check: Any) -> None:
    report = check("external.html")
    assert any(r.startswith("https://fonts.example.org/font.css: another site's")
               for r in report.failed_requests), report.describe()


def test_a_site_is_served_under_its_prefix(fixture_site: Path, serve: Any,
                                           page_checker: Any) -> None:
    # mkdocs' 404 page links absolutely, by the site_url's path: served under it, as deployed
    with serve(fixture_site, "/docs/") as server:
        report = page_checker(server, "absolute_links.html", "checker/absolute_links")
    assert [b.split(": ", 1)[1] for b in report.broken_links] == ["no such file in the build"]
    assert report.broken_links[0].startswith(f"{server.origin}/clean.html")
    assert report.links == 2


def test_the_prefix_is_read_from_the_sitemap(tmp_path: Path, prefix_of_site: Any) -> None:
    assert prefix_of_site(tmp_path) == "/"  # no sitemap
    (tmp_path / "sitemap.xml").write_text(
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n</urlset>')
    assert prefix_of_site(tmp_path) == "/"  # built without a site_url
    (tmp_path / "sitemap.xml").write_text(
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        "<url><loc>https://example.org/regplug/api/</loc></url>"
        "<url><loc>https://example.org/regplug/</loc></url></urlset>")
    assert prefix_of_site(tmp_path) == "/regplug/"
