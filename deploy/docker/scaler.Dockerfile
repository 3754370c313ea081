# syntax=docker/dockerfile:1
# gpuq-scaler: sizes the worker pool from the backlog. Build from the repository root:
#   docker build -f deploy/docker/scaler.Dockerfile -t gpuq-scaler .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY shared/ shared/
COPY api/ api/
COPY worker/ worker/
COPY scaler/ scaler/
COPY tests/ tests/
COPY migrations/ migrations/
COPY shaders/ shaders/
RUN --mount=type=cache,id=gpuq-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=gpuq-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=gpuq-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p gpuq-scaler --bin gpuq-scaler \
    && install -D -m 0755 target/release/gpuq-scaler /out/gpuq-scaler

FROM debian:bookworm-slim
# Package versions are not pinned (see api.Dockerfile).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gpuq \
    && useradd --system --uid 10001 --gid gpuq --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gpuq
COPY --from=build /out/gpuq-scaler /usr/local/bin/gpuq-scaler
ENV RUST_LOG=info
USER 10001:10001
# No HEALTHCHECK: the scaler serves no port; a failed tick is logged and retried, and a crash
# exits the process, which the orchestrator restarts.
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/gpuq-scaler"]
