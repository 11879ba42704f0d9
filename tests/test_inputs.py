"""Malformed inputs through the real `fleet` entry point: each is one line on stderr, exit 2,
no traceback, nothing written (no state file, no -wal, no metrics file), and no hang.

The table holds every input the torture of issue 13 found crashing or hanging, and more.
Each case runs `fleet.cli.main` in-process in its own directory; the server URL is a closed
loopback port, so a case that got past validation would show as exit 3, not hang.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cli_support import clean_env
from fleet.cli import main
from fleet.config import load_settings
from fleet.errors import ConfigError
from fleet.inputs import RUN_ID, check_run_id
from fleet.plan import new_run_id

PROJECT = "5f1a3c9e-8d2b-4e7a-9c61-0f2d4b8a7e13"
MODEL = "088d1992-06bc-46cc-9f92-c2a1c2b03ca9"
TOKEN = "inputs-test-token-7d1e"
API = f'[api]\nurl = "http://127.0.0.1:9/modelops/core"\nproject_id = "{PROJECT}"\n'
DATASETS = (
    '[defaults]\ntrain_dataset_id = "00000000-0000-4000-8000-00000000da7a"\n'
    'evaluate_dataset_id = "00000000-0000-4000-8000-00000000da7b"\n'
)
CONFIG = API + DATASETS
MODELS = f'[[models]]\nid = "{MODEL}"\n'


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@dataclass(frozen=True)
class Case:
    """`fleet run ARGS` in a directory holding `files` (fleet.toml: a valid config with one
    model unless given), with `env`; stderr must name `says`."""

    args: tuple[str, ...]
    says: str
    files: dict[str, bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    dirs: tuple[str, ...] = ()
    links: dict[str, str] = field(default_factory=dict)


def _toml(text: str) -> dict[str, bytes]:
    """A fleet.toml of `text`."""
    return {"fleet.toml": text.encode()}


def _models(name: str, data: bytes) -> dict[str, bytes]:
    return {"fleet.toml": (f'models_file = "{name}"\n' + CONFIG).encode(), name: data}


_CSV_HEADER = b"id,name\n"
CASES: dict[str, Case] = {
    # -- encodings ---------------------------------------------------------------------------
    "config not UTF-8": Case(
        (),
        "fleet.toml: not UTF-8 (byte 0xe9 at offset",
        {"fleet.toml": (CONFIG + MODELS + "# caf").encode() + b"\xe9\n"},
    ),
    "config UTF-16": Case((), "fleet.toml", {"fleet.toml": (CONFIG + MODELS).encode("utf-16")}),
    "token file not UTF-8": Case(
        (), "api.token_file", {"tok": b"abc\xe9"}, env={"FLEET_API__TOKEN_FILE": "tok"}
    ),
    "csv not UTF-8": Case((), "m.csv: not UTF-8", _models("m.csv", _CSV_HEADER + b"\xff,a\n")),
    "jsonl not UTF-8": Case(
        (), "m.jsonl: not UTF-8", _models("m.jsonl", b'{"id": "x", "name": "caf\xe9"}\n')
    ),
    "csv with NUL bytes": Case(
        (), "NUL byte", _models("m.csv", _CSV_HEADER + f"{MODEL},a\0b\n".encode())
    ),
    # -- sizes and nesting -------------------------------------------------------------------
    "config /dev/zero": Case(("--config", "/dev/zero"), "larger than 4 MiB"),
    "config a directory": Case(("--config", "adir"), "adir", dirs=("adir",)),
    "toml nested thousands deep": Case((), "nested", _toml(CONFIG + f"x = {_nested(5000)}\n")),
    "toml nested 40 deep": Case((), "nested", _toml(CONFIG + MODELS + f"x = {_nested(40)}\n")),
    "json in FLEET_ nested deep": Case(
        (),
        "FLEET_DEFAULTS__HYPERPARAMETERS: nested",
        env={"FLEET_DEFAULTS__HYPERPARAMETERS": '{"a": ' + _nested(100_000) + "}"},
    ),
    "json in FLEET_ nested 40 deep": Case(
        (),
        "FLEET_DEFAULTS__HYPERPARAMETERS: nested",
        env={"FLEET_DEFAULTS__HYPERPARAMETERS": '{"a": ' + _nested(40) + "}"},
    ),
    "jsonl nested deep": Case(
        (),
        "m.jsonl:1: nested",
        _models("m.jsonl", ('{"id": "%s", "a": %s}\n' % (MODEL, _nested(100_000))).encode()),  # noqa: UP031
    ),
    "csv hyperparameters nested deep": Case(
        (),
        "m.csv:2: hyperparameters: nested",
        _models(
            "m.csv",
            b"id,hyperparameters\n" + f'{MODEL},"{{""a"": {_nested(5000)}}}"\n'.encode(),
        ),
    ),
    "csv cell over 128 KiB": Case(
        (),
        "m.csv:2: not valid CSV",
        _models("m.csv", _CSV_HEADER + f"{MODEL},{'x' * 140_000}\n".encode()),
    ),
    "token file of 1 MiB": Case(
        (), "larger than 64 KiB", {"tok": b"a" * 2**20}, env={"FLEET_API__TOKEN_FILE": "tok"}
    ),
    # -- numbers -----------------------------------------------------------------------------
    "5,000-digit number in the config": Case(
        (), "too many digits", _toml(CONFIG + MODELS + f"concurrency = {'9' * 5000}\n")
    ),
    "5,000-digit number in a flag": Case(("--concurrency", "9" * 5000), "concurrency"),
    "5,000-digit number in jsonl": Case(
        (),
        "too many digits",
        _models("m.jsonl", ('{"id": "%s", "priority": %s}\n' % (MODEL, "9" * 5000)).encode()),  # noqa: UP031
    ),
    "priority past SQLite's integers": Case(
        (), "priority", _toml(CONFIG + MODELS + f"priority = {2**70}\n")
    ),
    "--max-duration 1e12": Case(("--max-duration", "1e12"), "max_duration"),
    "--grace-period inf": Case(("--grace-period", "inf"), "grace_period"),
    "--api.timeout nan": Case(("--api.timeout", "nan"), "api.timeout"),
    "--poll-interval 1e300": Case(("--poll-interval", "1e300"), "poll_interval"),
    "--max-rps inf": Case(("--max-rps", "inf"), "max_rps"),
    "--concurrency 10**7": Case(("--concurrency", str(10**7)), "concurrency"),
    "--api.retry-attempts 0": Case(("--api.retry-attempts", "0"), "api.retry_attempts"),
    # -- CSV structure -----------------------------------------------------------------------
    "csv resources and resources.memory": Case(
        (),
        "columns resources and resources.memory",
        _models("m.csv", f"id,resources,resources.memory\n{MODEL},x,2g\n".encode()),
    ),
    "csv resources.memory and resources": Case(
        (),
        "columns resources and resources.*",
        _models("m.csv", f"id,resources.memory,resources\n{MODEL},2g,x\n".encode()),
    ),
    "csv column twice": Case(
        (),
        "column 'name' is there twice",
        _models("m.csv", f"id,name,name\n{MODEL},a,b\n".encode()),
    ),
    # -- paths -------------------------------------------------------------------------------
    "--db a directory": Case(("--db", "adir"), "db: adir is a directory", dirs=("adir",)),
    "--db in a missing directory": Case(("--db", "nowhere/fleet.db"), "directory nowhere of"),
    "--metrics-file a directory": Case(
        ("--metrics-file", "adir"), "metrics_file: adir is a directory", dirs=("adir",)
    ),
    "--metrics-file in a missing directory": Case(
        ("--metrics-file", "nowhere/fleet.prom"), "directory nowhere of"
    ),
    "CA bundle without a certificate": Case(
        ("--api.ca-bundle", "ca.pem"), "no PEM certificate", {"ca.pem": b"not a certificate\n"}
    ),
    "CA bundle a directory": Case(
        ("--api.ca-bundle", "adir"), "not a readable file", dirs=("adir",)
    ),
    "models_file /dev/zero": Case(
        (),
        "m.csv: larger than 64 MiB",
        {"fleet.toml": ('models_file = "m.csv"\n' + CONFIG).encode()},
        links={"m.csv": "/dev/zero"},
    ),
    "token_file /dev/zero": Case(
        (), "larger than 64 KiB", links={"tok": "/dev/zero"}, env={"FLEET_API__TOKEN_FILE": "tok"}
    ),
    # -- URLs --------------------------------------------------------------------------------
    "--pushgateway garbage": Case(("--pushgateway", "not a url"), "pushgateway"),
    "--pushgateway bad port": Case(("--pushgateway", "http://gw:99999999"), "pushgateway"),
    "--pushgateway other scheme": Case(("--pushgateway", "ftp://gw:21"), "pushgateway"),
    "--pushgateway without host": Case(("--pushgateway", "http://:9091"), "no host name"),
    "api.url with a password": Case(
        ("--api.url", "https://user:hunter2-pw@modelops.example"), "user or password"
    ),
    "api.url with a newline": Case(("--api.url", "https://modelops.example\n/x"), "api.url"),
    # -- tokens ------------------------------------------------------------------------------
    "token with a space inside": Case((), "api.token", env={"FLEET_API__TOKEN": "abc def"}),
    "token with a CR inside": Case((), "api.token", env={"FLEET_API__TOKEN": "abc\rdef"}),
    "token non-ASCII": Case((), "non-ASCII", env={"FLEET_API__TOKEN": "abc\u00e9def"}),
    "token of whitespace only": Case((), "api.token", env={"FLEET_API__TOKEN": " \r\n"}),
    "token file of two lines": Case(
        (), "api.token_file", {"tok": b"abc\ndef\n"}, env={"FLEET_API__TOKEN_FILE": "tok"}
    ),
    # -- run ids -----------------------------------------------------------------------------
    '--run-id ""': Case(("--run-id", ""), "--run-id: is empty"),
    "--run-id with a space": Case(("--run-id", "night 1"), "--run-id"),
    "--run-id with a slash": Case(("--run-id", "../x"), "--run-id"),
    "--run-id of 65 characters": Case(("--run-id", "a" * 65), "--run-id"),
    "--run-id with a newline": Case(("--run-id", "night\n"), "--run-id"),
    '--retry-failed ""': Case(("--retry-failed", ""), "--retry-failed: is empty"),
    '--only-failed ""': Case(("--only-failed", ""), "--only-failed: is empty"),
}


def _run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], case: Case
) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("FLEET_")]:
        monkeypatch.delenv(name)
    files = {"fleet.toml": (CONFIG + MODELS).encode(), **case.files}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for name in case.dirs:
        (tmp_path / name).mkdir()
    for name, target in case.links.items():
        (tmp_path / name).symlink_to(target)
    if "FLEET_API__TOKEN_FILE" not in case.env:
        monkeypatch.setenv("FLEET_API__TOKEN", TOKEN)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", list(CASES))
def test_a_malformed_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Each malformed input: exit 2, one line naming it, no traceback, no file written."""
    case = CASES[name]
    code, stderr = _run(tmp_path, monkeypatch, ["run", *case.args], case)
    before = {*case.files, "fleet.toml", *case.dirs, *case.links}
    assert code == 2, stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("fleet: configuration error: "), stderr
    assert case.says in stderr
    assert "Traceback" not in stderr
    assert TOKEN not in stderr
    assert "hunter2-pw" not in stderr
    written = {p.name for p in tmp_path.iterdir()} - before
    assert not written, written


@pytest.mark.parametrize(
    ("env", "token"),
    [
        ({"FLEET_API__TOKEN": "abc.def-1\n"}, "abc.def-1"),
        ({"FLEET_API__TOKEN": "  abc.def-1\r\n"}, "abc.def-1"),
        ({"FLEET_API__TOKEN_FILE": "tok"}, "from-a-secret"),
    ],
)
def test_a_token_is_taken_without_its_surrounding_whitespace(
    tmp_path: Path, env: dict[str, str], token: str
) -> None:
    """A token from a Kubernetes secret ends with a newline (CRLF too): it is stripped."""
    (tmp_path / "tok").write_bytes(b"from-a-secret\r\n")
    env = {k: str(tmp_path / v) if k.endswith("_FILE") else v for k, v in env.items()}
    settings = load_settings(use_default_file=False, env=env)
    assert settings.api.bearer() == token


def test_a_bom_at_the_start_of_a_file_is_dropped(tmp_path: Path) -> None:
    """A UTF-8 BOM (Windows editors write one) is not part of the config or the model list."""
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbfid,name\n" + f"{MODEL},a\n".encode())
    config = tmp_path / "fleet.toml"
    config.write_bytes(
        b"\xef\xbb\xbf" + (f'models_file = "{tmp_path / "m.csv"}"\n' + CONFIG).encode()
    )
    settings = load_settings(config, env={})
    assert [spec.name for spec in settings.model_specs()] == ["a"]


def test_generated_and_documented_run_ids_are_accepted() -> None:
    """The ids fleet makes up and those the docs and manifests show pass the run id check."""
    for run_id in (new_run_id(), "2026-11-25", "night-1", "fleet-nightly-29926080", "r"):
        assert check_run_id(run_id) == run_id
    assert RUN_ID.fullmatch("a" * 64)
    with pytest.raises(ConfigError, match="--run-id: is empty"):
        check_run_id("")


@pytest.mark.parametrize("command", [["status"], ["report"]])
def test_an_empty_run_id_to_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """`fleet status ""` would have shown the latest run: it is refused, naming the id."""
    code, stderr = _run(tmp_path, monkeypatch, [*command, ""], Case((), ""))
    assert code == 2
    assert stderr.startswith("fleet: configuration error: run id: empty; name a run")
    assert len(stderr.splitlines()) == 1


@pytest.mark.parametrize("command", [["status"], ["report", "--format", "json"]])
def test_an_empty_state_file_to_read_is_named_as_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Issue 13 #13: a 0-byte state file was "from another fleet version"; it is empty."""
    case = Case((), "", files={"empty.db": b""})
    code, stderr = _run(tmp_path, monkeypatch, [*command, "--db", "empty.db"], case)
    assert code == 2
    assert stderr.startswith("fleet: configuration error: --db: empty.db is empty"), stderr
    assert len(stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "fleet.toml"]


# -- Ctrl-C during start-up ------------------------------------------------------------------

# A process of its own: what is tested is a fresh interpreter's imports, interrupted.
# Sends SIGINT to itself when `module` is first imported: in the middle of fleet's imports,
# where no signal handler of fleet's is installed yet. Deterministic: no sleeping, no race.
_INTERRUPT_AT_IMPORT = textwrap.dedent(
    """
    import importlib.abc, os, signal, sys

    module = sys.argv[1]

    class Interrupt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == module:
                sys.meta_path.remove(self)
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, Interrupt())
    sys.argv = ["fleet", "--version"]
    {entry}
    """
)
_ENTRIES = {
    "python -m fleet": "import runpy; runpy.run_module('fleet', run_name='__main__')",
    # What the `fleet` console script does.
    "console script": "from fleet.cli import main; sys.exit(main())",
}


@pytest.mark.e2e
@pytest.mark.parametrize("module", ["rich.live", "fleet.scheduler", "anyio"])
@pytest.mark.parametrize("entry", list(_ENTRIES))
def test_ctrl_c_while_fleet_starts_is_one_line_and_130(
    tmp_path: Path, entry: str, module: str
) -> None:
    """SIGINT before fleet's handlers are installed ends with one line, 130, no traceback."""
    script = _INTERRUPT_AT_IMPORT.format(entry=_ENTRIES[entry])
    done = subprocess.run(
        [sys.executable, "-c", script, module],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert done.stderr == "fleet: interrupted\n"
