"""The plausible ModelOps servers fleet must work on, and how fleet is run against each.

One list for the test suite (tests/test_conformance.py: 30 models on virtual time) and for
bench/conformance.py (100 models over real HTTP, every case with 5% of POST answers lost).
`server` holds emulator settings (`fleet.sim.Behaviour` fields, faults), `fleet` holds fleet
settings by dotted path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# POST answers cut off after the server applied the request: each one must be reconciled.
LOST_POSTS: dict[str, Any] = {"drop_rate": 0.05, "fault_methods": ("POST",)}
AUTO = {"poll_mode": "auto"}
SORTED = {"job_sort": "honoured", "updated_at": "fresh"}


@dataclass(frozen=True)
class Case:
    server: dict[str, Any] = field(default_factory=dict)
    fleet: dict[str, Any] = field(default_factory=dict)
    discover: bool = False  # the models come from [discover] names, not from a list


CASES = {
    "default": Case(),
    "default, auto": Case(fleet=AUTO),
    "sort honoured, updatedAt fresh, auto": Case(SORTED, AUTO),
    "sort honoured, updatedAt stale, auto": Case({**SORTED, "updated_at": "stale"}, AUTO),
    "sort honoured, updatedAt absent, auto": Case({"job_sort": "honoured"}, AUTO),
    "sort answered 500, auto": Case({"job_sort": "error"}, AUTO),
    "findByStatusIn present, auto": Case({"status_finder": True}, AUTO),
    "a third of job reads without status": Case({"status_missing_rate": 0.33}),
    "a third without status, sorted, auto": Case({**SORTED, "status_missing_rate": 0.33}, AUTO),
    "other job type names": Case({"job_types": "other"}),
    "EVALUATED event at once": Case({"evaluated_lag_s": 0.0}),
    "EVALUATED event 40 s late": Case({"evaluated_lag_s": 40.0}),
    "archived models, discovered": Case({"archived_models": 5}, discover=True),
    "no job history (fresh project)": Case({"job_history": False}),
    "events as a bare list": Case({"events_listing": "list"}),
    "events route absent": Case({"events_listing": "absent"}),
    "deployed version reads DEPLOYED": Case({"deployed_version_status": True}),
    "optimistic server, auto": Case({"profile": "optimistic"}, AUTO),
    "5% of POST answers lost": Case(LOST_POSTS),
    "sort dropped + no finder + fresh project, auto": Case(
        {"job_sort": "dropped", "status_finder": False, "job_history": False}, AUTO
    ),
    "types renamed + 5% of POST answers lost": Case({"job_types": "other", **LOST_POSTS}),
    "everything unhelpful at once": Case(
        {
            "job_types": "other",
            "status_missing_rate": 0.33,
            "evaluated_lag_s": 40.0,
            "events_listing": "absent",
            "job_history": False,
            "job_sort": "error",
            **LOST_POSTS,
        },
        AUTO,
    ),
}
