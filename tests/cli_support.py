"""Helpers for the CLI's tests: the emulator served in this process, and, for the few
end-to-end tests, `fleet` subprocesses and `fleet sim` on loopback.

A test of what a command does runs `fleet.cli.main` in this process (conftest's `fleet_here`)
against `emulator_here`: the emulator on loopback HTTP from a thread of its own, since `main`
runs its own event loop in this one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from fleet import sim
from fleet.cli import _write_models_csv as write_models_csv
from fleet.sim import build
from fleet.sim.clock import ManualClock

# `write_models_csv` is the CLI's own (`fleet sim --models-csv`'s): the models files the tests
# run from are the ones an operator gets, and one writer is tested (tests/sim/test_sim_flags.py).

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


# -- the emulator in this process ------------------------------------------------------------


class Ticking(ManualClock):
    """The emulator's time, moved on by each look at it: jobs end after enough requests,
    however fast or slow the machine is."""

    __slots__ = ("_step",)

    def __init__(self, step_s: float = 30.0) -> None:
        super().__init__()
        self._step = step_s

    def now(self) -> float:
        self.advance(self._step)
        return super().now()


def ticking_build(
    settings: sim.SimSettings, clock: sim.Clock | None = None
) -> tuple[sim.World, Any]:
    """`fleet.sim.build` on a `Ticking` clock: patched in for `fleet demo`, whose emulator
    would otherwise run on the wall clock sped up."""
    return build(settings, clock if clock is not None else Ticking())


@dataclass(frozen=True)
class Served:
    """An emulator serving on `url` from its own thread; `stats()` reads it there."""

    url: str
    world: sim.World
    portal: BlockingPortal

    def stats(self) -> dict[str, Any]:
        return self.portal.call(self.world.stats)


@contextmanager
def emulator_here(
    tmp_path: Path, settings: sim.SimSettings, *, models_csv: str | None = "models.csv"
) -> Iterator[Served]:
    """The emulator of `settings` on a free loopback port, served over HTTP by an event loop
    in a thread of this process, on a `Ticking` clock; its models written to `models_csv`
    (as `fleet sim --models-csv` does) unless None."""
    world, app = build(settings, Ticking())
    if models_csv is not None:
        write_models_csv(tmp_path / models_csv, world)
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(sim.serve(app)) as url,
    ):
        yield Served(url, world, portal)
