"""fleet: run the Teradata ModelOps lifecycle of hundreds of models at once, resumably."""

from __future__ import annotations

from fleet.version import __version__

__all__ = ["__version__"]
