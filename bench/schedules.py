"""Zero-overhead schedules of one night's jobs: what scheduling alone would give.

Each model's jobs of the night form a chain (training, evaluation, deployment, retirement, in
the order the emulator created them), each taking the time it took that night. With `capacity`
jobs at once and no time lost anywhere (a job starts the instant a slot and its model are
free, an end is seen the instant it happens), three ways to hand out slots:

- `list_order_jobs`: a freed slot goes to the job that has been ready longest, models taken
  in list order at the start; a slot is held for one job (Airflow's task slots and queue);
- `list_order_models`: a slot is held for a model's whole chain, models taken in list order
  (a worker per model: the baseline, and fleet when `concurrency` counts models);
- `longest_first`: a freed slot goes to the ready job with the most work left in its chain
  (critical path first), a slot held for one job.

A client's makespan over `longest_first` is what it loses to overhead plus what it does not
know (tonight's durations); over the list order, what its order wins. The lower bound is the
longest chain or the work spread over every slot, whichever is larger.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Chain = list[float]


def chains(jobs: Sequence[Mapping[str, Any]], order: Sequence[str]) -> list[Chain]:
    """Each model's job durations in creation order, models in `order` (list order; models
    with no job that night are left out, models not in `order` go last)."""
    by_model: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for job in jobs:
        if job.get("ends_at") is not None:
            by_model[job["model_id"]].append(job)
    position = {model: index for index, model in enumerate(order)}
    models = sorted(by_model, key=lambda m: position.get(m, len(position)))
    return [
        [j["ends_at"] - j["created_at"] for j in sorted(by_model[m], key=lambda j: j["created_at"])]
        for m in models
    ]


def lower_bound(models: Sequence[Chain], capacity: int) -> float:
    longest = max((sum(chain) for chain in models), default=0.0)
    return max(longest, sum(sum(chain) for chain in models) / capacity)


def by_jobs(
    models: Sequence[Chain], capacity: int, rank: Callable[[int, int, float], float]
) -> float:
    """Makespan when a freed slot goes to the ready job of the lowest
    `rank(model, step, ready_at)`, the model listed first among equals."""
    ready = [(rank(m, 0, 0.0), m, 0) for m, chain in enumerate(models) if chain]
    heapq.heapify(ready)
    running: list[tuple[float, int, int]] = []  # (ends at, model, step)
    now = end = 0.0
    while ready or running:
        while ready and len(running) < capacity:
            _, model, step = heapq.heappop(ready)
            heapq.heappush(running, (now + models[model][step], model, step))
        now, model, step = heapq.heappop(running)
        end = max(end, now)
        if step + 1 < len(models[model]):
            heapq.heappush(ready, (rank(model, step + 1, now), model, step + 1))
    return end


def list_order_jobs(models: Sequence[Chain], capacity: int) -> float:
    """First ready, first served; at the start, in list order (Airflow's task queue)."""
    return by_jobs(models, capacity, lambda _model, _step, ready_at: ready_at)


def longest_first(models: Sequence[Chain], capacity: int) -> float:
    left = [[sum(chain[step:]) for step in range(len(chain))] for chain in models]
    return by_jobs(models, capacity, lambda model, step, _ready_at: -left[model][step])


def list_order_models(models: Sequence[Chain], capacity: int) -> float:
    """Makespan when each of `capacity` workers runs one model's whole chain at a time."""
    workers = [0.0] * min(capacity, len(models))
    heapq.heapify(workers)
    end = 0.0
    for chain in models:
        start = heapq.heappop(workers)
        finish = start + sum(chain)
        end = max(end, finish)
        heapq.heappush(workers, finish)
    return end


def schedules(
    jobs: Sequence[Mapping[str, Any]], order: Sequence[str], capacity: int
) -> dict[str, float]:
    models = chains(jobs, order)
    return {
        "capacity": capacity,
        "lower_bound_s": round(lower_bound(models, capacity), 1),
        "list_order_models_s": round(list_order_models(models, capacity), 1),
        "list_order_jobs_s": round(list_order_jobs(models, capacity), 1),
        "longest_first_s": round(longest_first(models, capacity), 1),
    }
