"""The `requests` session the OTLP/HTTP span exporter posts with: the environment read once.

For every request, `requests` merges the environment into the call's settings: the
proxy variables for the URL (all of `os.environ` scanned twice, then the no-proxy
list matched) and `REQUESTS_CA_BUNDLE` / `CURL_CA_BUNDLE`. That is ~100 µs per export
here (more in a larger environment, a pod's service variables), on the batch
processor's thread, holding the GIL the event loop needs. The exporter posts every
batch to one URL with no per-call settings, so `ExportSession` asks `requests` once per
URL and reuses its answer: the same proxies, CA bundle, stream and certificate, as of
the first export (the SDK reads its own `OTEL_EXPORTER_OTLP_*` once too, when the
exporter is built). Everything else (the adapter and its connection pool, headers,
netrc, cookies, timeouts, redirects) is `requests`' own, and the SDK's transport and
client around it (retries with backoff, compression, headers, TLS files) are
untouched: the session is the SDK exporter's public `session` argument.

One difference from `requests`: the CA file the exporter set on the session (from
`OTEL_EXPORTER_OTLP_CERTIFICATE`, or the signal's own variable) is the one used.
`requests` lets `REQUESTS_CA_BUNDLE` / `CURL_CA_BUNDLE` replace a session's `verify`
(a per-request merge of the environment over the session's settings), so the SDK's own
session would verify the collector against the system's bundle and refuse a collector
with a private CA whatever `OTEL_EXPORTER_OTLP_CERTIFICATE` says; those variables still
apply where no OTLP certificate is set.

The metric exporter posts through such a session too. A credential provider
(`OTEL_PYTHON_EXPORTER_OTLP_HTTP_*CREDENTIAL_PROVIDER`) makes the session itself, so
none is passed then (`export_session`).
"""

from __future__ import annotations

import os
from typing import Any, Final

import requests
from opentelemetry.sdk.environment_variables import (
    _OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER,
    _OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER,
    _OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER,
)

# The variables the SDK's HTTP span exporter loads a session from (`_load_session_from_envvar`).
CREDENTIAL_PROVIDERS: Final = (
    _OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER,
    _OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER,
)
# ... and the HTTP metric exporter.
METRICS_CREDENTIAL_PROVIDERS: Final = (
    _OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER,
    _OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER,
)


class ExportSession(requests.Session):
    """A `requests.Session` that merges the environment into a URL's settings once, and
    keeps its own CA file (`verify`) over the environment's bundle."""

    def __init__(self) -> None:
        super().__init__()
        self._settings: dict[str, dict[str, Any]] = {}

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        """`requests`' merge for `url`, computed on the first call without per-call settings."""
        if proxies or stream is not None or verify is not None or cert is not None:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings = self._settings.get(url)
        if settings is None:
            settings = super().merge_environment_settings(url, {}, None, None, None)
            if self.verify is not True:  # the exporter's CA file, not REQUESTS_CA_BUNDLE
                settings["verify"] = self.verify
            self._settings[url] = settings
        # A copy per call: what `requests` returns is the caller's to change.
        return {**settings, "proxies": dict(settings["proxies"])}


def export_session(signal: str = "TRACES") -> ExportSession | None:
    """The session for a new OTLP/HTTP exporter of `signal` (`TRACES` / `METRICS`); None
    when a credential provider is set for it."""
    providers = METRICS_CREDENTIAL_PROVIDERS if signal == "METRICS" else CREDENTIAL_PROVIDERS
    if any(os.environ.get(name) for name in providers):
        return None
    return ExportSession()
