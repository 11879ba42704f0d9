"""The encoding of models' settings in the state file: versioned, and read tolerantly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from fleet import encoding
from fleet.encoding import ENCODING, Decoded, decode, encode
from fleet.models import Lifecycle, Resources

RULE = "Accuracy >= 0.9"
# Lifecycle's settings as encoding 1 stores them. A change here is a change of encoding:
# raise ENCODING, add a RENAMED row for a rename, and record the settings under the new one.
SETTINGS_OF_ENCODING = {
    1: {
        "approval_comments": "<class 'str'>",
        "approval_rule": "str | None",
        "cron": "<class 'str'>",
        "dataset_connection_id": "str | None",
        "dataset_template_id": "str | None",
        "docker_image": "str | None",
        "engine": "<class 'str'>",
        "engine_type": "typing.Literal['DOCKER_BATCH', 'IN_VANTAGE']",
        "evaluate_dataset_id": "str | None",
        "hyperparameters": "dict[str, typing.Any]",
        "language": "str | None",
        "monitor_rule": "str | None",
        "no_champion": "typing.Literal['allow', 'reject']",
        "on_missing_metric": "typing.Literal['reject', 'fail']",
        "publish_only": "<class 'bool'>",
        "resources.cpu": "str | None",
        "resources.memory": "str | None",
        "retire_mode": "typing.Literal['previous', 'deployed', 'none']",
        "train_dataset_id": "str | None",
        "trained_model_id": "str | None",
    }
}


def _settings(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    found: dict[str, str] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.update(_settings(annotation, f"{prefix}{name}."))
        else:
            found[f"{prefix}{name}"] = repr(annotation)
    return found


def _stored(**changes: Any) -> str:
    data = json.loads(encode(Lifecycle(approval_rule=RULE, hyperparameters={"depth": 3})))
    data.update(changes)
    return json.dumps(data)


def test_the_settings_are_those_of_the_encoding_this_fleet_writes() -> None:
    """Lifecycle's settings, names and types, are those recorded for ENCODING."""
    assert _settings(Lifecycle) == SETTINGS_OF_ENCODING[ENCODING]


def test_settings_read_back_as_written() -> None:
    """What this fleet writes it reads back unchanged, with nothing to say."""
    lifecycle = Lifecycle(approval_rule=RULE, resources=Resources(memory="2g"), cron="@manual")
    assert decode(encode(lifecycle), ENCODING) == Decoded(lifecycle)


def test_unknown_settings_are_left_out_and_named() -> None:
    """Settings this fleet does not have, at the top or in a section, are dropped by name;
    the keys of hyperparameters are the model's own and stay."""
    text = _stored(gpu_pool="a100", resources={"memory": "2g", "gpu": "1"})
    decoded = decode(text, ENCODING)
    assert decoded.ignored == ("resources.gpu", "gpu_pool")
    assert decoded.lifecycle.resources == Resources(memory="2g")
    assert decoded.lifecycle.hyperparameters == {"depth": 3}
    assert decoded.lifecycle.approval_rule == RULE


def test_a_renamed_setting_is_read_under_its_new_name_from_older_encodings_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rename made by encoding 2 applies to settings written with 1, in sections too;
    settings written with 2 already carry the new name."""
    monkeypatch.setattr(
        encoding,
        "RENAMED",
        {2: {"approval_note": "approval_comments", "resources.ram": "resources.memory"}},
    )
    text = _stored(approval_note="by the night shift", resources={"ram": "4g"})
    data = json.loads(text)
    del data["approval_comments"]
    old = decode(json.dumps(data), 1)
    assert old.renamed == (
        ("approval_note", "approval_comments"),
        ("resources.ram", "resources.memory"),
    )
    assert old.lifecycle.approval_comments == "by the night shift"
    assert old.lifecycle.resources.memory == "4g"
    assert old.ignored == ()
    new = decode(json.dumps(data), 2)
    assert new.ignored == ("resources.ram", "approval_note")


def test_renames_of_successive_encodings_apply_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """a (1) → b (2) → cron (3): settings written with 1 reach the newest name."""
    monkeypatch.setattr(encoding, "RENAMED", {3: {"b": "cron"}, 2: {"a": "b"}})
    data = json.loads(_stored(a="@manual"))
    del data["cron"]  # a fleet writing encoding 1 had no setting of that name
    decoded = decode(json.dumps(data), 1)
    assert decoded.lifecycle.cron == "@manual"
    assert decoded.renamed == (("a", "b"), ("b", "cron"))


def test_a_value_that_no_longer_validates_is_left_out_and_named() -> None:
    """Such a setting takes its default and is named with why; the others keep their values."""
    text = _stored(retire_mode="everything", resources={"memory": ["2g"], "cpu": "1"})
    decoded = decode(text, ENCODING)
    assert [name for name, _ in decoded.invalid] == ["resources.memory", "retire_mode"]
    assert "'previous', 'deployed' or 'none'" in dict(decoded.invalid)["retire_mode"]
    assert decoded.lifecycle.retire_mode == "previous"
    assert decoded.lifecycle.resources == Resources(cpu="1")
    assert decoded.lifecycle.approval_rule == RULE


@pytest.mark.parametrize("text", ["[]", "not json", "{", '"x"'])
def test_text_that_is_no_settings_object_is_a_value_error(text: str) -> None:
    """Anything but a JSON object is a ValueError in one line, for the store to name."""
    with pytest.raises(ValueError, match=r"^[^\n]+$"):
        decode(text, ENCODING)
