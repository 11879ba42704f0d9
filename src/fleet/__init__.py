"""fleet: run the Teradata ModelOps lifecycle of hundreds of models at once, resumably.

From Python, a night is one call (the CLI's `fleet run` makes the same one):

    import anyio
    import fleet

    settings = fleet.load_settings(Path("fleet.toml"))
    result = anyio.run(fleet.run_batch, settings)
    print(result.status, result.succeeded, result.failed)
"""

from __future__ import annotations

import sys

# `fleet` on a command line imports this package first: Ctrl-C while its modules load (most
# of the first half second) ends like any later interrupt, with one line and 130.
try:
    from fleet.batch import RunRequest, run_batch
    from fleet.config import load_settings
    from fleet.errors import (
        ApiError,
        AuthError,
        ConfigError,
        Conflict,
        FleetError,
        InvalidTransition,
        LeaseHeld,
        LeaseLost,
        NewerStateFile,
        NotFound,
        OutcomeUnknown,
        PermanentApiError,
        ProtocolError,
        RunNotFound,
        ServerUnavailable,
        StoreError,
        TransientApiError,
    )
    from fleet.progress import RunResult
    from fleet.settings import Settings
    from fleet.stages import Outcome, RunStatus
    from fleet.version import __version__
except KeyboardInterrupt:
    sys.stderr.write("fleet: interrupted\n")
    raise SystemExit(130) from None

__all__ = [
    "ApiError",
    "AuthError",
    "ConfigError",
    "Conflict",
    "FleetError",
    "InvalidTransition",
    "LeaseHeld",
    "LeaseLost",
    "NewerStateFile",
    "NotFound",
    "Outcome",
    "OutcomeUnknown",
    "PermanentApiError",
    "ProtocolError",
    "RunNotFound",
    "RunRequest",
    "RunResult",
    "RunStatus",
    "ServerUnavailable",
    "Settings",
    "StoreError",
    "TransientApiError",
    "__version__",
    "load_settings",
    "run_batch",
]
