# keel's container image. One file, two ways in:
#
#   docker build -t keel .                  builds the binary (cargo-chef keeps the dependency
#                                           layers cached) and puts it on distroless cc
#   podman build --target runtime-prebuilt --build-arg RUNTIME_BASE=localhost/keel-base \
#     -f Dockerfile <context with keel>     puts a binary built elsewhere on any base with
#                                           glibc (deploy/image-smoke.sh does this in CI)
#
# Both targets share the stage `runtime-base`: user, /data, ports, labels, healthcheck and
# entrypoint are written once.

ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot

# --- build -------------------------------------------------------------------------------
# Bookworm: the glibc (2.36) of distroless cc-debian12, so the binary runs on it.
FROM docker.io/library/rust:1.95-slim-bookworm AS chef
# Debug info stripped (symbols kept, so panics still name their functions); set for the
# dependencies' layer and the final build alike, or the second would rebuild the first.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN cargo install cargo-chef --locked --version 0.1.78 \
    && rm -rf "${CARGO_HOME:-/usr/local/cargo}/registry"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The dependencies alone: this layer is reused until Cargo.toml or Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin keel \
    && install -D -m 0755 target/release/keel /out/keel

# --- run ---------------------------------------------------------------------------------
# Everything the image is, except where its binary comes from. The base is an ARG so that CI
# can put a locally made glibc base here; checkov does not read the ARG's default, a
# distroless tag of a fixed Debian release:
# checkov:skip=CKV_DOCKER_7:RUNTIME_BASE defaults to gcr.io/distroless/cc-debian12:nonroot, not latest
FROM ${RUNTIME_BASE} AS runtime-base
ARG KEEL_VERSION=0.1.0
# Set to the repository the image is built from (docker build --build-arg KEEL_SOURCE=...).
ARG KEEL_SOURCE=https://example.invalid/keel.git
LABEL org.opencontainers.image.title="keel" \
      org.opencontainers.image.description="A production backend service: users API, accounts, jobs, events." \
      org.opencontainers.image.source="${KEEL_SOURCE}" \
      org.opencontainers.image.version="${KEEL_VERSION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
# /data is the only path keel writes: the SQLite file when there is no DATABASE_URL, the
# generated development key, .eml files when there is no SMTP_URL. Everything else is
# root's and read-only to keel.
COPY --chown=65532:65532 deploy/image/data/ /data/
ENV HOST=0.0.0.0 \
    PORT=3000 \
    KEEL_DATA_DIR=/data \
    LOG_FORMAT=json
WORKDIR /data
USER 65532:65532
# The API; the metrics listener when KEEL_METRICS_ADDR=0.0.0.0:9464.
EXPOSE 3000 9464
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/keel", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/keel"]
CMD ["serve"]

# A binary built outside (CI: the one the tests built), from the build context's root.
FROM runtime-base AS runtime-prebuilt
COPY --chown=0:0 --chmod=0755 keel /usr/local/bin/keel

# The default target: the binary built above.
FROM runtime-base AS runtime
COPY --from=builder --chown=0:0 --chmod=0755 /out/keel /usr/local/bin/keel
