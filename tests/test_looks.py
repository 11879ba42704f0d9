"""The look schedule of a predicted job, and the spread of tonight's ends it is drawn from."""

from __future__ import annotations

import math
import random

import pytest

from fleet.looks import BACKOFF, GAP, PRIOR, Z_FIRST, Schedule, Spread, Spreads


def _ended_like(spreads: Spreads, kind: str, ratios: list[float], expected: float = 100.0) -> None:
    """Jobs of `kind` ended at these ratios of their prediction, each seen by a schedule drawn
    from what `spreads` knew at the time: an end before the first look is known only as
    that look."""
    for ratio in ratios:
        first = spreads.of(kind).schedule(expected, 5.0).first
        ran = ratio * expected
        spreads.ended(kind, expected, max(ran, first), at_first_look=ran <= first)


def _lognormal(sigma: float, n: int, *, seed: int = 7, centre: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [centre * rng.lognormvariate(0.0, sigma) for _ in range(n)]


def test_an_unpredicted_job_backs_off_from_the_floor_up_to_the_longest_gap() -> None:
    """Today's behaviour for a job with no prediction: soon, then a fifth of its run."""
    schedule = Schedule.unpredicted(5.0)
    assert schedule.first == 0.0
    assert schedule.gap(1.0, 0.5) == 0.5
    assert schedule.gap(10.0, 0.5) == pytest.approx(10.0 * BACKOFF)
    assert schedule.gap(600.0, 0.5) == 5.0


def test_a_predicted_job_is_first_looked_at_before_its_expected_end() -> None:
    spread = Spread(0.0, 0.07, 200)
    schedule = spread.schedule(600.0, 5.0)
    assert schedule.first == pytest.approx(600.0 * math.exp(-Z_FIRST * 0.07) * (1 + GAP))
    assert 0.8 * 600.0 < schedule.first < 600.0
    assert schedule.dense_until > 600.0 * 1.2


def test_near_its_end_a_job_is_looked_at_a_share_of_its_run_apart_past_poll_interval() -> None:
    """A 10-minute training is read every `GAP` of its run near its end (36 s), not every
    poll_interval: that is what keeps it to a few reads."""
    schedule = Spread(0.0, 0.07, 200).schedule(600.0, 5.0)
    assert schedule.gap(600.0, 0.5) == pytest.approx(GAP * 600.0)
    assert schedule.gap(600.0, 0.5) > 5.0


def test_a_short_job_is_looked_at_no_closer_than_the_floor() -> None:
    schedule = Spread(0.0, 0.07, 200).schedule(5.0, 5.0)
    assert schedule.gap(5.0, 0.5) == 0.5


def test_past_its_dense_looks_a_job_backs_off_to_its_longest_gap() -> None:
    """An overrun: a fifth of its run apart, at most max(poll_interval, GAP x expected)."""
    long_job = Spread(0.0, 0.07, 200).schedule(600.0, 5.0)
    assert long_job.gap(2 * long_job.dense_until, 0.5) == pytest.approx(GAP * 600.0)
    short_job = Spread(0.0, 0.07, 200).schedule(10.0, 5.0)
    assert short_job.gap(1000.0, 0.5) == 5.0
    assert short_job.gap(short_job.dense_until * 1.01, 0.5) == pytest.approx(
        BACKOFF * short_job.dense_until * 1.01
    )


def test_before_any_job_has_ended_the_prior_stands_in() -> None:
    spreads = Spreads()
    assert spreads.of("train") is PRIOR
    _ended_like(spreads, "train", [1.0] * 9)
    assert spreads.of("train") is PRIOR  # nine ends are not yet a spread


def test_the_spread_is_learned_from_tonights_ends() -> None:
    """Ends spread lognormally by 7% around the prediction: that is what is learned, though
    the earliest are known only as "before the first look"."""
    spreads = Spreads()
    _ended_like(spreads, "train", _lognormal(0.07, 400))
    spread = spreads.of("train")
    assert spread.jobs == 200  # the latest window
    assert spread.sigma == pytest.approx(0.07, rel=0.25)
    assert spread.mu == pytest.approx(0.0, abs=0.02)


def test_a_server_slower_tonight_moves_the_centre() -> None:
    spreads = Spreads()
    _ended_like(spreads, "evaluate", _lognormal(0.05, 200, centre=1.3))
    assert math.exp(spreads.of("evaluate").mu) == pytest.approx(1.3, rel=0.03)


def test_each_stage_learns_its_own_spread_and_borrows_until_it_has_one() -> None:
    spreads = Spreads()
    _ended_like(spreads, "train", _lognormal(0.05, 100))
    _ended_like(spreads, "deploy", _lognormal(0.2, 5, seed=3))
    borrowed = spreads.of("deploy")
    assert borrowed.jobs >= 100  # every stage's ends, while deploy has fewer than ten
    _ended_like(spreads, "deploy", _lognormal(0.2, 100, seed=4))
    assert spreads.of("deploy").sigma > 2 * spreads.of("train").sigma


def test_exact_predictions_keep_the_first_look_before_the_expected_end() -> None:
    """Ends exactly as predicted: the spread is read as its least, which still puts the
    first look before the expected end, so that the ends are seen after a look that missed
    them (an end before the first look says nothing of the spread)."""
    spreads = Spreads()
    _ended_like(spreads, "deploy", [1.0] * 200)
    first = spreads.of("deploy").schedule(100.0, 5.0).first
    assert 95.0 < first < 100.0


def test_when_most_jobs_end_before_their_first_look_it_comes_much_earlier() -> None:
    """A server that got much faster: jobs end before their first look; the next looks come
    earlier, not later."""
    spreads = Spreads()
    _ended_like(spreads, "train", _lognormal(0.05, 50))
    before = spreads.of("train").schedule(100.0, 5.0).first
    _ended_like(spreads, "train", _lognormal(0.05, 200, centre=0.6))
    after = spreads.of("train").schedule(100.0, 5.0).first
    assert after < before * 0.9
    _ended_like(spreads, "train", _lognormal(0.05, 400, centre=0.6, seed=8))
    assert spreads.of("train").schedule(100.0, 5.0).first < 60.0


def test_jobs_with_nothing_to_learn_from_are_left_out() -> None:
    spreads = Spreads()
    for _ in range(20):
        spreads.ended("train", 0.0, 10.0, at_first_look=False)
        spreads.ended("train", 10.0, 0.0, at_first_look=False)
    assert spreads.of("train") is PRIOR
