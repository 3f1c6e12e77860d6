"""An OTLP/HTTP sink for the benchmark: accepts every export (200, empty body) and drops it.

python bench/otlp_sink.py --port 4318
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")


async def alive(request: web.Request) -> web.Response:
    return web.Response(text="ok")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/", alive)
    app.router.add_post("/{tail:.*}", accept)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)
