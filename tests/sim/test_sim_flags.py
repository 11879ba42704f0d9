"""`fleet sim` and `fleet demo` flags: one per switch, a preset, and one line for a bad value."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest

from cli_support import clean_env
from fleet import cli, sim
from fleet.command_line import build_parser, sim_settings
from fleet.errors import ConfigError


def settings_of(*flags: str, command: str = "sim") -> sim.SimSettings:
    return sim_settings(build_parser().parse_args([command, *flags]))


@pytest.mark.parametrize("command", ["sim", "demo"])
def test_without_flags_the_emulator_answers_like_spring_data_rest(command):
    """No flag: the default Behaviour and no stuck jobs, for `fleet sim` and `fleet demo`."""
    settings = settings_of(command=command)
    assert settings.behaviour == sim.Behaviour()
    assert settings.stuck_rate == 0.0


def test_each_switch_has_a_flag():
    """Every Behaviour field and the stuck rate are set from their flags."""
    settings = settings_of(
        *("--job-sort", "honoured", "--updated-at", "stale", "--status-finder"),
        *("--status-missing-rate", "0.25", "--job-types", "other"),
        *("--evaluated-lag", "inf", "--archived-models", "7"),
        *("--archived-versions-rate", "0.5", "--no-job-history", "--events-listing", "list"),
        *("--deployed-version-status", "--stuck-rate", "0.125"),
    )
    assert settings.behaviour == sim.Behaviour(
        job_sort="honoured",
        updated_at="stale",
        status_finder=True,
        status_missing_rate=0.25,
        job_types="other",
        evaluated_lag_s=math.inf,
        archived_models=7,
        archived_versions_rate=0.5,
        job_history=False,
        events_listing="list",
        deployed_version_status=True,
    )
    assert settings.stuck_rate == 0.125


def test_the_optimistic_profile_and_flags_over_it():
    """--profile optimistic is Behaviour.optimistic(); individual flags override it."""
    assert settings_of("--profile", "optimistic").behaviour == sim.Behaviour.optimistic()
    mixed = settings_of("--profile", "optimistic", "--no-status-finder", "--evaluated-lag", "9")
    assert mixed.behaviour == sim.Behaviour.optimistic(status_finder=False, evaluated_lag_s=9.0)
    assert settings_of("--profile", "default", "--status-finder").behaviour.status_finder


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--profile", "rosy"), "profile must be one of default, optimistic"),
        (("--job-sort", "random"), "job_sort must be one of dropped, honoured, error"),
        (("--updated-at", "later"), "updated_at must be one of absent, fresh, stale"),
        (("--job-types", "mine"), "job_types must be one of guessed, other"),
        (("--events-listing", "xml"), "events_listing must be one of hal, list, absent"),
        (("--status-missing-rate", "2"), "status_missing_rate must be within"),
        (("--archived-versions-rate", "-1"), "archived_versions_rate must be within"),
        (("--evaluated-lag", "-5"), "evaluated_lag_s must be >= 0 or inf"),
        (("--archived-models", "-1"), "archived_models must be an integer >= 0"),
        (("--stuck-rate", "1.5"), "stuck_rate must be within"),
    ],
)
def test_a_bad_value_is_one_configuration_error(flags, message):
    """A bad switch value is a ConfigError naming it, not a traceback."""
    with pytest.raises(ConfigError, match=message):
        settings_of(*flags)


def test_a_bad_value_is_one_line_and_a_usage_exit_code(capsys):
    """`fleet sim --job-sort x` prints one line and exits with the usage code."""
    assert cli.main(["sim", "--job-sort", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "job_sort must be one of" in err[0]


def test_the_models_csv_has_the_active_models_and_their_datasets(tmp_path, capsys):
    """--models-csv writes id, name and both dataset ids for each active model only."""
    world = sim.World(sim.SimSettings(models=3), sim.ManualClock())
    path = tmp_path / "models.csv"
    cli._write_models_csv(path, world)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["store-0001", "store-0002", "store-0003"]
    assert [row["id"] for row in rows] == [m.id for m in world.models()]
    assert {row["train_dataset_id"] for row in rows} == {world.train_dataset_id}
    assert {row["evaluate_dataset_id"] for row in rows} == {world.eval_dataset_id}
    assert "wrote 3 models" in capsys.readouterr().err


@pytest.mark.e2e
def test_fleet_sim_names_its_datasets_when_it_starts(tmp_path):
    """The startup line names the train and evaluate datasets the models CSV carries."""
    csv_path = tmp_path / "models.csv"
    command = [
        *(sys.executable, "-m", "fleet", "sim", "--port", "0", "--models", "2"),
        *("--models-csv", str(csv_path), "--profile", "optimistic"),
    ]
    with subprocess.Popen(
        command, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stderr is not None
            line = next(line for line in proc.stderr if "ModelOps emulator on" in line)
        finally:
            proc.terminate()
    with csv_path.open(newline="", encoding="utf-8") as handle:
        (row, _) = list(csv.DictReader(handle))
    assert f"train {row['train_dataset_id']}" in line
    assert f"evaluate {row['evaluate_dataset_id']}" in line
