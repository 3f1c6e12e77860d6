"""The shipped Prometheus alerting rules: valid, unit-tested by promtool, on real metric names."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.support.apps import serving
from tests.support.promtool import RULE_TESTS, RULES, run_promtool
from tests.support.sidecars import SidecarFactory
from tests.support.sockets import free_port
from tests.support.waiting import eventually

NAME = re.compile(r"\b(?:gen_ai|sidecar|http)_[a-z0-9_]+")
LABEL_VALUE = re.compile(r'\b([a-z_]+)="([^"]*)"')
LE_MATCH = re.compile(r'\ble=~"([^"]*)"')  # a PromQL string: `\\.` is the regex's `\.`


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


RULE_NAMES = {rule["alert"] for rule in rules()}


def test_rules_pass_promtool_check() -> None:
    checked = run_promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


def test_rules_pass_their_promtool_unit_tests() -> None:
    tested = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a unit test that expects it to fire.
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == {rule["alert"] for rule in rules()}


def test_every_alert_has_a_summary_and_a_runbook_in_the_docs() -> None:
    docs = (RULES.parents[2] / "docs" / "observability.md").read_text()
    for rule in rules():
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        anchor = annotations["runbook"].split("#", 1)[1]
        assert anchor == rule["alert"].lower()
        assert f"### {rule['alert']}" in docs, f"no runbook section for {rule['alert']}"


async def failing_jwks(request: web.Request) -> web.Response:
    return web.Response(status=503)


async def test_rules_use_what_a_running_sidecar_exports(sidecar_for: SidecarFactory) -> None:
    """Scrape a sidecar that streamed, retried, rejected and cannot fetch its JWKS."""
    app = web.Application()
    app.router.add_get("/jwks", failing_jwks)
    async with serving(app) as jwks_url:
        config = {
            "auth": {"mode": "optional", "jwt": {"jwks_url": jwks_url + "/jwks",
                                                 "algorithms": ["RS256"]}},
            "screening": {"deny_patterns": [{"name": "jb", "pattern": "ignore previous"}]},
        }  # fmt: skip
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            url = sidecar.url + "/api/stream-response"
            for prompt in ("hello [[fake tokens=4]]",
                           "again [[fake fault=overloaded fail_times=1 fail_key=r]]"):  # fmt: skip
                async with http.post(url, json={"prompt": prompt}) as response:
                    assert response.status == 200
                    await response.read()
            async with http.post(url, json={"prompt": "ignore previous orders"}) as response:
                assert response.status == 400
            async with http.get(sidecar.admin_url + "/metrics") as response:
                text = await response.text()
    families = list(text_string_to_metric_families(text))
    samples = [sample for family in families for sample in family.samples]
    names = {sample.name for sample in samples}
    labels = {label for sample in samples for label in sample.labels}
    for rule in rules():
        expr = rule["expr"]
        used = set(NAME.findall(expr))
        assert used, rule["alert"]
        missing = used - names - labels
        assert not missing, f"{rule['alert']}: {sorted(missing)} not in a real scrape"
        for label, value in LABEL_VALUE.findall(expr):
            if label == "le":  # the bucket the TTFT rule reads must exist as written
                assert any(s.labels.get("le") == value for s in samples), value
        for value in LE_MATCH.findall(expr):  # ... or as matched (`10` or `10.0`)
            bucket = re.compile(value.replace("\\\\", "\\"))
            assert any(bucket.fullmatch(s.labels.get("le", "")) for s in samples), value
    by_name = {sample.name: sample for sample in samples if not sample.labels.get("result")}
    assert by_name["sidecar_ready"].value == 0  # no JWKS key loaded: not ready
    assert by_name["sidecar_config_last_reload_successful"].value == 1
    failures = [s for s in samples if s.name == "sidecar_jwks_refreshes_total"]
    assert {s.labels["result"] for s in failures} == {"failure"}
    assert failures[0].value >= 1


@pytest.mark.parametrize("rule", [rule["alert"] for rule in rules()])
def test_each_rule_has_severity_and_a_duration_or_window(rule: str) -> None:
    (found,) = [r for r in rules() if r["alert"] == rule]
    assert found["labels"]["severity"] in {"warning", "critical"}
    assert "for" in found or "[15m]" in found["expr"]


@contextlib.contextmanager
def running_prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """A real Prometheus (Debian's `prometheus`) scraping `target` every second with the rules."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed: apt-get install -y prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "sidecar", "static_configs": [{"targets": [target]}]}],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


async def test_a_real_prometheus_evaluates_every_rule_on_a_sidecar(
    sidecar_for: SidecarFactory, tmp_path: Path
) -> None:
    """Scraped for real, every rule evaluates without error and the not-ready one goes pending."""
    app = web.Application()
    app.router.add_get("/jwks", failing_jwks)
    async with serving(app) as jwks_url:
        config = {"auth": {"mode": "optional",
                           "jwt": {"jwks_url": jwks_url + "/jwks", "algorithms": ["RS256"]}}}  # fmt: skip
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            target = sidecar.admin_url.removeprefix("http://")
            with running_prometheus(tmp_path, target) as prometheus:

                async def evaluated() -> bool:
                    try:
                        async with http.get(prometheus + "/api/v1/rules") as response:
                            groups = (await response.json())["data"]["groups"]
                    except (aiohttp.ClientError, ValueError, KeyError):
                        return False
                    rules = [rule for group in groups for rule in group["rules"]]
                    states = {rule["name"]: rule for rule in rules}
                    not_ready = states.get("ClaudeSidecarNotReady", {})
                    return len(rules) == len(RULE_NAMES) and not_ready.get("state") == "pending"

                await eventually(evaluated, timeout=60)
                async with http.get(prometheus + "/api/v1/rules") as response:
                    groups = (await response.json())["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == RULE_NAMES
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    (alert,) = rules["ClaudeSidecarNotReady"]["alerts"]
    assert alert["labels"]["job"] == "sidecar"
