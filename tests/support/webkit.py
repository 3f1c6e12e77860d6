"""Open a page in WebKit (Selenium's WebKitGTK driver) and print `window.__result` as JSON.

Run under `xvfb-run` (MiniBrowser needs a display):
`python -m tests.support.webkit URL BINARY [STEPS]`, STEPS a JSON list of
`tests.support.browser.Step` (WebKitWebDriver cannot take a page offline: no `offline`).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from selenium import webdriver
from selenium.webdriver.webkitgtk.options import Options
from selenium.webdriver.webkitgtk.service import Service

DRIVER = "/usr/bin/WebKitWebDriver"
TIMEOUT = 60.0
# Runs a page expression and waits for it: Selenium's async script calls back once it settles.
RUN_ASYNC = """const done = arguments[arguments.length - 1];
(async () => { await (%s); })().then(() => done(null), (e) => done(String(e)));"""


def _until(driver: webdriver.WebKitGTK, expression: str) -> Any:
    """Poll `expression` until it is neither null nor false; its value."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {expression}")
        if value is not None and value is not False:
            return value
        time.sleep(0.1)
    raise SystemExit(f"the page never met {expression!r}")


def main(url: str, binary: str, steps: list[dict[str, Any]]) -> None:
    """Open `url`, run `steps`, wait for the page's result, print it."""
    options = Options()
    options.binary_location = binary
    options.add_argument("--automation")
    driver = webdriver.WebKitGTK(options=options, service=Service(executable_path=DRIVER))
    try:
        driver.set_script_timeout(TIMEOUT)
        driver.get(url)
        snapshots: list[Any] = []
        for step in steps:
            if "wait" in step:
                _until(driver, f"Boolean({step['wait']})")
            elif "run" in step:
                failed = driver.execute_async_script(RUN_ASYNC % step["run"])
                if failed is not None:
                    raise SystemExit(f"{step['run']!r} failed: {failed}")
            elif "snapshot" in step:
                snapshots.append(driver.execute_script(f"return {step['snapshot']}"))
            else:
                raise SystemExit(f"WebKitWebDriver cannot run {step!r}")
        result = json.loads(
            _until(driver, "window.__result === undefined ? null : JSON.stringify(window.__result)")
        )
        if steps:
            result["snapshots"] = snapshots
        print(json.dumps(result))
    finally:
        driver.quit()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else [])
