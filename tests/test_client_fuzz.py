"""Property-based tests of the client's response parsing: whatever ModelOps (or a proxy in
front of it) answers, fleet returns a parsed value or raises a FleetError with a short, tokenless
message.

The inputs that broke the client when these tests were written (numbers past Python's
4300-digit limit, deep nesting, charsets that lie, offset-less timestamps, an echoed token) are
in the strategies now and kept at the end of this file as minimal regression tests.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.client import ModelOpsClient, _object
from fleet.errors import (
    ApiError,
    AuthError,
    Conflict,
    FleetError,
    NotFound,
    OutcomeUnknown,
    PermanentApiError,
    ProtocolError,
    TransientApiError,
)
from fleet.modelops import (
    Deployment,
    Event,
    Job,
    TrainRequest,
    excerpt,
    latest_metrics,
    parse_deployment,
    parse_event,
    parse_job,
)
from fleet.session import _read, _retry_after
from support import InstantTime

BASE_URL = "https://mo.example/modelops/core/"
API = "https://mo.example/modelops/core/api"
TOKEN = "tok-7f3a9c-must-never-leak"
PROJECT_ID = "419e5f05-b225-4b70-b075-6c309365d94f"
JOB_ID = str(uuid.UUID(int=1))
MODEL_ID = str(uuid.UUID(int=2))
PATH = f"/api/jobs/{JOB_ID}"
MAX_MESSAGE = 1000
# The conftest's autouse fixtures are function-scoped but the same for every example.
FIXTURE_OK = [HealthCheck.function_scoped_fixture]

# -- strategies ---------------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
# What a field expecting a non-empty string may get instead.
wrong_types = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.just("")
    | st.lists(json_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=5), json_scalars, max_size=3)
)
anything = wrong_types | json_values
ids = st.uuids().map(str)

server_times = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - bounds of a strategy that adds the zone
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC)
    | st.builds(
        timezone, st.timedeltas(min_value=-timedelta(hours=14), max_value=timedelta(hours=14))
    ),
).map(lambda at: at.isoformat(timespec="milliseconds"))  # 2025-07-03T21:51:36.960+00:00


def _unparsable(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return True
    return False


garbage_times = (
    st.text(max_size=30).filter(_unparsable)
    | st.sampled_from(["2025-07-04", "2025-07-03T21:51:36"])
    | wrong_types
)

PAGES = [
    (
        b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1>"
        b"</center><hr><center>nginx</center></body></html>"
    ),
    b"<!DOCTYPE html>\n<html><body>Access denied \xe2\x80\x94 contact your administrator</body>",
    b"<?xml version='1.0'?><error><code>503</code></error>",
    b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
    b"",
    b"null",
    b"\xef\xbb\xbf{}",
]


def _truncate(data: tuple[bytes, int]) -> bytes:
    body, cut = data
    return body[: cut % (len(body) + 1)]


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth  # deep and truncated


encoded_json = st.builds(
    lambda value, ascii_only, encoding: json.dumps(value, ensure_ascii=ascii_only).encode(encoding),
    json_values | json_objects,
    st.booleans(),
    st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-32-be"]),
)
bodies = st.one_of(
    encoded_json,
    st.tuples(json_objects.map(lambda v: json.dumps(v).encode()), st.integers(0)).map(_truncate),
    st.sampled_from(PAGES),
    st.binary(max_size=300),
    # JSON in a legacy single-byte encoding: not valid UTF-8 as soon as it has a non-ASCII char.
    json_objects.map(lambda v: json.dumps(v, ensure_ascii=False).encode("latin-1", "replace")),
    st.builds(_nested, st.integers(1, 200), st.sampled_from(["list", "object", "open"])),
    st.integers(1, 500_000).map(lambda n: b'{"id": "' + b"x" * n + b'", "status": [1]}'),
    st.integers(1, 500_000).map(lambda n: b" " * n + b"[1, 2"),
    st.integers(4301, 6000).map(lambda n: b"1" * n),
    st.integers(900, 5000).map(lambda n: b"[" * n),
)
content_types = st.sampled_from(
    [
        None,
        "text/html; charset=utf-16",
        "text/html; charset=utf-32",
        "text/html; charset=idna",
        "application/json",
        "application/hal+json;charset=UTF-8",
        "text/html",
        "text/html; charset=iso-8859-1",
        "text/plain; charset=windows-1252",
        "application/json; charset=no-such-charset",
    ]
)
retry_after_values = (
    st.none()
    | st.text(max_size=12)
    | st.integers(-(10**6), 10**6).map(str)
    | st.floats().map(str)
    | st.just("Wed, 21 Oct 2015 07:28:00 GMT")
)
methods = st.sampled_from(["GET", "POST"])


def response(
    status: int, body: bytes, content_type: str | None = None, retry_after: str | None = None
) -> httpx.Response:
    # As bytes, the way they come off the wire (httpx refuses non-ASCII str header values).
    headers = []
    if content_type is not None:
        headers.append((b"Content-Type", content_type.encode()))
    if retry_after is not None:
        headers.append((b"Retry-After", retry_after.encode()))
    return httpx.Response(
        status, content=body, headers=headers, request=httpx.Request("GET", API + PATH[4:])
    )


def expected_error(status: int, method: str) -> type[ApiError] | None:
    """The class errors.py documents for an HTTP failure; None where it documents none."""
    if status in {401, 403}:
        return AuthError
    if status in {408, 429, 500, 502, 503, 504}:
        refused = status in {429, 503}
        return OutcomeUnknown if method == "POST" and not refused else TransientApiError
    if status == 404:
        return NotFound
    if status == 409:
        return Conflict
    if status < 500:
        return PermanentApiError
    return None  # 501, 505-599: see the report; the tree only lists 500/502/503/504


def assert_presentable(exc: BaseException) -> None:
    text = str(exc)
    assert len(text) < MAX_MESSAGE, text[:100]
    assert TOKEN not in text


# -- _read --------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(status=st.integers(200, 299), method=methods, body=bodies, content_type=content_types)
def test_read_answers_a_2xx_with_an_object_or_a_protocol_error(status, method, body, content_type):
    """A 2xx answer reads as a JSON object, or raises ProtocolError with a short message."""
    try:
        data = _object(_read(response(status, body, content_type), method, PATH), method, PATH)
    except ProtocolError as exc:
        error = exc
    else:
        assert isinstance(data, dict)
        return
    assert type(error) is ProtocolError
    assert (error.method, error.path) == (method, PATH)
    assert error.status in {status, None}  # None: JSON, but not an object
    assert_presentable(error)


@settings(max_examples=100)
@given(
    status=st.integers(200, 299), value=json_objects, encoding=st.sampled_from(["utf-8", "utf-16"])
)
def test_read_returns_a_json_object_body_unchanged(status, value, encoding):
    """A 2xx body holding a JSON object reads back as that very object."""
    body = json.dumps(value, ensure_ascii=False).encode(encoding)

    assert _read(response(status, body), "GET", PATH) == value


@settings(max_examples=200, deadline=None)
@given(
    status=st.integers(400, 599),
    method=methods,
    body=bodies,
    content_type=content_types,
    retry_after=retry_after_values,
)
def test_read_raises_the_class_of_each_error_status(
    status, method, body, content_type, retry_after
):
    """A 4xx/5xx raises the ApiError class of its status, whatever the body says."""
    with pytest.raises(ApiError) as caught:
        _read(response(status, body, content_type, retry_after), method, PATH)

    exc = caught.value
    expected = expected_error(status, method)
    if expected is not None:
        assert type(exc) is expected
    assert not isinstance(exc, ProtocolError)
    assert exc.status == status
    assert_presentable(exc)
    if isinstance(exc, TransientApiError) and exc.retry_after is not None:
        assert 0.0 <= exc.retry_after <= 300.0


# -- parsers ------------------------------------------------------------------------------------


def _shaped(required: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts that may have each of the parser's keys, each holding a right or a wrong value."""
    return st.fixed_dictionaries({}, optional={k: v | anything for k, v in required.items()})


job_shaped = _shaped(
    {
        "id": ids,
        "status": st.text(min_size=1),
        "type": st.text(min_size=1),
        "modelId": ids,
        "trainedModelId": ids,
        "createdAt": server_times | garbage_times,
        "metadata": st.fixed_dictionaries(
            {}, optional={"trainedModel": _shaped({"id": ids, "name": st.text()})}
        ),
    }
)
event_shaped = _shaped(
    {
        "id": ids,
        "trainedModelId": ids,
        "status": st.sampled_from(["EVALUATED", "APPROVED", "TRAINED"]),
        "createdAt": server_times | garbage_times,
        "metadata": json_objects,
    }
)
deployment_shaped = _shaped(
    {
        "id": ids,
        "status": st.text(min_size=1),
        "trainedModelId": ids,
        "modelId": ids,
        "trainedModel": _shaped({"id": ids, "modelId": ids}),
    }
)


def _opt_str(value: object) -> bool:
    return value is None or (isinstance(value, str) and value != "")


def _check_job(job: Job) -> None:
    assert isinstance(job.id, str)
    assert job.id
    assert all(_opt_str(v) for v in (job.status, job.type, job.model_id, job.trained_model_id))
    assert job.created_at is None or isinstance(job.created_at, datetime)


def _check_event(event: Event) -> None:
    assert all(isinstance(v, str) and v for v in (event.id, event.trained_model_id, event.status))
    assert event.created_at is None or isinstance(event.created_at, datetime)
    assert isinstance(event.metadata, dict)


def _check_deployment(deployment: Deployment) -> None:
    assert isinstance(deployment.id, str)
    assert deployment.id
    assert all(
        _opt_str(v) for v in (deployment.status, deployment.trained_model_id, deployment.model_id)
    )


PARSERS = {
    "job": (parse_job, job_shaped, _check_job),
    "event": (parse_event, event_shaped, _check_event),
    "deployment": (parse_deployment, deployment_shaped, _check_deployment),
}


@pytest.mark.parametrize("kind", PARSERS)
@settings(max_examples=150, suppress_health_check=FIXTURE_OK)
@given(data=st.data())
def test_parsers_return_a_value_or_raise_protocol_error(kind, data):
    """parse_job/_event/_deployment turn any JSON object into a value or a ProtocolError."""
    parse, shaped, check = PARSERS[kind]
    body = data.draw(json_objects | shaped, label="body")
    try:
        value = parse(body)
    except ProtocolError as exc:
        assert_presentable(exc)
    else:
        check(value)


well_formed_jobs = st.fixed_dictionaries(
    {
        "id": ids,
        "status": st.sampled_from(["CREATED", "RUNNING", "COMPLETED", "ERROR", "CANCELLED"])
        | st.text(min_size=1),
        "type": st.sampled_from(["TRAINING", "EVALUATION", "DEPLOYMENT", "RETIRE"])
        | st.text(min_size=1),
        "modelId": ids,
        "trainedModelId": ids,
        "createdAt": server_times | garbage_times,
    }
)


@settings(max_examples=150)
@given(fields=well_formed_jobs, in_metadata=st.booleans(), extra=json_objects)
def test_parse_job_keeps_ids_status_and_type(fields, in_metadata, extra):
    """A well-formed job keeps its id, status, type, model and version, whatever else it has."""
    body = {**extra, **fields}
    if in_metadata:  # a train response names the new version only in metadata.trainedModel
        body["metadata"] = {"trainedModel": {"id": body.pop("trainedModelId")}}

    job = parse_job(body)

    assert (job.id, job.status, job.type) == (fields["id"], fields["status"], fields["type"])
    assert (job.model_id, job.trained_model_id) == (fields["modelId"], fields["trainedModelId"])
    created_at = fields["createdAt"]
    if isinstance(created_at, str) and not _unparsable(created_at):
        expected = datetime.fromisoformat(created_at)
        if expected.tzinfo is None:  # written without an offset: UTC, as the server's are
            expected = expected.replace(tzinfo=UTC)
        assert job.created_at == expected
    else:
        assert job.created_at is None


# -- latest_metrics -----------------------------------------------------------------------------

event_bodies = st.fixed_dictionaries(
    {
        "id": ids,
        "trainedModelId": ids,
        "status": st.sampled_from(["EVALUATED", "APPROVED", "TRAINED", "evaluated"]),
        "createdAt": server_times | garbage_times,
        "metadata": json_objects | wrong_types,
    }
)


def _key(event: Event) -> tuple[bool, datetime | int]:
    return (event.created_at is not None, event.created_at or 0)


@settings(max_examples=150)
@given(bodies=st.lists(event_bodies, max_size=8))
def test_latest_metrics_takes_the_newest_evaluation_as_strings(bodies):
    """latest_metrics is None without an EVALUATED event, else the newest one's metadata as str."""
    events = [parse_event(b) for b in bodies]

    metrics = latest_metrics(events)

    evaluated = [e for e in events if e.status == "EVALUATED"]
    if not evaluated:
        assert metrics is None
        return
    assert isinstance(metrics, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metrics.items())
    newest = max(_key(e) for e in evaluated)
    candidates = [e for e in evaluated if _key(e) == newest]  # ties: any of them will do
    assert metrics in [{str(k): str(v) for k, v in e.metadata.items()} for e in candidates]


# -- small helpers ------------------------------------------------------------------------------


@settings(max_examples=200)
@given(value=retry_after_values)
def test_retry_after_is_none_or_seconds_within_five_minutes(value):
    """_retry_after gives None or a float in [0, 300] for any header value."""
    seconds = _retry_after(value)

    assert seconds is None or (isinstance(seconds, float) and 0.0 <= seconds <= 300.0)


@settings(max_examples=100)
@given(seconds=st.floats(0.0, 300.0))
def test_retry_after_reads_delta_seconds(seconds):
    """A Retry-After of delta-seconds up to five minutes reads back as those seconds."""
    assert _retry_after(repr(seconds)) == seconds


@settings(max_examples=150)
@given(body=json_values | st.text())
def test_excerpt_is_one_short_line(body):
    """excerpt of any body is a single line of at most 200 characters and an ellipsis."""
    text = excerpt(body)

    assert len(text) <= 201
    assert "\n" not in text
    assert "\r" not in text


# -- through the client -------------------------------------------------------------------------

statuses = st.sampled_from(
    [200, 200, 200, 201, 204, 400, 401, 403, 404, 408, 409, 429, 500, 502, 503]
)
# Job-shaped bodies too, so that some answers do parse into a Job.
client_bodies = st.one_of(
    bodies,
    well_formed_jobs.map(lambda body: json.dumps(body).encode()),
    job_shaped.map(lambda body: json.dumps(body).encode()),
)


async def _call(
    method: str, status: int, body: bytes, content_type: str | None
) -> Job | FleetError:
    headers = {"Content-Type": content_type} if content_type else {}
    with respx.mock(using="httpx", assert_all_called=False) as mock:
        mock.route(method=method, url__startswith=API).respond(
            status, content=body, headers=headers
        )
        async with ModelOpsClient(
            BASE_URL, PROJECT_ID, TOKEN, pacing=InstantTime().pacing()
        ) as api:
            try:
                if method == "GET":
                    return await api.get_job(JOB_ID)
                return await api.train(MODEL_ID, TRAIN)
            except FleetError as exc:
                return exc


TRAIN = TrainRequest(
    dataset_id=str(uuid.UUID(int=3)),
    dataset_connection_id=None,
    hyperparameters={},
    resources={},
    docker_image=None,
)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(status=statuses, body=client_bodies, content_type=content_types)
def test_get_job_returns_a_job_or_raises_a_fleet_error(status, body, content_type):
    """get_job against any answer returns a Job (without a status: not finished yet) or
    raises a short FleetError."""
    outcome = anyio.run(_call, "GET", status, body, content_type)

    if isinstance(outcome, Job):
        assert outcome.status is None or outcome.status.strip()
        return
    assert_presentable(outcome)
    if status < 300:
        assert type(outcome) is ProtocolError


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(status=statuses, body=client_bodies, content_type=content_types)
def test_train_returns_a_job_or_raises_a_fleet_error(status, body, content_type):
    """A POST answered with an unreadable 2xx is OutcomeUnknown, never a bare ProtocolError."""
    outcome = anyio.run(_call, "POST", status, body, content_type)

    if isinstance(outcome, Job):
        return
    assert_presentable(outcome)
    if status < 300:
        assert type(outcome) is OutcomeUnknown


# -- inputs that once broke the client: kept as regression tests ---------------------------------


@pytest.mark.parametrize("status", [200, 404, 502])
def test_read_a_body_with_a_huge_integer_raises_a_fleet_error(status):
    """A JSON number of 4301 digits is a FleetError (ProtocolError on a 2xx), not a ValueError."""
    with pytest.raises(FleetError):
        _read(response(status, b"1" * 4301), "GET", PATH)


@pytest.mark.parametrize("status", [200, 404, 502])
def test_read_a_deeply_nested_body_raises_a_fleet_error(status):
    """A body opening 1000 arrays is a FleetError (ProtocolError on a 2xx), not a RecursionError."""
    with pytest.raises(FleetError):
        _read(response(status, b"[" * 1000), "GET", PATH)


@pytest.mark.parametrize("charset", ["utf-16", "utf-32", "idna"])
@pytest.mark.parametrize("status", [200, 502])
def test_read_a_page_in_an_undecodable_charset_raises_a_fleet_error(status, charset):
    """A non-JSON page declaring a charset it is not written in is still a FleetError."""
    page = response(status, b"<html>Bad Gateway</html>", f"text/html; charset={charset}")

    with pytest.raises(FleetError):
        _read(page, "GET", PATH)


def test_latest_metrics_with_a_timestamp_without_offset_does_not_crash():
    """An EVALUATED event stamped '2025-07-04' next to one with an offset does not raise."""
    events = [
        parse_event({"id": "a", "trainedModelId": "t", "status": "EVALUATED", "createdAt": at})
        for at in ("2025-07-03T21:51:36.960+00:00", "2025-07-04")
    ]

    assert latest_metrics(events) == {}


def test_parse_job_created_at_is_timezone_aware():
    """A job's createdAt without an offset is None or aware, never a naive datetime."""
    job = parse_job({"id": JOB_ID, "status": "RUNNING", "createdAt": "2025-07-03T21:51:36"})

    assert job.created_at is None or job.created_at.tzinfo is not None


@pytest.mark.parametrize("status", [400, 401, 500])
def test_an_error_body_echoing_the_token_does_not_leak_it(status):
    """An error body that repeats the bearer token does not put it in the error message."""
    body = json.dumps({"message": f"invalid credentials: Bearer {TOKEN}"}).encode()

    with pytest.raises(ApiError) as caught:
        _read(response(status, body), "GET", PATH)

    assert TOKEN not in str(caught.value)
