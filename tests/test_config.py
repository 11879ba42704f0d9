"""Settings: precedence of flags, environment, file and defaults; one-line errors; models."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent
from typing import TYPE_CHECKING, Any

import pytest

from fleet.config import load_settings
from fleet.errors import ConfigError
from fleet.flags import flag_specs
from fleet.models import ModelEntry, Resources
from fleet.settings import Settings
from fleet.shards import Shard
from fleet.stages import STAGE_ORDER, Stage

if TYPE_CHECKING:
    from collections.abc import Mapping

PROJECT_ID = "419e5f05-b225-4b70-b075-6c309365d94f"
TOKEN = "tok-5d1e0b-must-never-leak"
M1 = "00000000-0000-0000-0000-000000000001"
M2 = "00000000-0000-0000-0000-000000000002"


def load(
    config: Path | None = None,
    flags: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from exactly what the test passes: never the real environment or ./fleet.toml."""
    return load_settings(config, flags or {}, env or {}, use_default_file=False)


def load_error(
    config: Path | None = None,
    flags: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The message of the ConfigError that loading raises, checked to be a single line."""
    with pytest.raises(ConfigError) as caught:
        load(config, flags, env)
    message = str(caught.value)
    assert "\n" not in message
    return message


def toml_file(tmp_path: Path, text: str, name: str = "fleet.toml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(text), encoding="utf-8")
    return path


# -- precedence -----------------------------------------------------------------------------


def test_defaults_apply_without_file_environment_or_flags():
    """With nothing configured, settings hold their documented defaults."""
    settings = load()

    assert settings.jobs == 32
    assert settings.concurrency is None  # 4 x jobs in the plan
    assert settings.limits.train is None  # no bound but the job cap
    assert settings.api.url is None
    assert settings.stages == STAGE_ORDER


def test_the_file_overrides_defaults(tmp_path):
    """Values in the TOML file replace the defaults; a trailing / is cut from the URL."""
    config = toml_file(
        tmp_path,
        """
        concurrency = 7
        [api]
        url = "https://file.example/modelops/core/"
        [limits]
        train = 3
        """,
    )

    settings = load(config)

    assert settings.concurrency == 7
    assert settings.limits.train == 3
    assert settings.api.url == "https://file.example/modelops/core"


def test_the_environment_overrides_the_file(tmp_path):
    """FLEET_ variables, nested with __, beat the TOML file."""
    config = toml_file(
        tmp_path,
        """
        concurrency = 7
        [api]
        url = "https://file.example"
        [limits]
        train = 3
        """,
    )
    env = {
        "FLEET_CONCURRENCY": "8",
        "FLEET_LIMITS__TRAIN": "4",
        "FLEET_API__URL": "https://env.example",
    }

    settings = load(config, env=env)

    assert settings.concurrency == 8
    assert settings.limits.train == 4
    assert settings.api.url == "https://env.example"


def test_flags_override_the_environment():
    """Dotted-path flags beat FLEET_ variables."""
    env = {
        "FLEET_CONCURRENCY": "8",
        "FLEET_LIMITS__TRAIN": "4",
        "FLEET_API__URL": "https://env.example",
    }
    flags = {"concurrency": "9", "limits.train": "5", "api.url": "https://flag.example"}

    settings = load(flags=flags, env=env)

    assert settings.concurrency == 9
    assert settings.limits.train == 5
    assert settings.api.url == "https://flag.example"


def test_overriding_one_nested_setting_keeps_its_siblings_from_the_file(tmp_path):
    """FLEET_LIMITS__TRAIN replaces limits.train only; limits.evaluate still comes from the file."""
    config = toml_file(tmp_path, "[limits]\ntrain = 3\nevaluate = 6\n")

    settings = load(config, flags={"limits.deploy": "2"}, env={"FLEET_LIMITS__TRAIN": "4"})

    assert (settings.limits.train, settings.limits.evaluate, settings.limits.deploy) == (4, 6, 2)


def test_the_process_environment_is_ignored_when_env_is_given(monkeypatch):
    """load_settings reads FLEET_ variables from `env` only, not from os.environ behind it."""
    monkeypatch.setenv("FLEET_CONCURRENCY", "3")
    monkeypatch.setenv("FLEET_NOT_A_SETTING", "x")

    assert load(env={"FLEET_LIMITS__TRAIN": "4"}).jobs == 32


# -- which file ------------------------------------------------------------------------------


def test_fleet_toml_in_the_working_directory_is_read_by_default(tmp_path, monkeypatch):
    """Without a config path, ./fleet.toml is used when it exists."""
    toml_file(tmp_path, "concurrency = 11\n")
    monkeypatch.chdir(tmp_path)

    assert load_settings(None, {}, {}).concurrency == 11


def test_use_default_file_false_ignores_fleet_toml(tmp_path, monkeypatch):
    """use_default_file=False leaves ./fleet.toml unread."""
    toml_file(tmp_path, "concurrency = 11\n")
    monkeypatch.chdir(tmp_path)

    assert load_settings(None, {}, {}, use_default_file=False).jobs == 32


def test_no_fleet_toml_in_the_working_directory_means_defaults(tmp_path, monkeypatch):
    """A directory without fleet.toml is not an error: defaults apply."""
    monkeypatch.chdir(tmp_path)

    assert load_settings(None, {}, {}).jobs == 32


def test_fleet_config_names_the_file(tmp_path, monkeypatch):
    """FLEET_CONFIG points at the file to read instead of ./fleet.toml."""
    toml_file(tmp_path, "concurrency = 11\n")
    named = toml_file(tmp_path, "concurrency = 12\n", name="other.toml")
    monkeypatch.chdir(tmp_path)

    assert load_settings(None, {}, {"FLEET_CONFIG": str(named)}).concurrency == 12


def test_a_missing_config_file_is_a_config_error(tmp_path):
    """A config path that does not exist names the path."""
    missing = tmp_path / "nope.toml"

    assert str(missing) in load_error(missing)


def test_invalid_toml_is_a_config_error(tmp_path):
    """A file that is not TOML names the file and says so."""
    config = toml_file(tmp_path, "concurrency = \n")

    message = load_error(config)

    assert str(config) in message
    assert "not valid TOML" in message


# -- one-line errors that name the setting and its source -----------------------------------


def test_an_unknown_key_in_the_file_is_named_with_the_file(tmp_path):
    """A misspelt key such as [limits] trian is rejected, naming limits.trian and the file."""
    config = toml_file(tmp_path, "[limits]\ntrian = 3\n")

    message = load_error(config)

    assert "limits.trian" in message
    assert str(config) in message


def test_a_wrongly_typed_value_in_the_file_is_named_with_the_file(tmp_path):
    """concurrency = "many" is rejected, naming concurrency and the file."""
    config = toml_file(tmp_path, 'concurrency = "many"\n')

    message = load_error(config)

    assert message.startswith("concurrency ")
    assert str(config) in message


def test_a_negative_limit_from_a_flag_names_the_flag():
    """limits.train = -1 from a flag is rejected, naming limits.train and flag --limits.train."""
    message = load_error(flags={"limits.train": "-1"})

    assert "limits.train" in message
    assert "flag --limits.train" in message


def test_a_zero_limit_from_the_file_is_rejected(tmp_path):
    """A limit must be positive: limits.train = 0 is rejected."""
    config = toml_file(tmp_path, "[limits]\ntrain = 0\n")

    assert "limits.train" in load_error(config)


def test_a_wrongly_typed_environment_variable_is_named():
    """FLEET_LIMITS__TRAIN=lots is rejected, naming the variable."""
    message = load_error(env={"FLEET_LIMITS__TRAIN": "lots"})

    assert "limits.train" in message
    assert "environment FLEET_LIMITS__TRAIN" in message


def test_an_unknown_fleet_environment_variable_is_rejected():
    """A misspelt FLEET_CONCURENCY is an error rather than silently ignored."""
    assert "FLEET_CONCURENCY" in load_error(env={"FLEET_CONCURENCY": "5"})


def test_other_environment_variables_are_ignored():
    """Variables without the FLEET_ prefix are none of fleet's business."""
    assert load(env={"HOME": "/root", "CONCURRENCY": "x"}).jobs == 32


def test_a_project_id_that_is_not_a_uuid_is_rejected(tmp_path):
    """api.project_id must be a UUID."""
    config = toml_file(tmp_path, '[api]\nproject_id = "my-project"\n')

    message = load_error(config)

    assert "api.project_id" in message
    assert "UUID" in message


def test_an_url_without_http_is_rejected():
    """api.url must start with http:// or https://."""
    assert "api.url" in load_error(env={"FLEET_API__URL": "mo.example/modelops/core"})


def test_stages_out_of_lifecycle_order_are_rejected(tmp_path):
    """stages = "evaluate,train" is not a prefix of the lifecycle and is rejected."""
    config = toml_file(tmp_path, 'stages = "evaluate,train"\n')

    message = load_error(config)

    assert message.startswith("stages ")
    assert str(config) in message


def test_an_unknown_stage_is_rejected():
    """A stage name that does not exist is rejected, naming the variable it came from."""
    message = load_error(env={"FLEET_STAGES": "train,tune"})

    assert message.startswith("stages ")
    assert "FLEET_STAGES" in message


def test_a_bad_model_id_in_the_file_names_the_file(tmp_path):
    """A [[models]] id that is not a UUID is blamed on the file, not on a default."""
    config = toml_file(tmp_path, '[[models]]\nid = "churn"\n')

    message = load_error(config)

    assert "models.id" in message
    assert str(config) in message


# -- stages -------------------------------------------------------------------------------


def test_stages_come_from_a_comma_separated_flag():
    """--stages train,evaluate selects the first two stages."""
    assert load(flags={"stages": "train,evaluate"}).stages == (Stage.TRAIN, Stage.EVALUATE)


def test_stages_come_from_a_comma_separated_environment_variable():
    """FLEET_STAGES=train,evaluate selects the first two stages; spaces are allowed."""
    settings = load(env={"FLEET_STAGES": "train, evaluate"})

    assert settings.stages == (Stage.TRAIN, Stage.EVALUATE)


def test_stages_come_from_a_toml_list(tmp_path):
    """stages may also be written as a TOML array."""
    config = toml_file(tmp_path, 'stages = ["train", "evaluate", "approve"]\n')

    assert load(config).stages == (Stage.TRAIN, Stage.EVALUATE, Stage.APPROVE)


# -- shards ---------------------------------------------------------------------------------


def test_a_shard_from_a_flag_gets_its_own_state_file():
    """--shard 3/8: shard 3 of 8, and the state file fleet.db becomes fleet.shard-3-of-8.db."""
    settings = load(flags={"shard": "3/8"})

    assert settings.shard == Shard(3, 8)
    assert settings.db == Path("fleet.shard-3-of-8.db")
    assert load().shard is None
    assert load().db == Path("fleet.db")


def test_a_shard_from_the_environment_suffixes_the_configured_state_file(tmp_path):
    """FLEET_SHARD=1/4 with db in the file: the shard's file sits beside the configured one."""
    config = toml_file(tmp_path, 'db = "/data/fleet.db"\n')

    settings = load(config, env={"FLEET_SHARD": "1/4"})

    assert settings.shard == Shard(1, 4)
    assert settings.db == Path("/data/fleet.shard-1-of-4.db")


def test_a_shard_comes_from_the_file(tmp_path):
    """shard = "0/2" in fleet.toml; a flag overrides it."""
    config = toml_file(tmp_path, 'shard = "0/2"\n')

    assert load(config).db == Path("fleet.shard-0-of-2.db")
    assert load(config, flags={"shard": "1/2"}).db == Path("fleet.shard-1-of-2.db")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("3/3", "3/3: K counts from 0, so with N = 3 it is 0 to 2"),
        ("0/0", "0/0: N, the number of shards, must be at least 1"),
        ("x/2", "'x/2' is not K/N"),
        ("-1/4", "'-1/4' is not K/N"),
    ],
)
def test_a_bad_shard_names_where_it_came_from(value, says):
    """A shard that cannot be is one line naming the variable and what is expected."""
    message = load_error(env={"FLEET_SHARD": value})

    assert message.startswith(f"shard (from environment FLEET_SHARD): {says}")


# -- the token ------------------------------------------------------------------------------


def test_the_token_comes_from_the_environment():
    """FLEET_API__TOKEN is the bearer token."""
    assert load(env={"FLEET_API__TOKEN": TOKEN}).api.bearer() == TOKEN


def test_the_token_comes_from_a_token_file(tmp_path):
    """api.token_file holds the token; surrounding whitespace and the newline are dropped."""
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n", encoding="utf-8")

    settings = load(flags={"api.token_file": str(token_file)})

    assert settings.api.bearer() == TOKEN


def test_the_environment_token_is_used_before_the_token_file(tmp_path):
    """With both set, FLEET_API__TOKEN wins and the file is not read."""
    settings = load(
        flags={"api.token_file": str(tmp_path / "absent")}, env={"FLEET_API__TOKEN": TOKEN}
    )

    assert settings.api.bearer() == TOKEN


def test_the_token_never_appears_in_repr_str_or_json():
    """repr, str and model_dump_json of the settings all mask the token."""
    settings = load(env={"FLEET_API__TOKEN": TOKEN})

    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)
    assert TOKEN not in settings.model_dump_json()


def test_an_empty_token_file_is_a_config_error(tmp_path):
    """A token file holding only whitespace is rejected when the settings load."""
    token_file = tmp_path / "token"
    token_file.write_text("\n", encoding="utf-8")

    message = load_error(flags={"api.token_file": str(token_file)})

    assert "api.token_file" in message
    assert "empty" in message


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_an_unreadable_token_file_is_a_config_error(tmp_path, kind):
    """A token file that cannot be read is rejected when the settings load."""
    token_file = tmp_path / "token"
    if kind == "directory":
        token_file.mkdir()

    message = load_error(flags={"api.token_file": str(token_file)})

    assert "api.token_file" in message
    assert "cannot read" in message


API_URL = {"api.url": "https://mo.example/modelops/core"}
API_PROJECT = {"api.project_id": PROJECT_ID}


@pytest.mark.parametrize(
    ("flags", "missing"),
    [
        ({**API_PROJECT}, "api.url"),
        ({**API_URL}, "api.project_id"),
        ({**API_URL, **API_PROJECT}, "api.token"),
    ],
)
def test_require_api_names_what_is_missing(flags, missing):
    """require_api raises ConfigError naming the first of url, project and token that is unset."""
    settings = load(flags=flags)

    with pytest.raises(ConfigError, match=rf"^{missing}: missing"):
        settings.require_api()


def test_require_api_passes_when_url_project_and_token_are_set():
    """A complete api section satisfies require_api."""
    settings = load(flags={**API_URL, **API_PROJECT}, env={"FLEET_API__TOKEN": TOKEN})

    settings.require_api()


# -- models ---------------------------------------------------------------------------------


def test_models_take_their_overrides_over_the_defaults(tmp_path):
    """A [[models]] entry overrides retire_mode and merges resources with the default cpu."""
    config = toml_file(
        tmp_path,
        f"""
        [defaults]
        retire_mode = "previous"
        resources = {{cpu = "2"}}
        [[models]]
        id = "{M1}"
        name = "churn"
        retire_mode = "none"
        resources = {{memory = "2g"}}
        [[models]]
        id = "{M2}"
        """,
    )

    first, second = load(config).model_specs()

    assert (first.id, first.name) == (M1, "churn")
    assert first.lifecycle.retire_mode == "none"
    assert first.lifecycle.resources == Resources(memory="2g", cpu="2")
    assert (second.id, second.name) == (M2, M2)
    assert second.lifecycle.retire_mode == "previous"
    assert second.lifecycle.resources == Resources(memory=None, cpu="2")


def test_a_model_listed_twice_is_a_config_error(tmp_path):
    """Two [[models]] entries with one id are rejected, naming models and the file."""
    config = toml_file(tmp_path, f'[[models]]\nid = "{M1}"\n[[models]]\nid = "{M1}"\n')

    message = load_error(config)

    assert message.startswith("models ")
    assert M1 in message
    assert str(config) in message


def test_a_model_in_both_the_file_and_models_file_is_a_config_error(tmp_path):
    """An id listed inline and in models_file is rejected when the models are resolved."""
    models_file = tmp_path / "models.jsonl"
    models_file.write_text(json.dumps({"id": M1}) + "\n", encoding="utf-8")
    config = toml_file(tmp_path, f'models_file = "{models_file}"\n[[models]]\nid = "{M1}"\n')
    settings = load(config)

    with pytest.raises(ConfigError, match=M1):
        settings.model_specs()


def test_an_unknown_model_override_is_named(tmp_path):
    """A misspelt override (retire_mod) is rejected, naming the model and the key."""
    config = toml_file(tmp_path, f'[[models]]\nid = "{M1}"\nretire_mod = "none"\n')
    settings = load(config)

    with pytest.raises(ConfigError, match=rf"models\[{M1}\]\.retire_mod"):
        settings.model_specs()


def test_a_bad_model_override_value_is_named(tmp_path):
    """An override with a value its setting does not allow is rejected, naming it."""
    config = toml_file(tmp_path, f'[[models]]\nid = "{M1}"\nretire_mode = "sometimes"\n')
    settings = load(config)

    with pytest.raises(ConfigError, match=rf"models\[{M1}\]\.retire_mode"):
        settings.model_specs()


def test_models_come_from_a_csv_file_whose_empty_cells_inherit(tmp_path):
    """A CSV models_file sets name, retire_mode and resources.memory; empty cells inherit."""
    models_file = tmp_path / "models.csv"
    models_file.write_text(
        f"id,name,retire_mode,resources.memory\n{M1},churn,none,4g\n{M2},,,\n", encoding="utf-8"
    )

    first, second = load(flags={"models_file": str(models_file)}).model_specs()

    assert (first.name, first.lifecycle.retire_mode) == ("churn", "none")
    assert first.lifecycle.resources == Resources(memory="4g", cpu=None)
    assert (second.name, second.lifecycle.retire_mode) == (M2, "previous")
    assert second.lifecycle.resources == Resources()


def test_a_bad_csv_row_is_named_by_its_line_number(tmp_path):
    """A CSV row with a bad id is reported with its line in the file (the header is line 1)."""
    models_file = tmp_path / "models.csv"
    models_file.write_text(f"id,name\n{M1},churn\nnot-a-uuid,x\n", encoding="utf-8")
    settings = load(flags={"models_file": str(models_file)})

    with pytest.raises(ConfigError, match=r"models\.csv:3"):
        settings.model_specs()


def test_models_come_from_a_jsonl_file(tmp_path):
    """A JSONL models_file holds one model per line, with nested overrides; blank lines skip."""
    models_file = tmp_path / "models.jsonl"
    lines = [
        json.dumps({"id": M1, "name": "churn", "resources": {"cpu": "2"}}),
        "",
        json.dumps({"id": M2, "retire_mode": "deployed"}),
    ]
    models_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    first, second = load(flags={"models_file": str(models_file)}).model_specs()

    assert (first.id, first.name) == (M1, "churn")
    assert first.lifecycle.resources == Resources(memory=None, cpu="2")
    assert (second.id, second.lifecycle.retire_mode) == (M2, "deployed")


def test_a_bad_jsonl_line_is_named_by_its_number(tmp_path):
    """A line of the JSONL models_file that is not JSON is reported with its line number."""
    models_file = tmp_path / "models.jsonl"
    models_file.write_text(json.dumps({"id": M1}) + '\n\n{"id": \n', encoding="utf-8")
    settings = load(flags={"models_file": str(models_file)})

    with pytest.raises(ConfigError, match=r"models\.jsonl:3: not JSON"):
        settings.model_specs()


def test_a_models_file_of_another_kind_is_rejected(tmp_path):
    """Only .csv and .jsonl models files are understood."""
    models_file = tmp_path / "models.yaml"
    models_file.write_text(f"- id: {M1}\n", encoding="utf-8")
    settings = load(flags={"models_file": str(models_file)})

    with pytest.raises(ConfigError, match="models_file"):
        settings.model_specs()


# -- flags ----------------------------------------------------------------------------------


def test_flag_specs_offer_a_flag_per_scalar_setting_but_none_for_the_token():
    """flag_specs yields --limits.train, --concurrency and --api.url, and nothing for the token."""
    specs = {spec.flag: spec for spec in flag_specs()}

    assert {"--limits.train", "--concurrency", "--api.url"} <= specs.keys()
    assert specs["--limits.train"].path == "limits.train"
    assert "api.token" not in {spec.path for spec in specs.values()}
    assert specs["--log-level"].choices == ("debug", "info", "warning", "error")


def test_every_flag_path_is_accepted_by_load_settings():
    """Each flag's dotted path is a setting load_settings knows (an unknown one would fail)."""
    for spec in flag_specs():
        with pytest.raises(ConfigError, match=rf"^{spec.path} \(from flag {spec.flag}\)"):
            load(flags={spec.path: {"not": "a scalar"}})


def test_the_example_fleet_toml_loads_and_documents_every_setting() -> None:
    """The repository's fleet.toml is valid and names every setting that has a flag."""
    example = Path(__file__).parent.parent / "fleet.toml"
    settings = load_settings(example, {}, env={"FLEET_API__TOKEN": "t"})
    assert len(settings.model_specs()) == 2
    text = example.read_text()
    for spec in flag_specs():
        leaf = spec.path.rsplit(".", 1)[-1]
        assert f"{leaf} =" in text or f"{leaf}:" in text, f"{spec.path} is not documented"


# -- projects -------------------------------------------------------------------------------

PROJECT_B = "7c0f6d2e-3b1a-4e5f-9a8b-2d4c6e8f0a1b"
M3 = "00000000-0000-0000-0000-000000000003"
TWO_PROJECTS = f"""
[api]
url = "https://mo.example/modelops/core"
timeout = 10
[limits]
train = 8

[projects.retail.api]
project_id = "{PROJECT_ID}"
[[projects.retail.models]]
id = "{M1}"
[projects.retail.defaults]
train_dataset_id = "{M3}"

[projects.wholesale]
limits = {{ concurrency = 5, train = 2 }}
[projects.wholesale.api]
project_id = "{PROJECT_B}"
url = "https://other.example/modelops/core"
[[projects.wholesale.models]]
id = "{M2}"
retire_mode = "none"
"""


def test_projects_inherit_api_settings_they_do_not_set(tmp_path):
    """A project takes [api]'s url, timeout and token unless it sets its own."""
    settings = load(toml_file(tmp_path, TWO_PROJECTS), env={"FLEET_API__TOKEN": TOKEN})
    projects = settings.every_project()

    assert list(projects) == ["retail", "wholesale"]
    retail, wholesale = projects["retail"].api, projects["wholesale"].api
    assert (retail.url, retail.project_id, retail.timeout) == (
        "https://mo.example/modelops/core",
        PROJECT_ID,
        10.0,
    )
    assert (wholesale.url, wholesale.project_id) == (
        "https://other.example/modelops/core",
        PROJECT_B,
    )
    assert retail.bearer() == wholesale.bearer() == TOKEN
    settings.require_api()


def test_each_projects_models_carry_its_name_and_its_defaults(tmp_path):
    """Models resolve per project: its [defaults] overrides, then the model's own."""
    retail, wholesale = load(toml_file(tmp_path, TWO_PROJECTS)).model_specs()

    assert (retail.id, retail.project, retail.lifecycle.train_dataset_id) == (M1, "retail", M3)
    assert (wholesale.project, wholesale.lifecycle.train_dataset_id) == ("wholesale", None)
    assert wholesale.lifecycle.retire_mode == "none"


def test_a_projects_limits_are_its_own_and_unset_ones_share_the_runs(tmp_path):
    """[projects.wholesale] limits set concurrency and train; retail sets none."""
    projects = load(toml_file(tmp_path, TWO_PROJECTS)).every_project()

    assert projects["wholesale"].limits.concurrency == 5
    assert projects["wholesale"].limits.of(Stage.TRAIN) == 2
    assert projects["wholesale"].limits.of(Stage.DEPLOY) is None
    assert projects["retail"].limits.concurrency is None


def test_a_projects_own_token_file_is_not_shadowed_by_the_api_token(tmp_path):
    """FLEET_API__TOKEN does not override a project's token_file: the project's credential
    replaces [api]'s as a whole."""
    token_file = tmp_path / "wholesale-token"
    token_file.write_text("wholesale-secret-7e1\n", encoding="utf-8")
    own = f'url = "https://other.example/modelops/core"\ntoken_file = "{token_file}"'
    config = toml_file(
        tmp_path, TWO_PROJECTS.replace('url = "https://other.example/modelops/core"', own)
    )
    projects = load(config, env={"FLEET_API__TOKEN": TOKEN}).every_project()

    assert projects["wholesale"].api.token is None
    assert projects["wholesale"].api.bearer() == "wholesale-secret-7e1"
    assert projects["retail"].api.bearer() == TOKEN


def test_a_projects_token_and_settings_come_from_its_variables(tmp_path):
    """FLEET_PROJECTS__<NAME>__... sets one project's token and overrides its settings."""
    settings = load(
        toml_file(tmp_path, TWO_PROJECTS),
        env={
            "FLEET_API__TOKEN": TOKEN,
            "FLEET_PROJECTS__WHOLESALE__API__TOKEN": "wholesale-token-2c",
            "FLEET_PROJECTS__WHOLESALE__LIMITS__TRAIN": "3",
            "FLEET_PROJECTS__RETAIL__API__TIMEOUT": "4",
        },
    )
    projects = settings.every_project()

    assert projects["wholesale"].api.bearer() == "wholesale-token-2c"
    assert projects["retail"].api.bearer() == TOKEN
    assert projects["wholesale"].limits.train == 3
    assert projects["retail"].api.timeout == 4.0
    assert "wholesale-token-2c" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "says"),
    [
        ("FLEET_PROJECTS__WHOLSALE__API__TOKEN", "no project 'wholsale' in the config file"),
        ("FLEET_PROJECTS__WHOLESALE__API__TOKN", "not a fleet setting"),
        ("FLEET_PROJECTS__WHOLESALE", "not a fleet setting"),
    ],
)
def test_an_unknown_project_variable_is_rejected(tmp_path, variable, says):
    """A project variable must name a project of the file and one of its settings."""
    message = load_error(toml_file(tmp_path, TWO_PROJECTS), env={variable: "x"})

    assert message.startswith(f"environment {variable}: ")
    assert says in message


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            (
                f'[projects.outlet.api]\nurl = "https://x.example/m"\n'
                f'[[projects.outlet.models]]\nid = "{M3}"\n'
            ),
            "projects.outlet.api.project_id: missing; every project names its own",
        ),
        (
            (
                f'[projects.copy]\ndiscover = {{ names = ["*"] }}\n'
                f'[projects.copy.api]\nproject_id = "{PROJECT_ID}"\n'
            ),
            "projects.copy.api.project_id (from ",
        ),
        (
            (
                f'[projects.outlet.api]\nproject_id = "{M3}"\n'
                f'[[projects.outlet.models]]\nid = "{M1}"\n'
            ),
            f"model {M1} is in projects retail and outlet",
        ),
        (
            f'[projects.Outlet.api]\nproject_id = "{M3}"\n',
            "a project's name is 1 to 32 lower-case letters",
        ),
        (
            (
                f'[projects.outlet.api]\nproject_id = "{M3}"\n'
                '[projects.outlet.defaults]\nretire_mode = "x"\n'
            ),
            "projects.outlet.defaults.retire_mode",
        ),
        (
            f'[projects.outlet.api]\nproject_id = "{M3}"\n',
            "projects.outlet.models: none; list [[projects.outlet.models]]",
        ),
        ("[projects.outlet.limits]\ntrain = 0\n", "projects.outlet.limits.train"),
        ("[projects.outlet]\nmodel = []\n", "projects.outlet.model"),
    ],
)
def test_a_bad_project_is_one_line_naming_it(tmp_path, extra, says):
    """No project id, the same project twice, a model in two projects, a bad name, default,
    no models or a bad limit: one line that names the project's setting."""
    message = load_error(toml_file(tmp_path, TWO_PROJECTS + extra))

    assert says in message


def test_top_level_models_beside_projects_are_the_default_project(tmp_path):
    """[[models]] beside [projects] belong to [api]'s own project, named default."""
    config = toml_file(
        tmp_path,
        TWO_PROJECTS.replace("timeout = 10", f'project_id = "{M3}"') + f'[[models]]\nid = "{M3}"\n',
    )
    specs = load(config).model_specs()

    assert [(s.id, s.project) for s in specs] == [
        (M3, "default"),
        (M1, "retail"),
        (M2, "wholesale"),
    ]


def test_a_model_found_by_discovery_in_another_project_is_refused(tmp_path):
    """Discovery adds a project's models; one configured in another project is an error."""
    settings = load(toml_file(tmp_path, TWO_PROJECTS))
    found = {"wholesale": [ModelEntry(id=M3), ModelEntry(id=M1)]}

    with pytest.raises(ConfigError, match=f"model {M1} is in projects retail and wholesale"):
        settings.model_specs(found)
    found = {"wholesale": [ModelEntry(id=M3), ModelEntry(id=M2, name="found")]}
    assert [(s.id, s.name) for s in settings.model_specs(found)] == [
        (M1, M1),
        (M2, M2),
        (M3, M3),
    ]


def test_a_projects_token_in_the_file_draws_a_warning(tmp_path):
    """A token kept in a project's table works, and the settings warn about it."""
    config = toml_file(
        tmp_path,
        TWO_PROJECTS.replace(
            "[projects.retail.api]", '[projects.retail.api]\ntoken = "in-file-tok"'
        ),
    )
    settings = load(config)

    assert settings.every_project()["retail"].api.bearer() == "in-file-tok"
    assert any(w.startswith("projects.retail.api.token is in") for w in settings.warnings)


def test_a_project_with_a_missing_token_names_its_variable(tmp_path):
    """require_api says which project lacks a token and which variable to set."""
    settings = load(toml_file(tmp_path, TWO_PROJECTS))

    with pytest.raises(
        ConfigError,
        match=r"^projects\.retail\.api\.token: missing; set FLEET_PROJECTS__RETAIL__API__TOKEN",
    ):
        settings.require_api()


def test_without_projects_there_is_one_project_named_default():
    """A configuration without [projects] is one project: [api]'s, named default."""
    settings = load(flags={**API_URL, **API_PROJECT})

    assert list(settings.every_project()) == ["default"]
    assert settings.every_project()["default"].api == settings.api


def test_the_commented_projects_example_of_fleet_toml_loads(tmp_path):
    """Uncommented, fleet.toml's [projects.wholesale] example is a valid second project."""
    text = (Path(__file__).parent.parent / "fleet.toml").read_text()
    head, example = text.split("# [projects.wholesale]", 1)
    uncommented = "\n".join(
        "" if line == "#" else line.removeprefix("# ")
        for line in f"# [projects.wholesale]{example}".splitlines()
    )
    settings = load(
        toml_file(tmp_path, head + uncommented),
        env={"FLEET_API__TOKEN": TOKEN, "FLEET_PROJECTS__WHOLESALE__API__TOKEN": "w"},
    )

    assert list(settings.every_project()) == ["default", "wholesale"]
    wholesale = settings.every_project()["wholesale"]
    assert wholesale.limits.concurrency == 20
    assert wholesale.api.bearer() == "w"
    assert wholesale.api.url != settings.api.url


# -- what the official client requires ------------------------------------------------------

DATASET = "00000000-0000-0000-0000-0000000000d5"


def test_a_model_without_a_training_dataset_is_refused_before_any_request(tmp_path):
    """The official client refuses to train without datasetId; fleet says so at start."""
    config = toml_file(
        tmp_path,
        f"""
        [defaults]
        evaluate_dataset_id = "{DATASET}"
        [[models]]
        id = "{M1}"
        """,
    )

    with pytest.raises(ConfigError, match=rf"models\[{M1}\]\.train_dataset_id: missing"):
        load(config).require_datasets()


def test_a_discovered_model_needs_its_datasets_in_defaults(tmp_path):
    """Discovered models get [defaults]: checked before discovery asks the server."""
    config = toml_file(
        tmp_path,
        f"""
        [defaults]
        train_dataset_id = "{DATASET}"
        [discover]
        names = ["store-*"]
        """,
    )

    with pytest.raises(ConfigError, match=r"^defaults\.evaluate_dataset_id: missing"):
        load(config).require_datasets()


def test_datasets_are_needed_only_by_the_stages_that_run(tmp_path):
    """A night that starts at approve trains and evaluates nothing: no dataset needed."""
    config = toml_file(tmp_path, f'from_stage = "approve"\n[[models]]\nid = "{M1}"\n')

    load(config).require_datasets()  # no error


def test_a_models_own_dataset_satisfies_it(tmp_path):
    config = toml_file(
        tmp_path,
        f"""
        [[models]]
        id = "{M1}"
        train_dataset_id = "{DATASET}"
        evaluate_dataset_id = "{DATASET}"
        """,
    )

    load(config).require_datasets()  # no error


def test_job_timeouts_have_generous_defaults_and_flags():
    """Twelve hours for training and evaluation, an hour for the rest; each has a flag."""
    settings = load_settings(None, {"job_timeout.deploy": 120}, env={}, use_default_file=False)

    assert settings.job_timeout.train == 12 * 3600
    assert settings.job_timeout.evaluate == 12 * 3600
    assert settings.job_timeout.deploy == 120
    assert settings.job_timeout.score == 3600
    assert {"--job-timeout.train", "--result-wait"} <= {spec.flag for spec in flag_specs()}


def test_resources_are_unset_by_default():
    """No resources are sent unless set: each model's own automation settings apply."""
    settings = load_settings(None, {}, env={}, use_default_file=False)

    assert settings.defaults.resources.overrides() == {}
