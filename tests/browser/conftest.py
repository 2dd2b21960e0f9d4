"""The browser tests' machinery: a folder served on 127.0.0.1, headless Chromium, and the
page checker (console errors, failed requests, missing images, broken internal links).

tox -e docs builds the site (``mkdocs build --strict``) and sets ``REGPLUG_SITE`` to it; every
test here skips without that variable ("run by tox -e docs"), so ``tox -e py`` and a plain
``pytest`` list them as skipped. By hand::

    mkdocs build --strict -d /tmp/site && REGPLUG_SITE=/tmp/site pytest tests/browser

The browser is Debian's ``chromium`` (``apt-get install -y chromium``; ``REGPLUG_CHROMIUM``
names another binary), driven by Playwright for Python (``pip install playwright``; never
``playwright install``, nothing is downloaded). Without either the tests skip and say which
to install. Each page checked leaves a full-page screenshot (1280x900 viewport) in
``$REGPLUG_SCREENSHOTS`` (default build/screenshots); the run prints the folder at the end.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

SITE_VARIABLE = "REGPLUG_SITE"
SCREENSHOTS_VARIABLE = "REGPLUG_SCREENSHOTS"
CHROMIUM_VARIABLE = "REGPLUG_CHROMIUM"
VIEWPORT = {"width": 1280, "height": 900}
# Headless, and nothing the browser would fetch on its own (updates, sync, field trials).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
PAGE_TIMEOUT_MS = 30_000

SECTIONS = ("site", "report", "checker")  # the screenshots' folders, one per kind of page
_SCREENSHOTS_USED = pytest.StashKey[Path]()


def built_site() -> Path | None:
    """The folder ``REGPLUG_SITE`` names (tox -e docs's build), None when it is unset."""
    value = os.environ.get(SITE_VARIABLE)
    return Path(value).resolve() if value else None


@pytest.fixture(scope="session", autouse=True)
def _run_by_tox_docs() -> None:
    """Skips every test here unless tox -e docs (or a person) built the site."""
    if built_site() is None:
        pytest.skip(f"run by tox -e docs (it builds the site and sets {SITE_VARIABLE}); by "
                    f"hand: mkdocs build --strict -d DIR && {SITE_VARIABLE}=DIR pytest "
                    "tests/browser")


def chromium_path() -> tuple[str | None, str]:
    """Debian's chromium (or the binary ``REGPLUG_CHROMIUM`` names), else None and why."""
    named = os.environ.get(CHROMIUM_VARIABLE)
    if named:
        if Path(named).is_file():
            return named, ""
        return None, f"no browser: {CHROMIUM_VARIABLE}={named} is not a file"
    for candidate in ("chromium", "chromium-browser", "/usr/bin/chromium"):
        found = shutil.which(candidate)
        if found:
            return found, ""
    return None, ("no browser: Chromium is not installed (apt-get install -y chromium, as "
                  f".ci/run does; or set {CHROMIUM_VARIABLE} to a Chromium binary)")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium, one for the session; skips, saying what to install, without it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser driver: Playwright for Python is not installed (pip install "
                    "playwright; tox -e docs installs it). It drives Debian's chromium: "
                    "never `playwright install`")
    executable, missing = chromium_path()
    if executable is None:
        pytest.skip(missing)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


class _Handler(SimpleHTTPRequestHandler):
    """Serves the folder under a URL prefix ("/" or, for a site built with a site_url, its
    path): anything outside the prefix is a 404, as on the deployed site."""

    prefix = "/"

    def translate_path(self, path: str) -> str:
        if not path.startswith(self.prefix):
            return str(Path(self.directory) / ".regplug-not-served" / "missing")
        return super().translate_path("/" + path[len(self.prefix):])

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server:
    """A folder served over HTTP on 127.0.0.1 (a free port) from a background thread, under
    the URL path ``prefix``."""

    def __init__(self, root: Path, prefix: str = "/") -> None:
        self.root = root.resolve()
        self.prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        handler = type("Handler", (_Handler,), {"prefix": self.prefix})
        self._httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(self.root)))
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self.origin = f"http://{host!s}:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def url(self, relative: str) -> str:
        """The URL of a file under the root (``relative`` in URL form, e.g. "api/")."""
        return f"{self.origin}{self.prefix}{relative.lstrip('/')}"

    def file_for(self, url: str) -> Path | None:
        """The file a same-site URL serves (a folder serves its index.html), None when the
        URL is another site's or names no file."""
        parts = urlsplit(url)
        path_in_url = unquote(parts.path)
        if (f"{parts.scheme}://{parts.netloc}" != self.origin
                or not (path_in_url + "/").startswith(self.prefix)):
            return None
        path = self.root / path_in_url[len(self.prefix):]
        if path.is_dir():
            path = path / "index.html"
        return path if path.is_file() else None


def site_prefix(site: Path) -> str:
    """The URL path the site is built for: that of its site_url (the shortest URL of its
    sitemap.xml), "/" when it was built without one."""
    sitemap = site / "sitemap.xml"
    text = sitemap.read_text(encoding="utf-8") if sitemap.is_file() else ""
    urls = re.findall(r"<loc>\s*([^<\s]+)\s*</loc>", text)
    return (urlsplit(min(urls, key=len)).path or "/") if urls else "/"


@pytest.fixture(scope="session")
def site() -> Path:
    """The built site's folder (tox -e docs's build)."""
    site = built_site()
    assert site is not None  # the autouse fixture skipped otherwise
    if not site.is_dir():
        pytest.fail(f"{SITE_VARIABLE}={site} is not a folder: build the site first")
    return site


@pytest.fixture(scope="session")
def site_server(site: Path) -> Iterator[Server]:
    """The built site on 127.0.0.1, under its site_url's path (the 404 page's links are
    absolute)."""
    with Server(site, site_prefix(site)) as server:
        yield server


@pytest.fixture(scope="session")
def serve() -> type[Server]:
    """``with serve(folder[, prefix]) as server:`` serves a folder of one's own."""
    return Server


@pytest.fixture(scope="session")
def prefix_of_site() -> Any:
    """site_prefix: the URL path a built site is served under."""
    return site_prefix


def _site_pages() -> list[Any]:
    site = built_site()
    if site is None:  # every test skips (the autouse fixture): one placeholder to skip
        return [pytest.param(None, id="site-not-built")]
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    return pages or [pytest.param(None, id="no-page-built")]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``site_page``: each HTML file of the built site, by its path in the build."""
    if "site_page" in metafunc.fixturenames:
        metafunc.parametrize("site_page", _site_pages())


class _Ids(HTMLParser):
    """The anchors a page offers: every id, and the names of <a name=...>."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is not None and (name == "id" or (tag == "a" and name == "name")):
                self.ids.add(value)


@functools.cache
def anchors_of(path: Path) -> frozenset[str]:
    """The anchors of an HTML file as served (its static HTML)."""
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


@dataclass
class PageReport:
    """What the browser saw on one page; ``problems()`` is empty for a good page."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    missing_images: list[str] = field(default_factory=list)
    broken_links: list[str] = field(default_factory=list)
    images: int = 0  # images on the page (those loaded and those not)
    links: int = 0  # same-site links followed
    screenshot: Path | None = None

    def problems(self) -> list[str]:
        return ([f"console error: {m}" for m in self.console_errors]
                + [f"failed request: {m}" for m in self.failed_requests]
                + [f"missing image: {m}" for m in self.missing_images]
                + [f"broken link: {m}" for m in self.broken_links])

    def describe(self) -> str:
        lines = [f"{self.url}: {len(self.problems())} problem(s)"]
        lines += [f"  - {p}" for p in self.problems()]
        if self.screenshot is not None:
            lines.append(f"  screenshot: {self.screenshot}")
        return "\n".join(lines)


# Waits for every image (lazy ones made eager), then lists those that did not decode.
_MISSING_IMAGES_JS = """async () => {
  const images = Array.from(document.images);
  images.forEach(img => { img.loading = "eager"; });
  await Promise.all(images.map(img => img.complete ? null : new Promise(done => {
    img.addEventListener("load", done); img.addEventListener("error", done);
    setTimeout(done, 10000);
  })));
  return [images.length, images.filter(img => img.naturalWidth === 0)
                               .map(img => img.getAttribute("src") || img.outerHTML)];
}"""
_HREFS_JS = "() => Array.from(document.querySelectorAll('a[href]'), a => a.href)"
# The page's anchors as the browser has them (scripts may add some): ids, <a name=...>.
_IDS_JS = """() => [...Array.from(document.querySelectorAll('[id]'), e => e.id),
                   ...Array.from(document.querySelectorAll('a[name]'), a => a.name)]"""


def check_page(browser: Any, server: Server, relative: str,
               screenshot: Path | None) -> PageReport:
    """Open ``relative`` on ``server`` in a fresh 1280x900 page and report console errors,
    failed requests (any other site's included: the page must work offline), images that did
    not load, and same-site links to a missing file or anchor. Saves a full-page screenshot
    to ``screenshot`` when given."""
    url = server.url(relative)
    report = PageReport(url)
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)

        def on_console(message: Any) -> None:
            if message.type == "error":
                where = message.location or {}
                report.console_errors.append(
                    f"{message.text} ({where.get('url', '?')}:{where.get('lineNumber', '?')})")

        def on_route(route: Any) -> None:
            if route.request.url.startswith(server.origin + "/"):
                route.continue_()
            else:  # another site: the page must not need it (and the test never goes out)
                report.failed_requests.append(f"{route.request.url}: another site's (the "
                                              "page must work offline)")
                route.abort("blockedbyclient")

        page.on("console", on_console)
        page.on("pageerror", lambda error: report.console_errors.append(
            f"uncaught: {error}"))
        page.on("requestfailed", lambda request: report.failed_requests.append(
            f"{request.url}: {request.failure}")
            if request.url.startswith(server.origin + "/") else None)
        page.on("response", lambda response: report.failed_requests.append(
            f"{response.url}: HTTP {response.status}") if response.status >= 400 else None)
        page.route("**/*", on_route)

        page.goto(url, wait_until="load")
        page.wait_for_load_state("networkidle")
        report.images, report.missing_images = page.evaluate(_MISSING_IMAGES_JS)
        _check_links(report, server, page.evaluate(_HREFS_JS), set(page.evaluate(_IDS_JS)))
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            report.screenshot = screenshot
    finally:
        context.close()
    return report


def _check_links(report: PageReport, server: Server, hrefs: list[str],
                 own_ids: set[str]) -> None:
    here = urlsplit(report.url)
    for href in dict.fromkeys(hrefs):  # each distinct link once, in page order
        parts = urlsplit(href)
        if parts.scheme not in ("http", "https") or f"{parts.scheme}://{parts.netloc}" \
                != server.origin:
            continue  # mailto:, javascript:, another site's pages: not checked (offline)
        report.links += 1
        target = server.file_for(href)
        if target is None:
            report.broken_links.append(f"{href}: no such file in the build")
            continue
        anchor = unquote(parts.fragment)
        if not anchor or target.suffix != ".html":
            continue
        same_page = parts.path == here.path or server.file_for(report.url) == target
        ids = own_ids if same_page else anchors_of(target)
        if anchor not in ids:
            report.broken_links.append(f"{href}: no element with id {anchor!r} in "
                                       f"{target.relative_to(server.root).as_posix()}")


def screenshots_folder(config: pytest.Config) -> Path:
    value = os.environ.get(SCREENSHOTS_VARIABLE)
    return Path(value).resolve() if value else config.rootpath / "build" / "screenshots"


@pytest.fixture(scope="session")
def screenshots(request: pytest.FixtureRequest) -> Path:
    """The folder of this run's screenshots, emptied of an earlier run's."""
    folder = screenshots_folder(request.config)
    for section in SECTIONS:
        shutil.rmtree(folder / section, ignore_errors=True)
        (folder / section).mkdir(parents=True)
    request.config.stash[_SCREENSHOTS_USED] = folder
    return folder


@pytest.fixture
def page_checker(browser: Any, screenshots: Path) -> Any:
    """``page_checker(server, relative, shot)``: check_page, its screenshot kept as
    ``<screenshots>/<shot>.png``."""

    def check(server: Server, relative: str, shot: str) -> PageReport:
        return check_page(browser, server, relative, screenshots / f"{shot}.png")

    return check


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    folder = config.stash.get(_SCREENSHOTS_USED, None)
    if folder is not None:
        taken = sum(1 for section in SECTIONS for _ in (folder / section).rglob("*.png"))
        terminalreporter.write_sep("-", "browser screenshots")
        terminalreporter.write_line(f"{taken} screenshots (1280x900 viewport, pages in full) in "
                                    f"{folder}")
