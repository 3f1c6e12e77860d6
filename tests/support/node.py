"""JS clients under node (`tests/js/*.mjs`) that print what they saw as JSON lines: run to
their end, or read line by line while the test acts on the servers in between."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

JS_DIR = Path(__file__).resolve().parent.parent / "js"
NODE = shutil.which("node")
NPM_CI = "npm ci --prefix tests/js --no-audit --no-fund"
# Ids are random per response; error messages embed them in escaped JSON, hence no quotes.
IDS = re.compile(r"\b(msg|toolu|req)_[0-9a-f]+\b")

Line = dict[str, Any]


def skip_without(package: str) -> None:
    """Skip the calling test module unless node and `package` (under tests/js) are installed."""
    if NODE is None:
        pytest.skip("node is not installed: the JS client tests need node >= 20",
                    allow_module_level=True)  # fmt: skip
    if not (JS_DIR / "node_modules" / package).is_dir():
        pytest.skip(f"{package} is not installed; run `{NPM_CI}`", allow_module_level=True)


def parse_line(raw: bytes, ids: re.Pattern[str] = IDS) -> Line:
    """One printed line as JSON, every random id replaced by `id`."""
    line = json.loads(ids.sub("id", raw.decode()))
    assert isinstance(line, dict)
    return line


async def run_script(
    script: str, *args: str, ids: re.Pattern[str] = IDS, timeout: float = 30
) -> list[Line]:
    """Run `tests/js/SCRIPT ARGS` to its end; its lines, ids normalised. It must exit 0."""
    async with script_lines(script, *args, ids=ids, timeout=timeout) as lines:
        return await lines.rest()


class ScriptLines:
    """The lines of a running script, read as the test needs them."""

    def __init__(
        self, process: asyncio.subprocess.Process, ids: re.Pattern[str], timeout: float
    ) -> None:
        self._process, self._ids, self._timeout = process, ids, timeout
        self.seen: list[Line] = []

    async def until(self, done: Callable[[list[Line]], bool]) -> list[Line]:
        """Read lines until `done(every line so far)` holds; those lines."""
        assert self._process.stdout is not None
        async with asyncio.timeout(self._timeout):
            while not done(self.seen):
                raw = await self._process.stdout.readline()
                if not raw:
                    raise AssertionError(f"the script ended first: {await self._stderr()}")
                self.seen.append(parse_line(raw, self._ids))
        return list(self.seen)

    async def rest(self) -> list[Line]:
        """Read to the end; every line, those read before included. It must have exited 0."""
        assert self._process.stdout is not None
        async with asyncio.timeout(self._timeout):
            remaining = await self._process.stdout.read()
            code = await self._process.wait()
        assert code == 0, await self._stderr()
        self.seen.extend(parse_line(raw, self._ids) for raw in remaining.splitlines())
        return self.seen

    async def _stderr(self) -> str:
        assert self._process.stderr is not None
        return (await self._process.stderr.read()).decode(errors="replace")


@contextlib.asynccontextmanager
async def script_lines(
    script: str, *args: str, ids: re.Pattern[str] = IDS, timeout: float = 30
) -> AsyncIterator[ScriptLines]:
    """`node tests/js/SCRIPT ARGS` running; killed on the way out if it has not ended."""
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE,
        str(JS_DIR / script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield ScriptLines(process, ids, timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
