"""Pages opened in Debian's own headless Chromium through Selenium, never a downloaded browser.

Selenium drives `/usr/bin/chromium` through `/usr/bin/chromedriver` (Debian's `chromium` and
`chromium-driver`, built from one source package, so their versions always match). Both paths
are given, and Selenium Manager is told to stay offline, so nothing is fetched. Without the
browser the tests skip with the reason, and fail under CI=true (`.ci/run` installs it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_LOAD_TIMEOUT_S = 30
INSTALL = "install it with: apt-get install -y chromium chromium-driver"


def _missing(what: str) -> None:
    message = f"{what}; {INSTALL}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A headless Chromium session (Selenium WebDriver), quit afterwards."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            _missing(f"{path} is not installed")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing(
            "the selenium package is not installed (a dev dependency: pip install -e '.[dev]')"
        )
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download a browser
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--window-size=1280,1000",
        "--disable-dev-shm-usage",  # containers have a small /dev/shm
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, folder: Path, name: str) -> Path:
    """Save the whole window as `<folder>/<name>.png` and return the path."""
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"Chromium saved no screenshot at {path}"
    assert path.stat().st_size > 0
    return path


def rendered_size(driver: Any, css: str) -> tuple[float, float]:
    """The width and height an element is drawn at on the page (CSS pixels)."""
    element = driver.find_element("css selector", css)
    box = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", element
    )
    return float(box[0]), float(box[1])
