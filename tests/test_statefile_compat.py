"""State files written by an earlier fleet (tests/fixtures/statefiles, commit cdb772a) open
with `status`, `report` and a resume, as they are and after a setting was dropped or renamed;
a file written by a newer fleet is refused in one line, exit 2, and left as it was.

Each test works on copies of the fixtures (a state file with its `-commits` sidecar), in its
own directory, through `fleet.cli.main` in-process. The fixtures' golden outputs name the
state file as given on the command line (`finished.db`), so they compare whole.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleet import encoding
from fleet.cli import main
from fleet.schema import SCHEMA
from fleet.store import Store

FIXTURES = Path(__file__).parent / "fixtures" / "statefiles"
RUN = "night-1"
# What made halted.db, against a fresh emulator with the same seed and a short clock.
RESUME = ["demo", "--models", "8", "--seed", "7", "--db", "halted.db", "--run-id", RUN]
RESUME += ["--time-scale", "1000", "--log-level", "warning"]
NIGHT_SHIFT = "Approved by the night shift"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding copies of both fixtures with their sidecars, made current."""
    for name in ("finished.db", "halted.db"):
        shutil.copyfile(FIXTURES / name, tmp_path / name)
        shutil.copyfile(FIXTURES / f"{name}-commits", tmp_path / f"{name}-commits")
    monkeypatch.chdir(tmp_path)
    for name in ("FLEET_DB", "FLEET_API__URL", "FLEET_API__TOKEN", "FLEET_API__PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _fleet(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _golden(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def _edit_settings(db: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change every model's stored settings in `db`, as another fleet might have written them."""
    conn = sqlite3.connect(db)
    with conn:
        for model_id, text in conn.execute("SELECT model_id, lifecycle FROM run_models").fetchall():
            settings = json.loads(text)
            change(settings)
            conn.execute(
                "UPDATE run_models SET lifecycle = ? WHERE model_id = ?",
                (json.dumps(settings), model_id),
            )
    conn.close()


def _drop(settings: dict[str, Any]) -> None:
    """What a fleet that had `gpu_pool` and `resources.gpu` (since dropped) would have stored."""
    settings["gpu_pool"] = "a100"
    settings["resources"]["gpu"] = "1"


def _rename(settings: dict[str, Any]) -> None:
    """`approval_comments` as a fleet that called it `approval_note` would have stored it."""
    del settings["approval_comments"]
    settings["approval_note"] = NIGHT_SHIFT


@pytest.fixture
def renamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """This fleet as one whose encoding 2 renamed `approval_note` to `approval_comments`."""
    monkeypatch.setattr(encoding, "ENCODING", 2)
    monkeypatch.setattr(encoding, "RENAMED", {2: {"approval_note": "approval_comments"}})


def _without_warnings(document: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key != "warnings"}


def _stats(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("emulator: "))


@pytest.mark.parametrize("name", ["finished", "halted"])
def test_todays_files_show_status_and_report_as_they_did(
    here: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """`status --json` and `report --format json` of a file from cdb772a print what it did."""
    code, out, err = _fleet(capsys, "status", "--db", f"{name}.db", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == _golden(f"{name}.status.json")
    code, out, err = _fleet(capsys, "report", "--db", f"{name}.db", "--format", "json")
    assert (code, err) == (0, "")
    assert json.loads(out) == _golden(f"{name}.report.json")


def test_a_halted_night_from_today_resumes_and_finishes(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resuming halted.db trains the 7 models never started, once each; the failed one stays."""
    code, _, err = _fleet(capsys, *RESUME)
    assert code == 1  # one model failed (before the resume)
    assert "'TRAINING': 7" in _stats(err)
    assert _stats(err).endswith("max jobs per model and type 1")
    _, out, _ = _fleet(capsys, "status", "--db", "halted.db", "--json")
    outcomes = {m["name"]: m["outcome"] for m in json.loads(out)["models"]}
    assert outcomes.pop("store-0001") == "failed"
    assert set(outcomes.values()) == {"succeeded"}
    assert len(outcomes) == 7


@pytest.mark.parametrize("name", ["finished", "halted"])
def test_a_dropped_setting_is_ignored_with_a_warning_by_status_and_report(
    here: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Settings this fleet does not have are named once each, on stderr and in the document."""
    _edit_settings(here / f"{name}.db", _drop)
    code, out, err = _fleet(capsys, "status", "--db", f"{name}.db", "--json")
    document = json.loads(out)
    assert code == 0
    assert _without_warnings(document) == _without_warnings(_golden(f"{name}.status.json"))
    assert sorted(w.split(": setting ")[1].split()[0] for w in document["warnings"]) == [
        "'gpu_pool'",
        "'resources.gpu'",
    ]
    assert err.splitlines() == [f"fleet: warning: {w}" for w in document["warnings"]]
    code, out, err = _fleet(capsys, "report", "--db", f"{name}.db", "--format", "json")
    assert code == 0
    assert _without_warnings(json.loads(out)) == _without_warnings(_golden(f"{name}.report.json"))
    assert json.loads(out)["warnings"] == document["warnings"]


def test_a_night_with_a_dropped_setting_resumes_with_one_event_per_setting(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The resume logs `fleet.store.setting_ignored` once per setting (not per model), naming
    the setting and the file, and finishes the night as it would have."""
    _edit_settings(here / "halted.db", _drop)
    code, out, err = _fleet(capsys, *RESUME)
    assert code == 1
    assert _stats(err).endswith("max jobs per model and type 1")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    ignored = [e for e in events if e["event"] == "fleet.store.setting_ignored"]
    assert sorted((e["setting"], e["db"], e["level"]) for e in ignored) == [
        ("gpu_pool", "halted.db", "warning"),
        ("resources.gpu", "halted.db", "warning"),
    ]


@pytest.mark.usefixtures("renamed")
@pytest.mark.parametrize("name", ["finished", "halted"])
def test_a_renamed_setting_reads_under_its_new_name_in_status_and_report(
    here: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A stored old name in the rename table is no unknown setting: no warning, same output."""
    _edit_settings(here / f"{name}.db", _rename)
    code, out, err = _fleet(capsys, "status", "--db", f"{name}.db", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == _golden(f"{name}.status.json")
    code, out, err = _fleet(capsys, "report", "--db", f"{name}.db", "--format", "json")
    assert (code, err) == (0, "")
    assert json.loads(out) == _golden(f"{name}.report.json")


@pytest.mark.usefixtures("renamed")
def test_a_night_with_a_renamed_setting_resumes_with_its_value(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The resumed models are approved with the comment stored under the setting's old name."""
    _edit_settings(here / "halted.db", _rename)
    code, out, err = _fleet(capsys, *RESUME)
    assert code == 1
    assert _stats(err).endswith("max jobs per model and type 1")
    assert "fleet.store.setting_ignored" not in out
    _, out, _ = _fleet(capsys, "status", "--db", "halted.db", "--json")
    comments = {m["name"]: (m["gate"] or {}).get("comment") for m in json.loads(out)["models"]}
    assert comments.pop("store-0001") is None  # failed at evaluate, before the resume
    assert set(comments.values()) == {NIGHT_SHIFT}


def _newer_schema(db: Path) -> str:
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA + 1}")
    conn.close()
    return f"schema {SCHEMA + 1}, this fleet reads up to {SCHEMA}"


def _newer_encoding(db: Path) -> str:
    async def migrate() -> None:
        async with Store.open(db):
            pass

    anyio.run(migrate)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "UPDATE run_models SET encoding = ? WHERE position = 0", (encoding.ENCODING + 1,)
        )
    conn.close()
    return f"settings encoding {encoding.ENCODING + 1}, this fleet reads up to {encoding.ENCODING}"


@pytest.mark.parametrize("newer", [_newer_schema, _newer_encoding], ids=["schema", "encoding"])
def test_a_file_from_a_newer_fleet_is_refused_in_one_line_and_left_unchanged(
    here: Path, capsys: pytest.CaptureFixture[str], newer: Callable[[Path], str]
) -> None:
    """status, report and run --resume each exit 2 with one line; the file is as it was."""
    db = here / "halted.db"
    found = newer(db)
    (here / "fleet.toml").write_text(
        '[api]\nurl = "http://127.0.0.1:9/modelops/core"\n'
        'project_id = "5f1a3c9e-8d2b-4e7a-9c61-0f2d4b8a7e13"\ntoken = "compat-test-token"\n'
    )
    before = {path.name: path.read_bytes() for path in here.iterdir()}
    line = (
        f"fleet: state file error: halted.db was written by a newer fleet ({found}); "
        "upgrade fleet to read it"
    )
    for argv in (
        ["status", "--db", "halted.db", "--json"],
        ["report", "--db", "halted.db", "--format", "json"],
        ["run", "--resume", "--db", "halted.db"],
    ):
        code, out, err = _fleet(capsys, *argv)
        assert (code, err.splitlines()) == (2, [line]), argv
        assert not [text for text in out.splitlines() if not text.startswith("{")]
        assert {path.name: path.read_bytes() for path in here.iterdir()} == before
