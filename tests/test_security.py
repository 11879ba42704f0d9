"""Secrets stay secret, end to end: a run with client credentials, short-lived tokens, failures
and retries at debug level, then every log line and the state file are searched for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_support import empty_config, emulator, fleet, sim_stats
from fleet.sim.oauth import TOKEN_PREFIX

pytestmark = pytest.mark.e2e

STATIC_TOKEN = "static-e2e-token-9d2f"
CLIENT_SECRET = "client-secret-e2e-41ac"


def test_no_secret_reaches_logs_errors_or_the_state_file(tmp_path: Path) -> None:
    """Tokens expire mid-run and are renewed; none of them, nor the secret, is written down."""
    with emulator(
        tmp_path,
        "--models", "25", "--time-scale", "3000", "--seed", "3",
        "--client-id", "fleet-nightly", "--client-secret", CLIENT_SECRET,
        "--token-lifetime", "900",  # sim seconds: a few real seconds at this time scale
        "--job-error-rate", "0.1", "--http-500-rate", "0.03", "--http-503-rate", "0.02",
        "--drop-rate", "0.02",
    ) as url:  # fmt: skip
        root = url.removesuffix("/modelops/core")
        done = fleet(
            "run", "--run-id", "secure", "--models-file", "models.csv",
            "--config", str(empty_config(tmp_path)), "--poll-interval", "0.05",
            "--log-level", "debug", "--api.auth", "client_credentials",
            "--api.token-url", f"{root}/oauth2/token", "--api.client-id", "fleet-nightly",
            "--attempts.train", "2",
            cwd=tmp_path,
            env={"FLEET_API__URL": url, "FLEET_API__CLIENT_SECRET": CLIENT_SECRET},
        )  # fmt: skip
        stats = sim_stats(url)
    assert done.returncode == 1, done.stderr  # the injected job errors fail some models
    assert isinstance(stats["tokens_issued"], int)
    assert stats["tokens_issued"] >= 2, "tokens must have expired and been renewed mid-run"
    output = done.stdout + done.stderr
    assert '"fleet.stage.succeeded"' in output  # the debug run really logged
    files = [p for p in tmp_path.iterdir() if p.name.startswith("fleet.db")]
    assert files
    for secret in (CLIENT_SECRET, TOKEN_PREFIX, STATIC_TOKEN):
        assert secret not in output
        for path in files:
            assert secret.encode() not in path.read_bytes(), path.name


def test_a_static_token_never_reaches_the_output(tmp_path: Path) -> None:
    """With a bearer token from the environment and a wrong one rejected, neither is printed."""
    with emulator(tmp_path, "--models", "3") as url:
        done = fleet(
            "run", "--models-file", "models.csv", "--config", str(empty_config(tmp_path)),
            "--log-level", "debug", cwd=tmp_path,
            env={"FLEET_API__URL": url, "FLEET_API__TOKEN": STATIC_TOKEN},
        )  # fmt: skip
    assert done.returncode == 3
    assert "token rejected" in done.stderr
    assert STATIC_TOKEN not in done.stdout + done.stderr


def test_secret_flags_are_refused_before_anything_runs(tmp_path: Path) -> None:
    """--api.token on the command line is refused with exit 2, pointing at the variable."""
    done = fleet("run", "--api.token", STATIC_TOKEN, cwd=tmp_path)
    assert done.returncode == 2
    assert "FLEET_API__TOKEN" in done.stderr
    assert STATIC_TOKEN not in done.stderr
