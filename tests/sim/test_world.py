from __future__ import annotations

import statistics

import pytest
from sim_support import EVALUATE, LAG, TRAIN, behaving

from fleet.sim import Behaviour, ManualClock, SimSettings, World, build, draws
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


@pytest.mark.parametrize(
    ("settings", "status"),
    [(behaving(), "APPROVED"), (behaving(deployed_version_status=True), "DEPLOYED")],
    ids=["default", "deployed_version_status"],
)
def test_initial_state_is_one_deployed_version_per_model(world, clock, status):
    """Each model starts with a deployed version whose events are all in the past."""
    for model in world.models():
        version = world.trained_models_of(model.id)[0]
        assert version.status == status
        assert not version.archived
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
    assert world.jobs() == []


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
    job = world.train(model_id, TRAIN)
    clock.advance(3600)
    world.evaluate(job.trained_model.id, EVALUATE)
    clock.advance(90 + LAG)
    v1, *_, new = world.trained_models_of(model_id)
    assert new.version == len(world.trained_models_of(model_id))
    assert new.status == "EVALUATED"
    assert v1.events[1].metadata != new.events[-1].metadata


def test_evaluating_a_decided_version_keeps_its_status(world, clock):
    """Re-evaluating an approved or deployed version adds an event but keeps the status."""
    version = world.trained_models_of(world.models()[0].id)[0]
    world.evaluate(version.id, EVALUATE)
    clock.advance(90 + LAG)
    world.advance()
    assert version.status == "APPROVED"
    assert version.events[-1].status == "EVALUATED"


def test_jobs_complete_in_completion_order(world, clock):
    """advance() applies due jobs in end-time order, whatever order they were created in."""
    models = [m.id for m in world.models()]
    jobs = [world.train(m, TRAIN) for m in models]
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
        ({"job_sort": "sideways"}, "job_sort must be one of dropped, honoured, error"),
        ({"updated_at": "now"}, "updated_at must be one of absent, fresh, stale"),
        ({"job_types": "mine"}, "job_types must be one of guessed, other"),
        ({"events_listing": "xml"}, "events_listing must be one of hal, list, absent"),
        ({"status_missing_rate": 1.5}, "status_missing_rate must be within"),
        ({"archived_versions_rate": -0.1}, "archived_versions_rate must be within"),
        ({"evaluated_lag_s": -1.0}, "evaluated_lag_s must be >= 0 or inf"),
        ({"evaluated_lag_s": float("nan")}, "evaluated_lag_s must be >= 0 or inf"),
        ({"archived_models": -1}, "archived_models must be an integer >= 0"),
        ({"archived_models": 1.5}, "archived_models must be an integer >= 0"),
    ],
)
def test_behaviour_is_validated(changes, message):
    """Impossible server behaviours are refused when built."""
    with pytest.raises(ValueError, match=message):
        Behaviour(**changes)


def test_behaviour_defaults_and_the_optimistic_preset():
    """The default is Spring Data REST's answer; optimistic turns every optimisation on."""
    default = Behaviour()
    assert SimSettings().behaviour == default
    assert (default.job_sort, default.updated_at, default.status_finder) == (
        "dropped",
        "absent",
        False,
    )
    assert (default.evaluated_lag_s, default.archived_models, default.job_history) == (5.0, 2, True)
    assert (default.events_listing, default.deployed_version_status) == ("hal", False)
    optimistic = Behaviour.optimistic()
    assert optimistic == Behaviour(
        job_sort="honoured",
        updated_at="fresh",
        status_finder=True,
        evaluated_lag_s=0.0,
        deployed_version_status=True,
        archived_models=0,
        archived_versions_rate=0.0,
    )
    assert Behaviour.profile("optimistic", status_finder=False).status_finder is False
    assert Behaviour.profile("default", job_sort="error") == Behaviour(job_sort="error")
    with pytest.raises(ValueError, match="profile must be one of default, optimistic"):
        Behaviour.profile("pessimistic")
    assert Behaviour(evaluated_lag_s=float("inf")).evaluated_lag_s == float("inf")


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


@pytest.mark.parametrize(
    "behaviour", [Behaviour(), Behaviour.optimistic()], ids=["default", "optimistic"]
)
def test_five_trainings_of_a_thousand_models_give_the_right_state(clock, behaviour):
    """Creating, completing and reading 5,000 jobs over 1,000 models gives the right state.

    How fast the world is at 10,000 models and 50,000 jobs is bench/world.py's to measure.
    """
    world = World(SimSettings(models=1_000, behaviour=behaviour), clock)
    assert (world._index is not None) is behaviour.needs_job_index
    models = [m.id for m in world.models()]
    for round_ in range(5):
        for model_id in models:
            world.train(model_id, TRAIN)
        clock.advance(700 * (round_ + 1))
    clock.advance(3600)
    stats = world.stats()
    assert stats["jobs_total"] == 5_000
    assert stats["max_jobs_per_model_and_type"] == 5
    assert stats["running_jobs"] == 0
    assert stats["history_jobs"] >= 3_000
    assert len(world.jobs()) == stats["history_jobs"] + 5_000
    last = world.jobs()[-1]
    assert world.job(last.id).status_at(clock.now()) == "COMPLETED"
    trained = [v for v in world.trained_models_of(models[-1], "TRAINED") if not v.archived]
    assert len(trained) == 5
