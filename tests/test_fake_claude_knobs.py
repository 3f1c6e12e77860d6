"""The fake's faults and knobs: the docs list exactly those it accepts, and each fault
reaches clients of the sidecar as the docs say."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from sidecar.fake_claude import FakeServer
from sidecar.fake_claude.knobs import FAULTS, KNOB_NAMES
from tests.support.sidecars import running_sidecar

DOC = Path(__file__).resolve().parent.parent / "docs" / "fake-claude.md"


def test_the_docs_table_every_fault_and_knob() -> None:
    """docs/fake-claude.md lists exactly the faults and knobs the fake accepts."""
    text = DOC.read_text()
    faults_table = text.split("### Faults", 1)[1].split("### Knobs", 1)[0]
    knobs_table = text.split("### Knobs", 1)[1].split("\n## ", 1)[0]
    row = re.compile(r"^\| `([a-z_]+)` \|", re.M)
    assert set(row.findall(faults_table)) == FAULTS
    assert set(row.findall(knobs_table)) == KNOB_NAMES


def documented_faults() -> dict[str, tuple[str, str]]:
    """fault -> (prompt route cell, anthropic route cell) of the docs' fault table."""
    table = DOC.read_text().split("### Faults", 1)[1].split("### Knobs", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0] != "`fault`":
            rows[cells[0].strip("`")] = (cells[2], cells[3])
    return rows


async def test_faults_reach_clients_as_the_docs_say() -> None:
    """Each fault through the sidecar, on both Claude routes: the status the table names,
    or for stream faults a 200 whose stream ends in an error event."""
    config = {"claude": {"base_url": "builtin:fake", "max_retries": 1,
                         "retry_base_seconds": 0.01, "idle_timeout_seconds": 1,
                         "fake": {"tokens_per_second": 0, "time_to_first_token_ms": 0}}}  # fmt: skip
    rows = documented_faults()
    assert set(rows) == FAULTS
    async with running_sidecar(config) as sidecar, aiohttp.ClientSession() as http:
        for fault, cells in rows.items():
            text = f"hi [[fake fault={fault} tokens=6 delay_ms=50]]"
            prompt = http.post(sidecar.url + "/api/stream-response", json={"prompt": text})
            messages = http.post(
                sidecar.url + "/v1/messages",
                json={"model": "claude-sonnet-5-5", "max_tokens": 16, "stream": True,
                      "messages": [{"role": "user", "content": text}]},
            )  # fmt: skip
            for request, cell in zip((prompt, messages), cells, strict=True):
                async with request as response:
                    body = await response.read()
                status = re.match(r"(\d{3})\b", cell)
                if status is not None:
                    assert response.status == int(status[1]), (fault, cell)
                elif fault == "slow_headers":
                    assert response.status == 200
                    assert b"error" not in body, fault
                else:  # a stream that breaks: 200, then an error event
                    assert response.status == 200, (fault, cell)
                    assert b'"error"' in body.rsplit(b"\n\n", 2)[-2], (fault, body[-200:])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
@pytest.mark.parametrize("knob", ["ttft_ms", "tps", "delay_ms", "retry_after"])
async def test_a_number_knob_that_is_not_finite_is_a_400_naming_it(
    fake: FakeServer, knob: str, value: str
) -> None:
    """`nan` and `inf` parse as floats; as a pause or a rate they would reach the event
    loop's timers (a 500, or a stream that breaks after `message_start`)."""
    body = {"model": "claude-sonnet-5-5", "max_tokens": 8, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    headers = {f"x-fake-{knob}": value, "x-fake-fault": "slow_headers"}
    # A bound on the wait, not on the answer: a stream broken by such a pause never ends.
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(fake.url + "/v1/messages", json=body, headers=headers) as response,
    ):
        answer = await response.json()
    assert response.status == 400
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["message"].startswith(f"{knob}: must be a finite number >= 0")
