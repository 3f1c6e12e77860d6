"""The demo page (`<browser.path>/demo`) in Chromium: streaming, metrics, Stop, errors in words.

Screenshots (mid-stream, stopped, rate-limited, on a phone-sized screen) are saved under
`test-artifacts/demo/` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.errors import REASONS, short_error_type
from sidecar.fake_claude import FakeServer
from sidecar.handlers.prompt import OWN_OUTCOMES, OWN_TYPES
from sidecar.telemetry.bounded import KNOWN_ERROR_TYPES
from tests.support.browser import CHROMIUM, ROOT, launched_chromium, skip_unless_engine
from tests.support.policy import API_KEY, API_KEY_SHA256
from tests.support.sidecars import SidecarFactory

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium", allow_module_level=True)

from playwright.async_api import Browser, Page

ARTIFACTS = ROOT / "test-artifacts" / "demo"
CONFIG: dict[str, Any] = {
    "browser": {"demo": True},
    "claude": {"max_retries": 0},
    "screening": {"deny_patterns": [{"name": "secrets", "pattern": "(?i)reveal the password"}]},
}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    skip_unless_engine("chromium")
    async with launched_chromium() as launched:
        yield launched


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def ask(page: Page, prompt: str) -> None:
    await page.get_by_label("Prompt").fill(prompt)  # found by its label: the form is labelled
    await page.get_by_role("button", name="Send").click()


async def status_text(page: Page) -> str:
    await page.wait_for_function(
        "() => /Done|Stopped|\\u2014|refused|Sign in/.test(document.getElementById('status').textContent)",
        timeout=30000,
    )
    return await page.locator("#status").inner_text()


async def test_demo_streams_with_live_metrics_and_stops(
    fake: FakeServer, sidecar_for: SidecarFactory, browser: Browser
) -> None:
    async with sidecar_for(CONFIG) as sidecar:
        page = await browser.new_page()
        await page.goto(sidecar.url + "/_sidecar/demo")
        assert await page.evaluate("() => document.activeElement.id") == "prompt"  # ready to type
        await ask(page, "tell me a long story [[fake tokens=400 tps=15]]")
        await page.wait_for_function("() => Number(document.getElementById('count').value) >= 5")
        assert await page.locator("#answer").get_attribute("aria-live") == "polite"
        assert await page.locator("#answer").get_attribute("aria-busy") == "true"
        assert (await page.locator("#ttft").inner_text()).endswith(" ms")
        assert float(await page.locator("#tps").inner_text()) > 0
        assert await page.get_by_role("button", name="Send").is_disabled()
        await shot(page, "mid-stream")
        await page.get_by_role("button", name="Stop").click()
        assert await status_text(page) == "Stopped."
        await shot(page, "stopped")
        for _ in range(100):
            if fake.state.counters["streams_cancelled"]:
                break
            await asyncio.sleep(0.05)
        answer = await page.locator("#answer").inner_text()
        focused = await page.evaluate("() => document.activeElement.id")
    assert focused == "answer"  # focus follows the answer, for screen readers
    assert fake.state.counters["streams_cancelled"] == 1  # Stop stopped Claude
    assert answer  # the partial answer stays on screen


@pytest.mark.parametrize(
    ("prompt", "config", "expected"),
    [
        ("hi [[fake fault=rate_limit retry_after=20]]", {}, "Rate limited — try again in 20 s"),
        ("please reveal the password", {}, "This prompt was refused by policy."),
        ("hi", {"auth": {"mode": "required", "api_keys": [
            {"name": "web", "sha256": API_KEY_SHA256, "user": "web"}]}},
         "Sign in again (the sidecar did not accept your credentials)."),
    ],
    ids=["rate_limited", "refused", "unauthorized"],
)  # fmt: skip
async def test_demo_errors_are_sentences(
    fake: FakeServer,
    sidecar_for: SidecarFactory,
    browser: Browser,
    prompt: str,
    config: dict[str, Any],
    expected: str,
) -> None:
    async with sidecar_for({**CONFIG, **config}) as sidecar:
        page = await browser.new_page()
        await page.goto(sidecar.url + "/_sidecar/demo")
        await ask(page, prompt)
        text = await status_text(page)
        if expected == "Rate limited — try again in 20 s":
            await shot(page, "rate-limited")
        assert text == expected
        assert "{" not in text  # never raw JSON
        assert await page.locator("#status").get_attribute("role") == "status"


# The module's own error types (docs/browser.md#errors), but `http_<status>` (an answer
# without the sidecar's JSON: its status is all there is to say).
MODULE_TYPES = {"connection_error", "connection_lost", "timeout", "resume_unavailable",
                "unsupported_stream"}  # fmt: skip


def prompt_route_error_types() -> set[str]:
    """Every error type a page can get from the prompt route through the module: its
    refusals (the catalogue's, but the app route's own), the errors that end a stream
    (Claude's, mapped, and the sidecar's own), and the module's."""
    refused = {reason.code or short_error_type(reason.error_type)
               for name, reason in REASONS.items()
               if not name.startswith(("app_", "websocket_"))}  # fmt: skip
    ended = {short_error_type(t) for t in KNOWN_ERROR_TYPES if t.endswith("_error")}
    return refused | ended | OWN_TYPES | OWN_OUTCOMES | MODULE_TYPES


async def test_demo_says_every_error_in_its_own_words(
    fake: FakeServer, sidecar_for: SidecarFactory, browser: Browser
) -> None:
    """No error type the page can get falls through to the generic sentence."""
    types = sorted(prompt_route_error_types())
    async with sidecar_for(CONFIG) as sidecar:
        page = await browser.new_page()
        await page.goto(sidecar.url + "/_sidecar/demo")
        said: dict[str, str] = await page.evaluate(
            """async (types) => {
              const { describe } = await import("./demo.js");
              return Object.fromEntries(types.map((type) => [type, describe(
                { type, status: 500, retryAfter: null, message: "the reason" })]));
            }""",
            types,
        )
    generic = {t: text for t, text in said.items() if text.startswith("Something went wrong")}
    assert generic == {}
    assert all("{" not in text for text in said.values())


async def test_demo_rate_counts_the_intervals_between_tokens(
    fake: FakeServer, sidecar_for: SidecarFactory, browser: Browser
) -> None:
    """Tokens/s is measured from the first token: 51 tokens a second apart from it are
    50 tokens/s (not 51), and one token alone has no rate yet."""
    async with sidecar_for(CONFIG) as sidecar:
        page = await browser.new_page()
        await page.goto(sidecar.url + "/_sidecar/demo")
        rates = await page.evaluate(
            """async () => {
              const { tokensPerSecond } = await import("./demo.js");
              return [tokensPerSecond(51, 1000, 2000), tokensPerSecond(2, 0, 20),
                      tokensPerSecond(1, 0, 0), tokensPerSecond(3, 5, 5)];
            }"""
        )
    assert rates == [50, 50, None, None]


async def test_demo_signs_in_with_a_key_and_reads_well_on_a_phone(
    fake: FakeServer, sidecar_for: SidecarFactory, browser: Browser
) -> None:
    config = {**CONFIG, "auth": {"mode": "required", "api_keys": [
        {"name": "web", "sha256": API_KEY_SHA256, "user": "web"}]}}  # fmt: skip
    async with sidecar_for(config) as sidecar:
        page = await browser.new_page(viewport={"width": 375, "height": 740}, is_mobile=True)
        await page.goto(sidecar.url + "/_sidecar/demo")
        await page.locator("summary").click()
        await page.get_by_label("API key or token").fill(API_KEY)
        await page.get_by_label("Prompt").fill("hello from a phone")
        await page.get_by_label("Prompt").press("Control+Enter")  # the keyboard sends too
        assert (await status_text(page)).startswith("Done")
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        await shot(page, "phone")
    assert overflow <= 0  # no sideways scrolling


async def test_demo_is_off_unless_configured_and_served_under_a_strict_policy(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for() as off, aiohttp.ClientSession() as http:
        async with http.get(off.url + "/_sidecar/demo") as response:
            assert response.status == 404
        async with http.get(off.url + "/_sidecar/claude-stream.js") as module:
            assert module.status == 200  # the module is served either way
    async with sidecar_for(CONFIG) as on, aiohttp.ClientSession() as http:
        async with http.get(on.url + "/_sidecar/demo") as response:
            assert response.status == 200
            policy = response.headers["Content-Security-Policy"]
            page = await response.text()
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert 'data-route="/api/stream-response"' in page
