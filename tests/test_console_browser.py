"""The web console at /ui in a real headless chromium (Debian's chromium + chromium-driver,
driven by selenium; nothing is downloaded): key prompt, create a collection, upload two files,
search and see the hit with its highlight, scores and stage timings, watch the figures panel
update, then the same pages on a narrow screen. A screenshot of each page goes to
``build/screenshots`` (printed at the end of the run)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SCREENSHOTS
from tests.test_server_e2e import run_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="no browser: install Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver; .ci/run does)",
    ),
]

KEY = "console-test-key"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_server(tmp_path_factory.mktemp("console"), api_keys=f'["{KEY}"]') as base:
        yield base


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = 120) -> Any:
    """Poll ``condition`` until it holds (a generous bound: the server embeds on a shared CPU).
    An element replaced while it was read (the page redraws a table) is read again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (StaleElementReferenceException,)
    return WebDriverWait(driver, timeout, 0.1, ignored).until(condition, what)


def shot(driver: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


UNLABELLED = """return [...document.querySelectorAll('input:not([type=hidden]), select, progress')]
  .filter(e => e.labels.length === 0).map(e => e.id)"""


def test_console_end_to_end(url: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    for old in SCREENSHOTS.glob("console-*.png"):
        old.unlink()
    tides = tmp_path / "tides.md"
    tides.write_text("# Tides\n\nThe moon pulls the oceans, and the oceans answer with tides.\n")
    volcano = tmp_path / "volcanoes.txt"
    volcano.write_text("Volcanoes erupt when magma rises through cracks in the crust.\n")

    browser.get(f"{url}/ui")
    key_form = by_id(browser, "key-form")
    wait(browser, lambda d: key_form.is_displayed(), "the key prompt (keys are set)")
    shot(browser, "console-0-key")
    by_id(browser, "key").send_keys(KEY + Keys.ENTER)
    wait(browser, lambda d: not key_form.is_displayed(), "the key accepted")
    assert browser.execute_script(UNLABELLED) == []

    # Collections: create one, upload two files with progress.
    by_id(browser, "create-name").send_keys("docs" + Keys.ENTER)
    wait(browser, lambda d: "Created docs" in by_id(d, "create-result").text, "created")
    by_id(browser, "upload-files").send_keys(f"{tides}\n{volcano}")
    by_id(browser, "upload-form").find_element(By.CSS_SELECTOR, "button").click()
    results = by_id(browser, "upload-results")
    wait(browser, lambda d: results.text.count("created") == 2, "both files stored")
    assert by_id(browser, "upload-progress").get_attribute("value") == "100"
    row = "//table[@id='collections-table']//tr[th='docs']/td"
    wait(browser, lambda d: [c.text for c in d.find_elements(By.XPATH, row)][:2] == ["2", "2"],
         "docs listed with 2 documents and 2 chunks")  # fmt: skip
    shot(browser, "console-1-collections")

    # Search: keyboard navigation to the page, a query, the hit with its highlight.
    nav = by_id(browser, "nav-search")
    nav.send_keys(Keys.ENTER)
    wait(browser, lambda d: by_id(d, "page-search").is_displayed(), "the search page")

    def choose_docs(d: Any) -> bool:  # the page may redraw the options meanwhile: again then
        Select(by_id(d, "search-collection")).select_by_value("docs")
        return bool(by_id(d, "search-collection").get_attribute("value") == "docs")

    wait(browser, choose_docs, "docs chosen")
    by_id(browser, "search-query").send_keys("what pulls the oceans" + Keys.ENTER)
    hits = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#hits .hit"), "hits")
    assert hits[0].find_element(By.TAG_NAME, "h3").text == "1. tides.md"
    marks = {m.text.lower() for m in hits[0].find_elements(By.TAG_NAME, "mark")}
    assert "oceans" in marks, marks
    legs = {
        leg: hits[0].find_element(By.CSS_SELECTOR, f".leg-{leg} dd").text
        for leg in ("score", "dense", "bm25", "fused", "rerank")
    }
    assert all(legs[leg] not in ("", "\u2013") for leg in ("score", "dense", "bm25", "fused")), legs
    bars = browser.find_elements(By.CSS_SELECTOR, "#timings-bars .bar")
    assert {"embed", "dense", "lexical"} <= {b.text.split()[0] for b in bars}
    shot(browser, "console-2-search")

    # Figures: polled every 2 s; the request count moves with each poll.
    by_id(browser, "nav-figures").click()
    polls = by_id(browser, "figures-updated")
    wait(browser, lambda d: int(polls.get_attribute("data-polls") or 0) >= 1, "first figures")
    first = int(by_id(browser, "fig-requests").text)
    wait(browser, lambda d: int(by_id(d, "fig-requests").text) > first, "the figures updated")
    routes = by_id(browser, "fig-routes").text
    assert "POST /v1/collections/{name}/search" in routes
    assert "bge-small-en-v1.5" in by_id(browser, "fig-models").text
    assert "MiB" in by_id(browser, "fig-memory").text
    shot(browser, "console-3-figures")

    # A narrow screen: nothing wider than the viewport.
    browser.set_window_size(390, 900)
    for page in ("collections", "search", "figures"):
        by_id(browser, f"nav-{page}").click()
        wait(browser, lambda d, p=page: by_id(d, f"page-{p}").is_displayed(), page)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, (page, overflow)
        shot(browser, f"console-4-narrow-{page}")
