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
RUN cargo build --release --locked --bin cachecoord

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/cachecoord /usr/local/bin/cachecoord
COPY config/cachecoord.example.toml /etc/cachecoord/cachecoord.toml
USER 65532:65532
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/cachecoord"]
CMD ["--config", "/etc/cachecoord/cachecoord.toml", "--listen-addr", "0.0.0.0:50051", "--metrics-addr", "0.0.0.0:9464"]
