"""Helpers the tests share, one concern per module (test modules never import each other).

- `sidecars`: the sidecar in-process on free ports, or as a `sidecar run` process.
- `apps`: serve an aiohttp app on a free port; the stock upstream app for the app proxy.
- `sockets`: free ports, slow raw clients, small send buffers, HTTP/1.1 chunk framing.
- `scripted_claude`: a Claude that answers with scripted raw bytes (cut bodies, bad framing).
- `sdk`: the official Python SDK as a client.
- `waiting`: bounded polling for state another task or process changes.
- `otel`: a Telemetry whose spans and metrics are read back in memory.
- `policy`: JWTs, keys, API keys and a local JWKS issuer.
- `certs`: self-signed TLS certificates made at test time.
- `redis_server`: a real `redis-server` on a free port.
- `promtool`: Prometheus's rule checker for the shipped alerting rules, or a skip.
- `resume`: a proxy that cuts or counts client connections, raw SSE requests.
- `cache`: configs and requests shared by the response cache's tests.
- `browser`, `webkit`: the three browser engines (Chromium, Firefox, WebKit) driving a page.
- `costs`: function calls and memory per call, per event and per open stream (no stopwatch).
"""
