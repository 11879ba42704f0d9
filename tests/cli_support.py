"""Helpers for end-to-end tests: `fleet` subprocesses and `fleet sim` on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

TOKEN = "e2e-secret-token-3f9a"
FAST = ["--poll-interval", "0.05", "--progress-interval", "0.5"]


def fleet(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(extra or {})
    return env


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@contextmanager
def emulator(
    tmp_path: Path, *args: str, token: str = TOKEN, models_csv: str = "models.csv"
) -> Iterator[str]:
    """`fleet sim` on a free loopback port; yields its base URL once it listens."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet",
            "sim",
            "--port",
            "0",
            "--token",
            token,
            "--models-csv",
            str(tmp_path / models_csv),
            *args,
        ],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        url = ""
        for line in proc.stderr:
            if "ModelOps emulator on " in line:
                url = line.split("ModelOps emulator on ")[1].split()[0]
                break
        assert url, "the emulator did not start"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def sim_stats(url: str) -> dict[str, object]:
    root = url.removesuffix("/modelops/core")
    stats: dict[str, object] = httpx.get(f"{root}/_sim/stats").json()
    return stats


def run_args(tmp_path: Path, run_id: str) -> list[str]:
    """`fleet run` of the emulator's models (its CSV) under `run_id`, polling fast."""
    config = str(empty_config(tmp_path))
    return ["run", "--run-id", run_id, "--models-file", "models.csv", "--config", config, *FAST]


def start(args: list[str], tmp_path: Path, url: str, **streams: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fleet", *args],
        cwd=tmp_path,
        env=clean_env(run_env(url)),
        text=True,
        **streams,  # type: ignore[call-overload]
    )


def run_env(url: str) -> dict[str, str]:
    return {"FLEET_API__URL": url, "FLEET_API__TOKEN": TOKEN}


def empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    if not path.exists():
        path.write_text(
            '[api]\nproject_id = "5f1a3c9e-8d2b-4e7a-9c61-0f2d4b8a7e13"\n'
            # Any dataset ids do for the emulator; its models.csv names its own.
            '[defaults]\ntrain_dataset_id = "00000000-0000-4000-8000-00000000da7a"\n'
            'evaluate_dataset_id = "00000000-0000-4000-8000-00000000da7b"\n'
        )
    return path


def events_until(proc: subprocess.Popen[str], wanted: str, count: int) -> int:
    """Read the process's JSON lines until `count` events named `wanted` (or its end)."""
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:
        if f'"event": "{wanted}"' in line:
            seen += 1
            if seen >= count:
                break
    return seen


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()
