"""Secrets stay secret through the `fleet` command: a run with client credentials, short-lived
tokens, failures and retries at debug level against the emulator on loopback HTTP, then every
log line, the summary and the state file are searched for them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cli_support import TOKEN, empty_config, emulator_here
from fleet.sim import SimSettings
from fleet.sim.oauth import TOKEN_PREFIX

if TYPE_CHECKING:
    from conftest import FleetHere

STATIC_TOKEN = "static-e2e-token-9d2f"
CLIENT_SECRET = "client-secret-e2e-41ac"


def test_no_secret_reaches_logs_errors_or_the_state_file(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """Tokens expire mid-run and are renewed; none of them, nor the secret, is written down."""
    emulated = SimSettings(
        models=25, seed=3, token=TOKEN, client_id="fleet-nightly",
        client_secret=CLIENT_SECRET,
        token_lifetime_s=12_000,  # emulator seconds: some 80 requests on its Ticking clock
        job_error_rate=0.1, http_500_rate=0.03, http_503_rate=0.02, drop_rate=0.02,
        retry_after_s=0,  # a 503 asks for no wait: fleet waits in real time in-process
    )  # fmt: skip
    with emulator_here(tmp_path, emulated) as served:
        root = served.url.removesuffix("/modelops/core")
        done = fleet_here(
            "run", "--run-id", "secure", "--models-file", "models.csv",
            "--config", str(empty_config(tmp_path)), "--poll-interval", "0.05",
            "--log-level", "debug", "--api.auth", "client_credentials",
            "--api.token-url", f"{root}/oauth2/token", "--api.client-id", "fleet-nightly",
            "--attempts.train", "2",
            cwd=tmp_path,
            env={"FLEET_API__URL": served.url, "FLEET_API__CLIENT_SECRET": CLIENT_SECRET},
        )  # fmt: skip
        stats = served.stats()
    assert done.code == 1, done.err  # the injected job errors fail some models
    assert isinstance(stats["tokens_issued"], int)
    assert stats["tokens_issued"] >= 2, "tokens must have expired and been renewed mid-run"
    output = done.out + done.err
    assert '"fleet.stage.succeeded"' in output  # the debug run really logged
    files = [p for p in tmp_path.iterdir() if p.name.startswith("fleet.db")]
    assert files
    for secret in (CLIENT_SECRET, TOKEN_PREFIX, STATIC_TOKEN):
        assert secret not in output
        for path in files:
            assert secret.encode() not in path.read_bytes(), path.name


def test_a_static_token_never_reaches_the_output(tmp_path: Path, fleet_here: FleetHere) -> None:
    """With a bearer token from the environment and a wrong one rejected, neither is printed."""
    with emulator_here(tmp_path, SimSettings(models=3, token=TOKEN)) as served:
        done = fleet_here(
            "run", "--models-file", "models.csv", "--config", str(empty_config(tmp_path)),
            "--log-level", "debug", cwd=tmp_path,
            env={"FLEET_API__URL": served.url, "FLEET_API__TOKEN": STATIC_TOKEN},
        )  # fmt: skip
    assert done.code == 3
    assert "token rejected" in done.err
    assert STATIC_TOKEN not in done.out + done.err


def test_secret_flags_are_refused_before_anything_runs(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """--api.token on the command line is refused with exit 2, pointing at the variable."""
    done = fleet_here("run", "--api.token", STATIC_TOKEN, cwd=tmp_path)
    assert done.code == 2
    assert "FLEET_API__TOKEN" in done.err
    assert STATIC_TOKEN not in done.err
