"""Durations: how long fleet expects each model's jobs to run, and what is left of a model.

Three sources, best first. The state file's earlier runs say what a job took last time fleet
ran it, in fleet's own seconds: they time the job watcher's looks. The server's history
(history.py) says what it took last night, whoever ran it, in the server's seconds, on
whatever data it had then: it ranks models (admission order, who gets a free job slot) from
the start, and times looks only once calibrated: when `CALIBRATED_AFTER` jobs of a stage have
ended tonight for models it knew, each later job's history is scaled by the median of
tonight's durations over history's. A clock that runs faster than fleet's (the emulator's) or
a night on more data shows in that ratio; a history that predicts nothing shows as a job
looked at late once, not for the whole night. A job handed to the watcher before its stage
was calibrated is handed again, timed, once it is (`calibrating`). Tonight's finished jobs
also teach each stage's typical duration, which stands in for a model with no figure of its
own when jobs are ranked, never to time a look: another model's duration says nothing of
when this job ends.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence

import anyio

from fleet.stages import JOB_NOUNS, Stage

Key = tuple[str, Stage]
_JOB_STAGES = frozenset(JOB_NOUNS)  # the stages that run a remote job
# Jobs of a stage that must end tonight before history times that stage's looks.
CALIBRATED_AFTER = 3


class Durations:
    """Seconds each (model id, stage) is expected to take: the figures that time looks,
    those that only rank until calibrated, each stage's typical duration, and the work a
    model has left."""

    def __init__(self, timed: Mapping[Key, float] | None = None) -> None:
        self._timed: dict[Key, float] = {}
        self._history: dict[Key, float] = {}
        self._by_stage: dict[Stage, list[float]] = {stage: [] for stage in Stage}
        # Tonight's durations over history's, per stage, sorted.
        self._ratios: dict[Stage, list[float]] = {stage: [] for stage in Stage}
        self._calibrated: dict[Stage, anyio.Event] = {}  # for the jobs that wait for it
        for key, seconds in (timed or {}).items():
            if seconds > 0:
                self._timed[key] = seconds
                bisect.insort(self._by_stage[key[1]], seconds)

    def timing(self, model_id: str, stage: Stage) -> float | None:
        """Seconds the model's job of `stage` is expected to run, to time looks by: its own
        figure, else its history once the stage is calibrated; None: no prediction."""
        key = (model_id, stage)
        own = self._timed.get(key)
        if own is not None:
            return own
        past = self._history.get(key)
        ratios = self._ratios[stage]
        if past is None or len(ratios) < CALIBRATED_AFTER:
            return None
        return past * ratios[len(ratios) // 2]

    def calibrating(self, model_id: str, stage: Stage) -> anyio.Event | None:
        """Set once the stage is calibrated, for a job that history will then time; None:
        nothing to wait for (the model's job is timed already, or history knows nothing of
        it)."""
        key = (model_id, stage)
        if key in self._timed or key not in self._history:
            return None
        if len(self._ratios[stage]) >= CALIBRATED_AFTER:
            return None
        return self._calibrated.setdefault(stage, anyio.Event())

    def rank_by(self, history: Mapping[Key, float]) -> None:
        """The server's history: ranks models at once, times looks once calibrated."""
        for key, seconds in history.items():
            if key not in self._timed and seconds > 0:
                self._history[key] = seconds
                bisect.insort(self._by_stage[key[1]], seconds)

    def finished(self, model_id: str, stage: Stage, seconds: float) -> None:
        """Tonight's job of the model ended after `seconds`: the stage's typical duration
        and its calibration learn it, and it times a later attempt of the same stage."""
        if seconds <= 0:
            return
        key = (model_id, stage)
        bisect.insort(self._by_stage[stage], seconds)
        past = self._history.get(key)
        if past is not None and key not in self._timed:
            bisect.insort(self._ratios[stage], seconds / past)
            if len(self._ratios[stage]) == CALIBRATED_AFTER and stage in self._calibrated:
                self._calibrated[stage].set()
        self._timed.setdefault(key, seconds)

    def typical(self, stage: Stage) -> float:
        """The median of the stage's known durations; 0 while none is known."""
        seen = self._by_stage[stage]
        return seen[len(seen) // 2] if seen else 0.0

    def work_left(self, model_id: str, stages: Iterable[Stage]) -> float:
        """Seconds of remote jobs the model has left in `stages`: its own figures (timed,
        else history), else the typical ones."""
        return sum(
            self._timed.get((model_id, stage))
            or self._history.get((model_id, stage))
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
            if any((m, s) not in self._timed and (m, s) not in self._history for s in wanted)
        ]
