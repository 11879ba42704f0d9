"""fleet's nightly run as an Airflow DAG: one mapped task per shard, then one report.

    shard_indexes ──> fleet_run[0..N-1] ──> fleet_report            (all_done)
                                        └─> fail_if_a_shard_failed  (one_failed)

- `fleet_run` is mapped (`.expand()`) over `range(N)`: task K runs
  `fleet run --shard K/N`, the models whose id hashes into shard K, with its own state file
  (`fleet.db` becomes `fleet.shard-K-of-N.db`). N is the DAG param `shards` (default
  DEFAULT_SHARDS); keep it the same from one night to the next, since shards of a
  different N are different state files.
- Every try of a task passes the same `--run-id`, made from the DAG run's logical date
  (RUN_ID below), never from the try number: a retry *resumes* that night's run of that
  shard (polls the jobs already submitted, submits nothing twice) instead of starting one.
- `fleet_report` runs `fleet report` over every shard's state file once all shards are done,
  whatever their outcome. `fail_if_a_shard_failed` is a leaf that fails when a shard did, so
  the DAG run is marked failed although the report (the other leaf) succeeded.
- The ModelOps token is never in this file: the Kubernetes flavour mounts the Kubernetes
  Secret `fleet-modelops`; the bash flavour reads the password of the Airflow Connection
  `fleet_modelops` into FLEET_API__TOKEN (Airflow masks it in logs and rendered fields).

FLAVOUR picks how fleet runs:
- "kubernetes": the fleet image with KubernetesPodOperator (apache-airflow-providers-cncf-
  kubernetes). It expects what `deploy/k8s/base` creates (ConfigMap `fleet-config`,
  ServiceAccount `fleet`), the Secret `fleet-modelops` and a ReadWriteMany PVC
  (`deploy/k8s/sharded/pvc.yaml`) in NAMESPACE: the shards' pods may run on different nodes,
  and the report reads every shard's file.
- "bash": the CLI installed on the workers with BashOperator. STATE_DIR must be on storage
  that every worker which may run these tasks sees (a retry can land on another worker and
  must find its shard's file), or route the DAG to a single worker with a `queue`.

Airflow retries any failed try; it cannot tell fleet's exit codes apart. A retry of a night
that already ended (exit 1: models failed; exit 2: bad configuration) returns the same code
at once, so it costs only `retry_delay`. See the README, "Running nightly".

Works with Airflow 2.9+ and 3.x.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG, Param, TriggerRule, task
except ImportError:  # Airflow 2.9+
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models.param import Param
    from airflow.utils.trigger_rule import TriggerRule

# -- what to change ------------------------------------------------------------------------

FLAVOUR = "kubernetes"  # or "bash"
DAG_ID = "fleet_nightly"
SCHEDULE = "0 1 * * *"  # 01:00 in TIMEZONE: clear of the 02:00-03:00 DST changes
TIMEZONE = "Europe/Berlin"
DEFAULT_SHARDS = 8

# Each try of a night's tasks names the same run: the date, in TIMEZONE, of the DAG run's
# logical date (a manually triggered Airflow 3 run without one: its run_after). Never the try
# number. `night` is the filter night_of() below; `ds_nodash` would give the UTC date, which
# for 01:00 in Berlin is the day before in summer.
RUN_ID = "fleet-{{ (dag_run.logical_date or dag_run.run_after) | night }}"
SHARDS = "{{ params.shards }}"

# retry_delay outlasts fleet's lease_ttl (60 s): a try that was killed hard leaves a lease
# on its state file, and the next try would exit 4 until that lease has expired.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "modelops",
    "retries": 3,
    "retry_delay": dt.timedelta(minutes=2),
    # One try of one shard; on timeout fleet gets SIGTERM and stops within grace_period.
    "execution_timeout": dt.timedelta(hours=6),
}

# kubernetes flavour
NAMESPACE = "fleet"
IMAGE = "fleet:0.1.0"
CONFIG_MAP = "fleet-config"  # deploy/k8s/base/configmap.yaml: fleet.toml
TOKEN_SECRET = "fleet-modelops"  # noqa: S105 - its name, not its value; key `token`; fleet.toml's api.token_file points at it
DATA_CLAIM = "fleet-shards-data"  # ReadWriteMany
SERVICE_ACCOUNT = "fleet"

# bash flavour
FLEET = "fleet"  # the installed CLI, e.g. /opt/fleet/.venv/bin/fleet
CONFIG = "/etc/fleet/fleet.toml"
STATE_DIR = "/var/lib/fleet"  # shared by every worker that may run these tasks
CONNECTION = "fleet_modelops"  # its password is the bearer token

# -- the DAG ---------------------------------------------------------------------------------


def night_of(moment: dt.datetime) -> str:
    """The night a DAG run belongs to, as YYYYMMDD in TIMEZONE (the template filter `night`)."""
    return moment.astimezone(ZoneInfo(TIMEZONE)).strftime("%Y%m%d")


def shard_env(index: int) -> dict[str, str]:
    """The environment of shard `index`'s pod; its args say --shard $(SHARD_INDEX)/N."""
    return {"SHARD_INDEX": str(index)}


def _kubernetes_tasks(indexes: Any) -> tuple[Any, Any]:
    # Imported here: the bash flavour runs without the cncf.kubernetes provider.
    from airflow.providers.cncf.kubernetes.operators.pod import (  # noqa: PLC0415
        KubernetesPodOperator,
    )
    from airflow.providers.cncf.kubernetes.secret import Secret  # noqa: PLC0415
    from kubernetes.client import models as k8s  # noqa: PLC0415

    pod: dict[str, Any] = {
        "namespace": NAMESPACE,
        "image": IMAGE,
        "service_account_name": SERVICE_ACCOUNT,
        "automount_service_account_token": False,
        # fleet stops within grace_period (30 s) of SIGTERM; give it that and more.
        "termination_grace_period": 60,
        # Kubernetes would add FLEET_SERVICE_HOST and the like for a Service named `fleet`,
        # and fleet refuses FLEET_* variables it does not know (exit 2).
        "full_pod_spec": k8s.V1Pod(spec=k8s.V1PodSpec(containers=[], enable_service_links=False)),
        "security_context": k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=10001,
            run_as_group=10001,
            fs_group=10001,
            fs_group_change_policy="OnRootMismatch",
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        "container_security_context": k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        # From the benchmark: ~100-150 MB RSS at 1,000 models and ~300 MB at 10,000 for one
        # process, well under one core; a shard holds 1/N of the models.
        "container_resources": k8s.V1ResourceRequirements(
            requests={"cpu": "250m", "memory": "256Mi"},
            limits={"cpu": "1", "memory": "512Mi"},
        ),
        "volumes": [
            k8s.V1Volume(
                name="config",
                config_map=k8s.V1ConfigMapVolumeSource(name=CONFIG_MAP),
            ),
            k8s.V1Volume(
                name="data",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=DATA_CLAIM
                ),
            ),
            k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="64Mi")),
        ],
        "volume_mounts": [
            k8s.V1VolumeMount(name="config", mount_path="/etc/fleet", read_only=True),
            k8s.V1VolumeMount(name="data", mount_path="/data"),
            k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),  # noqa: S108 - an emptyDir
        ],
        "labels": {"app.kubernetes.io/name": "fleet", "app.kubernetes.io/part-of": DAG_ID},
        "get_logs": True,
        # A failed pod stays for `kubectl logs`/`describe`; a retry is a new pod.
        "on_finish_action": "delete_succeeded_pod",
    }
    fleet_run = KubernetesPodOperator.partial(
        task_id="fleet_run",
        name="fleet-run",
        # The token as a file (re-read when the Secret is rotated), never an env value.
        secrets=[Secret("volume", "/var/run/secrets/fleet", TOKEN_SECRET)],
        arguments=[
            "run",
            "--config",
            "/etc/fleet/fleet.toml",
            "--db",
            "/data/fleet.db",
            "--run-id",
            RUN_ID,
            # $(SHARD_INDEX) is expanded by Kubernetes from the mapped env_vars below;
            # {{ params.shards }} by Airflow.
            "--shard",
            f"$(SHARD_INDEX)/{SHARDS}",
        ],
        **pod,
    ).expand(env_vars=indexes.map(shard_env))
    fleet_report = KubernetesPodOperator(
        task_id="fleet_report",
        name="fleet-report",
        trigger_rule=TriggerRule.ALL_DONE,
        retries=1,
        arguments=[
            "report",
            RUN_ID,
            "--db",
            f"/data/fleet.shard-*-of-{SHARDS}.db",  # fleet expands the glob
            "--format",
            "md",
        ],
        **pod,
    )
    return fleet_run, fleet_report


def _bash_tasks(indexes: Any) -> tuple[Any, Any]:
    @task.bash(
        task_id="fleet_run",
        # append_env keeps the worker's PATH and the like; the token comes from the
        # Connection at run time and is masked. Mind that fleet refuses FLEET_* variables it
        # does not know, so the worker's environment must not carry stray ones.
        env={"FLEET_API__TOKEN": "{{ conn." + CONNECTION + ".password }}"},
        append_env=True,
    )
    def fleet_run(shard: int) -> str:
        # exec: fleet itself gets Airflow's SIGTERM on timeout or when the task is killed.
        return (
            f"exec {FLEET} run --config {CONFIG} --db {STATE_DIR}/fleet.db"
            f" --run-id {RUN_ID} --shard {shard}/{SHARDS}"
        )

    db_glob = f"{STATE_DIR}/fleet.shard-*-of-{SHARDS}.db"
    report = _bash_report(
        f"set -e\n"
        f"{FLEET} report {RUN_ID} --db '{db_glob}' --format md\n"
        f"mkdir -p {STATE_DIR}/reports\n"
        f"{FLEET} report {RUN_ID} --db '{db_glob}' --format html"
        f" --output {STATE_DIR}/reports/{RUN_ID}.html\n"
    )
    return fleet_run.expand(shard=indexes), report


def _bash_report(command: str) -> Any:
    try:  # Airflow 3, or 2.x with the standard provider
        from airflow.providers.standard.operators.bash import BashOperator  # noqa: PLC0415
    except ImportError:  # Airflow 2
        from airflow.operators.bash import BashOperator  # type: ignore[no-redef]  # noqa: PLC0415

    return BashOperator(
        task_id="fleet_report",
        bash_command=command,
        trigger_rule=TriggerRule.ALL_DONE,
        retries=1,
    )


def build_dag(flavour: str = FLAVOUR) -> DAG:
    """The nightly DAG, running fleet as a pod ("kubernetes") or as a command ("bash")."""
    if flavour not in {"kubernetes", "bash"}:
        raise ValueError(f"FLAVOUR: {flavour!r}; use 'kubernetes' or 'bash'")
    with DAG(
        dag_id=DAG_ID,
        description="fleet: the nightly ModelOps lifecycle of every model, in shards",
        schedule=SCHEDULE,
        start_date=pendulum.datetime(2026, 1, 1, tz=TIMEZONE),
        catchup=False,  # a missed night is not run later; the next night covers it
        max_active_runs=1,  # two nights never drive ModelOps at once
        dagrun_timeout=dt.timedelta(hours=8),
        default_args=DEFAULT_ARGS,
        user_defined_filters={"night": night_of},
        params={
            "shards": Param(
                DEFAULT_SHARDS,
                type="integer",
                minimum=1,
                maximum=64,
                description="fleet run --shard K/N for K in range(N); keep N from night to night",
            )
        },
        tags=["fleet", "modelops"],
        doc_md=__doc__,
    ) as dag:

        @task(retries=0)
        def shard_indexes(params: dict[str, Any] | None = None) -> list[int]:
            """range(N): one mapped fleet_run per shard index."""
            assert params is not None
            return list(range(int(params["shards"])))

        @task(trigger_rule=TriggerRule.ONE_FAILED, retries=0)
        def fail_if_a_shard_failed() -> None:
            """Runs only when a shard failed: marks the DAG run failed despite the report."""
            raise RuntimeError("a fleet shard failed; see fleet_report and the shard's log")

        indexes = shard_indexes()
        tasks = _kubernetes_tasks if flavour == "kubernetes" else _bash_tasks
        run, report = tasks(indexes)
        run >> [report, fail_if_a_shard_failed()]
    return dag


dag = build_dag()
