"""The emulator's settings: how big the project is, how badly it behaves, how it answers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fleet.sim.behaviour import Behaviour

_FAULT_METHODS = frozenset({"GET", "POST"})

# The settings that are probabilities, each within [0, 1].
RATE_FIELDS = (
    "job_error_rate",
    "stuck_rate",
    "http_500_rate",
    "http_503_rate",
    "http_429_rate",
    "slow_rate",
    "drop_rate",
    "delay_after_rate",
    "trickle_rate",
)


@dataclass(frozen=True, slots=True)
class SimSettings:
    """How big the emulated project is, how badly it behaves and how it answers.

    Rates are probabilities in [0, 1]: `job_error_rate` and `stuck_rate` per lifecycle job
    (decided by a hash of the job, see `World.job_will_fail`; a stuck job stays RUNNING for
    ever), the others per API request whose method is in `fault_methods`. `drop_rate` and
    `delay_after_rate` strike after the request took effect: its answer is cut off mid-body
    (the client sees a transport error), or sent only after `delay_after_s`; `trickle_rate`
    too, its answer then sent one byte every `trickle_interval_s` (a stalled proxy or link).

    `behaviour` holds the answers nobody recorded from a real server (`behaviour.py`); its
    defaults are Spring Data REST's.

    With `client_id` and `client_secret` set, `POST /oauth2/token` hands out access tokens
    (OAuth2 client credentials) that expire `token_lifetime_s` later on the emulator's clock;
    the static `token` keeps working alongside them.
    """

    models: int = 200  # active models, named store-0001 ... store-0200
    seed: int = 0  # everything random (ids, durations, metrics, failures) derives from it
    time_scale: float = 60.0  # simulated seconds per real second, for `SimClock`
    token: str = "fleet-demo-token"  # noqa: S105 - the emulator's own demo credential
    project_id: str = "5f1a3c9e-8d2b-4e7a-9c61-0f2d4b8a7e13"
    job_error_rate: float = 0.0
    stuck_rate: float = 0.0
    http_500_rate: float = 0.0
    http_503_rate: float = 0.0
    http_429_rate: float = 0.0
    retry_after_s: float = 1.0  # sent with 429 and 503, rounded up to whole seconds
    slow_rate: float = 0.0
    slow_s: float = 0.5  # real seconds a slow request waits before it is handled
    drop_rate: float = 0.0
    delay_after_rate: float = 0.0
    delay_after_s: float = 5.0  # real seconds a handled request holds back its answer
    trickle_rate: float = 0.0
    trickle_interval_s: float = 3.0  # real seconds between two bytes of a trickled answer
    fault_methods: tuple[str, ...] = ("GET", "POST")  # the methods the HTTP faults strike
    initial_deployed: bool = True  # every model starts with a version deployed last night
    client_id: str | None = None  # None: no token URL, only the static `token`
    client_secret: str | None = None  # set together with client_id
    token_lifetime_s: float = 3600.0  # simulated seconds an issued access token is valid
    behaviour: Behaviour = field(default_factory=Behaviour)

    def __post_init__(self) -> None:
        if self.models < 0:
            raise ValueError(f"models must be >= 0, got {self.models}")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {self.time_scale}")
        for name in RATE_FIELDS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.http_500_rate + self.http_503_rate + self.http_429_rate > 1.0:
            raise ValueError("http_500_rate + http_503_rate + http_429_rate must not exceed 1")
        if self.drop_rate + self.delay_after_rate + self.trickle_rate > 1.0:
            raise ValueError("drop_rate + delay_after_rate + trickle_rate must not exceed 1")
        if self.retry_after_s < 0 or self.slow_s < 0 or self.delay_after_s < 0:
            raise ValueError("retry_after_s, slow_s and delay_after_s must be >= 0")
        if not 0 < self.trickle_interval_s < math.inf:
            raise ValueError(f"trickle_interval_s must be positive, got {self.trickle_interval_s}")
        methods = self.fault_methods
        if not isinstance(methods, tuple) or not _FAULT_METHODS.issuperset(methods):
            raise ValueError(
                f"fault_methods must be a tuple of GET and POST, got {self.fault_methods!r}"
            )
        self._check_client_credentials()

    def _check_client_credentials(self) -> None:
        if (self.client_id is None) != (self.client_secret is None):
            raise ValueError("client_id and client_secret must be set together")
        # HTTP Basic splits the credentials at the first colon, so an id cannot contain one.
        if self.client_id is not None and (not self.client_id or ":" in self.client_id):
            raise ValueError(f"client_id must be non-empty and without ':', got {self.client_id!r}")
        if self.client_secret == "":
            raise ValueError("client_secret must not be empty")
        if not 0 < self.token_lifetime_s < math.inf:
            raise ValueError(f"token_lifetime_s must be positive, got {self.token_lifetime_s}")
