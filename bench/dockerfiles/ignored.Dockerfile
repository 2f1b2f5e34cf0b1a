# Benchmark: a project whose 200 MB target/ is left out by its .dockerignore
# (`target/`), copied in and counted. bench/run.sh builds it with BuildKit
# (--network=none) with the generated project as the context: warm, then
# unchanged and after a change under target/.
# Same work as bench/pipelines/ignored.rs.
FROM 127.0.0.1:5000/busybox:latest
COPY . /src
RUN find /src -type f | wc -l
