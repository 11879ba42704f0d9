"""How the emulated server answers where nothing real was ever recorded.

ModelOps is a Spring Data REST service. Where a real answer was recorded (the fixtures in
tests/fixtures/) the emulator gives that answer, always. Where none was, its DEFAULT is what a
Spring Data REST service does, which is usually the least helpful plausible answer, and each
switch below gives one other plausible answer. A client that works against every combination
does not depend on a guess.

The `optimistic` preset is the server fleet's optimisations hope for: every unverified
shortcut works (sorting jobs by `updatedAt`, a status finder, the EVALUATED event at the
instant its job completes, a deployed version reading DEPLOYED), with nothing archived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from fleet.sim import draws

JobSort = Literal["dropped", "honoured", "error"]
UpdatedAt = Literal["absent", "fresh", "stale"]
JobTypes = Literal["guessed", "other"]
EventsListing = Literal["hal", "list", "absent"]
Profile = Literal["default", "optimistic"]

PROFILES: tuple[str, ...] = get_args(Profile)

# Names a server might give train and retire jobs instead of fleet's guesses TRAINING and
# RETIREMENT (EVALUATION, DEPLOYMENT and IMPORT are recorded). tmo's JobAutomationMode says
# "training"; nothing names a retirement.
ALTERNATIVE_JOB_TYPES: tuple[tuple[str, str], ...] = (
    ("TRAIN", "RETIRE"),
    ("MODEL_TRAINING", "MODEL_RETIREMENT"),
    ("training", "retirement"),
)

_CHOICES: dict[str, tuple[str, ...]] = {
    "job_sort": get_args(JobSort),
    "updated_at": get_args(UpdatedAt),
    "job_types": get_args(JobTypes),
    "events_listing": get_args(EventsListing),
}
_RATES = ("status_missing_rate", "archived_versions_rate")


@dataclass(frozen=True, slots=True)
class Behaviour:
    """The plausible-server switches; the defaults are Spring Data REST's answers.

    - `job_sort`: `GET /api/jobs?sort=updatedAt,…`. "dropped": 200, unsorted (oldest first),
      as SDR drops a sort on a property the entity's JSON lacks; "honoured": sorted by the
      server's own last status change; "error": 500. `sort=createdAt` always works.
    - `updated_at`: a job's JSON carries no `updatedAt` ("absent", as every recorded job), one
      that moves with each status change ("fresh"), or one stuck at `createdAt` ("stale").
      With "stale" an honoured sort by `updatedAt` is creation order.
    - `status_finder`: `GET /api/jobs/search/findByStatusIn` exists; without it, 404.
    - `status_missing_rate`: the share of job reads whose body lacks `status`.
    - `job_types`: train and retire jobs are TRAINING and RETIREMENT ("guessed"), or one
      seeded pair of `ALTERNATIVE_JOB_TYPES` ("other").
    - `evaluated_lag_s`: simulated seconds from an evaluation's COMPLETED to its EVALUATED
      event (`math.inf`: never).
    - `archived_models`: archived models listed after the active ones, never deployed.
    - `archived_versions_rate`: the share of models with a newer, archived, TRAINED version.
    - `job_history`: last night's train, evaluate and deploy jobs are in the job list.
    - `events_listing`: `GET /api/trainedModels/{id}/events` is HAL without a page ("hal"),
      a bare JSON array ("list"), or 404 ("absent").
    - `deployed_version_status`: a deployed version's own status reads DEPLOYED (and RETIRED
      after retirement); by default it stays APPROVED and only the deployment says so.
    """

    job_sort: JobSort = "dropped"
    updated_at: UpdatedAt = "absent"
    status_finder: bool = False
    status_missing_rate: float = 0.0
    job_types: JobTypes = "guessed"
    evaluated_lag_s: float = 5.0
    archived_models: int = 2
    archived_versions_rate: float = 0.1
    job_history: bool = True
    events_listing: EventsListing = "hal"
    deployed_version_status: bool = False

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        for name in _RATES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if math.isnan(self.evaluated_lag_s) or self.evaluated_lag_s < 0:
            raise ValueError(f"evaluated_lag_s must be >= 0 or inf, got {self.evaluated_lag_s}")
        count = self.archived_models
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"archived_models must be an integer >= 0, got {count!r}")

    @classmethod
    def optimistic(cls, **overrides: Any) -> Behaviour:
        """Every unverified optimisation works: the server fleet's shortcuts hope for."""
        return cls(
            **{
                "job_sort": "honoured",
                "updated_at": "fresh",
                "status_finder": True,
                "evaluated_lag_s": 0.0,
                "deployed_version_status": True,
                "archived_models": 0,
                "archived_versions_rate": 0.0,
                "job_history": True,
                **overrides,
            }
        )

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> Behaviour:
        """The preset `name` ("default" or "optimistic") with `overrides` on top."""
        if name == "optimistic":
            return cls.optimistic(**overrides)
        if name == "default":
            return cls(**overrides)
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {name!r}")

    @property
    def needs_job_index(self) -> bool:
        """Whether any answer needs jobs by status or by last change (the world's job index)."""
        by_change = self.job_sort == "honoured" and self.updated_at != "stale"
        return self.status_finder or by_change

    def job_type_names(self, seed: int) -> dict[str, str]:
        """What the server calls each canonical job type; the world keeps the canonical ones."""
        if self.job_types == "guessed":
            return {}
        train, retire = draws.spread(seed, "job-types").choice(ALTERNATIVE_JOB_TYPES)
        return {"TRAINING": train, "RETIREMENT": retire}
