# syntax=docker/dockerfile:1
# Multi-stage: build with the Rust toolchain, run on distroless (glibc, CA
# certificates, no shell, non-root user 65532). protoc comes vendored with
# the build, so the builder needs nothing beyond Rust.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin leadscore \
 && cp target/release/leadscore /leadscore

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /leadscore /usr/local/bin/leadscore
USER 65532:65532
# gRPC and Prometheus metrics. Off loopback the service needs bearer tokens
# (LEADSCORE_AUTH_TOKENS_FILE or LEADSCORE_AUTH_TOKENS) or LEADSCORE_INSECURE=true.
ENV LEADSCORE_GRPC_ADDR=0.0.0.0:50051 \
    LEADSCORE_METRICS_ADDR=0.0.0.0:9090 \
    LEADSCORE_LOG_FORMAT=json
EXPOSE 50051 9090
# The gRPC health check, from inside the container (no shell needed).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/leadscore", "health", "--addr", "http://127.0.0.1:50051"]
ENTRYPOINT ["/usr/local/bin/leadscore"]
CMD ["serve"]
