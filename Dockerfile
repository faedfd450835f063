# syntax=docker/dockerfile:1
# Multi-stage build: compile in the official Rust image, run on distroless as an unprivileged user.
# protox compiles the protos in build.rs, so no protoc is needed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY migrations migrations
# Cargo.toml declares the benchmark target: the manifest does not load without its source.
COPY benches benches
# Cache mounts (BuildKit, buildah/podman) keep the downloaded crates and the compiled dependencies between builds
# on one machine, so a rebuild after a change compiles cachecoord alone. target/ is a cache, not part of the
# image: the binary is copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cachecoord \
    && install -m 0755 target/release/cachecoord /usr/local/bin/cachecoord

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/cachecoord /usr/local/bin/cachecoord
COPY config/cachecoord.example.toml /etc/cachecoord/cachecoord.toml
USER 65532:65532
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/cachecoord"]
CMD ["--config", "/etc/cachecoord/cachecoord.toml", "--listen-addr", "0.0.0.0:50051", "--metrics-addr", "0.0.0.0:9464"]
