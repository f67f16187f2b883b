"""Headless Chromium (through selenium) for the report's screenshots and the tests that click through it."""

from __future__ import annotations

import os
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from harness.errors import BenchError

CHROMIUM = os.environ.get("BENCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BENCH_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
MAX_SCREENSHOT_HEIGHT = 16000  # px; Chromium's texture limit is about 16k


def browser_missing() -> str | None:
    """Why no headless Chromium can be started here, or None."""
    for path, what in ((CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            return f"{what} is not installed at {path} (set BENCH_CHROMIUM / BENCH_CHROMEDRIVER to another path)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 1000):
    """A headless Chromium driven by selenium, with a fresh profile; never downloads a driver."""
    why = browser_missing()
    if why:
        raise BenchError(f"Cannot start a headless browser: {why}.")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not go online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="bench-chromium-", ignore_cleanup_errors=True) as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={int(width)},{int(height)}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, for tests to read
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": int(width), "height": int(height), "deviceScaleFactor": 1,
                                    "mobile": False})
            yield driver
        finally:
            driver.quit()


def screenshot(html: Path, png: Path, width: int = 1400, height: int = 1000) -> Path:
    """Opens the page in headless Chromium and saves a screenshot ``width`` px wide of the whole page, up to
    ``MAX_SCREENSHOT_HEIGHT`` px tall (never less than ``height``, the viewport the page is laid out in)."""
    html, png = Path(html), Path(png)
    with chromium(width, height) as driver:
        driver.get(html.resolve().as_uri())
        full = driver.execute_script("return Math.max(document.documentElement.scrollHeight, "
                                     "document.body ? document.body.scrollHeight : 0);")
        tall = max(int(height), min(int(full or 0), MAX_SCREENSHOT_HEIGHT))
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": int(width), "height": tall, "deviceScaleFactor": 1, "mobile": False})
        data = driver.get_screenshot_as_png()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, png)
    return png
