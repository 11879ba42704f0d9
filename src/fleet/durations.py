"""Durations: how long fleet expects each model's jobs to run, and what is left of a model.

Three sources, best first. The state file's earlier runs say what a job took last time fleet
ran it, in fleet's own seconds: those time the job watcher's looks (a model's mapping entry).
The server's history (history.py) says what it took last night, whoever ran it: that only
ranks models (admission order, who gets a free job slot), because a duration read from
another clock, or from a night that ran on other data, is good enough to tell a long chain
from a short one, not to say when to look. Tonight's finished jobs teach each stage's typical
duration, which stands in for a model with no figure of its own when jobs are ranked, never
to time a look: another model's duration says nothing of when this job ends.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence

from fleet.stages import JOB_NOUNS, Stage

Key = tuple[str, Stage]
_JOB_STAGES = frozenset(JOB_NOUNS)  # the stages that run a remote job


class Durations(Mapping[Key, float]):
    """Seconds each (model id, stage) is expected to take, as a mapping of the figures that
    time looks; plus the figures that only rank, each stage's typical duration, and the work
    a model has left."""

    def __init__(self, timed: Mapping[Key, float] | None = None) -> None:
        self._timed: dict[Key, float] = {}
        self._ranked: dict[Key, float] = {}
        self._by_stage: dict[Stage, list[float]] = {stage: [] for stage in Stage}
        for key, seconds in (timed or {}).items():
            if seconds > 0:
                self._timed[key] = seconds
                bisect.insort(self._by_stage[key[1]], seconds)

    def __getitem__(self, key: Key) -> float:
        return self._timed[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._timed)

    def __len__(self) -> int:
        return len(self._timed)

    def rank_by(self, durations: Mapping[Key, float]) -> None:
        """Durations that rank models but time no look (the server's history)."""
        for key, seconds in durations.items():
            if key not in self._timed and seconds > 0:
                self._ranked[key] = seconds
                bisect.insort(self._by_stage[key[1]], seconds)

    def finished(self, model_id: str, stage: Stage, seconds: float) -> None:
        """Tonight's job of the model ended after `seconds`: the stage's typical duration
        learns it, and it times a later attempt of the same stage."""
        if seconds > 0:
            bisect.insort(self._by_stage[stage], seconds)
            self._timed.setdefault((model_id, stage), seconds)

    def typical(self, stage: Stage) -> float:
        """The median of the stage's known durations; 0 while none is known."""
        seen = self._by_stage[stage]
        return seen[len(seen) // 2] if seen else 0.0

    def work_left(self, model_id: str, stages: Iterable[Stage]) -> float:
        """Seconds of remote jobs the model has left in `stages`: its own figures (timed,
        else ranked), else the typical ones."""
        return sum(
            self._timed.get((model_id, stage))
            or self._ranked.get((model_id, stage))
            or self.typical(stage)
            for stage in stages
            if stage in _JOB_STAGES
        )

    def unknown(self, model_ids: Sequence[str], stages: Iterable[Stage]) -> list[str]:
        """The models with no figure of their own for one of `stages`' remote jobs."""
        wanted = [stage for stage in stages if stage in _JOB_STAGES]
        return [
            m
            for m in model_ids
            if any((m, s) not in self._timed and (m, s) not in self._ranked for s in wanted)
        ]
