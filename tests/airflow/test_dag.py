"""deploy/airflow/fleet_nightly.py under a real Airflow: run by scripts/test-airflow-dag.

The DAG file imports cleanly, has the tasks it promises, maps fleet_run over the shard
indexes, renders one run id per night from the logical date (so every retry resumes), and
builds a valid pod per shard. The bash flavour is run for real with `dag.test()`: a
stand-in `fleet` records what it was called with and fails as told.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import inspect
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pendulum
import pytest
from airflow.configuration import conf
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import ApiClient

try:  # Airflow 3
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 2
    from airflow.models.dagbag import DagBag

DAG_FILE = Path(__file__).resolve().parents[2] / "deploy" / "airflow" / "fleet_nightly.py"
TASKS = {"shard_indexes", "fleet_run", "fleet_report", "fail_if_a_shard_failed"}
UTC = dt.UTC


def _dagbag(folder: Path) -> Any:
    try:
        return DagBag(dag_folder=str(folder), include_examples=False)
    except TypeError:  # Airflow 3 has no examples to leave out
        return DagBag(dag_folder=str(folder))


@pytest.fixture(scope="module")
def module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_nightly", DAG_FILE)
    assert spec is not None
    assert spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


@pytest.fixture(scope="module")
def dag(module: types.ModuleType) -> Any:
    return module.dag


def test_the_dag_file_imports_without_errors() -> None:
    bag = _dagbag(DAG_FILE.parent)
    assert bag.import_errors == {}
    assert list(bag.dags) == ["fleet_nightly"]
    assert {t.task_id for t in bag.dags["fleet_nightly"].tasks} == TASKS


@pytest.mark.parametrize("flavour", ["kubernetes", "bash"])
def test_both_flavours_have_the_same_tasks(module: types.ModuleType, flavour: str) -> None:
    dag = module.build_dag(flavour)
    assert {t.task_id for t in dag.tasks} == TASKS
    assert dag.get_task("fleet_run").upstream_task_ids == {"shard_indexes"}
    for leaf in ("fleet_report", "fail_if_a_shard_failed"):
        assert dag.get_task(leaf).upstream_task_ids == {"fleet_run"}
    with pytest.raises(ValueError, match="FLAVOUR"):
        module.build_dag("docker")


def test_one_night_at_a_time_and_no_catching_up(dag: Any, module: types.ModuleType) -> None:
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    timetable = dag.timetable  # Airflow 3 calls it expression, Airflow 2 summary
    assert (getattr(timetable, "expression", None) or timetable.summary) == module.SCHEDULE
    assert module.TIMEZONE in str(dag.timezone)
    assert dag.params["shards"] == module.DEFAULT_SHARDS


def test_retries_resume_rather_than_restart(dag: Any) -> None:
    run = dag.get_task("fleet_run")
    assert run.retries >= 1
    # Longer than fleet's lease_ttl (60 s): a try killed hard leaves its lease behind.
    assert run.retry_delay > dt.timedelta(seconds=60)
    assert run.execution_timeout is not None
    assert dag.get_task("fleet_report").trigger_rule == "all_done"
    watcher = dag.get_task("fail_if_a_shard_failed")
    assert watcher.trigger_rule == "one_failed"
    assert watcher.retries == 0
    assert dag.get_task("shard_indexes").retries == 0


def _render(dag: Any, template: str, **context: Any) -> str:
    return str(dag.get_template_env().from_string(template).render(**context))


@pytest.mark.parametrize(
    ("logical_date", "run_after", "night"),
    [
        # 01:00 in Berlin is 00:00 UTC in winter and 23:00 UTC the day before in summer.
        (dt.datetime(2026, 11, 25, 0, tzinfo=UTC), None, "20261125"),
        (dt.datetime(2026, 7, 9, 23, tzinfo=UTC), None, "20260710"),
        # Airflow 3: a run triggered by hand may have no logical date.
        (None, dt.datetime(2026, 7, 10, 9, 30, tzinfo=UTC), "20260710"),
    ],
)
def test_the_run_id_renders_from_the_logical_date(
    dag: Any,
    module: types.ModuleType,
    logical_date: dt.datetime | None,
    run_after: dt.datetime | None,
    night: str,
) -> None:
    assert "try_number" not in module.RUN_ID
    dag_run = types.SimpleNamespace(logical_date=logical_date, run_after=run_after)
    for try_number in (1, 4):
        ti = types.SimpleNamespace(try_number=try_number)
        assert _render(dag, module.RUN_ID, dag_run=dag_run, ti=ti) == f"fleet-{night}"
    arguments = dag.get_task("fleet_run").partial_kwargs["arguments"]
    assert arguments[arguments.index("--run-id") + 1] == module.RUN_ID


def test_fleet_run_is_mapped_over_the_shard_indexes(dag: Any, module: types.ModuleType) -> None:
    run = dag.get_task("fleet_run")
    mapped = run.expand_input.value["env_vars"]  # indexes.map(shard_env)
    assert mapped.arg.operator.task_id == "shard_indexes"
    assert list(mapped.callables) == [module.shard_env]
    shard_indexes = dag.get_task("shard_indexes").python_callable
    assert shard_indexes(params={"shards": 5}) == [0, 1, 2, 3, 4]
    assert [module.shard_env(k) for k in range(2)] == [{"SHARD_INDEX": "0"}, {"SHARD_INDEX": "1"}]
    arguments = run.partial_kwargs["arguments"]
    assert arguments[arguments.index("--shard") + 1] == "$(SHARD_INDEX)/{{ params.shards }}"


def test_a_shards_pod_is_valid_and_carries_no_token(dag: Any, module: types.ModuleType) -> None:
    run = dag.get_task("fleet_run")
    operator_kwargs = inspect.signature(KubernetesPodOperator.__init__).parameters
    pod_kwargs = {k: v for k, v in run.partial_kwargs.items() if k in operator_kwargs}
    fleet_run = KubernetesPodOperator(
        task_id="fleet_run", env_vars=module.shard_env(3), **pod_kwargs
    )
    dag_run = types.SimpleNamespace(logical_date=dt.datetime(2026, 11, 25, tzinfo=UTC))
    ti = types.SimpleNamespace(dag_id=dag.dag_id, task_id="fleet_run", map_index=3, try_number=2)
    context = {"dag_run": dag_run, "params": {"shards": 8}, "ti": ti, "run_id": "x", "dag": dag}
    fleet_run.render_template_fields(context, jinja_env=dag.get_template_env())
    fleet_run.__dict__["hook"] = types.SimpleNamespace(is_in_cluster=False)  # no cluster here
    pod = ApiClient().sanitize_for_serialization(fleet_run.build_pod_request_obj(context))

    container = pod["spec"]["containers"][0]
    assert container["args"] == [
        "run", "--config", "/etc/fleet/fleet.toml", "--db", "/data/fleet.db",
        "--run-id", "fleet-20261125", "--shard", "$(SHARD_INDEX)/8",
    ]  # fmt: skip
    assert container["env"] == [{"name": "SHARD_INDEX", "value": "3"}]
    assert container["image"] == module.IMAGE
    assert pod["spec"]["enableServiceLinks"] is False
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    secret = next(v for v in pod["spec"]["volumes"] if "secret" in v)
    assert secret["secret"]["secretName"] == module.TOKEN_SECRET
    mount = next(m for m in container["volumeMounts"] if m["name"] == secret["name"])
    assert mount["mountPath"] == "/var/run/secrets/fleet"
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(pod, "1.30", strict=True)


FAKE_FLEET = """\
#!{python}
# Stands in for fleet: records its arguments and token, exits as FAKE_FLEET_EXITS says.
import json, os, sys
log = os.environ["FAKE_FLEET_LOG"]
calls = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
shard = sys.argv[sys.argv.index("--shard") + 1] if "--shard" in sys.argv else None
codes = json.loads(os.environ["FAKE_FLEET_EXITS"]).get(shard or "", [])
tries = sum(1 for call in calls if shard and call["shard"] == shard)
code = codes[tries] if tries < len(codes) else 0
with open(log, "a") as out:
    record = {{"argv": sys.argv[1:], "shard": shard, "exit": code,
              "token": os.environ.get("FLEET_API__TOKEN")}}
    out.write(json.dumps(record) + "\\n")
sys.exit(code)
"""


@pytest.fixture(scope="module")
def airflow_db() -> None:
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True
    )


def test_bash_flavour_runs_every_shard_and_a_retry_resumes_the_same_run(
    airflow_db: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    fleet = tmp_path / "fleet"
    fleet.write_text(FAKE_FLEET.format(python=sys.executable))
    fleet.chmod(0o755)
    state = tmp_path / "state"
    log = tmp_path / "calls.jsonl"
    source = DAG_FILE.read_text()
    for old, new in {
        'FLAVOUR = "kubernetes"': 'FLAVOUR = "bash"',
        'FLEET = "fleet"': f'FLEET = "{fleet}"',
        'STATE_DIR = "/var/lib/fleet"': f'STATE_DIR = "{state}"',
        '"retry_delay": dt.timedelta(minutes=2)': '"retry_delay": dt.timedelta(0)',
    }.items():
        assert old in source
        source = source.replace(old, new)
    dags = Path(conf.get("core", "dags_folder"))
    (dags / "fleet_nightly.py").write_text(source)
    token = "t0ken-from-the-connection"  # a stand-in
    monkeypatch.setenv(
        "AIRFLOW_CONN_FLEET_MODELOPS", json.dumps({"conn_type": "generic", "password": token})
    )
    monkeypatch.setenv("FAKE_FLEET_LOG", str(log))
    # Shard 1 meets a ModelOps outage (3) and resumes on its retry; shard 2's night ends
    # with failed models (1), which Airflow retries to no avail.
    monkeypatch.setenv("FAKE_FLEET_EXITS", json.dumps({"1/3": [3, 0], "2/3": [1, 1, 1, 1]}))

    bag = _dagbag(dags)
    assert bag.import_errors == {}
    dag = bag.dags["fleet_nightly"]
    logical_date = pendulum.datetime(2026, 11, 25, 1, tz="Europe/Berlin")
    try:
        dag_run = dag.test(logical_date=logical_date, run_conf={"shards": 3})
    except TypeError:  # Airflow 2
        dag_run = dag.test(execution_date=logical_date, run_conf={"shards": 3})

    states = {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}
    assert states == {
        ("shard_indexes", -1): "success",
        ("fleet_run", 0): "success",
        ("fleet_run", 1): "success",
        ("fleet_run", 2): "failed",
        ("fleet_report", -1): "success",
        ("fail_if_a_shard_failed", -1): "failed",
    }
    assert dag_run.state == "failed"

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    runs = [c for c in calls if c["argv"][0] == "run"]
    assert [c["shard"] for c in runs if c["shard"] == "1/3"] == ["1/3", "1/3"]
    assert len([c for c in runs if c["shard"] == "2/3"]) == 4  # retries = 3
    assert {c["shard"] for c in runs} == {"0/3", "1/3", "2/3"}
    for call in runs:
        argv = call["argv"]
        assert argv[argv.index("--run-id") + 1] == "fleet-20261125"  # on every try
        assert argv[argv.index("--db") + 1] == f"{state}/fleet.db"
        assert call["token"] == token
    reports = calls[len(runs) :]
    assert [c["argv"][0] for c in reports] == ["report", "report"]
    assert reports[0]["argv"][:4] == [
        "report", "fleet-20261125", "--db", f"{state}/fleet.shard-*-of-3.db",
    ]  # fmt: skip
    assert all(c["token"] is None for c in reports)
    out, err = capfd.readouterr()
    assert token not in out + err
