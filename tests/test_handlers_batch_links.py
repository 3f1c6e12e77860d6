"""A batch's `results_url` rewritten under the sidecar's address, nothing else touched."""

from __future__ import annotations

import json

import pytest

from sidecar.handlers.batch_links import is_batch_answer, with_local_results

BASE = "https://sidecar.example/claude"
URL = "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results"
LOCAL = BASE + "/v1/messages/batches/msgbatch_1/results"


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/v1/messages/batches", True), ("/v1/messages/batches/msgbatch_1", True),
     ("/v1/messages/batches/msgbatch_1/cancel", True),
     ("/v1/messages/batches/msgbatch_1/results", False), ("/v1/messages/batchesx", False),
     ("/v1/models", False)],
)  # fmt: skip
def test_which_answers_name_results(path: str, expected: bool) -> None:
    assert is_batch_answer(path) is expected


def test_a_batch_and_each_batch_of_a_page_point_at_the_sidecar() -> None:
    batch = {"id": "msgbatch_1", "type": "message_batch", "results_url": URL, "é": "ü"}
    assert json.loads(with_local_results(json.dumps(batch).encode(), BASE)) == {
        **batch,
        "results_url": LOCAL,
    }
    page = {"data": [batch, {**batch, "results_url": None}], "has_more": False}
    rewritten = json.loads(with_local_results(json.dumps(page).encode(), BASE))
    assert [b["results_url"] for b in rewritten["data"]] == [LOCAL, None]


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"[1, 2]", b'{"data": "x"}', b'{"data": [1, {"results_url": 5}]}',
     b'{"type": "message_batch", "results_url": null}',
     b'{"type": "message_batch_deleted", "id": "msgbatch_1"}',
     b'{"type": "message_batch", "results_url": "https://elsewhere.example/file"}'],
)  # fmt: skip
def test_an_answer_with_nothing_to_point_elsewhere_is_relayed_byte_for_byte(
    payload: bytes,
) -> None:
    assert with_local_results(payload, BASE) is payload
