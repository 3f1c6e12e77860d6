"""The rejection catalogue: one table of reasons, the only way to build a Rejection."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest

from sidecar import listener
from sidecar.errors import REASONS, Rejection, reject, short_error_type
from sidecar.quotas.stores.base import LimitedBy

ROOT = Path(__file__).resolve().parent.parent
SIDECAR = ROOT / "sidecar"

# Calls whose argument at this position (or `reason=`) is a rejection reason.
_REASON_ARGS = {"reject": 0, "unauthorized": 0, "forbidden": 0, "PathRefused": 0, "_overloaded": 1}


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def _reasons_named_in_code() -> set[str]:
    found: set[str] = set()
    for path in SIDECAR.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                args: list[ast.expr] = [k.value for k in node.keywords if k.arg == "reason"]
                index = _REASON_ARGS.get(_name(node.func))
                if index is not None and len(node.args) > index:
                    args.append(node.args[index])
                found |= {
                    a.value
                    for a in args
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)
                }
            elif (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id == "_JWT_ERRORS"
                and node.value is not None
            ):  # (exception, reason, message) triples
                found |= {
                    c.value
                    for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant)
                    and isinstance(c.value, str)
                    and c.value.startswith("auth_")
                }
    return found


def test_reject_builds_the_catalogue_entry() -> None:
    rejection = reject("screening_rule", "no", headers={"X": "1"})
    assert isinstance(rejection, Rejection)
    assert (rejection.status, rejection.error_type, rejection.short_type) == (
        400,
        "invalid_request_error",
        "prompt_rejected",
    )
    assert (rejection.reason, rejection.message, rejection.headers) == (
        "screening_rule",
        "no",
        {"X": "1"},
    )


def test_only_a_final_5xx_tells_clients_not_to_retry() -> None:
    """A 5xx the sidecar does not retry says so (the SDKs retry every other 5xx); the
    rest leave retrying to the status and `retry-after`."""
    final = {name for name, entry in REASONS.items() if entry.final}
    assert final == {
        "upstream_credential_refused",
        "upstream_bad_status",
        "upstream_bad_encoding",
        "upstream_too_large",
    }
    for name in final:
        refused = reject(name, "x", headers={"X": "1"})
        assert refused.status >= 500
        assert refused.headers == {"X": "1", "x-should-retry": "false"}
    assert "x-should-retry" not in reject("upstream_lost", "x").headers


def test_reject_of_an_unknown_reason_fails() -> None:
    with pytest.raises(KeyError, match="not in the catalogue"):
        reject("no_such_reason", "whatever")


def test_status_is_passed_only_where_the_reason_has_none() -> None:
    with pytest.raises(ValueError, match="status is 404"):
        reject("not_found", "x", status=410)
    with pytest.raises(ValueError, match="status is passed in"):
        reject("app_refused_websocket", "x")
    refused = reject("app_refused_websocket", "x", status=403)
    assert (refused.status, refused.error_type) == (403, "permission_error")
    assert reject("app_refused_websocket", "x", status=503).error_type == "api_error"
    assert reject("app_refused_websocket", "x", status=418).error_type == "invalid_request_error"


def test_every_reason_the_code_names_is_in_the_catalogue() -> None:
    named = _reasons_named_in_code()
    assert {"auth_expired", "path_climbs", "queue_full", "screening_rule"} <= named  # scan works
    assert named - REASONS.keys() == set()


def test_computed_reasons_are_in_the_catalogue() -> None:
    quota = {f"quota_{limit}" for limit in get_args(LimitedBy) if limit != "too_large"}
    assert quota <= REASONS.keys()
    parser = (
        listener.HEAD_TOO_LARGE,
        listener.BAD_REQUEST_LINE,
        listener.BAD_HEADER,
        listener.BAD_FRAMING,
        listener.MALFORMED,
        listener.HEADER_TIMEOUT,
        listener.UNSUPPORTED_CODING,
    )
    assert {reason for reason, _ in parser} >= listener.PARSER_REASONS
    for reason, status in parser:
        assert REASONS[reason].status == status


def test_only_the_catalogue_builds_a_rejection() -> None:
    for path in SIDECAR.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                assert _name(node.func) != "Rejection", f"{path}:{node.lineno}"


def test_the_catalogue_is_what_the_security_docs_list() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    section = re.search(r"<!-- rejection-reasons -->(.*)<!-- /rejection-reasons -->", text, re.S)
    assert section is not None
    listed = set(re.findall(r"`([a-z][a-z0-9_]*)`", re.sub(r"\([^)]*\)", "", section[1])))
    assert listed == set(REASONS)


def test_the_catalogue_is_what_the_observability_table_lists() -> None:
    """`sidecar.rejection.reason`'s bounded set, as dashboards and alerts are written from:
    every reason the catalogue has, and no reason the metric never carries."""
    text = (ROOT / "docs" / "observability.md").read_text()
    start = text.index("| source | reasons |")
    table = text[start : text.index("\n\n", start)]
    # Each row's reasons, without the remarks in parentheses (which name routes and modes).
    rows = [line.split(" | ", 1)[1] for line in table.splitlines()[2:]]
    reasons = re.sub(r"\([^()]*(\([^()]*\)[^()]*)*\)", "", " ".join(rows))
    listed = set(re.findall(r"`([a-z][a-z0-9_]*)`", reasons))
    assert listed == set(REASONS), (sorted(set(REASONS) - listed), sorted(listed - set(REASONS)))


def test_a_request_no_route_takes_is_a_catalogue_rejection() -> None:
    """The pipeline's own 404 for an unrouted path is the catalogue's `no_route`."""
    assert "no_route" in _reasons_named_in_code()
    assert (REASONS["no_route"].status, REASONS["no_route"].error_type) == (404, "not_found_error")


def _documented_statuses() -> dict[str, int | None]:
    """Reason → status as docs/security.md's list states it.

    A bullet's heading status (`authentication (401):`) holds for all its reasons;
    otherwise a `(NNN ...)` after reasons holds for the reasons since the last one,
    and `(the app's own status)` says the status is passed through.
    """
    text = (ROOT / "docs" / "security.md").read_text()
    section = re.search(r"<!-- rejection-reasons -->(.*)<!-- /rejection-reasons -->", text, re.S)
    assert section is not None
    statuses: dict[str, int | None] = {}
    for bullet in section[1].split("\n- ")[1:]:
        heading, _, body = bullet.partition(":")
        shared = re.search(r"\((\d{3})\)", heading)
        pending: list[str] = []
        for name, remark in re.findall(
            r"`([a-z][a-z0-9_]*)`|\(([^()]*(?:\([^()]*\)[^()]*)*)\)", body
        ):
            if name:
                pending.append(name)
                continue
            status = re.match(r"(\d{3})\b", remark) or re.search(r"status (\d{3})", remark)
            if status is not None or "own status" in remark:
                for reason in pending:
                    statuses[reason] = int(status[1]) if status is not None else None
                pending = []
        for reason in pending:
            if shared is not None:
                statuses[reason] = int(shared[1])
    return statuses


def test_the_security_docs_give_each_reason_its_catalogue_status() -> None:
    documented = _documented_statuses()
    assert set(documented) == set(REASONS), sorted(set(REASONS) ^ set(documented))
    wrong = {
        reason: (status, REASONS[reason].status)
        for reason, status in documented.items()
        if status != REASONS[reason].status
    }
    assert not wrong, wrong


def test_the_security_docs_error_shapes_table_names_the_prompt_route_types() -> None:
    """Each row's prompt/app `type` is what the prompt route renders for its Anthropic type."""
    text = (ROOT / "docs" / "security.md").read_text()
    start = text.index("| status | Anthropic `type` | prompt/app `type` | when |")
    rows = text[start : text.index("\n\n", start)].splitlines()[2:]
    codes = {reason.code for reason in REASONS.values() if reason.code}
    for row in rows:
        status, anthropic, short, _ = (cell.strip(" `") for cell in row.strip("|").split("|"))
        if short in codes:  # a reason's own code (`prompt_rejected`)
            assert any(r.code == short and r.error_type == anthropic for r in REASONS.values())
        else:
            assert short_error_type(anthropic) == short, row
        assert any(r.status == int(status) and r.error_type == anthropic for r in REASONS.values())
