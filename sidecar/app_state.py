"""Typed application state keys (one place for what lives on the aiohttp apps)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from sidecar.runtime import RuntimeHolder

# Stored once at build time; the holder's `current` runtime changes on reload.
RUNTIMES: web.AppKey[RuntimeHolder] = web.AppKey("runtimes")
