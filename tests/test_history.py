"""history.py: a first night's durations from the server's history, on verified calls;
durations.py: which of them time looks and which only rank."""

from __future__ import annotations

from typing import Any

import pytest

from fleet import history
from fleet.durations import Durations
from fleet.errors import ServerUnavailable
from fleet.stages import Stage
from support import emulated

ALL = (Stage.TRAIN, Stage.EVALUATE, Stage.APPROVE, Stage.DEPLOY, Stage.RETIRE)


class Counting:
    """The emulated client, counting the requests each method makes."""

    def __init__(self, api: Any, fail: Exception | None = None) -> None:
        self._api = api
        self._fail = fail
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._api, name)

        async def call(*args: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self._fail is not None:
                raise self._fail
            return await method(*args)

        return call


async def test_versions_give_each_models_last_training_in_two_reads() -> None:
    async with emulated(models=6) as env:
        api = Counting(env.api)
        ids = [m.id for m in env.world.models()]
        wanted = history.stages_to_learn("versions", ALL)
        found = await history.learn(api, ids, wanted, at_once=4, budget_s=60)
        expected = {(m, Stage.TRAIN): env.world.duration(m, "TRAINING", 0) for m in ids}
    assert wanted == {Stage.TRAIN}
    assert found == pytest.approx(expected, abs=0.01)  # createdAt to TRAINED, in ms
    assert api.calls == {"versions": 6, "events": 6}


async def test_jobs_add_last_nights_evaluation_and_deployment() -> None:
    async with emulated(models=3) as env:
        api = Counting(env.api)
        ids = [m.id for m in env.world.models()]
        wanted = history.stages_to_learn("jobs", ALL)
        found = await history.learn(api, ids, wanted, at_once=2, budget_s=60)
        kinds = {Stage.TRAIN: "TRAINING", Stage.EVALUATE: "EVALUATION", Stage.DEPLOY: "DEPLOYMENT"}
        expected = {
            (m, s): env.world.duration(m, kind, 0) for m in ids for s, kind in kinds.items()
        }
    assert found == pytest.approx(expected, abs=0.01)
    assert api.calls["get_job"] == 6  # each model's evaluation and deployment job, by id


async def test_only_the_stages_the_run_performs_are_read() -> None:
    assert history.stages_to_learn("jobs", (Stage.EVALUATE, Stage.APPROVE)) == {Stage.EVALUATE}
    assert history.stages_to_learn("off", ALL) == frozenset()
    assert history.stages_to_learn("versions", (Stage.EVALUATE,)) == frozenset()


async def test_a_model_without_a_version_is_left_unknown() -> None:
    async with emulated(models=3, initial_deployed=False) as env:
        ids = [m.id for m in env.world.models()]
        found = await history.learn(env.api, ids, frozenset({Stage.TRAIN}), at_once=2, budget_s=60)
    assert found == {}


async def test_a_history_that_cannot_be_read_is_given_up_after_three_failures() -> None:
    async with emulated(models=20) as env:
        api = Counting(env.api, fail=ServerUnavailable("down"))
        ids = [m.id for m in env.world.models()]
        found = await history.learn(api, ids, frozenset({Stage.TRAIN}), at_once=1, budget_s=60)
    assert found == {}
    assert api.calls == {"versions": 3}


async def test_the_read_is_bounded_in_time() -> None:
    async with emulated(models=4) as env:
        ids = [m.id for m in env.world.models()]
        found = await history.learn(env.api, ids, frozenset({Stage.TRAIN}), at_once=2, budget_s=0)
    assert found == {}


def test_history_ranks_models_at_once_and_times_looks_once_calibrated() -> None:
    durations = Durations({("a", Stage.TRAIN): 100.0})
    history = {(m, Stage.TRAIN): 10.0 * s for m, s in (("a", 90), ("b", 30), ("c", 60))}
    durations.rank_by({**history, ("d", Stage.TRAIN): 200.0, ("e", Stage.TRAIN): 40.0})
    assert durations.timing("a", Stage.TRAIN) == 100.0  # the state file's figure wins
    assert durations.timing("b", Stage.TRAIN) is None  # not calibrated yet
    assert durations.work_left("b", [Stage.TRAIN, Stage.APPROVE]) == 300.0
    assert durations.unknown(["a", "b", "x"], [Stage.TRAIN, Stage.APPROVE]) == ["x"]
    # Tonight's jobs run a tenth of history's (a clock ten times faster, say): after three,
    # history times the stage's looks, scaled by the median ratio.
    durations.finished("b", Stage.TRAIN, 29.0)
    durations.finished("c", Stage.TRAIN, 61.0)
    assert durations.timing("d", Stage.TRAIN) is None
    durations.finished("e", Stage.TRAIN, 4.0)
    assert durations.timing("d", Stage.TRAIN) == pytest.approx(200.0 * 4.0 / 40.0)  # median
    assert durations.timing("b", Stage.TRAIN) == 29.0  # its own, from tonight
    assert durations.timing("d", Stage.EVALUATE) is None  # each stage calibrates alone


def test_a_model_with_no_figure_counts_as_its_stages_typical_one() -> None:
    durations = Durations()
    assert durations.work_left("x", ALL) == 0.0
    durations.finished("a", Stage.TRAIN, 100.0)
    durations.finished("b", Stage.TRAIN, 300.0)
    durations.finished("c", Stage.TRAIN, 200.0)
    durations.finished("a", Stage.EVALUATE, -1.0)  # no duration: ignored
    assert durations.typical(Stage.TRAIN) == 200.0
    assert durations.work_left("x", ALL) == 200.0
    assert durations.work_left("b", ALL) == 300.0
    assert durations.timing("a", Stage.TRAIN) == 100.0  # it times a later attempt
    assert durations.timing("x", Stage.TRAIN) is None  # another model's says nothing


def test_a_job_followed_before_calibration_is_told_when_history_can_time_it() -> None:
    durations = Durations({("timed", Stage.TRAIN): 50.0})
    durations.rank_by({(m, Stage.TRAIN): 100.0 for m in ("a", "b", "c", "d")})
    assert durations.calibrating("timed", Stage.TRAIN) is None  # timed already
    assert durations.calibrating("nobody", Stage.TRAIN) is None  # nothing to wait for
    event = durations.calibrating("d", Stage.TRAIN)
    assert event is not None
    assert durations.calibrating("c", Stage.TRAIN) is event  # one per stage
    for model in ("a", "b"):
        durations.finished(model, Stage.TRAIN, 10.0)
    assert not event.is_set()
    durations.finished("c", Stage.TRAIN, 10.0)
    assert event.is_set()
    assert durations.timing("d", Stage.TRAIN) == pytest.approx(10.0)
    assert durations.calibrating("d", Stage.TRAIN) is None  # calibrated: timed at once
