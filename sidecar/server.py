"""Listeners and lifecycle: start both listeners, reload on SIGHUP, drain on SIGTERM/SIGINT.

Shutdown order: reloads stop → `/readyz` turns 503 → the traffic listener stops
accepting (a request on a kept-alive connection is answered with `Connection: close`)
→ in-flight requests (on every runtime, including ones a reload replaced)
get `server.shutdown_grace_seconds` to finish → streams still live get a final
`shutting_down` error event → connections close → the admin listener closes.
The whole exit is bounded by the grace plus `SHUTDOWN_MARGIN`: a reload under way is
waited for within the grace, and every step after it (final events, closing the
listeners and the runtimes' resources: stores, pools, the last span and metric exports;
tasks still running) shares the margin; what is stuck past its share is left behind. A
watchdog armed when the drain begins ends the process at the bound even if something
no step can cancel (a thread in a blocking export) would hold the interpreter's exit.
A second SIGTERM/SIGINT during the drain ends the grace there (`shutdown hurried`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from aiohttp import web, web_protocol

from sidecar.admin import build_admin_app
from sidecar.app import build_traffic
from sidecar.config import Config, redact_url, split_host_port
from sidecar.config.server import load_certificate
from sidecar.listener import TrafficRunner, TrafficServerRunner
from sidecar.pipeline import UNMATCHED, hsts
from sidecar.reload import Reloader
from sidecar.runtime import Runtime, RuntimeHolder, finish_within
from sidecar.telemetry import Telemetry
from sidecar.telemetry.providers import TelemetryEnvironmentError

log = logging.getLogger("sidecar.server")
# The exit code of an `OTEL_*` value the SDK refuses: that of a config that is not valid.
EXIT_BAD_ENVIRONMENT: Final = 2
# The exit code when a listener cannot bind its address (in use, not permitted, not local).
EXIT_CANNOT_LISTEN: Final = 3
# Seconds past `server.shutdown_grace_seconds` the whole exit may take (the Helm chart's
# terminationGracePeriodSeconds leaves a second more). Its shares, in order:
SHUTDOWN_MARGIN: Final = 4.0
_FINAL_EVENT_GRACE = 1.0  # final events reaching clients after streams are stopped
# Then the listeners and the runtimes' resources (stores flushing the final events, pools,
# the last telemetry exports) close together until this long before the bound ...
_AFTER_CLOSE = 1.0
_LEFTOVER_GRACE = 0.5  # ... then tasks still running get this long once cancelled.
# The last telemetry exports end this long before the closes' share does (`Telemetry.close_by`).
_EXPORT_SLACK = 0.25
_RELOAD_STOP_GRACE = 5.0  # seconds (within the grace) a reload under way gets to finish
# The CORS section's `Vary` on refusals made before any route (no CORS header in them).
_VARY_ORIGIN: Final[Mapping[str, str]] = {"Vary": "Origin"}


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    tls = config.server.tls
    if tls.cert_file is None or tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    problem = load_certificate(context, tls)
    if problem is not None:  # validated at load: only a file changed since can get here
        raise ssl.SSLError(problem)
    return context


class ListenError(OSError):
    """A listener could not bind its configured address; `str()` is the one line to print."""

    def __init__(self, address: str, cause: OSError) -> None:
        super().__init__(cause.errno, _listen_problem(address, cause))
        self.address = address

    def __str__(self) -> str:
        return str(self.strerror)


def _listen_problem(address: str, cause: OSError) -> str:
    if cause.errno == errno.EADDRINUSE:
        return f"address {address} already in use"
    if isinstance(cause, socket.gaierror):  # a host name that does not resolve: its errno
        reason = str(cause.strerror or cause)  # is a resolver code no `os.strerror` knows
    else:
        reason = os.strerror(cause.errno) if cause.errno else str(cause)
    return f"cannot listen on {address}: {reason.lower()}"


async def _bind(site: web.TCPSite, address: str) -> None:
    """Start `site`; an address it cannot bind is a `ListenError` naming `address`."""
    try:
        await site.start()
    except ListenError:
        raise
    except OSError as exc:
        raise ListenError(address, exc) from exc


def _port_of(runner: web.BaseRunner) -> int:
    address: Any = runner.addresses[0]
    return int(address[1])


class SidecarServer:
    """The two listeners of one config; `start` binds, `reload` swaps, `shutdown` drains.

    `config_path` is the file reloads read (default: `$SIDECAR_CONFIG`, else the embedded
    default); `env` the environment for its `${VAR}`s (default: the process's).
    """

    def __init__(
        self,
        config: Config,
        *,
        telemetry: Telemetry | None = None,
        config_path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config  # as started: listeners and TLS on/off do not change on reload
        traffic = build_traffic(config, telemetry)
        self._runtimes = traffic.runtimes
        self.reloader = Reloader(self._runtimes, config_path, env=env)
        # handler_cancellation: a client that goes away cancels its stream at once.
        # auto_decompress off: the app route forwards bodies exactly as received; routes
        # that read a body decode it themselves, within the body limit.
        self._traffic = TrafficServerRunner(
            traffic.handle,
            request_factory=traffic.make_request,
            on_startup=traffic.open,
            on_cleanup=traffic.close,
            on_reject=self._rejected,
            header_timeout=self._header_timeout,
            refusal_headers=self._refusal_headers,
            stall_timeout=self._stall_timeout,
            longest_stall=self._longest_stall,
            idle_timeout=self._idle_timeout,
            handler_cancellation=True,
            auto_decompress=False,
            access_log=None,
            shutdown_timeout=1.0,
        )
        # The admin listener refuses malformed requests and slow heads the same way.
        self._admin = TrafficRunner(
            build_admin_app(self._runtimes, config),
            on_reject=self._rejected,
            header_timeout=self._header_timeout,
            stall_timeout=self._stall_timeout,
            longest_stall=self._longest_stall,
            idle_timeout=self._idle_timeout,
            access_log=None,
            shutdown_timeout=1.0,
        )
        self._sites: list[web.TCPSite] = []
        self.port = 0
        self.admin_port = 0

    def _rejected(self, reason: str, status: int) -> None:
        """A request the listener refused before routing (parser error, slow head)."""
        self._runtimes.current.telemetry.rejected(reason, UNMATCHED, status, "", warn=True)

    def _refusal_headers(self) -> Mapping[str, str]:
        """`Vary: Origin` and HSTS on the traffic listener's own refusals (431, 400, 408,
        501) too, as on every answer of its routes."""
        tls = self._runtimes.current.config.server.tls
        if self.config.server.tls.enabled and tls.hsts:
            return {"Vary": "Origin", "Strict-Transport-Security": hsts(tls.hsts_max_age_seconds)}
        return _VARY_ORIGIN

    def _header_timeout(self) -> float:
        return self._runtimes.current.config.server.header_read_timeout_seconds

    def _stall_timeout(self) -> float:
        return self._runtimes.current.config.claude.client_stall_timeout_seconds

    def _idle_timeout(self) -> float:
        return self._runtimes.current.config.server.keepalive_timeout_seconds

    def _longest_stall(self) -> float:
        """The longest stall any route allows (Claude's, the app's `send_timeout_seconds`):
        the listener has the kernel keep bytes a client accepts none of for twice it, so no
        route's own watch is beaten to it."""
        config = self._runtimes.current.config
        app = config.app.send_timeout_seconds if config.app is not None else 0.0
        return max(config.claude.client_stall_timeout_seconds, app)

    @property
    def runtime(self) -> Runtime:
        """The runtime new requests get (replaced by each successful reload)."""
        return self._runtimes.current

    @property
    def runtimes(self) -> RuntimeHolder:
        return self._runtimes

    @property
    def scheme(self) -> str:
        return "https" if self.config.server.tls.enabled else "http"

    @property
    def url(self) -> str:
        host, _ = split_host_port(self.config.server.listen)
        return f"{self.scheme}://{_client_host(host)}:{self.port}"

    @property
    def admin_url(self) -> str:
        host, _ = split_host_port(self.config.server.admin_listen)
        return f"http://{_client_host(host)}:{self.admin_port}"

    def connections(self, *, admin: bool = False) -> list[web_protocol.RequestHandler]:
        """The traffic listener's open connections (the admin listener's with `admin`)."""
        server = (self._admin if admin else self._traffic).server
        return list(server.connections) if server is not None else []

    def traffic_sockets(self) -> list[socket.socket]:
        """The traffic listener's bound sockets (accepted connections inherit their options)."""
        # aiohttp keeps a site's asyncio server private; `runner.addresses` reads it the same way.
        return [
            sock
            for site in self._sites
            if site._server is not None  # started
            for sock in getattr(site._server, "sockets", ())
        ]

    async def start(self) -> None:
        """Bind both listeners (port 0 picks a free port; see `port` / `admin_port`).

        On failure (a port in use, a bad certificate) everything opened so far is closed
        again before the error propagates: sessions, stores, telemetry, a bound listener.
        """
        try:
            await self._start()
        except BaseException:
            await self._traffic.cleanup()
            await self._admin.cleanup()
            raise

    async def _start(self) -> None:
        await self._traffic.setup()
        await self._admin.setup()
        host, port = split_host_port(self.config.server.listen)
        self.reloader.tls = _ssl_context(self.config)  # reloads load new certs into it
        site = web.TCPSite(self._traffic, host, port, ssl_context=self.reloader.tls, backlog=1024)
        await _bind(site, self.config.server.listen)
        self._sites.append(site)
        admin_host, admin_port = split_host_port(self.config.server.admin_listen)
        await _bind(
            web.TCPSite(self._admin, admin_host, admin_port), self.config.server.admin_listen
        )
        self.port = _port_of(self._traffic)
        self.admin_port = _port_of(self._admin)
        self.reloader.start()

    async def reload(self) -> bool:
        """Reload the config file now (as SIGHUP does); False if the old config kept serving."""
        return await self.reloader.reload("api")

    def shutdown_grace(self, grace: float | None = None) -> float:
        """The drain's grace: `grace`, else the current config's `shutdown_grace_seconds`."""
        return (
            self._runtimes.current.config.server.shutdown_grace_seconds if grace is None else grace
        )

    async def shutdown(
        self, grace: float | None = None, hurry: asyncio.Event | None = None
    ) -> None:
        """Drain: not ready, stop accepting, wait for in-flight work, end what is left.

        Returns about `SHUTDOWN_MARGIN - _AFTER_CLOSE` s after the grace at most (the grace
        counted from this call, a reload under way waited for within it). `hurry` set
        (a second SIGTERM/SIGINT) ends the grace there: what is still in flight gets its
        final event at once, and the rest of the exit has `SHUTDOWN_MARGIN` from then.
        """
        loop = asyncio.get_running_loop()
        grace_over = loop.time() + self.shutdown_grace(grace)
        bound = grace_over + SHUTDOWN_MARGIN
        reload_wait = min(_RELOAD_STOP_GRACE, max(grace_over - loop.time(), 0.0))
        if not await finish_within(self.reloader.close(), reload_wait):
            log.warning("shutdown: a reload did not finish", extra={"seconds": reload_wait})
        runtimes = self._runtimes
        runtimes.draining = True
        for site in self._sites:
            await site.stop()
        self._sites.clear()
        idle = await _idle_unless_hurried(runtimes, max(grace_over - loop.time(), 0.0), hurry)
        if not idle:
            stopped = runtimes.stop_all_streams()
            if hurry is not None and hurry.is_set():
                bound = min(bound, loop.time() + SHUTDOWN_MARGIN)
                log.warning("shutdown hurried", extra={"streams_stopped": stopped})
            else:
                log.warning("shutdown grace over", extra={"streams_stopped": stopped})
            await runtimes.wait_idle(_FINAL_EVENT_GRACE)
        close_by = bound - _AFTER_CLOSE
        # The last telemetry exports are done or given up a moment before the closes'
        # share ends (blocking, on a thread: its close then returns in time).
        exports_by = time.monotonic() + max(close_by - _EXPORT_SLACK - loop.time(), 0.0)
        for runtime in runtimes.live:
            runtime.telemetry.close_by(exports_by)
        await self._close_listeners(close_by)

    async def _close_listeners(self, deadline: float) -> None:
        """Close both listeners and, with the traffic app, every runtime, by `deadline`.

        aiohttp waits for each open handler at most `shutdown_timeout`, but not for the
        app's cleanup (the runtimes' resources): one close that never returns would keep
        the process alive after SIGTERM. Both share the time to `deadline` (loop time);
        what is stuck past it is cancelled and left behind (the admin listener always
        gets a moment).
        """
        loop = asyncio.get_running_loop()
        for runner in (self._traffic, self._admin):
            left = max(deadline - loop.time(), 0.2)
            if not await finish_within(runner.cleanup(), left):
                log.warning("shutdown close over", extra={"seconds": round(left, 3)})


async def _idle_unless_hurried(
    runtimes: RuntimeHolder, timeout: float, hurry: asyncio.Event | None
) -> bool:
    """Wait until no request is in flight: True; False when `timeout` passes or `hurry` is
    set first."""
    if hurry is None:
        return await runtimes.wait_idle(timeout)
    if hurry.is_set():
        return False
    idle = asyncio.ensure_future(runtimes.wait_idle(timeout))
    hurried = asyncio.ensure_future(hurry.wait())
    try:
        done, _ = await asyncio.wait((idle, hurried), return_when=asyncio.FIRST_COMPLETED)
    finally:
        hurried.cancel()
        if not idle.done():
            idle.cancel()  # it ends at its next turn; nothing waits for it
    return idle in done and idle.result()


def _client_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def serve(config: Config, config_path: str | Path | None = None) -> int:
    """Run until SIGTERM/SIGINT (SIGHUP reloads), then shut down gracefully; the exit code."""
    server = SidecarServer(config, config_path=config_path)
    try:
        await server.start()
    except ListenError as exc:  # one line, no traceback: `address 0.0.0.0:8080 already in use`
        log.error(str(exc), extra={"address": exc.address})
        return EXIT_CANNOT_LISTEN
    except OSError as exc:  # a certificate file changed since the config was checked
        log.error("cannot start: %s", exc)
        return 1
    except TelemetryEnvironmentError as exc:  # an OTEL_* value the SDK refuses
        log.error("invalid OpenTelemetry environment: %s", exc)
        return EXIT_BAD_ENVIRONMENT
    log.info(
        "sidecar serving",
        extra={
            "url": server.url,
            "admin_url": server.admin_url,
            "claude": redact_url(config.claude.base_url),
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reloader.request)
    await stop.wait()
    grace = server.shutdown_grace()
    log.info("shutting down", extra={"grace_seconds": grace})
    _arm_exit_watchdog(grace + SHUTDOWN_MARGIN)
    hurry = asyncio.Event()  # a second SIGTERM/SIGINT: the grace ends now
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, hurry.set)
    await server.shutdown(grace, hurry)
    await _end_leftover_tasks()
    return 0


def _arm_exit_watchdog(seconds: float) -> None:
    """End the process `seconds` from now if it is still running then, whatever holds it
    (a thread blocked in an export that the interpreter's exit would wait for)."""
    timer = threading.Timer(seconds, _exit_now)
    timer.daemon = True  # never the thing that keeps the process alive
    timer.start()


def _exit_now() -> None:
    log.error("shutdown bound reached: exiting", extra={"seconds_past_grace": SHUTDOWN_MARGIN})
    logging.shutdown()
    os._exit(0)


async def _end_leftover_tasks() -> None:
    """Cancel the tasks still running after shutdown and wait for them, bounded.

    The event loop's own teardown cancels leftover tasks too, but then waits for them
    without a bound: a task that outlived its close (a background writer, a producer a
    stuck close left behind) must end here, or the process must exit without it.
    """
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=_LEFTOVER_GRACE)
    if pending:  # they ignore cancellation: waiting longer would never end
        log.error("tasks did not end at shutdown", extra={"tasks": len(pending)})
        logging.shutdown()
        os._exit(0)
