"""Run metrics: the textfile read back by Prometheus' own parser; pushes to a local gateway."""

from __future__ import annotations

import base64
import os
import re
import socket
import threading
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleet.errors import ApiError, ConfigError
from fleet.metrics import (
    RunFigures,
    push,
    push_timeout,
    registry_for,
    registry_of,
    write_registry,
    write_textfile,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from prometheus_client import Metric

PROJECT = "23e1df4b-b630-47a1-ab80-7ad5385fcd8d"
FIGURES = RunFigures(
    run_id="run-20250301-0200",
    status="failed",
    started_at=1_740_794_400.0,
    finished_at=1_740_801_600.5,
    models_by_outcome={"succeeded": 180, "rejected": 12, "failed": 3},
    stage_durations={"train": [4.0, 250.0, 3600.0, 9000.0], "approve": [0.3, 0.2]},
    submissions={"train": 195, "evaluate": 192, "approve": 192, "deploy": 180},
    polls=4321,
    requests={"GET": 4700, "post": 760},
    http_errors={"5xx": 7, "429": 4, "timeout": 1},
    retries=12,
    throttle_waits=4,
    throttle_wait_seconds=31.5,
    breaker_opened=1,
)
BOUNDS = ["5.0", "15.0", "30.0", "60.0", "120.0", "300.0", "600.0", "900.0", "1800.0", "3600.0"]
BOUNDS += ["7200.0", "+Inf"]


def _families(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _values(family: Metric, label: str) -> dict[str, float]:
    return {sample.labels[label]: sample.value for sample in family.samples}


def _only(family: Metric) -> float:
    (sample,) = family.samples
    return sample.value


def _names(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


@pytest.fixture
def written(tmp_path: Path) -> dict[str, Metric]:
    """The sample figures written as a textfile and parsed back."""
    path = tmp_path / "fleet.prom"
    write_textfile(FIGURES, path, project=PROJECT)
    return _families(path.read_text())


def test_run_gauges_and_info(written: dict[str, Metric]) -> None:
    """The run's id and status ride only on fleet_run_info; its times are gauges in seconds."""
    info = written["fleet_run_info"]
    assert info.type == "gauge"
    assert [(s.labels, s.value) for s in info.samples] == [
        ({"project": PROJECT, "run_id": "run-20250301-0200", "status": "failed"}, 1.0)
    ]
    assert written["fleet_run_start_time_seconds"].type == "gauge"
    assert _only(written["fleet_run_start_time_seconds"]) == 1_740_794_400.0
    assert _only(written["fleet_run_end_time_seconds"]) == 1_740_801_600.5
    assert _only(written["fleet_run_duration_seconds"]) == 7200.5


def test_models_by_outcome_lists_every_outcome(written: dict[str, Metric]) -> None:
    """fleet_models has a series per outcome, zero for those no model reached."""
    models = written["fleet_models"]
    assert models.type == "gauge"
    assert _values(models, "outcome") == {
        "pending": 0,
        "running": 0,
        "succeeded": 180,
        "rejected": 12,
        "failed": 3,
    }


def test_stage_duration_histogram(written: dict[str, Metric]) -> None:
    """Stage durations land in cumulative ModelOps-sized buckets with the right count and sum."""
    histogram = written["fleet_stage_duration_seconds"]
    assert histogram.type == "histogram"
    train = [s for s in histogram.samples if s.labels.get("stage") == "train"]
    buckets = {s.labels["le"]: s.value for s in train if s.name.endswith("_bucket")}
    assert list(buckets) == BOUNDS
    assert list(buckets.values()) == [1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4]
    totals = {s.name: s.value for s in train if not s.name.endswith("_bucket")}
    assert totals == {
        "fleet_stage_duration_seconds_count": 4,
        "fleet_stage_duration_seconds_sum": 12854.0,
    }
    stages = {s.labels["stage"] for s in histogram.samples}
    assert stages == {"train", "evaluate", "approve", "deploy", "retire"}
    deploy_count = [
        s.value
        for s in histogram.samples
        if s.labels["stage"] == "deploy" and s.name.endswith("_count")
    ]
    assert deploy_count == [0]


def test_counters(written: dict[str, Metric]) -> None:
    """Request, error and back-pressure totals are counters with snake_case labels."""
    for name in (
        "fleet_submissions",
        "fleet_job_polls",
        "fleet_http_requests",
        "fleet_http_errors",
        "fleet_retries",
        "fleet_throttle_waits",
        "fleet_throttle_wait_seconds",
        "fleet_breaker_opened",
    ):
        assert written[name].type == "counter", name
        assert {s.name for s in written[name].samples} == {f"{name}_total"}, name
    assert _values(written["fleet_submissions"], "stage") == {
        "train": 195,
        "evaluate": 192,
        "approve": 192,
        "deploy": 180,
        "retire": 0,
    }
    assert _values(written["fleet_http_requests"], "method") == {"GET": 4700, "POST": 760}
    assert _values(written["fleet_http_errors"], "class") == {
        "4xx": 0,
        "5xx": 7,
        "429": 4,
        "timeout": 1,
        "connection": 0,
    }
    assert _only(written["fleet_job_polls"]) == 4321
    assert _only(written["fleet_retries"]) == 12
    assert _only(written["fleet_throttle_waits"]) == 4
    assert _only(written["fleet_throttle_wait_seconds"]) == 31.5
    assert _only(written["fleet_breaker_opened"]) == 1


def test_names_and_labels_follow_prometheus_conventions(written: dict[str, Metric]) -> None:
    """Names are fleet_-prefixed snake_case in base units; every series has project, no ids."""
    name = re.compile(r"^fleet_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
    label = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
    for family in written.values():
        assert name.match(family.name), family.name
        if family.type == "counter":
            assert not family.name.endswith("_total"), "the parser strips _total from counters"
        assert not re.search(r"_(milliseconds|ms|minutes|hours|percent)(_|$)", family.name)
        for sample in family.samples:
            assert sample.labels["project"] == PROJECT, sample
            assert sample.timestamp is None, "the textfile collector rejects timestamps"
            for key in sample.labels:
                assert label.match(key), key
            assert "model_id" not in sample.labels
            if family.name != "fleet_run_info":
                assert "run_id" not in sample.labels, sample
    durations = [n for n in written if "duration" in n or "time" in n or "wait_seconds" in n]
    assert all(n.endswith("_seconds") for n in durations), durations


def test_each_registry_is_fresh_and_never_the_global_one() -> None:
    """Two runs' registries share nothing, and nothing fleet_ reaches the process-wide registry."""
    first = registry_for(FIGURES, project="a")
    second = registry_for(FIGURES, project="b")
    assert first is not second
    assert REGISTRY is not first
    assert 'project="b"' not in generate_latest(first).decode()
    assert "fleet_" not in generate_latest(REGISTRY).decode()
    # A registry is read at each exposition: the same text twice, no `_created` series.
    assert generate_latest(first) == generate_latest(first)
    assert "_created" not in generate_latest(first).decode()


def test_figures_refuse_impossible_values() -> None:
    """Negative counts, NaN durations and a run that ends before it starts are refused."""
    with pytest.raises(ValueError, match="finished_at"):
        replace(FIGURES, finished_at=FIGURES.started_at - 1)
    with pytest.raises(ValueError, match="retries"):
        replace(FIGURES, retries=-1)
    with pytest.raises(ValueError, match="stage_durations"):
        replace(FIGURES, stage_durations={"train": [float("nan")]})
    with pytest.raises(ValueError, match="project"):
        registry_for(FIGURES, project="")


def test_textfile_replaces_the_old_one_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """A write renames a finished temp file over the old textfile and leaves nothing else behind."""
    path = tmp_path / "fleet.prom"
    path.write_text("stale_metric 1\n")
    write_textfile(FIGURES, path, project=PROJECT)
    assert _names(tmp_path) == ["fleet.prom"]
    text = path.read_text()
    assert "stale_metric" not in text
    assert text.endswith("\n")
    assert _families(text).keys() >= {"fleet_run_info", "fleet_breaker_opened"}


def test_failed_textfile_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed rename leaves the old textfile whole and no temp file, with a one-line error."""
    path = tmp_path / "fleet.prom"
    path.write_text("previous_run 1\n")

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", refuse)
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(ConfigError, match="No space left on device") as caught:
        write_textfile(FIGURES, path, project=PROJECT)
    assert "\n" not in str(caught.value)
    assert _names(tmp_path) == ["fleet.prom"]
    assert path.read_text() == "previous_run 1\n"


def test_textfile_in_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    """A textfile directory that does not exist gives one line naming the path."""
    path = tmp_path / "absent" / "fleet.prom"
    with pytest.raises(ConfigError, match="absent") as caught:
        write_textfile(FIGURES, path, project=PROJECT)
    assert "\n" not in str(caught.value)
    assert not path.parent.exists()


@dataclass
class _Gateway:
    """What a tiny Pushgateway stand-in received, and how it answers."""

    url: str
    reply: int | bytes = 200
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours *_proxy variables; pushes in these tests go straight to loopback."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def gateway() -> Iterator[_Gateway]:
    """An HTTP server on 127.0.0.1, port 0, serving from a thread, that records each request."""
    state = _Gateway(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.requests.append((self.command, self.path, dict(self.headers), body))
            if isinstance(state.reply, bytes):
                self.wfile.write(state.reply)  # not HTTP at all
                return
            message = b"" if state.reply < 400 else b"pushed metrics are\ninconsistent"
            self.send_response(state.reply)
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll interval: shutdown() waits for the loop to notice, up to one interval.
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_push_puts_the_run_into_its_project_group(gateway: _Gateway) -> None:
    """A push PUTs the metrics text to /metrics/job/fleet/project/<id>, replacing that group."""
    push(FIGURES, gateway.url, project=PROJECT)
    ((method, path, headers, body),) = gateway.requests
    assert method == "PUT"
    assert path == f"/metrics/job/fleet/project/{PROJECT}"
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert body == generate_latest(registry_for(FIGURES, project=PROJECT))
    assert _only(_families(body.decode())["fleet_retries"]) == 12


def test_push_job_name_is_configurable(gateway: _Gateway) -> None:
    """The job segment of the group path follows the job argument."""
    push(FIGURES, gateway.url.removeprefix("http://"), project="p1", job="fleet-nightly")
    assert [path for _, path, _, _ in gateway.requests] == ["/metrics/job/fleet-nightly/project/p1"]


def test_gateway_refusal_is_an_api_error_with_its_reason(gateway: _Gateway) -> None:
    """A 400 from the gateway becomes an ApiError carrying the status and its one-line reason."""
    gateway.reply = 400
    with pytest.raises(ApiError) as caught:
        push(FIGURES, gateway.url, project=PROJECT)
    assert caught.value.status == 400
    assert str(caught.value) == (
        f"the Pushgateway at {gateway.url} refused the metrics: 400 Bad Request: "
        "pushed metrics are inconsistent"
    )


def test_gateway_that_does_not_speak_http_is_an_api_error(gateway: _Gateway) -> None:
    """An answer that is not HTTP becomes a one-line ApiError, not an http.client exception."""
    gateway.reply = b"garbage\r\n\r\n"
    with pytest.raises(ApiError, match="cannot push metrics") as caught:
        push(FIGURES, gateway.url, project=PROJECT)
    assert "\n" not in str(caught.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_gateway_is_a_one_line_api_error() -> None:
    """Nothing listening gives an ApiError with one line naming the gateway, not a URLError."""
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ApiError) as caught:
        push(FIGURES, url, project=PROJECT, timeout=5)
    message = str(caught.value)
    assert message.startswith(f"cannot push metrics to the Pushgateway at {url}: ")
    assert "refused" in message.lower()
    assert "\n" not in message
    assert caught.value.method == "PUT"


def test_gateway_credentials_stay_out_of_the_error() -> None:
    """A user and password in the gateway address never reach the error message."""
    url = f"http://fleet:s3cret@127.0.0.1:{_closed_port()}"
    with pytest.raises(ApiError) as caught:
        push(FIGURES, url, project=PROJECT, timeout=5)
    assert "s3cret" not in str(caught.value)
    assert "***@127.0.0.1" in str(caught.value)


def test_credentials_in_the_address_go_as_basic_auth(gateway: _Gateway) -> None:
    """A user and password in the gateway URL are sent as basic auth, not as part of the host."""
    push(FIGURES, gateway.url.replace("//", "//fleet:s%40cret@"), project=PROJECT)
    ((_, path, headers, _),) = gateway.requests
    assert path == f"/metrics/job/fleet/project/{PROJECT}"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"fleet:s@cret").decode()


@pytest.mark.parametrize("address", ["http://127.0.0.1:notaport", "http://[::1"])
def test_malformed_gateway_address_is_a_config_error(address: str) -> None:
    """A gateway address that is not a URL is a configuration problem, said in one line."""
    with pytest.raises(ConfigError, match="not a valid URL") as caught:
        push(FIGURES, address, project=PROJECT)
    assert "\n" not in str(caught.value)


def test_several_projects_share_one_textfile_each_family_once(tmp_path: Path) -> None:
    """registry_of two projects' figures: every family once, with each project's series."""
    other = "7c0f6d2e-3b1a-4e5f-9a8b-2d4c6e8f0a1b"
    path = tmp_path / "fleet.prom"
    write_registry(registry_of({PROJECT: FIGURES, other: replace(FIGURES, retries=1)}), path)
    text = path.read_text()
    families = list(text_string_to_metric_families(text))
    assert len({f.name for f in families}) == len(families)
    retries = next(f for f in families if f.name == "fleet_retries")
    assert {s.labels["project"]: s.value for s in retries.samples if s.name.endswith("_total")} == {
        PROJECT: 12,
        other: 1,
    }
    assert text.count("# TYPE fleet_models gauge") == 1


def test_metrics_pushed_after_a_signal_take_at_most_half_the_time_left() -> None:
    """A push after a signal is bounded by what is left of the grace period."""
    assert push_timeout(None) == 10.0
    assert push_timeout(3.0) == 1.5
    assert push_timeout(0.0) == 0.1
