"""Typed application state keys (one place for what lives on the aiohttp apps)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from sidecar.runtime import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
