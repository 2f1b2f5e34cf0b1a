# Benchmark "services": examples/services' build as a Dockerfile, built with
# BuildKit. bench/run.sh builds it with the app (examples/services/app) as
# the context:
#   docker build --network=host --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt \
#     -f bench/dockerfiles/services.Dockerfile examples/services/app
# The same steps as the pipeline: one cargo build with the registry and
# target/ in cache mounts (rbuild: cache volumes), the host's CA bundle lent
# as a secret (behind a TLS-inspecting proxy), then the two binaries alone
# on a clean copy of the Rust image. bench/compose/services.yml runs it.
FROM 127.0.0.1:5000/rust:1 AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,id=services-cargo-registry,target=/root/.cargo/registry \
    --mount=type=cache,id=services-target,target=/src/target \
    --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    cargo build --release --locked 2>&1 && \
    install target/release/kv-server target/release/kv-test /usr/local/bin/

FROM 127.0.0.1:5000/rust:1
COPY --from=build /usr/local/bin/kv-server /usr/local/bin/kv-test /usr/local/bin/
