"""The fake's Models API: listed, paged and retrieved as the real API, with the key checked."""

from __future__ import annotations

import anthropic
import pytest

from sidecar.fake_claude import FakeServer, FakeSettings, running_fake_claude
from sidecar.fake_claude.models import MODELS, ModelQueryError, model_page
from tests.support.sidecars import running_sidecar

IDS = [entry["id"] for entry in MODELS]


async def test_the_sdk_lists_and_retrieves_models_from_the_fake(fake: FakeServer) -> None:
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="unused", max_retries=0)
    page = await client.models.list()
    assert [model.id for model in page.data] == IDS
    assert all(model.type == "model" and model.display_name for model in page.data)
    assert page.has_more is False
    every = [model.id async for model in await client.models.list(limit=1)]  # SDK paging
    assert every == IDS
    model = await client.models.retrieve("claude-sonnet-5-5")
    assert (model.id, model.display_name) == ("claude-sonnet-5-5", "Claude Sonnet 5.5")
    assert model.created_at.year == 2026
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("claude-nonexistent")
    with pytest.raises(anthropic.BadRequestError):
        await client.models.list(limit=0)
    assert fake.state.requests[-1].path == "/v1/models"


async def test_the_fake_checks_the_key_on_models_too() -> None:
    async with running_fake_claude(FakeSettings(api_key="sk-right")) as fake:
        wrong = anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            await wrong.models.list()
        right = anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-right", max_retries=0)
        assert len((await right.models.list()).data) == len(IDS)


async def test_models_through_the_embedded_default() -> None:
    """A tool that lists models at start works against `sidecar run` with no config."""
    async with running_sidecar({"claude": {"base_url": "builtin:fake"}}) as sidecar:
        client = anthropic.AsyncAnthropic(base_url=sidecar.url, api_key="unused", max_retries=0)
        page = await client.models.list()
        assert [model.id for model in page.data] == IDS
        assert (await client.models.retrieve(IDS[0])).id == IDS[0]


def test_paging_follows_the_api() -> None:
    first = model_page({"limit": "2"})
    assert ([m["id"] for m in first["data"]], first["has_more"]) == (IDS[:2], True)
    assert (first["first_id"], first["last_id"]) == (IDS[0], IDS[1])
    rest = model_page({"after_id": IDS[1]})
    assert ([m["id"] for m in rest["data"]], rest["has_more"]) == (IDS[2:], False)
    before = model_page({"before_id": IDS[2], "limit": "1"})
    assert ([m["id"] for m in before["data"]], before["has_more"]) == ([IDS[1]], True)
    configured = model_page({}, extra="claude-custom-1")
    assert configured["data"][0]["id"] == "claude-custom-1"
    for bad in ({"limit": "x"}, {"limit": "1001"}, {"after_id": "nope"},
                {"after_id": IDS[0], "before_id": IDS[1]}):  # fmt: skip
        with pytest.raises(ModelQueryError):
            model_page(bad)
