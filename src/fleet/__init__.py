"""fleet: run the Teradata ModelOps lifecycle of hundreds of models at once, resumably.

From Python, a night is one call (the CLI's `fleet run` makes the same one):

    import anyio
    import fleet

    settings = fleet.load_settings(Path("fleet.toml"))
    result = anyio.run(fleet.run_batch, settings)
    print(result.status, result.succeeded, result.failed)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fleet.version import __version__

if TYPE_CHECKING:
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
    from fleet.selection import Selection
    from fleet.settings import Settings
    from fleet.stages import Outcome, RunStatus

# The exports load on first use (PEP 562): `import fleet` costs nothing until one is asked
# for, and the `fleet` command (fleet.cli) loads the engine under its own Ctrl-C guard rather
# than through this package.
_HOMES = {
    "RunRequest": "batch",
    "run_batch": "batch",
    "load_settings": "config",
    "RunResult": "progress",
    "Selection": "selection",
    "Settings": "settings",
    "Outcome": "stages",
    "RunStatus": "stages",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name, "errors" if name in __all__ else None)
    if home is None:
        raise AttributeError(f"module 'fleet' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fleet.{home}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
    "Selection",
    "ServerUnavailable",
    "Settings",
    "StoreError",
    "TransientApiError",
    "__version__",
    "load_settings",
    "run_batch",
]
