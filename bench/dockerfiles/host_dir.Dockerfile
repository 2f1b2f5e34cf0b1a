# Benchmark: import a build context of 20,000 files (240 MB) and count them.
# bench/run.sh builds it with BuildKit (DOCKER_BUILDKIT=1, --network=none),
# with the generated tree as the context: cold (after `docker builder prune
# -af`), unchanged, and with one file of the tree changed.
# Same work as bench/pipelines/host_dir.rs.
FROM 127.0.0.1:5000/busybox:latest
COPY . /src
RUN find /src -type f | wc -l
