"""Identity and forwarding headers as a class: every spelling of every name in the tables."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from sidecar.config import IdentityHeaders
from sidecar.identity import Identity
from sidecar.policy.identity_headers import (
    FORWARDING_HEADERS,
    is_forwarding_header,
    keep_read_credential,
    strip_and_set_identity,
    strip_credentials,
    strip_forwarding_claims,
)

NAMES = [*sorted(FORWARDING_HEADERS), "x-forwarded-whatever", "x-forwarded-client-cert"]


@st.composite
def spelling(draw: st.DrawFn, name: str) -> str:
    """`name` with any case per letter and any `-` written as `_` or `.` (a CGI/FastCGI
    variable's name has `_` for either, under PHP and lighttpd)."""
    chars = []
    for char in name:
        if char == "-":
            chars.append(draw(st.sampled_from("-_.")))
        else:
            chars.append(char.upper() if draw(st.booleans()) else char)
    return "".join(chars)


def spellings() -> st.SearchStrategy[str]:
    return st.sampled_from(NAMES).flatmap(spelling)


@given(st.lists(spellings(), min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_an_untrusted_peer_loses_every_spelling(names: list[str]) -> None:
    headers = CIMultiDict[str]((name, "203.0.113.66") for name in names)
    headers.add("X-Kept", "yes")
    strip_forwarding_claims(headers, trusted=False)
    assert list(headers.items()) == [("X-Kept", "yes")]


@given(st.lists(spellings(), min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_a_trusted_proxy_keeps_dash_spellings_only(names: list[str]) -> None:
    headers = CIMultiDict[str]((name, "203.0.113.66") for name in names)
    strip_forwarding_claims(headers, trusted=True)
    dashed = sorted(n for n in names if "_" not in n and "." not in n)
    assert sorted(k for k, _ in headers.items()) == dashed


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_.", min_size=1, max_size=20))
def test_other_headers_are_not_forwarding_headers(name: str) -> None:
    canonical = name.lower().replace("_", "-").replace(".", "-").removeprefix("http-")
    expected = canonical in FORWARDING_HEADERS or canonical.startswith("x-forwarded-")
    assert is_forwarding_header(name) is expected


@given(
    spelling("x-sidecar-user"),
    spelling("x-sidecar-tenant"),
    spelling("x-sidecar-api-key-name"),
    spelling("x-sidecar-issuer"),
)
@settings(max_examples=200, deadline=None)
def test_identity_headers_are_replaced_in_every_spelling(
    user: str, tenant: str, key: str, issuer: str
) -> None:
    sent = {user: "mallory", tenant: "evil", key: "stolen", issuer: "https://evil", "X-Other": "1"}
    headers = CIMultiDict[str](sent)
    strip_and_set_identity(headers, Identity(method="jwt", user="alice"), IdentityHeaders())
    assert dict(headers) == {"X-Other": "1", "X-Sidecar-User": "alice"}


@pytest.mark.parametrize(
    ("iss", "expected"),
    [
        ("https://issuer.test", "https://issuer.test"),
        ("", None),
        (42, None),
        ("https://a\r\nX-Evil: 1", None),
        ("https://" + "a" * 600, None),
    ],
)
def test_only_a_verified_iss_that_is_a_name_reaches_the_app(
    iss: object, expected: str | None
) -> None:
    headers = CIMultiDict[str]()
    identity = Identity(method="jwt", user="alice", claims={"iss": iss})
    strip_and_set_identity(headers, identity, IdentityHeaders())
    assert headers.get("X-Sidecar-Issuer") == expected


@pytest.mark.parametrize(
    "name", ["X-Original-URL", "X-Rewrite-URL", "X-Original-URI", "X-Envoy-Original-Path"]
)
def test_every_header_naming_the_path_asked_for_is_a_forwarding_header(name: str) -> None:
    """Frameworks and proxies read these as the request's real path: from a client, one
    would route the app's request elsewhere than the path the sidecar's policy saw."""
    assert is_forwarding_header(name)


@pytest.mark.parametrize("name", ["X.Sidecar.User", "x.sidecar-user", "X-Sidecar.User"])
def test_a_dotted_spelling_of_an_identity_header_is_removed(name: str) -> None:
    """PHP and lighttpd's CGI/FastCGI name `X.Sidecar.User` `HTTP_X_SIDECAR_USER`: the
    verified header's own variable, which a client's copy must never fill."""
    headers = CIMultiDict[str]({name: "root", "X-Other.Header": "kept"})
    strip_and_set_identity(headers, Identity(method="jwt", user="alice"), IdentityHeaders())
    assert dict(headers) == {"X-Other.Header": "kept", "X-Sidecar-User": "alice"}


def test_a_dotted_or_underscored_api_key_never_reaches_the_app() -> None:
    """Auth reads `x-api-key` only; a `.` or `_` spelling is never checked, yet a CGI/FastCGI
    app reads it as `HTTP_X_API_KEY`: it goes, whether credentials are forwarded or not."""
    sent = {"X.Api.Key": "unchecked", "x_api.key": "unchecked", "x-api-key": "checked"}
    kept = CIMultiDict[str](sent)
    keep_read_credential(kept)
    assert dict(kept) == {"x-api-key": "checked"}
    withheld = CIMultiDict[str](sent)
    strip_credentials(withheld)
    assert dict(withheld) == {}


@pytest.mark.parametrize(
    "name",
    [
        # What Java's widespread getClientIp helpers read, in their order.
        "x-forwarded-for", "Proxy-Client-IP", "WL-Proxy-Client-IP", "HTTP_CLIENT_IP",
        "HTTP_X_FORWARDED_FOR", "X-Real-IP",
        # Hosting platforms' and CDNs' client address headers.
        "Fly-Client-IP", "X-Azure-ClientIP", "X-Azure-SocketIP", "X-AppEngine-User-IP",
        "X-Vercel-Forwarded-For", "X-NF-Client-Connection-IP", "CloudFront-Viewer-Address",
        # ASP.NET Core's copies of the values its ForwardedHeaders middleware replaced.
        "X-Original-For", "X-Original-Proto", "X-Original-Prefix", "X-Original-Host",
        "X-Custom-IP-Authorization",
    ],
)  # fmt: skip
def test_client_address_headers_apps_read_are_forwarding_headers(name: str) -> None:
    """A header some framework, helper or platform reads as the client's address (or as
    the scheme, host or prefix it was reached by): from a client it is a forged claim."""
    assert is_forwarding_header(name)
    assert is_forwarding_header(name.replace("-", "_"))


@pytest.mark.parametrize(
    "name", ["HTTP-Referer", "HTTP2-Settings", "Http-Version-X", "X-Http-Client"]
)
def test_other_http_prefixed_headers_are_kept(name: str) -> None:
    assert not is_forwarding_header(name)
