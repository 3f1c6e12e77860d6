"""`python -m sidecar.fake_claude`: a bad flag or an address it cannot bind is one line
and a non-zero exit, never a traceback, and never a server on another port."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def _fake(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.fake_claude", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--port", "99999"], "argument --port: not a port (0-65535): 99999"),
     (["--port", "-1"], "argument --port: not a port (0-65535): -1"),
     (["--tps", "nan"], "argument --tps: must be a finite number >= 0, got 'nan'"),
     (["--ttft-ms", "inf"], "argument --ttft-ms: must be a finite number >= 0, got 'inf'"),
     (["--tokens", "-5"], "argument --tokens: must be a finite number >= 0, got '-5'")],
)  # fmt: skip
def test_a_bad_flag_is_refused_before_anything_listens(args: list[str], message: str) -> None:
    done = _fake(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines()[-1] == f"python -m sidecar.fake_claude: error: {message}"


def test_an_address_in_use_is_one_line_and_exit_3() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _fake("--port", str(port))
    assert done.returncode == 3
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"python -m sidecar.fake_claude: cannot listen on 127.0.0.1:{port}: ")
    assert "address already in use" in line
