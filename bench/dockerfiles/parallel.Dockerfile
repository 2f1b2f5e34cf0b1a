# Benchmark: four independent stages of `sleep 1`, which BuildKit runs in
# parallel because the last stage copies from all four.
# bench/run.sh builds it with BuildKit (DOCKER_BUILDKIT=1, --network=none).
# NONCE is in every RUN, so a new value misses all four (the cold build).
FROM 127.0.0.1:5000/busybox:latest AS b1
ARG NONCE=
RUN sleep 1 && echo branch 1 $NONCE > /out

FROM 127.0.0.1:5000/busybox:latest AS b2
ARG NONCE=
RUN sleep 1 && echo branch 2 $NONCE > /out

FROM 127.0.0.1:5000/busybox:latest AS b3
ARG NONCE=
RUN sleep 1 && echo branch 3 $NONCE > /out

FROM 127.0.0.1:5000/busybox:latest AS b4
ARG NONCE=
RUN sleep 1 && echo branch 4 $NONCE > /out

FROM 127.0.0.1:5000/busybox:latest
COPY --from=b1 /out /out1
COPY --from=b2 /out /out2
COPY --from=b3 /out /out3
COPY --from=b4 /out /out4
