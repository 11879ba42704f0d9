# fleet as a nightly batch job: `fleet` is the entrypoint, the state file lives on the /data
# volume, the configuration is a mounted fleet.toml plus FLEET_* variables, the token comes
# from FLEET_API__TOKEN or a mounted file (FLEET_API__TOKEN_FILE), logs are JSON lines on
# stdout (fleet writes JSON whenever stdout is not a terminal: do not pass -t) and the human
# summary and error lines go to stderr. docs/image.md has the details.
#
#   scripts/build-image                    # docker build, or buildah without a daemon
#   docker run --rm --init -v fleet-data:/data \
#     -v "$PWD/fleet.toml:/etc/fleet/fleet.toml:ro" -e FLEET_API__TOKEN \
#     fleet:0.1.0 run --run-id "$(date +%F)"
#
# Exit codes, for the scheduler that runs it (also in the fleet.exit-codes label):
#   0    every model succeeded
#   1    at least one model failed (or was rejected, with --fail-on-reject); retry with
#        `fleet run --retry-failed RUN_ID`
#   2    usage or configuration error; nothing was written: do not retry, fix the config
#   3    the run could not proceed (token rejected, ModelOps down past api.outage_budget,
#        state file unusable); the state is saved: the same --run-id resumes
#   4    another fleet process holds the state file: retry later
#   130  interrupted by SIGINT; the same --run-id resumes
#   143  terminated by SIGTERM (the STOPSIGNAL) within grace_period; the same --run-id resumes

# The official image, pinned by tag. A digest (python:3.11-slim-bookworm@sha256:...) would pin
# it byte for byte, but none could be resolved where this file was written (no registry
# access): pin one with `docker buildx imagetools inspect python:3.11-slim-bookworm` where a
# registry answers. scripts/build-image --base-from-debootstrap substitutes a Debian-built base.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- build: a venv with the locked dependencies and fleet's wheel ---------------------------
FROM ${BASE_IMAGE} AS build

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# pip verifies every download against the lock's sha256 hashes and takes wheels only, so no
# compiler is needed and none is installed. A build behind a TLS-intercepting proxy can pass
# its CA as the secret `pip_cert` (scripts/build-image --ca-cert FILE); it is mounted for one
# step only and never stored in a layer.
WORKDIR /src
COPY requirements/runtime.lock requirements/build.lock requirements/
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/python -m pip install --no-cache-dir --require-hashes --no-deps \
        --only-binary=:all: -r requirements/build.lock \
    && python3 -m venv /opt/fleet \
    && /opt/fleet/bin/python -m pip install --no-cache-dir --require-hashes --no-deps \
        --only-binary=:all: -r requirements/runtime.lock

COPY pyproject.toml README.md ./
COPY src/ src/
# fleet's own wheel, built offline by the locked hatchling, then installed without its
# dependencies (the lock provided them); pip and setuptools leave the runtime venv after it.
RUN /opt/build/bin/python -m pip wheel --no-cache-dir --no-deps --no-build-isolation \
        --no-index --wheel-dir /wheels . \
    && /opt/fleet/bin/python -m pip install --no-cache-dir --no-deps --no-index /wheels/fleet-*.whl \
    && /opt/fleet/bin/python -m pip uninstall --yes pip setuptools \
    && /opt/fleet/bin/fleet --version

# -- runtime: the base image, a user, and the venv ------------------------------------------
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="fleet" \
      org.opencontainers.image.description="Run the Teradata ModelOps lifecycle of hundreds of models at once, resumably (a batch job)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/image.md" \
      fleet.exit-codes="0=all models succeeded; 1=some models failed (retry with --retry-failed RUN_ID); 2=usage or configuration error, nothing written (do not retry); 3=could not proceed, state saved (same --run-id resumes); 4=state file held by another fleet (retry later); 130=SIGINT, 143=SIGTERM (same --run-id resumes)" \
      fleet.volume.data="/data: the SQLite state file (fleet.db); keep it between runs to resume" \
      fleet.config="/etc/fleet/fleet.toml (FLEET_CONFIG) plus FLEET_* variables; token from FLEET_API__TOKEN or FLEET_API__TOKEN_FILE"

# A fixed, non-root uid/gid (10001), so a volume's owner and Kubernetes' runAsUser/fsGroup
# can be set to match. /data is the only place fleet writes. --no-log-init: useradd would
# otherwise grow /var/log/lastlog and faillog to the size of uid 10001's offset.
RUN groupadd --gid 10001 fleet \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /data \
        --shell /usr/sbin/nologin fleet \
    && mkdir -p /data /etc/fleet \
    && chown 10001:10001 /data \
    && chmod 0750 /data

COPY --from=build /opt/fleet /opt/fleet

# FLEET_CONFIG names the mounted fleet.toml (set it empty to configure fleet from FLEET_*
# variables alone); FLEET_DB puts the state file on the volume. No other FLEET_* is set here:
# fleet refuses variables it does not know.
ENV PATH=/opt/fleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLEET_CONFIG=/etc/fleet/fleet.toml \
    FLEET_DB=/data/fleet.db

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]

# A batch job: the scheduler judges it by its exit code, not by a health probe.
HEALTHCHECK NONE
# fleet handles SIGTERM itself: it submits nothing more and exits 143 within grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/fleet/bin/fleet"]
# A nightly run needs its own --run-id (the same id on every retry of a night), so there is
# no default command: name one, e.g. `run --run-id 2026-11-25`.
CMD ["--help"]
