"""Deterministic randomness: every draw is a pure function of the seed and what it is about.

Each draw seeds its own `random.Random` from a string key instead of pulling from a shared
generator, so a job's duration or a version's metrics do not depend on the order in which
requests happen to arrive.
"""

from __future__ import annotations

import functools
import math
import random
import uuid
from collections.abc import Callable

# The lifecycle jobs clients submit; a deployment made with cron "@once" also starts a
# SCORING job of its own.
JOB_TYPES = ("TRAINING", "EVALUATION", "DEPLOYMENT", "RETIREMENT")
SCORING = "SCORING"

_TRAINING_MEDIAN_S = 600.0
_TRAINING_SIGMA = 0.5
_TRAINING_BOUNDS_S = (120.0, 3600.0)
_UNIFORM_BOUNDS_S = {
    "EVALUATION": (40.0, 90.0),
    "DEPLOYMENT": (5.0, 30.0),
    "RETIREMENT": (3.0, 15.0),
    SCORING: (20.0, 120.0),
}
# Each job's duration is its model's base duration times a log-normal jitter, at most ±15%.
_JITTER_SIGMA = 0.05
_JITTER_LOW, _JITTER_HIGH = 0.85, 1.15
_METRIC_NAMES = ("Accuracy", "Recall", "Precision", "f1-score")
_METRIC_BOUNDS = (0.60, 0.99)


def _rng(*parts: object) -> random.Random:
    return random.Random(":".join(str(part) for part in parts))  # noqa: S311 - simulation


def uuid_from(rng: random.Random) -> str:
    """A version-4 UUID string drawn from `rng`."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def model_id(seed: int, index: int) -> str:
    """The id of the `index`-th model of the project."""
    return uuid_from(_rng(seed, "model", index))


def job_duration(seed: int, model: str, job_type: str, nth: int) -> float:
    """Simulated seconds the `nth` (1-based) job of `job_type` for `model` runs; job 0 is
    the one last night ran, which the world starts with.

    A model's base duration for the type, times a small jitter per job, kept within the type's
    bounds: a model that trains for 20 minutes tonight trains for about 20 minutes every night,
    which is what lets a client predict a job's end from its history.
    """
    low, high = _bounds(job_type)
    jitter_rng = _rng(seed, model, job_type, nth, "jitter")
    jitter = min(max(jitter_rng.lognormvariate(0.0, _JITTER_SIGMA), _JITTER_LOW), _JITTER_HIGH)
    return min(max(base_duration(seed, model, job_type) * jitter, low), high)


@functools.lru_cache(maxsize=65_536)  # seeding a generator costs more than the draw
def base_duration(seed: int, model: str, job_type: str) -> float:
    """The typical duration of a model's jobs of `job_type`, which each job jitters around."""
    low, high = _bounds(job_type)
    rng = _rng(seed, model, job_type, "base")
    if job_type == "TRAINING":
        return min(
            max(rng.lognormvariate(math.log(_TRAINING_MEDIAN_S), _TRAINING_SIGMA), low), high
        )
    return rng.uniform(low, high)


def _bounds(job_type: str) -> tuple[float, float]:
    if job_type == "TRAINING":
        return _TRAINING_BOUNDS_S
    try:
        return _UNIFORM_BOUNDS_S[job_type]
    except KeyError:
        raise ValueError(
            f"unknown job type {job_type!r}; expected one of {(*JOB_TYPES, SCORING)}"
        ) from None


def job_fails(seed: int, model: str, job_type: str, nth: int, error_rate: float) -> bool:
    """Whether that job ends in ERROR; independent of its duration draw."""
    return _below(error_rate, lambda: _rng(seed, model, _job_type(job_type), nth, "fail"))


def job_sticks(seed: int, model: str, job_type: str, nth: int, stuck_rate: float) -> bool:
    """Whether that job never ends (RUNNING for ever); independent of the other draws."""
    return _below(stuck_rate, lambda: _rng(seed, model, _job_type(job_type), nth, "stuck"))


def _job_type(job_type: str) -> str:
    if job_type not in JOB_TYPES:
        raise ValueError(f"unknown job type {job_type!r}; expected one of {JOB_TYPES}")
    return job_type


def _below(rate: float, rng: Callable[[], random.Random]) -> bool:
    """A draw that comes out under `rate`. At rate 0 no draw is made (random() < 0 never
    holds), and the generator is not even built: most worlds draw no failure at all."""
    return rate > 0 and rng().random() < rate


def metrics(seed: int, model: str, version: int) -> dict[str, str]:
    """Evaluation metrics of a model version, as the strings ModelOps reports.

    A model has a stable quality level and each version wanders around it, so a retrained
    version is sometimes better and sometimes worse than the one in production.
    """
    quality = _rng(seed, model, "quality").uniform(0.66, 0.93)
    rng = _rng(seed, model, "metrics", version)
    level = quality + rng.gauss(0.0, 0.03)
    # Real services print 2 decimals, some 4: clients must parse what they get, not a format.
    decimals = rng.choice((2, 3, 4))
    low, high = _METRIC_BOUNDS
    return {
        name: f"{min(max(level + rng.gauss(0.0, 0.012), low), high):.{decimals}f}"
        for name in _METRIC_NAMES
    }


def spread(seed: int, *about: object) -> random.Random:
    """A generator for one-off deterministic details (timestamps of the initial state)."""
    return _rng(seed, *about)
