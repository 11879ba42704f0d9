# fleet as a nightly container job: `fleet` is the entrypoint, state lives on the /data volume.
# Build: docker build -t fleet .   Run: docker run -v fleet-data:/data \
#   -v $PWD/fleet.toml:/etc/fleet/fleet.toml:ro -e FLEET_API__TOKEN fleet run --run-id nightly
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 fleet \
    && mkdir -p /data /etc/fleet \
    && chown fleet:fleet /data
USER fleet
WORKDIR /data
VOLUME ["/data"]
ENV FLEET_CONFIG=/etc/fleet/fleet.toml \
    FLEET_DB=/data/fleet.db \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["fleet"]
CMD ["run"]
