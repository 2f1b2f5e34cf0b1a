# Benchmark: ten trivial RUN steps, each on the previous one's result.
# bench/run.sh builds it with BuildKit (DOCKER_BUILDKIT=1, --network=none).
# NONCE is used by the first RUN, so a new value misses all ten steps (the
# cold build) and the same value again hits all ten (the cached build).
# LAST is appended to the last RUN (the remote scenario's one-line change).
FROM 127.0.0.1:5000/busybox:latest
ARG NONCE=
RUN echo step 1 $NONCE > /nonce
RUN echo step 2
RUN echo step 3
RUN echo step 4
RUN echo step 5
RUN echo step 6
RUN echo step 7
RUN echo step 8
RUN echo step 9
ARG LAST=
RUN echo step 10$LAST
