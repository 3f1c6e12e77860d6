"""The README's quickstart as a new user runs it: a fresh copy, the commands as written.

The run command must install only what running needs: the environment it creates holds
the runtime dependencies and none of the dev group (test, lint, Helm, browser tools).
uv works offline from its cache (warm wherever the suite runs), so this stays bounded.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from sidecar.config import Config, RouteConfig
from tests.support.sockets import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
pytestmark = pytest.mark.timeout(300)


def uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        pytest.skip("uv not installed: curl -LsSf https://astral.sh/uv/install.sh | sh")
    return found


def quickstart_commands() -> list[str]:
    """Every command line of the shell blocks in the README's Quickstart section."""
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def run_command() -> list[str]:
    (command,) = [c for c in quickstart_commands() if c.endswith("sidecar run")]
    return shlex.split(command)


def configuration_examples() -> list[str]:
    """The `sidecar check` / `sidecar schema` lines of the Configuration section."""
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if "sidecar " in line]


def dev_packages() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = {
        re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]
        for spec in pyproject["dependency-groups"]["dev"]
    }
    return {normalize(name) for name in names}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(venv: Path) -> set[str]:
    """Distribution names installed in `venv` (from its .dist-info directories)."""
    (site,) = venv.glob("lib/python3*/site-packages")
    return {normalize(path.name.split("-", 1)[0]) for path in site.glob("*.dist-info")}


@pytest.fixture
def fresh_copy(tmp_path: Path) -> Path:
    """The files a clone has that running needs, without any virtualenv."""
    copy = tmp_path / "claude-sidecar"
    copy.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(
        ROOT / "sidecar", copy / "sidecar", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "config", copy / "config")
    return copy


def uv_env(copy: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
    }
    env.update(UV_OFFLINE="1", UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1", **extra)
    return env


def test_the_run_command_serves_and_installs_no_dev_tools(fresh_copy: Path) -> None:
    command = run_command()
    assert command[:2] == ["uv", "run"], command
    port, admin = free_port(), free_port()
    config = fresh_copy / "ports.yaml"  # the embedded default, on free ports
    config.write_text(yaml.safe_dump({"server": {"listen": f"127.0.0.1:{port}",
                                                 "admin_listen": f"127.0.0.1:{admin}"}}))  # fmt: skip
    log = fresh_copy / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [uv(), *command[1:]], cwd=fresh_copy, stdout=out, stderr=subprocess.STDOUT,
            env=uv_env(fresh_copy, SIDECAR_CONFIG=str(config)),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/stream-response?prompt=Hello", timeout=30
        ) as response:
            body = response.read()
        assert b'"token"' in body, body[:200]  # tokens streamed from the built-in fake
        assert b'"done"' in body, body[-200:]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)

    venv = fresh_copy / ".venv"
    packages = installed(venv)
    assert {"aiohttp", "opentelemetry-sdk", "claude-sidecar"} <= packages
    assert not packages & dev_packages(), sorted(packages & dev_packages())


def test_the_configuration_examples_work_as_written(fresh_copy: Path) -> None:
    examples = configuration_examples()
    assert len(examples) == 2, examples
    (fresh_copy / "my.yaml").write_text("screening: {max_prompt_chars: 500}\n")
    env = uv_env(fresh_copy)
    for example in examples:
        argv = shlex.split(example.split(">", 1)[0])
        assert argv[:2] == ["uv", "run"], example
        result = subprocess.run(
            [uv(), *argv[1:]], cwd=fresh_copy, capture_output=True, text=True, env=env,
            timeout=240, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        if "schema" in argv:
            assert json.loads(result.stdout)["properties"]["server"]
        else:
            assert yaml.safe_load(result.stdout)["screening"]["max_prompt_chars"] == 500


def test_the_configuration_section_names_every_config_section_and_route_override() -> None:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    sentence = section.split("Sections: ", 1)[1].split(").", 1)[0]
    sections, overrides = sentence.split("(each route may override", 1)
    assert re.findall(r"`(\w+)`", sections) == list(Config.model_fields)
    assert set(re.findall(r"`(\w+)`", overrides)) == set(RouteConfig.model_fields) - {
        "path",
        "handler",
    }


# Modules whose tests live in a file other than their mirror, and why: each stays true (the
# file exists) or goes when the module gets its own file.
ELSEWHERE = {
    "app_state": ("test_app.py", "declarations only: the keys the app is built with"),
    "config.browser": ("test_browser.py", "the browser section, with the browser files"),
    "config.routes": ("test_routes.py", "route overrides, with the route table they build"),
    "http_client.errors": ("test_http_client_response.py", "exception classes only"),
    "quotas.stores": ("test_stores_base.py", "the store factory, with the stores' contract"),
    "stream.resume": ("test_resume.py", "the generation hub, end to end with resume"),
}
# A file name two modules at the same depth could claim belongs to one of them.
SHARED = {"test_auth.py": "policy.auth", "test_resume.py": "handlers.resume"}


def package_modules() -> dict[str, tuple[str, ...]]:
    """Every module under sidecar/ by dotted name (no `sidecar.`), with its path parts; a
    package's `__init__` counts only when it defines something."""
    modules: dict[str, tuple[str, ...]] = {}
    for path in sorted((ROOT / "sidecar").rglob("*.py")):
        parts = path.relative_to(ROOT / "sidecar").with_suffix("").parts
        if parts[-1] == "__init__":
            body = ast.parse(path.read_text()).body
            defines = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            if len(parts) == 1 or not any(isinstance(node, defines) for node in body):
                continue
            parts = parts[:-1]
        elif parts[-1] == "__main__":
            continue
        modules[".".join(parts)] = parts
    return modules


def test_every_module_has_its_mirror_test_file() -> None:
    """As this README says: `test_<module>.py`, or `test_<package>_<module>.py` where the
    bare name is taken (by a shallower module of that name, or per `SHARED`)."""
    modules = package_modules()
    claims: dict[str, list[str]] = {}
    for name, parts in modules.items():
        for i in range(len(parts)):
            claims.setdefault("test_" + "_".join(parts[i:]) + ".py", []).append(name)

    def owner(file: str) -> str:
        if file in SHARED:
            return SHARED[file]
        depth = min(len(modules[name]) for name in claims[file])
        shallowest = [name for name in claims[file] if len(modules[name]) == depth]
        assert len(shallowest) == 1, f"{file} could mirror any of {shallowest}: add it to SHARED"
        return shallowest[0]

    tests = ROOT / "tests"
    missing = [
        name
        for name, parts in modules.items()
        if name not in ELSEWHERE
        and not any(
            (tests / file).exists() and owner(file) == name
            for file in ("test_" + "_".join(parts[i:]) + ".py" for i in range(len(parts)))
        )
    ]
    assert missing == [], "modules without tests/test_<module>.py"
    for name, (file, _why) in ELSEWHERE.items():
        assert name in modules, f"{name} is gone: drop it from ELSEWHERE"
        assert (tests / file).exists(), f"{name}'s tests are said to be in {file}"


def test_helpers_live_in_tests_support_and_no_test_module_imports_another() -> None:
    """As this README says: the shared helpers are in `tests/support/`, the test modules
    import none of each other (nor does a helper import a test module)."""
    tests = ROOT / "tests"
    stray = sorted(
        path.name
        for path in tests.glob("*.py")
        if not path.name.startswith("test_") and path.name not in ("__init__.py", "conftest.py")
    )
    assert stray == [], "helpers belong in tests/support/"
    reviews = sorted(path.name for path in tests.glob("test_*_review.py"))
    assert reviews == [], "fold review tests into the module file they test"
    test_modules = {path.stem for path in tests.glob("test_*.py")}
    imports = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                names = [module] + [f"{module}.{alias.name}".lstrip(".") for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                inside = parts[1:] if parts[0] == "tests" else parts
                if inside and inside[0] in test_modules:
                    imports.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert imports == [], "move what they share into tests/support/"
