"""The Kubernetes manifests of deploy/k8s: valid against the API schemas, and safe to run.

Offline: the schemas ship with kubernetes-validate (strict: an unknown or misspelled field
fails). The invariants are those the schemas cannot express: the API server's own rules
(podFailurePolicy needs restartPolicy Never, FailIndex needs backoffLimitPerIndex, ...) and
fleet's (a retried pod resumes the same run, a shard's --shard matches the Job's
completions, the token never sits in the manifest, the configuration loads).
"""

from __future__ import annotations

import re
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fleet.config import _known_env_names, load_settings
from fleet.flags import flag_specs

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes these manifests are for (backoffLimitPerIndex and
# podReplacementPolicy are on by default from 1.29, the job-name pod label from 1.27) and
# the newest schema kubernetes-validate ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
JOB_NAME_LABEL = "metadata.labels['batch.kubernetes.io/job-name']"
# Exit codes (README): a retry of the same run cannot change 1 (the night ran; models
# failed) or 2 (bad configuration); 3 (ModelOps unusable), 4 (the lease of a pod killed
# hard) and 143 (SIGTERM) are worth retrying.
FINAL_EXITS = {1, 2}
RETRIED_EXITS = {3, 4, 137, 143}
# Flags of `fleet run` that are not settings.
RUN_FLAGS = {"--config", "--run-id", "--shard"}


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        with path.open() as handle:
            docs += [(path, doc) for doc in yaml.safe_load_all(handle) if doc is not None]
    return docs


DOCUMENTS = _documents()
RESOURCES = [(p, d) for p, d in DOCUMENTS if d.get("kind") != "Kustomization"]
KUSTOMIZATIONS = [(p, d) for p, d in DOCUMENTS if d.get("kind") == "Kustomization"]


def _label(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    meta = doc.get("metadata", {})
    name = meta.get("name") or meta.get("generateName")
    return f"{path.relative_to(K8S)}:{doc.get('kind')}/{name}"


def _jobs() -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(label, Job spec, CronJob spec or None) of every Job and CronJob."""
    jobs = []
    for item in RESOURCES:
        _, doc = item
        if doc["kind"] == "CronJob":
            jobs.append((_label(item), doc["spec"]["jobTemplate"]["spec"], doc["spec"]))
        elif doc["kind"] == "Job":
            jobs.append((_label(item), doc["spec"], None))
    return jobs


def _container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["fleet"]
    return containers[0]


JOBS = [pytest.param(*job, id=job[0]) for job in _jobs()]
# The Jobs that run the night (the report Jobs only read state files).
RUN_JOBS = [job for job in JOBS if _container(job.values[1])["args"][0] == "run"]
CRON_JOBS = [job for job in JOBS if job.values[2] is not None]


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in RESOURCES if d["kind"] == kind}


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _flag(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} once in {args}"
    return args[args.index(flag) + 1]


def _mount_of(pod: dict[str, Any], volume_kind: str, name_key: str, name: str) -> str:
    volumes = [v["name"] for v in pod["volumes"] if v.get(volume_kind, {}).get(name_key) == name]
    assert len(volumes) == 1, f"one {volume_kind} volume of {name}"
    mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volumes[0]]
    assert len(mounts) == 1
    assert "subPath" not in mounts[0], "a subPath mount is never updated by the kubelet"
    return str(mounts[0]["mountPath"])


def test_there_is_something_to_check() -> None:
    kinds = sorted(d["kind"] for _, d in RESOURCES)
    assert kinds.count("CronJob") == 2
    assert {"ConfigMap", "ServiceAccount", "PersistentVolumeClaim", "Job"} <= set(kinds)
    assert len(RUN_JOBS) == 2


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", RESOURCES, ids=_label)
def test_manifest_is_valid_against_the_kubernetes_schema(
    item: tuple[Path, dict[str, Any]], version: str
) -> None:
    _, doc = item
    assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "fleet"
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("item", KUSTOMIZATIONS, ids=_label)
def test_kustomization_lists_what_exists(item: tuple[Path, dict[str, Any]]) -> None:
    path, doc = item
    assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert set(doc) <= {"apiVersion", "kind", "resources", "images", "namespace"}
    for resource in doc["resources"]:
        target = (path.parent / resource).resolve()
        assert target.is_file() or (target / "kustomization.yaml").is_file(), resource


def test_every_manifest_is_deployed_or_made_on_demand() -> None:
    listed = {(path.parent / r).resolve() for path, doc in KUSTOMIZATIONS for r in doc["resources"]}
    for path, doc in RESOURCES:
        on_demand = "generateName" in doc["metadata"]  # kubectl create -f, by hand
        assert (path.resolve() in listed) != on_demand, path


@pytest.mark.parametrize(("label", "job", "cron"), CRON_JOBS)
def test_cronjob_never_runs_two_nights_at_once(
    label: str, job: dict[str, Any], cron: dict[str, Any]
) -> None:
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["startingDeadlineSeconds"] > 0
    zoneinfo.ZoneInfo(cron["timeZone"])
    assert len(cron["schedule"].split()) == 5
    # A CronJob's name plus the 11 characters of its Jobs' suffix must fit in 63.
    assert len(label.rsplit("/", maxsplit=1)[-1]) <= 52


@pytest.mark.parametrize(("label", "job", "cron"), JOBS)
def test_job_retries_what_a_retry_can_fix(
    label: str, job: dict[str, Any], cron: dict[str, Any] | None
) -> None:
    pod = job["template"]["spec"]
    assert job["activeDeadlineSeconds"] > 0
    if "backoffLimitPerIndex" in job:
        assert job["completionMode"] == "Indexed"
        assert job["backoffLimitPerIndex"] >= 1
    else:
        assert "backoffLimit" in job
    policy = job.get("podFailurePolicy")
    if policy is None:
        assert pod["restartPolicy"] in {"Never", "OnFailure"}
        return
    # The API server's rules for podFailurePolicy, which the schema does not carry.
    assert pod["restartPolicy"] == "Never"
    assert job.get("podReplacementPolicy", "Failed") == "Failed"
    decided: dict[int, str] = {}
    for rule in policy["rules"]:
        if rule["action"] == "FailIndex":
            assert "backoffLimitPerIndex" in job
        if "onExitCodes" in rule:
            codes = rule["onExitCodes"]
            assert codes["operator"] == "In"
            assert codes["containerName"] == "fleet"
            assert 0 not in codes["values"]
            for code in codes["values"]:
                decided.setdefault(code, rule["action"])  # the first matching rule wins
        else:
            assert rule["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
            assert rule["action"] == "Ignore"
    if cron is None:  # a report: nothing to resume
        return
    assert {c for c, a in decided.items() if a in {"FailJob", "FailIndex"}} == FINAL_EXITS
    assert all(decided.get(code, "Count") == "Count" for code in RETRIED_EXITS)
    assert pod["terminationGracePeriodSeconds"] > 30  # fleet's grace_period


@pytest.mark.parametrize(("label", "job", "cron"), RUN_JOBS)
def test_a_retried_pod_resumes_the_same_run(
    label: str, job: dict[str, Any], cron: dict[str, Any] | None
) -> None:
    container = _container(job)
    args = container["args"]
    assert args[0] == "run"
    # The run id is the Job's name: the same for every pod of the Job, new every night.
    assert _flag(args, "--run-id") == "$(JOB_NAME)"
    assert _env(container)["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == JOB_NAME_LABEL
    assert cron is not None


@pytest.mark.parametrize(("label", "job", "cron"), RUN_JOBS)
def test_shards_match_the_indexed_job(
    label: str, job: dict[str, Any], cron: dict[str, Any] | None
) -> None:
    args = _container(job)["args"]
    if job.get("completionMode") != "Indexed":
        assert "--shard" not in args
        assert job.get("parallelism", 1) == 1
        return
    assert _flag(args, "--shard") == f"$(JOB_COMPLETION_INDEX)/{job['completions']}"
    assert 1 <= job["parallelism"] <= job["completions"]
    # Every shard writes its own file, and shards run on any node: a shared volume.
    claim = next(
        v["persistentVolumeClaim"]["claimName"]
        for v in job["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    )
    assert _by_kind("PersistentVolumeClaim")[claim]["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize(("label", "job", "cron"), JOBS)
def test_pod_runs_as_the_image_user_with_nothing_to_spare(
    label: str, job: dict[str, Any], cron: dict[str, Any] | None
) -> None:
    pod = job["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["fsGroup"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    # A Service named fleet would put FLEET_SERVICE_HOST in the environment: exit 2.
    assert pod["enableServiceLinks"] is False
    container = _container(job)
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert any("emptyDir" in v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert container["image"] == f"fleet:{_version()}"
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert _quantity(resources["requests"][kind]) <= _quantity(resources["limits"][kind])


@pytest.mark.parametrize(("label", "job", "cron"), JOBS)
def test_secrets_are_files_or_secret_refs_never_values(
    label: str, job: dict[str, Any], cron: dict[str, Any] | None
) -> None:
    for name, var in _env(_container(job)).items():
        if SECRET_NAME.search(name):
            assert "value" not in var
            assert "secretKeyRef" in var["valueFrom"], name
    for _, doc in RESOURCES:
        assert doc["kind"] != "Secret", "create the Secret by hand: its value is not in git"


@pytest.mark.parametrize(("label", "job", "cron"), RUN_JOBS)
def test_configuration_loads_as_fleet_run_would(
    label: str, job: dict[str, Any], cron: dict[str, Any] | None, tmp_path: Path
) -> None:
    """The ConfigMap's fleet.toml, the FLEET_* env and the args: no exit 2 at 01:00."""
    pod = job["template"]["spec"]
    container = _container(job)
    config_dir = _mount_of(pod, "configMap", "name", "fleet-config")
    assert _flag(container["args"], "--config") == f"{config_dir}/fleet.toml"
    toml = tmp_path / "fleet.toml"
    toml.write_text(_by_kind("ConfigMap")["fleet-config"]["data"]["fleet.toml"])
    env = {k: v["value"] for k, v in _env(container).items() if k.startswith("FLEET_")}
    assert set(env) <= _known_env_names(), "fleet refuses unknown FLEET_* variables"
    env["FLEET_API__TOKEN"] = "stands-in-for-the-file"
    data_dir = Path(_mount_of(pod, "persistentVolumeClaim", "claimName", _claim(pod)))

    for index in {0, job.get("completions", 1) - 1}:
        # What Kubernetes makes of $(VAR) in args for the pod of that index.
        pod_env = {"JOB_NAME": "fleet-nightly-29926080", "JOB_COMPLETION_INDEX": str(index)}
        args = [_expand(arg, pod_env) for arg in container["args"]]
        settings = load_settings(toml, _setting_flags(args), env, use_default_file=False)
        settings.require_api()
        settings.require_datasets()
        assert settings.db.parent == data_dir
    secret_dir = _mount_of(pod, "secret", "secretName", "fleet-modelops")
    assert settings.api.token_file is not None
    assert settings.api.token_file.parent == Path(secret_dir)
    assert pod["terminationGracePeriodSeconds"] > settings.grace_period
    assert tomllib.loads(toml.read_text())["api"].keys().isdisjoint({"token", "client_secret"})


def _expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in a container's args."""
    return re.sub(r"\$\((\w+)\)", lambda match: env[match[1]], arg)


def _setting_flags(args: list[str]) -> dict[str, str]:
    """The settings that `fleet run ARGS` passes on as flags; fails on a flag it lacks."""
    settings_flags = {spec.flag: spec.path for spec in flag_specs()}
    flags: dict[str, str] = {}
    rest = iter(args[1:])
    for arg in rest:
        value = next(rest)
        if arg in settings_flags:
            flags[settings_flags[arg]] = value
        else:
            assert arg in RUN_FLAGS, f"{arg} is not a flag of fleet run"
    return flags


def _claim(pod: dict[str, Any]) -> str:
    return next(
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    )


def _version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def _quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    text = str(value)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)
