from __future__ import annotations

import statistics
import time

import pytest

from fleet.sim import ManualClock, SimSettings, World, build, draws
from fleet.sim.clock import SimClock


def test_models_have_deterministic_ids_and_padded_names():
    """Model ids derive from the seed, names are store-0001 onward."""
    one = World(SimSettings(models=3, seed=7), ManualClock())
    two = World(SimSettings(models=3, seed=7), ManualClock())
    other = World(SimSettings(models=3, seed=8), ManualClock())
    ids = [m.id for m in one.models()]
    assert ids == [m.id for m in two.models()]
    assert ids != [m.id for m in other.models()]
    assert [m.name for m in one.models()] == ["store-0001", "store-0002", "store-0003"]
    many = World(SimSettings(models=10_001, initial_deployed=False), ManualClock())
    assert many.models()[-1].name == "store-10001"


def test_initial_state_is_one_deployed_version_per_model(world, clock):
    """Each model starts with a DEPLOYED version whose events are all in the past."""
    for model in world.models():
        (version,) = world.trained_models_of(model.id)
        assert version.status == "DEPLOYED"
        statuses = [e.status for e in version.events]
        assert statuses == ["TRAINED", "EVALUATED", "APPROVED", "DEPLOYED"]
        assert all(e.created_at < clock.now() for e in version.events)
        assert [d.status for d in version.deployments] == ["DEPLOYED"]
    assert len(world.active_deployments()) == world.settings.models


def test_without_initial_deployment_models_have_no_versions(clock):
    """initial_deployed=False starts every model empty."""
    world = World(SimSettings(models=3, initial_deployed=False), clock)
    assert all(world.trained_models_of(m.id) == [] for m in world.models())
    assert len(world.active_deployments()) == 0


def test_durations_are_deterministic_and_within_bounds(world):
    """Durations depend only on (seed, model, type, nth) and stay in each type's range."""
    model_id = world.models()[0].id
    bounds = {
        "TRAINING": (120, 3600),
        "EVALUATION": (40, 90),
        "DEPLOYMENT": (5, 30),
        "RETIREMENT": (3, 15),
    }
    for job_type, (low, high) in bounds.items():
        values = [world.duration(model_id, job_type, nth) for nth in range(1, 60)]
        assert all(low <= v <= high for v in values)
        assert values == [world.duration(model_id, job_type, nth) for nth in range(1, 60)]
        others = [world.duration(m.id, job_type, 1) for m in world.models()]
        assert len(set(others)) == len(others)
    with pytest.raises(ValueError, match="unknown job type"):
        world.duration(model_id, "COFFEE", 1)


@pytest.mark.parametrize("job_type", ["TRAINING", "EVALUATION", "DEPLOYMENT", "RETIREMENT"])
def test_a_models_jobs_take_about_as_long_every_night(job_type):
    """Each job is the model's base duration times a jitter of at most ±15%, a few % typically."""
    for index in range(40):
        model_id = draws.model_id(3, index)
        base = draws.base_duration(3, model_id, job_type)
        values = [draws.job_duration(3, model_id, job_type, nth) for nth in range(1, 31)]
        low, high = min(values), max(values)
        assert low < high  # each night's job varies a little...
        assert base * 0.85 - 1e-9 <= low
        assert high <= base * 1.15 + 1e-9  # ...around the model's own duration
        spread = statistics.pstdev(values) / statistics.fmean(values)
        assert spread < 0.1
    bases = [draws.base_duration(3, draws.model_id(3, i), job_type) for i in range(40)]
    assert max(bases) / min(bases) > 1.3  # while models differ from one another


def test_training_durations_centre_on_ten_minutes(world):
    """Training durations are log-normal around a 600 s median."""
    values = sorted(world.duration(f"m{i}", "TRAINING", 1) for i in range(2001))
    assert 520 < values[1000] < 690


def test_job_will_fail_is_a_pure_function_of_seed_and_job(clock):
    """The same settings predict the same failures; another seed predicts others."""
    settings = SimSettings(models=0, job_error_rate=0.5, seed=1)
    keys = [(f"m{i}", "EVALUATION", n) for i in range(50) for n in (1, 2)]
    first = [World(settings, clock).job_will_fail(*k) for k in keys]
    assert first == [World(settings, clock).job_will_fail(*k) for k in keys]
    reseeded = World(SimSettings(models=0, job_error_rate=0.5, seed=2), clock)
    assert first != [reseeded.job_will_fail(*k) for k in keys]
    assert not any(World(SimSettings(models=0), clock).job_will_fail(*k) for k in keys)


def test_metrics_are_strings_deterministic_and_varied(clock):
    """Metrics are decimal strings in [0.60, 0.99], stable per seed and varying per model."""
    world = World(SimSettings(models=30), clock)
    again = World(SimSettings(models=30), clock)
    per_model = []
    for model in world.models():
        metrics = world.trained_models_of(model.id)[0].events[1].metadata
        assert metrics == again.trained_models_of(model.id)[0].events[1].metadata
        assert metrics is not None
        assert set(metrics) == {"Accuracy", "Recall", "Precision", "f1-score"}
        for value in metrics.values():
            assert isinstance(value, str)
            assert 2 <= len(value.split(".")[1]) <= 4
            assert 0.60 <= float(value) <= 0.99
        per_model.append(metrics["Accuracy"])
    assert len(set(per_model)) > 20


def test_a_new_version_gets_its_own_metrics(world, clock):
    """Retraining and evaluating a model gives version 2 metrics unlike version 1's."""
    model_id = world.models()[0].id
    job = world.train(model_id, {})
    clock.advance(3600)
    world.evaluate(job.trained_model.id, {})
    clock.advance(90)
    v1, v2 = world.trained_models_of(model_id)
    assert v2.version == 2
    assert v2.status == "EVALUATED"
    assert v1.events[1].metadata != v2.events[-1].metadata


def test_evaluating_a_decided_version_keeps_its_status(world, clock):
    """Re-evaluating an approved or deployed version adds an event but keeps the status."""
    version = world.trained_models_of(world.models()[0].id)[0]
    world.evaluate(version.id, {})
    clock.advance(90)
    world.advance()
    assert version.status == "DEPLOYED"
    assert version.events[-1].status == "EVALUATED"


def test_jobs_complete_in_completion_order(world, clock):
    """advance() applies due jobs in end-time order, whatever order they were created in."""
    models = [m.id for m in world.models()]
    jobs = [world.train(m, {}) for m in models]
    clock.advance(3600)
    world.advance()
    versions = [world.trained_models_of(m)[-1] for m in models]
    trained_at = {v.id: v.events[-1].created_at for v in versions}
    assert all(trained_at[j.trained_model.id] == j.ends_at for j in jobs)


def test_settings_are_validated():
    """Impossible settings are refused when built."""
    with pytest.raises(ValueError, match="job_error_rate"):
        SimSettings(job_error_rate=1.5)
    with pytest.raises(ValueError, match="must not exceed 1"):
        SimSettings(http_429_rate=0.6, http_500_rate=0.6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"drop_rate": -0.1}, "drop_rate must be within"),
        ({"delay_after_rate": 1.5}, "delay_after_rate must be within"),
        ({"drop_rate": 0.5, "delay_after_rate": 0.6}, "drop_rate \\+ delay_after_rate"),
        ({"delay_after_s": -1.0}, "delay_after_s must be >= 0"),
        ({"fault_methods": ("GET", "PUT")}, "fault_methods must be"),
        ({"fault_methods": ("post",)}, "fault_methods must be"),
        ({"fault_methods": "POST"}, "fault_methods must be"),
        ({"fault_methods": ["POST"]}, "fault_methods must be"),
    ],
)
def test_after_fault_settings_are_validated(changes, message):
    """Bad drop and delay rates, a negative delay and unknown fault methods are refused."""
    with pytest.raises(ValueError, match=message):
        SimSettings(**changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"client_id": "fleet"}, "client_id and client_secret must be set together"),
        ({"client_secret": "s3cret"}, "client_id and client_secret must be set together"),
        ({"client_id": "a:b", "client_secret": "s3cret"}, "without ':'"),
        ({"client_id": "", "client_secret": "s3cret"}, "client_id must be non-empty"),
        ({"client_id": "fleet", "client_secret": ""}, "client_secret must not be empty"),
        ({"token_lifetime_s": 0.0}, "token_lifetime_s must be positive"),
        ({"token_lifetime_s": float("inf")}, "token_lifetime_s must be positive"),
        ({"token_lifetime_s": float("nan")}, "token_lifetime_s must be positive"),
    ],
)
def test_client_credential_settings_are_validated(changes, message):
    """Client credentials come both or neither, usable in HTTP Basic, with a finite lifetime."""
    with pytest.raises(ValueError, match=message):
        SimSettings(**changes)


def test_fault_methods_may_target_one_method_or_none():
    """fault_methods accepts GET, POST, both, or nothing at all."""
    for methods in [("GET",), ("POST",), ("GET", "POST"), ()]:
        assert SimSettings(fault_methods=methods).fault_methods == methods


def test_build_defaults_to_a_sped_up_real_clock():
    """build() returns a world on a SimClock and an app serving it."""
    world, app = build(SimSettings(models=1))
    assert isinstance(world._clock, SimClock)
    assert app.routes


def test_stays_fast_with_ten_thousand_models_and_fifty_thousand_jobs(clock):
    """Creating, completing and paging 50,000 jobs over 10,000 models takes seconds, not minutes."""
    # CPU time of this process: other processes on a busy machine do not count.
    started = time.process_time()
    world = World(SimSettings(models=10_000), clock)
    models = [m.id for m in world.models()]
    for round_ in range(5):
        for model_id in models:
            world.train(model_id, {})
        clock.advance(700 * (round_ + 1))
    clock.advance(3600)
    assert world.stats()["jobs_total"] == 50_000
    assert world.stats()["running_jobs"] == 0
    last = world.jobs()[-1]
    assert world.job(last.id).status_at(clock.now()) == "COMPLETED"
    assert len(world.trained_models_of(models[-1], "TRAINED")) == 5
    assert time.process_time() - started < 6.0
