"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium.

Admin pages that matter are checked in it, not only with Django's test client. Without a
browser on the machine the tests skip, unless ``ROUTER_REQUIRE_BROWSER=1`` (CI) makes that a
failure.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    if not os.path.exists(CHROMEDRIVER):
        return "chromedriver not found (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser():
    reason = _missing()
    if reason:
        if os.environ.get("ROUTER_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1800", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def admin_login(driver, base_url: str, username: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/admin/login/")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    follow(driver, driver.find_element(By.CSS_SELECTOR, "input[type=submit], button[type=submit]"))
    driver.find_element(By.ID, "user-tools")  # logged in


def follow(driver, element, *, submit: bool = False, timeout: float = 10) -> None:
    """Click (or submit) something that loads a new page and return once the old page is gone.

    A click returns before the next page is there: reading right after it races the navigation
    (an element of the old page found, then stale, or the old page's own submit button clicked).
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")

    def gone(_driver) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:  # stale, or mid-navigation "node does not belong to the document"
            return True
        return False

    element.submit() if submit else element.click()
    WebDriverWait(driver, timeout).until(gone)
