# Benchmark (bench/run.sh, scenario "publish"): the image rbuild's
# bench/pipelines/publish.rs publishes, BASE (about 200 MB, already pulled
# into dockerd) plus /app/version from the build context (a directory that
# holds only that file, with a new nonce in it for every build).
ARG BASE
FROM ${BASE}
COPY version /app/version
