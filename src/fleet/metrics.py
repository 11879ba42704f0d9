"""A run's figures as Prometheus metrics, for node-exporter's textfile collector or a Pushgateway.

Each run fills a fresh `CollectorRegistry` (never the process-wide one) from `RunFigures`, the
totals the engine gathered, so nothing from one run or one test leaks into another. Every
series carries a `project` label, so several fleet jobs can share one textfile directory or
one Pushgateway; the run id appears only on `fleet_run_info`, never on a series that a model
or run would multiply. The families:

    fleet_run_info{run_id, status}           1
    fleet_run_start_time_seconds             gauge   unix seconds
    fleet_run_end_time_seconds               gauge   unix seconds
    fleet_run_duration_seconds               gauge
    fleet_models{outcome}                    gauge   every Outcome, zero when none
    fleet_stage_duration_seconds{stage}      histogram, submitted → finished, every Stage
    fleet_submissions_total{stage}           counter every Stage
    fleet_job_polls_total                    counter
    fleet_http_requests_total{method}        counter
    fleet_http_errors_total{class}           counter 4xx, 5xx, 429, timeout, connection
    fleet_retries_total                      counter
    fleet_throttle_waits_total               counter
    fleet_throttle_wait_seconds_total        counter
    fleet_breaker_opened_total               counter

The counters hold one run's totals and start from zero with the next run, as a batch job's do.
A run over several ModelOps projects has figures per project: one textfile holds each
project's series (`registry_of`), and each project is pushed to its own group. `figures_of`
gathers a finished run's figures; `publish` writes and pushes them (batch.py calls both).
"""

from __future__ import annotations

import functools
import http.client
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.error import HTTPError
from urllib.parse import unquote, urlsplit, urlunsplit

import structlog
from prometheus_client import CollectorRegistry, generate_latest, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fleet.client import ModelOpsClient
from fleet.errors import ApiError, ConfigError, FleetError
from fleet.progress import Progress, RunResult
from fleet.records import ModelRecord, model_outcome
from fleet.secrets import redactor
from fleet.stages import Outcome, Stage, StageState
from fleet.store import Store

# From an approval call that returns at once to a training job of a couple of hours.
STAGE_BUCKETS_S: tuple[float, ...] = (5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
HTTP_ERROR_CLASSES: tuple[str, ...] = ("4xx", "5xx", "429", "timeout", "connection")
# Enough of a Pushgateway's error body to say why it refused a push (it explains in one line).
_ERROR_BODY_BYTES = 300
# Seconds one push to a Pushgateway may take.
PUSH_TIMEOUT_S = 10.0
_V = TypeVar("_V")
log = structlog.get_logger("fleet.metrics")


@dataclass(frozen=True, slots=True)
class RunFigures:
    """What one run did, in totals the engine gathers; the input of every function here."""

    run_id: str
    status: str
    started_at: float  # unix seconds
    finished_at: float  # unix seconds
    models_by_outcome: Mapping[str, int] = field(default_factory=dict)  # Outcome value → models
    # Stage value → seconds of each stage that finished, from submitted to finished.
    stage_durations: Mapping[str, Sequence[float]] = field(default_factory=dict)
    submissions: Mapping[str, int] = field(default_factory=dict)  # Stage value → jobs submitted
    polls: int = 0  # job status requests
    requests: Mapping[str, int] = field(default_factory=dict)  # HTTP method → requests sent
    http_errors: Mapping[str, int] = field(default_factory=dict)  # one of HTTP_ERROR_CLASSES
    retries: int = 0
    throttle_waits: int = 0
    throttle_wait_seconds: float = 0.0
    breaker_opened: int = 0

    def __post_init__(self) -> None:
        if not self.finished_at >= self.started_at:
            raise ValueError(
                f"finished_at ({self.finished_at}) is before started_at ({self.started_at})"
            )
        counts: dict[str, Iterable[float]] = {
            "models_by_outcome": self.models_by_outcome.values(),
            "stage_durations": (s for seconds in self.stage_durations.values() for s in seconds),
            "submissions": self.submissions.values(),
            "polls": (self.polls,),
            "requests": self.requests.values(),
            "http_errors": self.http_errors.values(),
            "retries": (self.retries,),
            "throttle_waits": (self.throttle_waits,),
            "throttle_wait_seconds": (self.throttle_wait_seconds,),
            "breaker_opened": (self.breaker_opened,),
        }
        for name, values in counts.items():
            bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
            if bad:
                raise ValueError(f"{name} must be finite and not negative, not {bad[0]}")


def registry_for(figures: RunFigures, *, project: str) -> CollectorRegistry:
    """A new registry holding this run's metrics, every series labelled with `project`."""
    return registry_of({project: figures})


def registry_of(by_project: Mapping[str, RunFigures]) -> CollectorRegistry:
    """A new registry holding the figures of each project (by project id), one family per
    metric with every project's series in it."""
    if not by_project or not all(by_project):
        raise ValueError("project must be a ModelOps project id, not empty")
    families: dict[str, Metric] = {}
    for project, figures in by_project.items():
        for family in _families(figures, project):
            if family.name in families:
                families[family.name].samples.extend(family.samples)
            else:
                families[family.name] = family
    registry = CollectorRegistry()
    registry.register(_Snapshot(tuple(families.values())))
    return registry


def write_textfile(figures: RunFigures, path: Path, *, project: str) -> None:
    """Write the run's metrics to `path` for node-exporter's textfile collector, atomically.

    The text goes to a temporary file beside `path` (named `<path>.<pid>.tmp`, which the
    collector ignores as it reads only `*.prom`) and is renamed over it, so a scrape sees the
    previous run's file or this one's, never half of one. The file is 0600, like every file
    fleet writes (node-exporter reads it as its owner, or through a group the operator grants
    with `chmod` after the run). Raises `ConfigError` when it cannot.
    """
    write_registry(registry_for(figures, project=project), path)


def write_registry(registry: CollectorRegistry, path: Path) -> None:
    """`write_textfile` of any registry (`registry_of` several projects' figures)."""
    text = redactor.scrub(generate_latest(registry).decode("utf-8")).encode("utf-8")
    temporary = f"{os.fspath(path)}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(text)
            Path(temporary).replace(path)
        except OSError:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(
            f"cannot write the metrics file {path}: {_one_line(exc.strerror or str(exc))}"
            " (check that its directory exists and is writable)"
        ) from exc


def push(
    figures: RunFigures,
    gateway: str,
    *,
    project: str,
    job: str = "fleet",
    timeout: float = PUSH_TIMEOUT_S,
) -> None:
    """Replace the group `{job, project}` on a Pushgateway with this run's metrics (HTTP PUT).

    `gateway` is `host:port` or an http(s) URL; a `user:password@` in it is sent as basic auth.
    Raises `ApiError` with a one-line message when the gateway cannot be reached or refuses
    (the run itself is over by then, so callers log it and carry on), and `ConfigError` when
    `gateway` is not a URL.
    """
    registry = registry_for(figures, project=project)
    redactor.add_url(gateway)  # a gateway's error page could repeat the password
    url, where, credentials = _gateway_address(gateway)
    handler = default_handler
    if credentials is not None:
        username, password = credentials
        handler = functools.partial(basic_auth_handler, username=username, password=password)
    try:
        push_to_gateway(
            url,
            job=job,
            registry=registry,
            grouping_key={"project": project},
            timeout=timeout,
            handler=handler,
        )
    except HTTPError as exc:
        try:
            detail = _error_body(exc)
        finally:
            exc.close()
        raise ApiError(
            f"the Pushgateway at {where} refused the metrics: {exc.code} {exc.reason}"
            + (f": {redactor.scrub(detail)}" if detail else ""),
            method="PUT",
            status=exc.code,
        ) from exc
    except (ValueError, http.client.InvalidURL) as exc:
        raise ConfigError(
            f"the Pushgateway address {where} is not a valid URL: {_one_line(str(exc))}"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        # URLError (refused, unknown host), timeouts, resets, and an answer that is not HTTP.
        reason = getattr(exc, "reason", None) or exc
        raise ApiError(
            f"cannot push metrics to the Pushgateway at {where}: {_one_line(str(reason))}",
            method="PUT",
        ) from exc


class _Snapshot(Collector):
    """Metric families computed once; the registry reads them at each exposition."""

    def __init__(self, families: tuple[Metric, ...]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _families(f: RunFigures, project: str) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "fleet_run_info", "The last run: its id and status.", labels=["project", "run_id", "status"]
    )
    info.add_metric([project, f.run_id, f.status], 1)
    yield info
    yield _gauge(
        "fleet_run_start_time_seconds", "When the run started, unix seconds.", project, f.started_at
    )
    yield _gauge(
        "fleet_run_end_time_seconds", "When the run finished, unix seconds.", project, f.finished_at
    )
    yield _gauge(
        "fleet_run_duration_seconds",
        "How long the run took.",
        project,
        f.finished_at - f.started_at,
    )

    models = GaugeMetricFamily(
        "fleet_models", "Models of the run by where they ended up.", labels=["project", "outcome"]
    )
    for outcome, count in _filled(f.models_by_outcome, tuple(Outcome), 0).items():
        models.add_metric([project, outcome], count)
    yield models

    durations = HistogramMetricFamily(
        "fleet_stage_duration_seconds",
        "Seconds from a stage's submission to its end, for the stages that finished.",
        labels=["project", "stage"],
    )
    for stage, seconds in _filled(f.stage_durations, tuple(Stage), ()).items():
        durations.add_metric([project, stage], _buckets(seconds), sum_value=math.fsum(seconds))
    yield durations

    yield _labelled_counter(
        "fleet_submissions",
        "Remote jobs (and approval calls) submitted, by stage.",
        project,
        "stage",
        _filled(f.submissions, tuple(Stage), 0),
    )
    yield _counter("fleet_job_polls", "Job status requests.", project, f.polls)
    yield _labelled_counter(
        "fleet_http_requests",
        "HTTP requests sent to ModelOps, by method.",
        project,
        "method",
        _by_method(f.requests),
    )
    yield _labelled_counter(
        "fleet_http_errors",
        "Failed HTTP requests, by class of failure.",
        project,
        "class",
        _filled(f.http_errors, HTTP_ERROR_CLASSES, 0),
    )
    yield _counter("fleet_retries", "Requests sent again after a failure.", project, f.retries)
    yield _counter(
        "fleet_throttle_waits", "Times the throttle held requests back.", project, f.throttle_waits
    )
    yield _counter(
        "fleet_throttle_wait_seconds",
        "Seconds requests spent held by the throttle.",
        project,
        f.throttle_wait_seconds,
    )
    yield _counter(
        "fleet_breaker_opened", "Times the circuit breaker opened.", project, f.breaker_opened
    )


def _gauge(name: str, documentation: str, project: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["project"])
    gauge.add_metric([project], value)
    return gauge


def _counter(name: str, documentation: str, project: str, value: float) -> CounterMetricFamily:
    # Built from the family rather than `Counter`, so no `_created` series comes with it.
    counter = CounterMetricFamily(name, documentation, labels=["project"])
    counter.add_metric([project], value)
    return counter


def _labelled_counter(
    name: str, documentation: str, project: str, label: str, values: Mapping[str, float]
) -> CounterMetricFamily:
    counter = CounterMetricFamily(name, documentation, labels=["project", label])
    for key, value in values.items():
        counter.add_metric([project, key], value)
    return counter


def _by_method(requests: Mapping[str, int]) -> dict[str, int]:
    by_method: dict[str, int] = {}
    for method, count in sorted(requests.items()):
        by_method[method.upper()] = by_method.get(method.upper(), 0) + count
    return by_method


def _filled(given: Mapping[str, _V], known: Sequence[str], empty: _V) -> dict[str, _V]:
    """Every known key in its order (zero if absent, so series do not come and go), then extras."""
    filled = {key: given.get(key, empty) for key in known}
    filled.update(sorted(((k, v) for k, v in given.items() if k not in filled), key=_first))
    return filled


def _first(item: tuple[str, object]) -> str:
    return item[0]


def _buckets(seconds: Sequence[float]) -> list[tuple[str, float]]:
    """Cumulative counts at each bound, as Prometheus histograms expose them."""
    # `le="5.0"`, as prometheus_client's own Histogram writes these bounds.
    counts = [(repr(float(b)), sum(1 for s in seconds if s <= b)) for b in STAGE_BUCKETS_S]
    return [*counts, ("+Inf", len(seconds))]


def _gateway_address(gateway: str) -> tuple[str, str, tuple[str, str] | None]:
    """The URL to push to, the address fit for a message, and the user and password if any.

    urllib would take `user:password@` for part of the host name, so it is taken out of the URL
    and sent as HTTP basic auth instead; messages show `***@` in its place.
    """
    # As push_to_gateway reads it: without an http(s) scheme, the address is a host[:port].
    full = gateway if gateway.startswith(("http://", "https://")) else f"http://{gateway}"
    try:
        parts = urlsplit(full)
    except ValueError as exc:
        raise ConfigError(
            f"the Pushgateway address is not a valid URL: {_one_line(str(exc))}"
        ) from exc
    if "@" not in parts.netloc:
        return gateway, gateway, None
    userinfo, _, host = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    return (
        urlunsplit(parts._replace(netloc=host)),
        urlunsplit(parts._replace(netloc=f"***@{host}")),
        (unquote(username), unquote(password)),
    )


def _error_body(exc: HTTPError) -> str:
    try:
        return _one_line(exc.read(_ERROR_BODY_BYTES).decode("utf-8", "replace"))
    except (OSError, http.client.HTTPException):
        return ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def figures_of(
    store: Store,
    result: RunResult,
    progress: Progress,
    clients: Mapping[str, ModelOpsClient],
    *,
    started_at: float,
) -> dict[str, RunFigures]:
    """Each project's figures of a finished run, by project id: from its models' state, the
    run's progress counts and the project's client (all of them for a run of one project)."""
    models = await store.models(result.run_id)
    several = len(clients) > 1
    figures: dict[str, RunFigures] = {}
    for name, client in clients.items():
        mine = [model for model in models if not several or model.spec.project == name]
        submissions = progress.submissions
        if several:
            submissions = progress.project_submissions.get(name, Counter())
        figures[client.project_id] = _figures(result, mine, submissions, client, started_at)
    return figures


def _figures(
    result: RunResult,
    models: Sequence[ModelRecord],
    submissions: Mapping[Stage, int],
    client: ModelOpsClient,
    started_at: float,
) -> RunFigures:
    durations: dict[str, list[float]] = {}
    for model in models:
        for stage, record in model.stages.items():
            if record.state is StageState.SUCCEEDED and record.submitted_at and record.finished_at:
                seconds = (record.finished_at - record.submitted_at).total_seconds()
                durations.setdefault(stage.value, []).append(max(seconds, 0.0))
    return RunFigures(
        run_id=result.run_id,
        status=result.status,
        started_at=started_at,
        finished_at=max(time.time(), started_at),
        models_by_outcome=dict(Counter(model_outcome(m).value for m in models)),
        stage_durations=durations,
        submissions={stage.value: n for stage, n in submissions.items()},
        polls=client.stats.polls,
        requests=dict(client.stats.requests),
        http_errors=dict(client.stats.errors),
        retries=client.stats.retries,
        throttle_waits=client.throttle.overloads,
        throttle_wait_seconds=client.throttle.waited_s,
        breaker_opened=client.breaker.opened,
    )


def publish(
    figures: Mapping[str, RunFigures],
    *,
    textfile: Path | None = None,
    gateway: str | None = None,
    timeout: float = PUSH_TIMEOUT_S,
) -> None:
    """Each project's figures to a textfile and/or a Pushgateway (each project its own group).

    The run is over by then: a file that cannot be written or a push refused is logged, and
    the run's result stands."""
    if textfile is not None:
        try:
            write_registry(registry_of(figures), textfile)
        except FleetError as exc:
            log.warning("fleet.metrics.write_failed", path=str(textfile), error=str(exc))
    if gateway is not None:
        for project, of_project in figures.items():
            try:
                push(of_project, gateway, project=project, timeout=timeout)
            except FleetError as exc:
                log.warning("fleet.metrics.push_failed", project=project, error=str(exc))


def push_timeout(remaining_s: float | None) -> float:
    """A push's timeout: half of what is left of the grace period after a signal (the rest is
    for closing down), else the usual."""
    if remaining_s is None:
        return PUSH_TIMEOUT_S
    return max(0.1, min(remaining_s / 2, PUSH_TIMEOUT_S))
