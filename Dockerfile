# syntax=docker/dockerfile:1
#
# kube-epmd container image: one static binary on a distroless base.
#
#   docker build -t kube-epmd:0.1.0 .
#
# Build stage: Rust on Alpine, whose native target is musl, so the release
# binary is linked statically (no libc needed at run time). The build uses
# the committed Cargo.lock (--locked).
ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-alpine AS build
# ring (TLS for the Kubernetes client) compiles C and assembly.
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kube-epmd \
 && install -D -m 0755 target/release/kube-epmd /out/kube-epmd

# Final stage: distroless "static" (no shell, no package manager, CA
# certificates, a passwd entry for the nonroot user 65532). Nothing is
# written to the root filesystem: the hosts file and inetrc go to
# --output-dir (an emptyDir in Kubernetes), logs go to stderr.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kube-epmd /usr/local/bin/kube-epmd
USER 65532:65532
# 4369: EPMD. 9090: admin endpoint (/healthz, /readyz, /metrics, /peers).
EXPOSE 4369 9090
ENTRYPOINT ["/usr/local/bin/kube-epmd"]
CMD ["--kubernetes"]
