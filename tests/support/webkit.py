"""Open a page in WebKit (Selenium's WebKitGTK driver) and print `window.__result` as JSON.

Run under `xvfb-run` (MiniBrowser needs a display): `python -m tests.support.webkit URL BINARY`.
"""

from __future__ import annotations

import sys
import time

from selenium import webdriver
from selenium.webdriver.webkitgtk.options import Options
from selenium.webdriver.webkitgtk.service import Service

DRIVER = "/usr/bin/WebKitWebDriver"
TIMEOUT = 60.0


def main(url: str, binary: str) -> None:
    """Open `url`, wait for the page's result, print it."""
    options = Options()
    options.binary_location = binary
    options.add_argument("--automation")
    driver = webdriver.WebKitGTK(options=options, service=Service(executable_path=DRIVER))
    try:
        driver.get(url)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            result = driver.execute_script(
                "return window.__result === undefined ? null : JSON.stringify(window.__result)"
            )
            if result is not None:
                print(result)
                return
            time.sleep(0.1)
        raise SystemExit("the page set no result in time")
    finally:
        driver.quit()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
