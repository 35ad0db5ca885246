"""The labeling page in a real headless Chromium (Debian's, driven by Selenium through Debian's
chromedriver): three labels clicked and typed through, a skip and an undo, and the file loads with
LabeledWindows. CI sets MOOLA_REQUIRE_BROWSER=1, so a missing browser fails there instead of skipping."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _label_helpers import build_store, call, load_written
from moola.pipelines.label_serve import LabelServer, LabelSession

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and os.path.exists(p)), None)
DRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and os.path.exists(p)),
              None)
SCREENSHOT = Path(os.environ.get("MOOLA_LABEL_SCREENSHOT", "/tmp/label_page.png"))


def _why_no_browser() -> str | None:
    if CHROMIUM is None or DRIVER is None:
        return "no Chromium/chromedriver (Debian: apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    why = _why_no_browser()
    if why:
        if os.environ.get("MOOLA_REQUIRE_BROWSER"):
            pytest.fail(f"MOOLA_REQUIRE_BROWSER is set but {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    # the viewport itself 1280x800 (a headless window's size includes no chrome, but be exact)
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("label_browser"))


def test_three_labels_through_the_page(driver: Any, store: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    out = tmp_path / "labels.csv"
    server = LabelServer(LabelSession(store, out), port=0).start()
    wait = WebDriverWait(driver, 15)
    try:
        driver.get(server.url)
        total = call(server.port, "GET", "/api/state")[1]["total"]

        def shown() -> int:
            """Index of the window on screen, once its 105 candles are drawn."""
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "rect.hit")) == 105)
            return int(driver.find_element(By.ID, "chart").get_attribute("data-index"))

        def progress(n: int) -> None:
            wait.until(lambda d: d.find_element(By.ID, "progress").text == f"{n} / {total} labeled")

        def bar(i: int) -> Any:
            return driver.find_element(By.CSS_SELECTOR, f'rect.hit[data-bar="{i}"]')

        def keys(*k: str) -> None:
            ActionChains(driver).send_keys(*k).perform()

        def next_window(before: int) -> int:
            wait.until(lambda d: d.find_element(By.ID, "chart").get_attribute("data-index") != str(before))
            return shown()

        progress(0)
        w = [shown()]
        # 1) keyboard: class 1, click start and end, Enter
        keys("1")
        bar(12).click()
        bar(30).click()
        assert "bar 12" in driver.find_element(By.ID, "pt-start").text
        keys(Keys.ENTER)
        progress(1)
        w.append(next_window(w[-1]))
        # 2) buttons: the retracement button, start, end, the Save button
        driver.find_element(By.ID, "class-retracement").click()
        bar(70).click()
        bar(80).click()
        driver.find_element(By.ID, "save").click()
        progress(2)
        skipped = next_window(w[-1])
        # skip one window with "s"
        keys("s")
        w.append(next_window(skipped))
        # 3) end bar clicked before the start bar (the page orders them), class by key 2
        bar(90).click()
        bar(60).click()
        keys("2")
        driver.save_screenshot(str(SCREENSHOT))  # a selection in progress, for a person to look at
        save = driver.find_element(By.ID, "save").rect
        assert save["y"] + save["height"] <= 800, "Save button below the fold at 1280x800"
        keys(Keys.ENTER)
        progress(3)
        after = next_window(w[-1])
        # undo ("u") brings the last label back on screen, selected; Enter saves it again
        keys("u")
        progress(2)
        assert next_window(after) == w[-1]
        assert "bar 60" in driver.find_element(By.ID, "pt-start").text
        assert "bar 90" in driver.find_element(By.ID, "pt-end").text
        keys(Keys.ENTER)
        progress(3)
        assert "Undid" not in driver.find_element(By.ID, "toast").text
        console = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not console, console
        fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert fetched and all(u.startswith(server.url) for u in fetched), fetched  # nothing off this server
    finally:
        server.stop()

    lw = load_written(out, store)
    assert len(lw) == 3 and lw.rejected.height == 0
    wins = [call_window(server, i) for i in w]
    assert lw.meta["symbol"].to_list() == [x["symbol"] for x in wins]
    ends = [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in lw.meta["end_ts"].to_list()]
    assert ends == [x["end_ts"] for x in wins]
    assert [lw.classes[int(y)] for y in lw.y] == ["consolidation", "retracement", "retracement"]
    assert lw.pointers is not None and lw.pointers.tolist() == [[12, 30], [70, 80], [60, 90]]
    assert skipped not in w


def call_window(server: LabelServer, i: int) -> dict[str, Any]:
    """The window's identity from the session (the server is stopped by now)."""
    return server.session.window_data(i)
