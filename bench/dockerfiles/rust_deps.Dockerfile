# Benchmark: examples/rust-deps as a Dockerfile, built with BuildKit.
# bench/run.sh builds it with the Rust project (a copy of
# fixtures/rust-project) as the context:
#   docker build --network=host --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt \
#     -f bench/dockerfiles/rust_deps.Dockerfile PROJECT
# The same steps as the pipeline: the manifests and a stub main.rs first, so
# the dependencies build in a step whose cache key covers the manifests
# alone; then the sources, and only the project's own crate compiles; then
# tests, clippy and the program, in parallel stages (the tests' and the
# program's output also go to the build log, where bench/run.sh checks them,
# as the pipeline prints them). The cargo registry and
# target/ are cache mounts (rbuild: cache volumes). Steps use the host's
# network (crates.io), as rbuild's do; the host's CA bundle is lent to cargo
# as a secret (behind a TLS-inspecting proxy; a secret stays out of the
# cache key and the image, as rbuild's mounted file stays out of the image).
FROM 127.0.0.1:5000/rust:1 AS toolchain
WORKDIR /src

FROM toolchain AS dependencies
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs
RUN --mount=type=cache,id=rustdeps-cargo-registry,target=/root/.cargo/registry \
    --mount=type=cache,id=rustdeps-target,target=/src/target \
    --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    cargo build --release --locked

FROM dependencies AS built
COPY . .
# touch: the stub built last is newer than the real file's mtime.
RUN --mount=type=cache,id=rustdeps-cargo-registry,target=/root/.cargo/registry \
    --mount=type=cache,id=rustdeps-target,target=/src/target \
    --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    touch src/main.rs && cargo build --release --locked 2>&1 && \
    install target/release/hello-deps /usr/local/bin/

FROM built AS test
RUN --mount=type=cache,id=rustdeps-cargo-registry,target=/root/.cargo/registry \
    --mount=type=cache,id=rustdeps-target,target=/src/target \
    --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    cargo test --release --locked -q > /test.out && cat /test.out

FROM built AS lint
RUN --mount=type=cache,id=rustdeps-cargo-registry,target=/root/.cargo/registry \
    --mount=type=cache,id=rustdeps-target,target=/src/target \
    --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    cargo clippy --release --locked -q -- -D warnings > /lint.out 2>&1

FROM built AS run
RUN hello-deps > /run.out && cat /run.out

# Only what the three stages produced: building this stage builds them all.
FROM scratch
COPY --from=test /test.out /
COPY --from=lint /lint.out /
COPY --from=run /run.out /
