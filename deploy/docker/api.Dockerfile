# syntax=docker/dockerfile:1
# gpuq-api: the REST API. Build from the repository root:
#   docker build -f deploy/docker/api.Dockerfile -t gpuq-api .
# (api.Dockerfile.dockerignore beside this file keeps target/, .git and .dev out of the context.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The whole workspace: Cargo resolves every member even when building one package.
COPY Cargo.toml Cargo.lock ./
COPY shared/ shared/
COPY api/ api/
COPY worker/ worker/
COPY scaler/ scaler/
COPY tests/ tests/
COPY migrations/ migrations/
COPY shaders/ shaders/
# Registry, git checkouts and target/ live in BuildKit cache mounts (shared by the three images),
# so a rebuild after a source change recompiles only the workspace crates. A cache mount is not
# part of the image, so the binary is copied out in the same step.
RUN --mount=type=cache,id=gpuq-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=gpuq-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=gpuq-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p gpuq-api --bin gpuq-api \
    && install -D -m 0755 target/release/gpuq-api /out/gpuq-api

FROM debian:bookworm-slim
# Debian package versions are not pinned: a bookworm point release removes the old versions and
# would break the build; the base tag pins the release, security fixes come with a rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gpuq \
    && useradd --system --uid 10001 --gid gpuq --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gpuq
COPY --from=build /out/gpuq-api /usr/local/bin/gpuq-api
ENV GPUQ_API_ADDR=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080
USER 10001:10001
# GET /healthz over bash's /dev/tcp (no curl in the image): healthy when it answers 200.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${GPUQ_API_ADDR##*:} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r -t 2 status <&3 && [[ $status == HTTP/1.?' 200'* ]]"]
# Also the admin CLI: `gpuq-api key create TENANT`, `gpuq-api key revoke ID`,
# `gpuq-api tenant allow TENANT s3://bucket/prefix/`.
ENTRYPOINT ["/usr/local/bin/gpuq-api"]
