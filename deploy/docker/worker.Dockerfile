# syntax=docker/dockerfile:1
# gpuq-worker: runs jobs on the GPU through wgpu (Vulkan). Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t gpuq-worker .
# Run with the NVIDIA container toolkit (`docker run --gpus all ...`, or an ECS task with a GPU
# resource requirement on the ECS GPU AMI): it mounts the host driver's user-space libraries.

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
    cargo build --release --locked -p gpuq-worker --bin gpuq-worker \
    && install -D -m 0755 target/release/gpuq-worker /out/gpuq-worker

FROM debian:bookworm-slim
# libvulkan1: the Vulkan loader. The NVIDIA Vulkan driver lives in libGLX_nvidia.so.0, which the
# toolkit mounts from the host when NVIDIA_DRIVER_CAPABILITIES includes `graphics`; it links
# libX11/libXext, so those come from Debian. The toolkit does not always mount the ICD manifest
# that points the loader at it, so the image carries its own.
# NVIDIA only: for a CPU-only test image add Mesa's lavapipe (`mesa-vulkan-drivers`, from
# bookworm-backports as scripts/dev does).
# Package versions are not pinned (see api.Dockerfile).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libvulkan1 libx11-6 libxext6 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /etc/vulkan/icd.d \
    && printf '%s\n' '{"file_format_version":"1.0.0","ICD":{"library_path":"libGLX_nvidia.so.0","api_version":"1.3"}}' \
       > /etc/vulkan/icd.d/nvidia_icd.json \
    && groupadd --system --gid 10001 gpuq \
    && useradd --system --uid 10001 --gid gpuq --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gpuq
COPY --from=build /out/gpuq-worker /usr/local/bin/gpuq-worker
# ECS sets NVIDIA_VISIBLE_DEVICES to the GPUs it assigned to the task; `all` is for `docker run`.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    NVIDIA_VISIBLE_DEVICES=all \
    RUST_LOG=info
USER 10001:10001
# No HEALTHCHECK: the worker serves no port, and "the process exists" is what the container
# runtime already knows. Its liveness is its heartbeat row in Postgres (every 5 s) and its job
# leases; a worker that stops renewing them has its jobs requeued by the reaper.
HEALTHCHECK NONE
# SIGTERM: stop taking jobs, finish those in hand for up to GPUQ_DRAIN_SECONDS, hand back the rest.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gpuq-worker"]
