"""The container image's sources: the Dockerfile lints clean, the locks pin every dependency
with hashes, the image's settings are names fleet reads, and scripts/build-image parses its
arguments. The build itself (minutes, root, a network) is not part of the suite: docs/image.md.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import fleet.cli
from fleet.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
BUILD_LOCK = ROOT / "requirements" / "build.lock"
BUILD_IMAGE = ROOT / "scripts" / "build-image"
UPDATE_LOCKS = ROOT / "requirements" / "update"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


# -- Dockerfile ------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        result.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return result


def final_stage() -> list[tuple[str, str]]:
    parsed = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(parsed) if keyword == "FROM")
    return parsed[last_from:]


def key_values(arguments: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(arguments))


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the test extra (pip install -e '.[test]')")
    return found


def test_hadolint_finds_nothing() -> None:
    # The strictest threshold: even a style note fails. No rule is ignored.
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# hadolint ignore" not in DOCKERFILE.read_text()


def test_base_image_is_the_slim_official_python_pinned_by_tag() -> None:
    parsed = instructions()
    assert parsed[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    froms = [arguments for keyword, arguments in parsed if keyword == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]


def test_dependencies_come_from_the_locks_with_hashes_and_no_resolution() -> None:
    runs = " ".join(arguments for keyword, arguments in instructions() if keyword == "RUN")
    installs = re.findall(r"pip install [^&]*", runs)
    assert installs
    for install in installs:
        assert "--no-deps" in install
        assert "--no-cache-dir" in install
        if " -r " in install:
            assert "--require-hashes" in install
            assert "--only-binary=:all:" in install
    locks = {m.group(1) for m in re.finditer(r"-r (\S+)", runs)}
    assert locks == {"requirements/build.lock", "requirements/runtime.lock"}


def test_runtime_stage_is_a_non_root_batch_job() -> None:
    stage = dict(final_stage())
    user = stage["USER"].split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), "a fixed, numeric non-root id"
    assert stage["ENTRYPOINT"] == '["/opt/fleet/bin/fleet"]'
    assert stage["VOLUME"] == '["/data"]'
    assert stage["WORKDIR"] == "/data"
    assert stage["STOPSIGNAL"] == "SIGTERM"
    assert stage["HEALTHCHECK"] == "NONE"
    env = key_values(stage["ENV"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/fleet/bin:")
    copies = [arguments for keyword, arguments in final_stage() if keyword == "COPY"]
    assert copies == ["--from=build /opt/fleet /opt/fleet"], "only the venv leaves the build"


def test_fleet_variables_of_the_image_are_what_fleet_reads(tmp_path: Path) -> None:
    """FLEET_CONFIG names the file and FLEET_DB the state file; nothing else unknown is set."""
    image_env = key_values(dict(final_stage())["ENV"])
    env = {name: value for name, value in image_env.items() if name.startswith("FLEET_")}
    assert env == {"FLEET_CONFIG": "/etc/fleet/fleet.toml", "FLEET_DB": "/data/fleet.db"}
    config = tmp_path / "fleet.toml"
    config.write_text(
        'concurrency = 7\n[api]\nurl = "https://modelops.example.com/core"\n'
        'project_id = "419e5f05-b225-4b70-b075-6c309365d94f"\n'
    )
    token = tmp_path / "token"
    token.write_text("tok-from-a-mounted-secret\n")
    settings = load_settings(
        None, {}, {**env, "FLEET_CONFIG": str(config), "FLEET_API__TOKEN_FILE": str(token)}
    )
    assert settings.concurrency == 7
    assert settings.db == Path("/data/fleet.db")
    assert settings.api.token_file == token


def test_exit_code_label_lists_every_exit_code_of_the_cli() -> None:
    labels = key_values(dict(final_stage())["LABEL"])
    documented = {int(code) for code in re.findall(r"(\d+)=", labels["fleet.exit-codes"])}
    exits = {value for name, value in vars(fleet.cli).items() if name.startswith("EXIT_")}
    assert documented == exits
    comment = DOCKERFILE.read_text().partition("# Exit codes")[2].partition("\n\n")[0]
    assert {int(code) for code in re.findall(r"^#\s+(\d+)\s", comment, re.MULTILINE)} == exits
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert labels[f"org.opencontainers.image.{key}"]


# -- .dockerignore ---------------------------------------------------------------------------


def ignored(path: str) -> bool:
    """Docker's rule, simplified: the last pattern that matches the path or a parent wins."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        glob = pattern.removeprefix("!").rstrip("/")
        if glob.startswith("**/"):  # at any depth: match each path component by name
            hit = any(fnmatch.fnmatchcase(part, glob[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(candidate, glob) for candidate in candidates)
        if hit:
            verdict = not pattern.startswith("!")
    return verdict


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    for keyword, arguments in instructions():
        if keyword == "COPY" and not arguments.startswith("--from"):
            *sources, _ = arguments.split()
            for source in sources:
                assert not ignored(source.rstrip("/")), f"COPY {source} is in .dockerignore"
    assert not ignored("src/fleet/cli.py")


@pytest.mark.parametrize(
    "path",
    [
        "fleet.toml",
        "fleet.db",
        "fleet-demo.db-wal",
        ".env",
        ".git/config",
        ".venv/bin/python",
        "tests/test_cli.py",
        "src/fleet/__pycache__/cli.cpython-311.pyc",
        "docs/report.png",
    ],
)
def test_dockerignore_keeps_out_state_secrets_and_caches(path: str) -> None:
    assert ignored(path)


# -- the locks -------------------------------------------------------------------------------


def locked(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (pinned version, hashes)}; fails on any entry that is not name==version."""
    entries: dict[str, tuple[str, list[str]]] = {}
    logical = re.sub(r"\\\n", " ", lock.read_text())
    for line in logical.splitlines():
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith("#"):
            continue
        requirement, *options = text.split()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^=;\s]+)", requirement)
        assert match, f"{lock.name}: not pinned with ==: {requirement}"
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=sha256:")]
        assert len(hashes) == len(options), f"{lock.name}: unexpected options in {text}"
        assert hashes, f"{lock.name}: {requirement} has no --hash"
        entries[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return entries


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        (RUNTIME_LOCK, PYPROJECT["project"]["dependencies"]),
        (BUILD_LOCK, PYPROJECT["build-system"]["requires"]),
    ],
    ids=["runtime", "build"],
)
def test_lock_pins_every_dependency_of_pyproject(lock: Path, requirements: list[str]) -> None:
    pins = locked(lock)
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock.name} lacks {requirement.name}: run requirements/update"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {name}=={version}, pyproject.toml asks {requirement}: "
            "run requirements/update"
        )


def test_every_locked_package_has_sha256_hashes() -> None:
    for lock in (RUNTIME_LOCK, BUILD_LOCK):
        for name, (_, hashes) in locked(lock).items():
            assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    assert "fleet" not in locked(RUNTIME_LOCK), "fleet itself is installed from its wheel"


# -- scripts ---------------------------------------------------------------------------------


def script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "PIP_CERT"}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    return subprocess.run(
        ["bash", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**base, **(env or {})},
        cwd=ROOT,
    )


@pytest.mark.parametrize("path", [BUILD_IMAGE, UPDATE_LOCKS])
def test_scripts_print_their_usage(path: Path) -> None:
    assert os.access(path, os.X_OK)
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in path.read_text()
    result = script(str(path), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")


def test_build_image_names_every_option_in_its_usage() -> None:
    usage = script(str(BUILD_IMAGE), "--help").stdout
    cases = re.findall(r"^\s+(--[a-z-]+)\)", BUILD_IMAGE.read_text(), re.MULTILINE)
    assert "--base-from-debootstrap" in cases
    for option in cases:
        assert option in usage, option


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate"], "unknown argument: --frobnicate"),
        (["--tag"], "--tag needs a value"),
        (["--engine", "podman"], "--engine: auto, docker or buildah"),
        (["--rebuild-base"], "--rebuild-base needs --base-from-debootstrap"),
        (["--base-image", "x:1", "--base-from-debootstrap"], "exclude each other"),
        (["--ca-cert", "/nonexistent/ca.pem"], "--ca-cert: no such file"),
    ],
)
def test_build_image_refuses_bad_arguments(args: list[str], message: str) -> None:
    result = script(str(BUILD_IMAGE), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def commands(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_build_image_without_a_daemon_builds_from_debootstrap_with_buildah(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    run = commands(
        script(
            str(BUILD_IMAGE), "-n", "--engine", "buildah", "--base-from-debootstrap",
            "--ca-cert", str(ca), "--check",
        )
    )  # fmt: skip
    programs = [argv[0] for argv in run]
    assert programs[0] == "debootstrap"
    assert run[0][:2] == ["debootstrap", "--variant=minbase"]
    assert "bookworm" in run[0]
    assert "python3-venv" in run[0][2]
    bud = next(argv for argv in run if "bud" in argv)
    assert bud[:5] == ["buildah", "--storage-driver", "vfs", "bud", "--isolation"]
    assert "BASE_IMAGE=localhost/python:3.11-bookworm-debootstrap" in bud
    assert f"id=pip_cert,src={ca}" in bud
    assert bud[bud.index("-t") + 1] == f"fleet:{VERSION}"
    assert bud[-1] == "."
    checks = [argv[argv.index("--") + 1 :] for argv in run if "run" in argv and "--" in argv]
    assert checks == [["fleet", "--version"], ["fleet", "demo", "--models", "20"]]


def test_build_image_with_docker_passes_the_base_and_extra_arguments(tmp_path: Path) -> None:
    ca = tmp_path / "bundle.pem"
    ca.write_text("")
    run = commands(
        script(
            str(BUILD_IMAGE), "--dry-run", "--engine", "docker", "--base-image", "reg/py:3.11",
            "-t", "fleet:test", "--", "--progress=plain",
            env={"PIP_CERT": str(ca)},
        )
    )  # fmt: skip
    [build] = run
    assert build[:4] == ["env", "DOCKER_BUILDKIT=1", "docker", "build"]
    assert "BASE_IMAGE=reg/py:3.11" in build
    assert f"id=pip_cert,src={ca}" in build, "the CA bundle pip uses here is the default"
    assert build[-3:] == ["fleet:test", "--progress=plain", "."]
    assert "--pull=false" not in build


def test_build_image_passes_no_secret_without_a_ca() -> None:
    [build] = commands(script(str(BUILD_IMAGE), "-n", "--engine", "buildah"))
    assert "--secret" not in build
    assert not any(arg.startswith("BASE_IMAGE=") for arg in build)
