"""The explorer in a real browser: headless Chromium loads the page, a slider moves,
the number shown changes and equals the API's answer for the page's own query, and a
screenshot is taken (DIFFPERF_SCREENSHOT=path also writes it there, e.g. for the
README's docs/explorer.png). Skipped, with the reason printed, only where Chromium,
its driver or selenium cannot be found (`.ci/run` installs them)."""

import json
import os
import re
import shutil
import threading
import urllib.request

import pytest

from diffperf.explore import make_server


def _browser_or_skip():
    reasons = []
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium:
        reasons.append("no chromium on PATH")
    if not driver:
        reasons.append("no chromedriver on PATH")
    try:
        import selenium  # noqa: F401
    except ImportError:
        reasons.append("selenium is not installed")
    if reasons:
        print("browser test skipped: " + "; ".join(reasons))
        pytest.skip("; ".join(reasons))
    return chromium, driver


def _seconds(text: str) -> float:
    """The page's formatted time ('2.659 s', '283.6 ms', '12.0 µs') in seconds."""
    m = re.fullmatch(r"([0-9.]+) (s|ms|µs)", text.strip())
    assert m, text
    return float(m.group(1)) * {"s": 1.0, "ms": 1e-3, "µs": 1e-6}[m.group(2)]


def test_slider_moves_the_step_time(tmp_path):
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    srv = make_server("127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1280,1000"):  # fmt: skip
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        base = f"http://127.0.0.1:{port}"
        browser.get(f"{base}/?hardware=dgx_h100&model=llama3_8b&gpus=8&tp=8")
        wait = WebDriverWait(browser, 300, poll_frequency=0.2)
        shown = browser.find_element(By.ID, "metric-main")
        wait.until(lambda b: shown.get_attribute("data-value"))
        before = float(shown.get_attribute("data-value"))

        slider = browser.find_element(By.ID, "s-chip-hbm_bandwidth")
        slider.click()  # the thumb sits in the middle: focus without moving it
        slider.send_keys(*[Keys.ARROW_LEFT] * 10)  # 10 steps of 0.1 in log2: ×0.5
        wait.until(lambda b: "hbm_bandwidth" in shown.get_attribute("data-query"))
        query = shown.get_attribute("data-query")
        after = float(shown.get_attribute("data-value"))
        assert after > before  # half the HBM bandwidth: a slower step

        with urllib.request.urlopen(f"{base}/api/train?{query}") as r:
            api = json.load(r)
        assert after == api["step_time_s"]  # the page shows the API's number
        assert _seconds(shown.text) == pytest.approx(after, rel=1e-3)
        assert "set=chip.hbm_bandwidth%3D1.67500e%2B12" in query  # 3.35e12 / 2

        for panel in ("pareto", "elasticities"):  # the slower panels drew too
            box = browser.find_element(By.ID, panel)
            wait.until(lambda b, box=box: "pending" not in box.get_attribute("class"))
        assert browser.find_element(By.ID, "error").text == ""
        png = tmp_path / "explorer.png"
        assert browser.save_screenshot(str(png))
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
        if os.environ.get("DIFFPERF_SCREENSHOT"):
            shutil.copy(png, os.environ["DIFFPERF_SCREENSHOT"])
    finally:
        browser.quit()
        srv.shutdown()
        srv.server_close()
