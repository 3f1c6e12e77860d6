"""Hot reload: on SIGHUP or a changed config file, validate it again and swap the runtime.

A file that does not validate (or whose resources do not open) is logged problem by
problem as `config_reload_failed` and counted; the running config keeps serving. A
valid one becomes a new runtime for new requests, while requests in flight finish on
the one they started with. The listeners and the process-wide telemetry stay as they
were: keys that only a restart can apply keep their running value (`RESTART_ONLY`),
with a warning naming them. The TLS certificate and key are read again on every
successful reload, into the live context (new handshakes use them).

The file is polled every `server.reload_poll_seconds` by its resolved path, mtime and
size; once those hold still for one more poll (a writer may not be done), it is
reloaded if its content hash changed. Symlinks are followed, so a
Kubernetes ConfigMap update (an atomic swap of the `..data` symlink) is seen. The TLS
files are watched the same way, so a renewed certificate is picked up without a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sidecar import loader
from sidecar.config import Config, TelemetryConfig, TLSConfig
from sidecar.config.server import load_certificate
from sidecar.readiness import unready_checks
from sidecar.runtime import RuntimeHolder

log = logging.getLogger("sidecar.reload")

# Bound to the listeners, the app's request size limit or the process-wide telemetry.
RESTART_ONLY = ("server.listen", "server.admin_listen", "server.max_body_bytes")
_SERVER_RESTART_ONLY = tuple(key.removeprefix("server.") for key in RESTART_ONLY)

Stamp = tuple[str, int, int] | None  # resolved path, mtime_ns, size; None when unreadable


def keep_restart_only(running: Config, loaded: Config) -> tuple[Config, list[str]]:
    """`loaded` with every restart-only key at its running value, and the keys that differed.

    Restart-only: `server.listen`, `server.admin_listen`, `server.max_body_bytes`, turning
    TLS on or off (`server.tls.cert_file` set or not; new paths while it stays on do
    reload), and the whole `telemetry` section.
    """
    keep: dict[str, object] = {}
    for key in _SERVER_RESTART_ONLY:
        if getattr(loaded.server, key) != getattr(running.server, key):
            keep[key] = getattr(running.server, key)
    changed = [f"server.{key}" for key in keep]
    if loaded.server.tls.enabled != running.server.tls.enabled:
        keep["tls"] = running.server.tls
        changed.append("server.tls.cert_file")
    changed.extend(
        f"telemetry.{name}"
        for name in TelemetryConfig.model_fields
        if getattr(loaded.telemetry, name) != getattr(running.telemetry, name)
    )
    server = loaded.server.model_copy(update=keep) if keep else loaded.server
    effective = loaded.model_copy(update={"server": server, "telemetry": running.telemetry})
    return effective, changed


def load_tls(context: ssl.SSLContext, tls: TLSConfig) -> str | None:
    """Load the certificate and key into `context`; why they cannot serve, or None."""
    problem = load_certificate(context, tls)
    return None if problem is None else f"server.tls: {problem}"


def tls_problem(tls: TLSConfig) -> str | None:
    """Why the certificate and key cannot serve (tried on a scratch context), or None."""
    return load_tls(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls)


def _stamp(path: Path) -> Stamp:
    try:
        resolved = os.path.realpath(path)
        info = os.stat(resolved)
    except OSError:
        return None
    return resolved, info.st_mtime_ns, info.st_size


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the watched files looked like: cheap stamps, and content hashes."""

    stamps: tuple[Stamp, ...]
    hashes: tuple[str | None, ...]

    @property
    def config_sha256(self) -> str | None:
        return self.hashes[0] if self.hashes else None


class Reloader:
    """Reloads the config of `runtimes` on request (`request`, `reload`) or when files change."""

    def __init__(
        self,
        runtimes: RuntimeHolder,
        path: str | Path | None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._runtimes = runtimes
        self._env = env
        environ = os.environ if env is None else env
        chosen = path or environ.get("SIDECAR_CONFIG") or None
        self.path = Path(chosen) if chosen else None  # None: the embedded default
        self.tls: ssl.SSLContext | None = None  # the live context of the traffic listener
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._seen = Snapshot((), ())
        self._settling: tuple[Stamp, ...] | None = None

    def _watched(self) -> list[Path]:
        if self.path is None:
            return []
        tls = self._runtimes.current.config.server.tls
        return [self.path, *(p for p in (tls.cert_file, tls.key_file) if p is not None)]

    def _snapshot(self, paths: Sequence[Path]) -> Snapshot:
        return Snapshot(tuple(map(_stamp, paths)), tuple(map(_sha256, paths)))

    def start(self) -> None:
        """Record the files as served now and start watching (and listening for `request`)."""
        self._closed = False
        self._seen = self._snapshot(self._watched())
        self._runtimes.config_sha256 = self._served_sha256(self._seen)
        self._task = asyncio.create_task(self._watch(), name="config-reload")

    def _served_sha256(self, snapshot: Snapshot) -> str | None:
        """The hash of the config text being served: the file's, or the embedded default's
        (which has no file to snapshot, and serves again after a reload)."""
        if self.path is None:
            return hashlib.sha256(loader.default_config_text().encode()).hexdigest()
        return snapshot.config_sha256

    def request(self) -> None:
        """Ask for a reload soon (the SIGHUP handler); requests made meanwhile coalesce."""
        self._wake.set()

    async def close(self) -> None:
        """Stop watching; waits for a reload under way to finish."""
        self._closed = True  # ends the watch at its next turn even if the cancel is lost
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        async with self._lock:
            pass

    async def _watch(self) -> None:
        while not self._closed:
            poll = self._runtimes.current.config.server.reload_poll_seconds
            try:
                async with asyncio.timeout(poll if poll > 0 and self.path is not None else None):
                    await self._wake.wait()
            except TimeoutError:
                try:
                    changed = await self._files_changed()
                except Exception:  # never let one bad poll end the watching
                    log.exception("config file check failed")
                    continue
                if changed:
                    await self.reload("file")
                continue
            self._wake.clear()
            await self.reload("signal")

    async def _files_changed(self) -> bool:
        paths = self._watched()
        stamps = await asyncio.to_thread(lambda: tuple(map(_stamp, paths)))
        if stamps == self._seen.stamps:
            self._settling = None
            return False
        if stamps != self._settling:
            # Changed since the last poll: wait one more poll in case a writer is not done
            # (an editor truncating then writing); atomic swaps cost one interval.
            self._settling = stamps
            return False
        self._settling = None
        current = await asyncio.to_thread(self._snapshot, paths)
        changed = current.hashes != self._seen.hashes
        # Touched but identical: remember the new stamps so the content is not hashed again.
        self._seen = current if not changed else Snapshot(current.stamps, self._seen.hashes)
        return changed

    async def reload(self, trigger: str = "api") -> bool:
        """Load, validate and apply the config file now; False (old config kept) on any problem."""
        async with self._lock:
            if self._runtimes.draining:
                return False
            try:
                return await self._reload(trigger)
            except Exception as exc:  # a reload must never take the watcher down
                log.exception("config reload crashed")
                return self._failed(trigger, [f"<reload>: {type(exc).__name__}: {exc}"])

    async def _reload(self, trigger: str) -> bool:
        # Hash before reading: a write racing the load changes the hash again, and is reloaded.
        snapshot = await asyncio.to_thread(self._snapshot, self._watched())
        self._seen = snapshot  # this content is handled: a failure is not retried until it changes
        try:
            loaded = await asyncio.to_thread(loader.load, self.path, self._env)
        except loader.ConfigError as exc:
            return self._failed(trigger, exc.problems)
        running = self._runtimes.current
        config, restart_keys = keep_restart_only(running.config, loaded)
        tls = config.server.tls
        live_tls = self.tls if tls.enabled else None
        # Tried on a scratch context first: a failed load can leave a context half-updated.
        if live_tls is not None and (problem := await asyncio.to_thread(tls_problem, tls)):
            return self._failed(trigger, [problem])
        try:
            runtime = await self._runtimes.open(config)
        except Exception as exc:
            return self._failed(trigger, [f"<runtime>: {type(exc).__name__}: {exc}"])
        # A config whose fail-closed store or key set cannot be reached would take a ready
        # sidecar out of service: it is refused like any other bad config.
        unready = await unready_checks(runtime)
        if unready and (lost := unready.keys() - (await unready_checks(running)).keys()):
            await self._runtimes.discard(runtime)
            return self._failed(
                trigger, [f"<readiness>: {name}: {unready[name]}" for name in sorted(lost)]
            )
        if self._runtimes.draining:
            # Shutdown began while this reload was opening its runtime (it waits for a
            # reload only so long): a runtime installed now would serve, and its streams
            # and queue would not be the ones shutdown stops. The old config drains.
            await self._runtimes.discard(runtime)
            log.info("config_reload_dropped", extra={"trigger": trigger, "detail": "shutting down"})
            return False
        if live_tls is not None and (problem := load_tls(live_tls, tls)):
            await self._runtimes.discard(runtime)  # the files changed since the probe
            return self._failed(trigger, [problem])
        served = self._served_sha256(snapshot)
        self._runtimes.install(runtime, served)
        if restart_keys:
            log.warning(
                "config_reload_needs_restart",
                extra={"keys": restart_keys, "detail": "these keep their running value"},
            )
        log.info(
            "config_reloaded",
            extra={"trigger": trigger, "path": str(self.path or "<embedded default>"),
                   "config_sha256": served},
        )  # fmt: skip
        runtime.telemetry.config_reload("success")
        return True

    def _failed(self, trigger: str, problems: list[str]) -> bool:
        log.error(
            "config_reload_failed",
            extra={"trigger": trigger, "path": str(self.path or "<embedded default>"),
                   "problems": problems, "detail": "the running config keeps serving"},
        )  # fmt: skip
        self._runtimes.current.telemetry.config_reload("failure")
        return False
