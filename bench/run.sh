#!/usr/bin/env bash
# rbuild benchmarks beside BuildKit (dockerd) and a bare `ctr run` floor.
#
# `make bench` runs this after `make setup` (containerd + test registries) and
# `make build` (target/release/rbuild). It writes bench/RESULTS.md and prints
# the same tables on stdout. See bench/README.md.
#
# Environment:
#   BENCH_SCENARIOS="steps hostdir cutoff publish pull parallel scale rustdeps compile netns branches ignored ready remote explain"
#                          which scenarios to run (default: all fourteen; a
#                          fifteenth, "services", is opt-in: its cold run
#                          builds examples/services from nothing, minutes)
#   BENCH_NETNS_BIP=172.31.254.1/24
#                          netns: the bridge of the second dockerd (BuildKit's
#                          default network)
#   BENCH_SERVICES_REPS=5  services: fully cached runs of the matrix
#   BENCH_IGNORED_REPS=10  ignored: unchanged and target/-changed runs per engine
#   BENCH_REPS=10          timed repetitions per measurement (at least 5);
#                          10 trivial steps, both modes of early cutoff,
#                          parallel steps (cold runs of each engine), the
#                          fully cached runs of each N of scale, the edited
#                          and unchanged runs of compile
#   BENCH_HOSTDIR_REPS=5   host directory: unchanged and one-file-changed runs,
#                          and the floors (at least 5)
#   BENCH_COLD_REPS=5      host directory: cold runs of each engine (at least 3)
#   BENCH_CUTOFF_MB=50     early cutoff: MiB the step writes (plus 1000 small files)
#   BENCH_PUBLISH_REPS=5   publish: rounds (a first push and a re-push per
#                          engine each) (at least 3)
#   BENCH_UPLOAD_REPS=3    publish: pushes per engine with nothing to mount
#                          (every layer uploaded) (at least 3)
#   BENCH_PULL_REPS=5      pull: pulls per engine, and the floors (at least 3)
#   BENCH_SCALE_STEPS="10 100 1000"
#                          scale: the chain lengths N (ascending, at least two)
#   BENCH_SCALE_COLD_REPS=1
#                          scale: cold runs per N and engine (at least 1; a
#                          cold 1000-step run takes minutes)
#   BENCH_SCALE_BUILDKIT_N=100
#                          scale: the N that BuildKit builds too (one of
#                          BENCH_SCALE_STEPS, at most 120; 0: none)
#   BENCH_RUSTDEPS_COLD_REPS=3
#                          rustdeps: cold builds per engine (at least 1)
#   BENCH_RUSTDEPS_REPS=5  rustdeps: cached and one-line-changed builds per
#                          engine (at least 3)
#   BENCH_COMPILE_COLD_REPS=3
#                          compile: first compiles with a new cache dir, and
#                          bare cargo builds with a new target dir (at least 1)
#   BENCH_REMOTE_REPS=3    remote: rounds of cold, export, fresh-runner and
#                          changed runs per engine (at least 3)
#   BENCH_REMOTE_SCALE_N=1000
#                          remote: the chain a fresh runner answers from the
#                          remote cache (REPS runs; one cold run pushes it)
#   BENCH_REMOTE_RUSTDEPS=1
#                          remote: also rust-deps (0: only 10 steps and the chain)
#   BENCH_EXPLAIN_N=300    explain: the chain whose misses are explained (at least 2)
#   BENCH_KEEP_DOCKERD=1   leave the dockerd this script started running
#   BENCH_RESET=0          keep rbuild's bench state (index, snapshots) from
#                          earlier runs instead of starting from empty
#   BENCH_RESULTS=PATH     where to write the report (default bench/RESULTS.md)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

ALL_SCENARIOS="steps hostdir cutoff publish pull parallel scale rustdeps compile netns branches ignored ready remote explain"
SCENARIOS=${BENCH_SCENARIOS:-$ALL_SCENARIOS}
REPS=${BENCH_REPS:-10}
HD_REPS=${BENCH_HOSTDIR_REPS:-5}
COLD_REPS=${BENCH_COLD_REPS:-5}
CO_MB=${BENCH_CUTOFF_MB:-50}
IG_REPS=${BENCH_IGNORED_REPS:-10}
PUB_REPS=${BENCH_PUBLISH_REPS:-5}
UP_REPS=${BENCH_UPLOAD_REPS:-3}
PULL_REPS=${BENCH_PULL_REPS:-5}
SC_STEPS=${BENCH_SCALE_STEPS:-10 100 1000}
SC_COLD_REPS=${BENCH_SCALE_COLD_REPS:-1}
SC_BK_N=${BENCH_SCALE_BUILDKIT_N:-100}
RD_COLD_REPS=${BENCH_RUSTDEPS_COLD_REPS:-3}
RD_REPS=${BENCH_RUSTDEPS_REPS:-5}
CP_COLD_REPS=${BENCH_COMPILE_COLD_REPS:-3}
IMAGE=127.0.0.1:5000/busybox:latest
STEPS=10

RBUILD=$REPO/target/release/rbuild
PIPELINE=$REPO/bench/pipelines/ten_steps.rs
DOCKERFILE=$REPO/bench/dockerfiles/ten_steps.Dockerfile
RESULTS=${BENCH_RESULTS:-$REPO/bench/RESULTS.md}

STATE=/var/lib/rbuild-bench
LOG_DIR=/var/log/rbuild-bench
RUN_DIR=/run/rbuild-bench

# rbuild: own namespace, own state root, one fixed cache dir (compiled
# pipelines are reused across bench runs).
RB_NS=rbuild-bench
RB_ROOT=$STATE/root
RB_CACHE=$STATE/cache
# ctr floor: its own namespace, cleaned up afterwards.
FLOOR_NS=rbuild-bench-ctr
FLOOR_PREFIX=rbuild-bench-floor

# Scenario "host directory": a generated tree (kept across bench runs), its
# own namespace (emptied before and after: every cold run commits a new
# 240 MB snapshot) and its own state roots (a fresh one per cold run).
TREE=$STATE/tree20k
TREE_FILES=20000
TREE_FILE_BYTES=12000 # 20,000 x 12,000 B = 240.0 MB
TREE_TOP=20           # d00..d19, each with s00..s09: 200 directories of 100 files
TREE_SUB=10
TREE_CHANGED=$TREE/d00/s00/f000 # the file the one-file-changed runs rewrite
HD_NS=rbuild-bench-hostdir
HD_ROOT=$STATE/hostdir-root
HD_PIPELINE=$REPO/bench/pipelines/host_dir.rs
HD_DOCKERFILE=$REPO/bench/dockerfiles/host_dir.Dockerfile
HD_IMAGE_TAG=bench-hostdir:latest
# Scenario "early cutoff cost": same idea, its own namespace and root.
CO_NS=rbuild-bench-cutoff
CO_ROOT=$STATE/cutoff-root
CO_PIPELINE=$REPO/bench/pipelines/cutoff_cost.rs
CO_FILES=1000

# The ~200 MB base image of scenarios "publish" and "pull", made once (with
# umoci and skopeo) and kept in the local registry: busybox plus one layer of
# BASE_RANDOM_MIB MiB of pseudo-random bytes (AES-CTR of zeros, fixed key:
# incompressible) and about BASE_LIB_MIB MiB of this machine's
# /usr/lib/x86_64-linux-gnu files (shared objects, archives, modules: gzip
# does real work on those). BASE_DIR keeps the layer blob (for the floors).
BASE_IMAGE=127.0.0.1:5000/bench/base-200m:1
BASE_RANDOM_MIB=100
BASE_LIB_MIB=100
BASE_DIR=$STATE/base-200m
# Scenario "publish": rbuild's namespace and root (emptied before and after),
# the docker build context (one file), and where the images go (a new
# repository per round, the same one for its re-push).
PUB_NS=rbuild-bench-publish
PUB_ROOT=$STATE/publish-root
PUB_PIPELINE=$REPO/bench/pipelines/publish.rs
PUB_DOCKERFILE=$REPO/bench/dockerfiles/publish.Dockerfile
PUB_CONTEXT=$STATE/publish-context
PUB_REPO=127.0.0.1:5000/bench-publish # repositories: {rb,dk}-RUN_ID-ROUND, lowercased
# The same registry by another name: neither engine mounts across registry
# names, so a push there uploads every layer, the base's too (up-{rb,dk}-…).
PUB_UP_REPO=localhost:5000/bench-publish
# Scenario "pull": a namespace per engine, created by each pull and removed
# (with every blob and snapshot in it) after it; rbuild's root, likewise.
PULL_RB_NS=rbuild-bench-pull-rbuild
PULL_CTR_NS=rbuild-bench-pull-ctr
PULL_ROOT=$STATE/pull-root
PULL_PIPELINE=$REPO/bench/pipelines/pull.rs
PULL_UNTAR=$STATE/pull-untar # the gzip | tar floor's target (same file system as containerd's)
CTD_ROOT=/var/lib/containerd
CTD_BLOBS=$CTD_ROOT/io.containerd.content.v1.content/blobs/sha256
# Scenario "parallel": four independent `sleep 1` steps; own namespace and root.
PAR_NS=rbuild-bench-parallel
PAR_ROOT=$STATE/parallel-root
PAR_PIPELINE=$REPO/bench/pipelines/parallel.rs
PAR_DOCKERFILE=$REPO/bench/dockerfiles/parallel.Dockerfile
PAR_BRANCHES=4
PAR_IDEAL_MS=1000 # each branch sleeps 1 s
# Scenario "scale": a chain of N trivial steps, one compiled pipeline for
# every N; own namespace and root (emptied before and after: a cold
# 1000-step run commits 1000 snapshots). BuildKit's Dockerfile of N RUNs is
# generated into SC_DIR. An image has at most 127 layers in dockerd's
# overlay2 driver, so BuildKit cannot export much more than 120 RUNs.
SC_NS=rbuild-bench-scale
SC_ROOT=$STATE/scale-root
SC_PIPELINE=$REPO/bench/pipelines/scale.rs
SC_DIR=$STATE/scale
SC_BK_MAX=120
# Scenario "rustdeps": examples/rust-deps on a copy of fixtures/rust-project
# in the Rust image fixtures/setup.sh builds; own namespace and root. The
# image stays in the namespace and in dockerd between runs (317 MB to pull).
RD_NS=rbuild-bench-rustdeps
RD_ROOT=$STATE/rustdeps-root
RD_PIPELINE=$REPO/examples/rust-deps
RD_FIXTURE=$REPO/fixtures/rust-project
RD_PROJECT=$STATE/rustdeps-project
RD_DOCKERFILE=$REPO/bench/dockerfiles/rust_deps.Dockerfile
RD_IMAGE=127.0.0.1:5000/rust:1
RD_TAG=bench-rustdeps:latest
RD_CA=/etc/ssl/certs/ca-certificates.crt # lent to cargo by both engines (TLS-inspecting proxies)
RD_GREETING0="hello from a cached build" # the fixture's GREETING
# Scenario "compile": a working copy of bench/pipelines/compile.rs (edited
# by the runs), the cache dirs of its first compiles, bare cargo's target
# dir; own namespace and root.
CP_NS=rbuild-bench-compile
CP_ROOT=$STATE/compile-root
CP_SRC=$REPO/bench/pipelines/compile.rs
CP_DIR=$STATE/compile
CP_FILE=$CP_DIR/compile.rs
CP_CACHE=$CP_DIR/cache
CP_BARE_TARGET=$CP_DIR/bare-target

# Debian's docker.io (client and daemon from the same package); not the newer
# client in /usr/local/bin. A private dockerd: own socket, data and exec roots.
DOCKER=/usr/bin/docker
DOCKERD=/usr/sbin/dockerd
DOCKER_SOCK=$RUN_DIR/docker.sock
DOCKERD_LOG=$LOG_DIR/docker.log
export DOCKER_HOST=unix://$DOCKER_SOCK
export DOCKER_BUILDKIT=1
# Keep the client away from ~/.docker (contexts, buildx aliases of the newer client).
export DOCKER_CONFIG=$STATE/docker-config

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 5 ]] || die "BENCH_REPS must be a number >= 5 (got '$REPS')"
[[ $HD_REPS =~ ^[0-9]+$ && $HD_REPS -ge 5 ]] || die "BENCH_HOSTDIR_REPS must be a number >= 5 (got '$HD_REPS')"
[[ $COLD_REPS =~ ^[0-9]+$ && $COLD_REPS -ge 3 ]] || die "BENCH_COLD_REPS must be a number >= 3 (got '$COLD_REPS')"
[[ $CO_MB =~ ^[0-9]+$ && $CO_MB -ge 1 ]] || die "BENCH_CUTOFF_MB must be a number >= 1 (got '$CO_MB')"
[[ $PUB_REPS =~ ^[0-9]+$ && $PUB_REPS -ge 3 ]] || die "BENCH_PUBLISH_REPS must be a number >= 3 (got '$PUB_REPS')"
[[ $UP_REPS =~ ^[0-9]+$ && $UP_REPS -ge 3 ]] || die "BENCH_UPLOAD_REPS must be a number >= 3 (got '$UP_REPS')"
[[ $PULL_REPS =~ ^[0-9]+$ && $PULL_REPS -ge 3 ]] || die "BENCH_PULL_REPS must be a number >= 3 (got '$PULL_REPS')"
for s in $SCENARIOS; do
  case $s in
    steps | hostdir | cutoff | publish | pull | parallel | scale | rustdeps | compile | netns | branches | ignored | ready | remote | explain | services) ;;
    *) die "BENCH_SCENARIOS: unknown scenario '$s' (known: $ALL_SCENARIOS services)" ;;
  esac
done
prev=0
for n in $SC_STEPS; do
  [[ $n =~ ^[0-9]+$ && $n -gt $prev ]] ||
    die "BENCH_SCALE_STEPS must be ascending numbers >= 1 (got '$SC_STEPS')"
  prev=$n
done
[[ $(wc -w <<<"$SC_STEPS") -ge 2 ]] || die "BENCH_SCALE_STEPS needs at least two values, to see how the time grows (got '$SC_STEPS')"
[[ $SC_COLD_REPS =~ ^[0-9]+$ && $SC_COLD_REPS -ge 1 ]] || die "BENCH_SCALE_COLD_REPS must be a number >= 1 (got '$SC_COLD_REPS')"
if [[ $SC_BK_N != 0 ]]; then
  [[ " $SC_STEPS " == *" $SC_BK_N "* ]] || die "BENCH_SCALE_BUILDKIT_N must be 0 or one of BENCH_SCALE_STEPS ($SC_STEPS) (got '$SC_BK_N')"
  [[ $SC_BK_N -le $SC_BK_MAX ]] || die "BENCH_SCALE_BUILDKIT_N must be at most $SC_BK_MAX: dockerd's overlay2 keeps at most 127 layers per image, one per RUN (got '$SC_BK_N')"
fi
[[ $RD_COLD_REPS =~ ^[0-9]+$ && $RD_COLD_REPS -ge 1 ]] || die "BENCH_RUSTDEPS_COLD_REPS must be a number >= 1 (got '$RD_COLD_REPS')"
[[ $RD_REPS =~ ^[0-9]+$ && $RD_REPS -ge 3 ]] || die "BENCH_RUSTDEPS_REPS must be a number >= 3 (got '$RD_REPS')"
[[ $CP_COLD_REPS =~ ^[0-9]+$ && $CP_COLD_REPS -ge 1 ]] || die "BENCH_COMPILE_COLD_REPS must be a number >= 1 (got '$CP_COLD_REPS')"
[[ $IG_REPS =~ ^[0-9]+$ && $IG_REPS -ge 3 ]] || die "BENCH_IGNORED_REPS must be a number >= 3 (got '$IG_REPS')"
[[ -n ${SCENARIOS// /} ]] || die "BENCH_SCENARIOS is empty"
# want NAME: is scenario NAME selected?
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }
[[ -x $RBUILD ]] || die "$RBUILD missing: run 'make build' (or 'make bench')"
ctr version >/dev/null 2>&1 || die "containerd not answering: run 'make setup'"

mkdir -p "$STATE" "$LOG_DIR" "$RUN_DIR" "$RB_CACHE" "$DOCKER_CONFIG"
RUN_ID=$(date -u +%Y%m%dT%H%M%S)-$$
TIMES=$(mktemp -d /tmp/rbuild-bench.XXXXXX)

# ---------------------------------------------------------------- cleanup --
STARTED_DOCKERD=
PULL_STARTED=
PUB_STARTED=
cleanup() {
  local rc=$?
  if declare -F floor_cleanup >/dev/null; then floor_cleanup || true; fi
  # A scenario that stopped half-way leaves no 150 MB blob or namespace behind.
  if [[ -n $PULL_STARTED ]]; then pull_purge_all || true; fi
  if [[ -n $PUB_STARTED ]]; then pub_purge || true; fi
  if declare -F nn_dockerd_down >/dev/null; then nn_dockerd_down || true; fi
  if declare -F re_dockerd_down >/dev/null; then re_dockerd_down || true; fi
  if [[ -n $STARTED_DOCKERD && ${BENCH_KEEP_DOCKERD:-0} != 1 ]]; then
    say "stopping the dockerd this run started (pid $STARTED_DOCKERD)"
    kill "$STARTED_DOCKERD" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
      kill -0 "$STARTED_DOCKERD" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -rf "$TIMES"
  exit "$rc"
}
trap cleanup EXIT

# --------------------------------------------------------------- packages --
# ensure_package PKG BINARY...: install Debian's PKG unless it is installed
# and all of its BINARY paths are there.
ensure_package() {
  local pkg=$1 bin ok=1
  shift
  for bin in "$@"; do [[ -x $bin ]] || ok=0; done
  if [[ $ok -eq 1 ]] && dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed; then
    return
  fi
  say "installing Debian's $pkg (log: $LOG_DIR/apt.log)"
  # Keep the maintainer scripts from starting daemons; only if no policy exists.
  local policy_rcd=/usr/sbin/policy-rc.d added_policy=0 rc=0
  if [[ ! -e $policy_rcd ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy_rcd"
    chmod 755 "$policy_rcd"
    added_policy=1
  fi
  {
    apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 \
        --no-install-recommends "$pkg"
  } >>"$LOG_DIR/apt.log" 2>&1 || rc=$?
  [[ $added_policy -eq 1 ]] && rm -f "$policy_rcd"
  if [[ $rc -ne 0 ]]; then
    tail -n 30 "$LOG_DIR/apt.log" >&2
    die "apt-get install $pkg failed (log: $LOG_DIR/apt.log)"
  fi
}

# ---------------------------------------------------------------- dockerd --
docker_up() { timeout 10 "$DOCKER" -H "unix://${1:-$DOCKER_SOCK}" info >/dev/null 2>&1; }

# launch_dockerd PIDVAR NAME SOCK ARGS...: starts a private dockerd on the
# shared containerd, answering on SOCK, with its data root, exec root,
# pidfile and log named NAME; sets PIDVAR to its pid once it answers.
launch_dockerd() {
  local var=$1 name=$2 sock=$3 pid i
  shift 3
  setsid nohup "$DOCKERD" \
    --containerd=/run/containerd/containerd.sock \
    --host="unix://$sock" \
    --data-root="$STATE/$name" \
    --exec-root="$RUN_DIR/$name" \
    --pidfile="$RUN_DIR/$name.pid" \
    "$@" </dev/null >>"$LOG_DIR/$name.log" 2>&1 &
  pid=$!
  for ((i = 0; i < 300; i++)); do
    if docker_up "$sock"; then
      printf -v "$var" '%s' "$(cat "$RUN_DIR/$name.pid" 2>/dev/null || echo "$pid")"
      return
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 30 "$LOG_DIR/$name.log" >&2 || true
  die "$name did not answer 'docker info' (log: $LOG_DIR/$name.log)"
}

ensure_dockerd() {
  if docker_up; then
    say "dockerd: already answering on $DOCKER_SOCK"
    return
  fi
  say "dockerd: starting (log: $DOCKERD_LOG)"
  # Shares rbuild's containerd (dockerd's containers would live in its
  # namespace "moby"); no bridge, no iptables. BuildKit inside dockerd runs
  # RUN steps with runc itself, on dockerd's overlay2 graph driver: builds
  # create nothing in containerd. Without a bridge, RUN steps need
  # --network=none (or host): the default network fails "network bridge not found".
  launch_dockerd STARTED_DOCKERD docker "$DOCKER_SOCK" \
    --bridge=none --iptables=false --ip6tables=false
  say "dockerd: up (pid $STARTED_DOCKERD)"
}

# ----------------------------------------------------------------- timing --
now_ns() { date +%s%N; }

# record NAME MS: append one sample (milliseconds); all samples, in order,
# also go to $LOG_DIR/samples.tsv.
record() {
  echo "$2" >>"$TIMES/$1"
  printf '%s\t%s\t%s\n' "$RUN_ID" "$1" "$2" >>"$LOG_DIR/samples.tsv"
}

# timed NAME WHAT LOG COMMAND…: runs COMMAND, which writes its output to
# LOG; when it fails, shows LOG and stops the bench ("WHAT failed");
# otherwise records its wall time in ms as a sample of NAME.
timed() {
  local name=$1 what=$2 log=$3 t0 t1
  shift 3
  t0=$(now_ns)
  "$@" || { cat "$log" >&2; die "$what failed (log: $log)"; }
  t1=$(now_ns)
  record "$name" $(((t1 - t0) / 1000000))
}

# stats NAME -> "median min max" in ms (median of an even count: mean of the middle two)
stats() {
  sort -n "$TIMES/$1" | awk '{v[NR] = $1}
    END {
      if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "%d %d %d\n", m, v[1], v[NR]
    }'
}

# ----------------------------------------------------------------- rbuild --
# Step 1 writes the nonce into a file, so its changes differ with each nonce
# and steps 2-10 of a "cold" run miss too (early cutoff stays on).
rb_run() { # nonce log
  BENCH_NONCE=$1 RBUILD_ROOT=$RB_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$RB_NS \
    "$RBUILD" run "$PIPELINE" >"$2.out" 2>"$2"
}

# check_rbuild LOG WANT_CACHED: all ten exec steps ran (0) or were cached (10).
check_rbuild() {
  local log=$1 want=$2 cached
  cached=$(grep -c '^#[0-9]* exec .* CACHED$' "$log" || true)
  if [[ $cached -ne $want ]] || ! grep -q "^step $STEPS\$" "$log.out"; then
    cat "$log" >&2
    die "rbuild run: expected $want of $STEPS exec steps cached, saw $cached (log: $log)"
  fi
}

# rb_reset [NAMESPACE ROOT...]: remove everything rbuild keeps in a bench
# namespace (default: the 10-steps one), so each bench run starts from the
# same state: the state roots (index), then snapshots leaf first, images.
rb_reset() {
  local ns=${1:-$RB_NS}
  if [[ $# -gt 1 ]]; then rm -rf "${@:2}"; else rm -rf "$RB_ROOT"; fi
  # Deepest snapshots first (children before parents), in one ctr call.
  local keys pass
  for ((pass = 0; pass < 3; pass++)); do
    keys=$(ctr -n "$ns" snapshots ls 2>/dev/null | awk '
      NR > 1 { parent[$1] = ($3 == "" ? "" : $2); keys[NR] = $1 }
      END {
        for (i in keys) {
          k = keys[i]; d = 0
          for (p = parent[k]; p != "" && d < 10000; p = parent[p]) d++
          print d, k
        }
      }' | sort -rn | awk '{print $2}')
    [[ -z $keys ]] && break
    # shellcheck disable=SC2086
    ctr -n "$ns" snapshots rm $keys >/dev/null 2>&1 || true
  done
  # shellcheck disable=SC2046
  ctr -n "$ns" images rm $(ctr -n "$ns" images ls -q 2>/dev/null) >/dev/null 2>&1 || true
}

bench_rbuild() {
  local log=$LOG_DIR/rbuild.log i nonce
  if [[ ${BENCH_RESET:-1} == 1 ]]; then
    say "rbuild: resetting namespace $RB_NS and root $RB_ROOT"
    rb_reset
  fi
  say "rbuild: warm-up (compiles the pipeline once, pulls the image into $RB_NS)"
  rb_run "warmup-$RUN_ID" "$log" || { cat "$log" >&2; die "rbuild warm-up failed"; }
  rb_run "warmup-$RUN_ID" "$log" || { cat "$log" >&2; die "rbuild warm-up failed"; }
  check_rbuild "$log" "$STEPS"

  for ((i = 1; i <= REPS; i++)); do
    nonce=$RUN_ID-$i
    timed rbuild_cold "rbuild cold run" "$log" rb_run "$nonce" "$log"
    check_rbuild "$log" 0
    cp "$log" "$LOG_DIR/rbuild-cold.log"
  done
  for ((i = 1; i <= REPS; i++)); do
    timed rbuild_cached "rbuild cached run" "$log" rb_run "$nonce" "$log"
    check_rbuild "$log" "$STEPS"
    cp "$log" "$LOG_DIR/rbuild-cached.log"
  done
  say "rbuild: cold $(stats rbuild_cold) / cached $(stats rbuild_cached) (median min max, ms)"
}

# --------------------------------------------------------------- BuildKit --
bk_build() { # nonce log; no build context (Dockerfile on stdin); steps have no network, like rbuild's
  "$DOCKER" build --progress=plain --network=none --build-arg "NONCE=$1" \
    -t bench-ten:latest - <"$DOCKERFILE" >"$2" 2>&1
}

# check_buildkit LOG WANT_CACHED
check_buildkit() {
  local log=$1 want=$2 runs_cached
  # The FROM step is cached in every build; count the RUN steps only.
  runs_cached=$(awk '
    /^#[0-9]+ \[.*\] RUN / { id = $1; run[id] = 1 }
    /^#[0-9]+ CACHED$/ { if ($1 in run) n++ }
    END { print n + 0 }' "$log")
  if [[ $runs_cached -ne $want ]]; then
    cat "$log" >&2
    die "docker build: expected $want of $STEPS RUN steps cached, saw $runs_cached (log: $log)"
  fi
}

bench_buildkit() {
  local log=$LOG_DIR/buildkit.log i nonce
  say "BuildKit: warm-up (pulls the base image into dockerd)"
  bk_build "warmup-$RUN_ID" "$log" || { cat "$log" >&2; die "docker build warm-up failed"; }
  bk_build "warmup-$RUN_ID" "$log" || { cat "$log" >&2; die "docker build warm-up failed"; }
  check_buildkit "$log" "$STEPS"

  for ((i = 1; i <= REPS; i++)); do
    nonce=$RUN_ID-$i
    timed buildkit_cold "docker build (cold)" "$log" bk_build "$nonce" "$log"
    check_buildkit "$log" 0
    cp "$log" "$LOG_DIR/buildkit-cold.log"
  done
  for ((i = 1; i <= REPS; i++)); do
    timed buildkit_cached "docker build (cached)" "$log" bk_build "$nonce" "$log"
    check_buildkit "$log" "$STEPS"
    cp "$log" "$LOG_DIR/buildkit-cached.log"
  done
  # Drop the build cache of this run's cold builds and the images they left
  # dangling (keeps dockerd's data-root small).
  "$DOCKER" builder prune -af >/dev/null 2>&1 || true
  "$DOCKER" image prune -f >/dev/null 2>&1 || true
  say "BuildKit: cold $(stats buildkit_cold) / cached $(stats buildkit_cached) (median min max, ms)"
}

# -------------------------------------------------------------- ctr floor --
floor_cleanup() {
  local c
  for c in $(ctr -n "$FLOOR_NS" containers ls -q 2>/dev/null | grep "^$FLOOR_PREFIX-" || true); do
    ctr -n "$FLOOR_NS" tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    ctr -n "$FLOOR_NS" tasks rm -f "$c" >/dev/null 2>&1 || true
    ctr -n "$FLOOR_NS" containers rm "$c" >/dev/null 2>&1 || true
    ctr -n "$FLOOR_NS" snapshots rm "$c" >/dev/null 2>&1 || true
  done
}

bench_floor() {
  local i t0 t1 id
  say "ctr floor: pulling $IMAGE into namespace $FLOOR_NS"
  ctr -n "$FLOOR_NS" images pull --plain-http "$IMAGE" >"$LOG_DIR/ctr-pull.log" 2>&1 ||
    { cat "$LOG_DIR/ctr-pull.log" >&2; die "ctr images pull failed"; }
  ctr -n "$FLOOR_NS" run --rm "$IMAGE" "$FLOOR_PREFIX-warmup-$$" true
  for ((i = 1; i <= REPS; i++)); do
    id=$FLOOR_PREFIX-$RUN_ID-$i
    t0=$(now_ns)
    ctr -n "$FLOOR_NS" run --rm "$IMAGE" "$id" true
    t1=$(now_ns)
    record ctr_floor $(((t1 - t0) / 1000000))
  done
  floor_cleanup
  say "ctr floor: $(stats ctr_floor) (median min max, ms)"
}

# --------------------------------------------------------- host directory --
# The tree: TREE_FILES files of TREE_FILE_BYTES random bytes in TREE_TOP x
# TREE_SUB directories, generated once (coreutils only: one `head` from
# /dev/urandom per directory, cut by `split`). A marker beside the tree (not
# in it) records that it was completed with these parameters.
tree_spec() { echo "files=$TREE_FILES bytes=$TREE_FILE_BYTES dirs=${TREE_TOP}x$TREE_SUB"; }

ensure_tree() {
  local marker=$TREE.complete per=$((TREE_FILES / (TREE_TOP * TREE_SUB))) a b d n
  if [[ -f $marker && $(cat "$marker") == "$(tree_spec)" ]] &&
    [[ $(find "$TREE" -type f | wc -l) -eq $TREE_FILES ]]; then
    say "host directory: tree present ($TREE, $(tree_spec))"
    return
  fi
  say "host directory: generating $TREE ($(tree_spec))"
  rm -rf "$TREE" "$TREE.tmp" "$marker"
  for ((a = 0; a < TREE_TOP; a++)); do
    for ((b = 0; b < TREE_SUB; b++)); do
      d=$(printf '%s/d%02d/s%02d' "$TREE.tmp" "$a" "$b")
      mkdir -p "$d"
      head -c $((per * TREE_FILE_BYTES)) /dev/urandom | split -b "$TREE_FILE_BYTES" -d -a 3 - "$d/f"
    done
  done
  n=$(find "$TREE.tmp" -type f | wc -l)
  [[ $n -eq $TREE_FILES ]] || die "generated $n files in $TREE.tmp, expected $TREE_FILES"
  mv "$TREE.tmp" "$TREE"
  tree_spec >"$marker"
}

# change_tree: give one file new content (same size), different every time.
change_tree() { head -c "$TREE_FILE_BYTES" /dev/urandom >"$TREE_CHANGED"; }

# Before every timed run of this scenario: write back what earlier runs left
# dirty (each import writes 240 MB), so no run pays for its predecessor's.
settle() { sync; }

hd_rb_run() { # root log
  RBUILD_ROOT=$1 RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$HD_NS \
    "$RBUILD" run "$HD_PIPELINE" -- "$TREE" >"$2.out" 2>"$2"
}

# rb_step_ms LOG KIND: ms of the step whose progress line is "#N KIND ...",
# from its "#N DONE in X ms"; "CACHED" if it was a hit; empty if absent.
rb_step_ms() {
  awk -v kind="$2" '
    id == "" && $2 == kind { if ($NF == "CACHED") { print "CACHED"; exit } id = $1; next }
    id != "" && $1 == id && $2 == "DONE" { print $4; exit }' "$1"
}

# rb_scan LOG: "FILES_READ MS" from the "#N context PATH: ..." line.
rb_scan() {
  sed -n 's/^#[0-9]* context .*: [0-9]* entries, \([0-9]*\) files read (.*) in \([0-9]*\) ms$/\1 \2/p' "$1" | head -n 1
}

# hd_rb_check LOG MODE NAME: MODE cold|unchanged|changed; records the
# breakdown from the progress lines as NAME_scan, NAME_copy, NAME_exec.
hd_rb_check() {
  local log=$1 mode=$2 name=$3 files scan_ms copy exec want_files out
  read -r files scan_ms < <(rb_scan "$log") || true
  copy=$(rb_step_ms "$log" copy)
  exec=$(rb_step_ms "$log" exec)
  out=$(tr -d ' \n' <"$log.out")
  case $mode in
    cold) want_files=$TREE_FILES ;;
    unchanged) want_files=0 ;;
    changed) want_files=1 ;;
  esac
  local ok=1
  [[ ${files:-x} == "$want_files" && -n $scan_ms && $out == "$TREE_FILES" ]] || ok=0
  if [[ $mode == unchanged ]]; then
    [[ $copy == CACHED && $exec == CACHED ]] || ok=0
  else
    [[ $copy =~ ^[0-9]+$ && $exec =~ ^[0-9]+$ ]] || ok=0
  fi
  if [[ $ok -ne 1 ]]; then
    cat "$log" "$log.out" >&2
    die "rbuild host directory ($mode): expected $want_files files read, copy and exec $([[ $mode == unchanged ]] && echo CACHED || echo run), $TREE_FILES files in the container; saw files read '$files', copy '$copy', exec '$exec', output '$out' (log: $log)"
  fi
  record "${name}_scan" "$scan_ms"
  [[ $mode == unchanged ]] && return
  record "${name}_copy" "$copy"
  record "${name}_exec" "$exec"
}

hd_bk_build() { # log
  "$DOCKER" build --progress=plain --network=none -f "$HD_DOCKERFILE" \
    -t "$HD_IMAGE_TAG" "$TREE" >"$1" 2>&1
}

# bk_step LOG REGEX: for the vertex whose title matches REGEX, "CACHED" or
# its DONE time in ms; empty if absent.
bk_step() {
  awk -v re="$2" '
    id == "" && /^#[0-9]+ / { t = $0; sub(/^#[0-9]+ /, "", t); if (t ~ re) id = $1; next }
    id != "" && $1 == id && $2 == "CACHED" { print "CACHED"; exit }
    id != "" && $1 == id && $2 == "DONE" { s = $3; sub(/s$/, "", s); printf "%d\n", s * 1000; exit }' "$1"
}

BK_CONTEXT_RE='^\[internal\] load build context'
BK_COPY_RE='^\[[0-9]+/[0-9]+\] COPY '
BK_RUN_RE='^\[[0-9]+/[0-9]+\] RUN '
BK_EXPORT_RE='^exporting to image'

# hd_bk_check LOG MODE NAME: COPY and RUN ran (cold, changed; the RUN printed
# the file count) or were CACHED (unchanged); records NAME_context,
# NAME_copy, NAME_run, NAME_export from the DONE lines.
hd_bk_check() {
  local log=$1 mode=$2 name=$3 ctx copy run exported runid ok=1
  ctx=$(bk_step "$log" "$BK_CONTEXT_RE")
  copy=$(bk_step "$log" "$BK_COPY_RE")
  run=$(bk_step "$log" "$BK_RUN_RE")
  exported=$(bk_step "$log" "$BK_EXPORT_RE")
  if [[ $mode == unchanged ]]; then
    [[ $copy == CACHED && $run == CACHED ]] || ok=0
  else
    runid=$(grep -m1 -E "^#[0-9]+ \[[0-9]+/[0-9]+\] RUN " "$log" | awk '{print $1}')
    [[ $copy =~ ^[0-9]+$ && $run =~ ^[0-9]+$ ]] || ok=0
    grep -qE "^$runid [0-9.]+ $TREE_FILES\$" "$log" || ok=0
  fi
  if [[ $ok -ne 1 ]]; then
    cat "$log" >&2
    die "docker build host directory ($mode): expected COPY and RUN $([[ $mode == unchanged ]] && echo CACHED || echo "to run and count $TREE_FILES files"); saw COPY '$copy', RUN '$run' (log: $log)"
  fi
  if [[ $ctx =~ ^[0-9]+$ ]]; then record "${name}_context" "$ctx"; fi
  [[ $mode == unchanged ]] && return
  record "${name}_copy" "$copy"
  record "${name}_run" "$run"
  if [[ $exported =~ ^[0-9]+$ ]]; then record "${name}_export" "$exported"; fi
}

# Cold for BuildKit: no build cache at all (which holds the context it keeps
# from earlier builds) and no image from earlier builds (a rebuild leaves the
# previous image dangling, with its 240 MB layer).
bk_forget() {
  "$DOCKER" rmi -f "$HD_IMAGE_TAG" >/dev/null 2>&1 || true
  "$DOCKER" image prune -f >/dev/null 2>&1 || die "docker image prune -f failed"
  "$DOCKER" builder prune -af >/dev/null 2>&1 || die "docker builder prune -af failed"
}

# Hash floor, on the same (page-cached) tree: blake3 of every file with
# b3sum, in one process and split over one process per CPU. (No copy floor:
# creating 20,000 files directly on this machine's ext4 took anywhere from
# 1 to 10 s from one minute to the next, so a `cp -a` row was mostly noise.)
bench_hostdir_floors() {
  local i t0 t1 cpus
  cpus=$(nproc)
  say "host directory: hash floor (b3sum)"
  find "$TREE" -type f -print0 | xargs -0 b3sum >/dev/null # warm-up: page cache
  for ((i = 1; i <= HD_REPS; i++)); do
    t0=$(now_ns)
    find "$TREE" -type f -print0 | xargs -0 b3sum >/dev/null
    t1=$(now_ns)
    record hd_b3 $(((t1 - t0) / 1000000))
    t0=$(now_ns)
    find "$TREE" -type f -print0 | xargs -0 -P "$cpus" -n $(((TREE_FILES + cpus - 1) / cpus)) b3sum >/dev/null
    t1=$(now_ns)
    record hd_b3_par $(((t1 - t0) / 1000000))
  done
  say "host directory: b3sum $(stats hd_b3), b3sum x$cpus $(stats hd_b3_par) (median min max, ms)"
}

# hd_rb_once MODE: one timed rbuild run (MODE cold|unchanged|changed; the
# caller changes the tree for "changed"). Cold: a new state root (empty index
# and stat cache): the whole tree is read and hashed, then copied into a new
# snapshot. Unchanged and changed: the root of the previous run.
hd_rb_once() {
  local mode=$1 log=$LOG_DIR/hostdir-rbuild.log name
  name=hd_rb_$(hd_short "$mode")
  [[ $mode == cold ]] && rm -rf "$HD_ROOT"
  settle
  timed "$name" "rbuild host directory ($mode)" "$log" hd_rb_run "$HD_ROOT" "$log"
  hd_rb_check "$log" "$mode" "$name"
  # What the progress lines do not account for, in this run.
  local rest=$(($(last "$name") - $(last "${name}_scan")))
  if [[ $mode != unchanged ]]; then
    rest=$((rest - $(last "${name}_copy") - $(last "${name}_exec")))
  fi
  record "${name}_rest" "$rest"
  cp "$log" "$LOG_DIR/hostdir-rbuild-$mode.log"
}

# last NAME: the sample recorded last.
last() { tail -n 1 "$TIMES/$1"; }

# hd_bk_once MODE: the same for BuildKit; cold = after bk_forget.
hd_bk_once() {
  local mode=$1 log=$LOG_DIR/hostdir-buildkit.log name
  name=hd_bk_$(hd_short "$mode")
  [[ $mode == cold ]] && bk_forget
  settle
  timed "$name" "docker build host directory ($mode)" "$log" hd_bk_build "$log"
  hd_bk_check "$log" "$mode" "$name"
  cp "$log" "$LOG_DIR/hostdir-buildkit-$mode.log"
}

hd_short() { case $1 in cold) echo cold ;; unchanged) echo unch ;; changed) echo chg ;; esac; }

# hd_both MODE I: one run of each engine, in turns which one goes first, so
# that drifting load on the machine falls on both alike.
hd_both() {
  if (($2 % 2)); then
    hd_rb_once "$1"
    hd_bk_once "$1"
  else
    hd_bk_once "$1"
    hd_rb_once "$1"
  fi
}

bench_hostdir() {
  local i log=$LOG_DIR/hostdir-rbuild.log
  ensure_package b3sum /usr/bin/b3sum
  ensure_tree
  bench_hostdir_floors

  say "host directory: emptying namespace $HD_NS; warm-ups (compile the pipeline, pull the image into $HD_NS and into dockerd)"
  rb_reset "$HD_NS" "$HD_ROOT"
  hd_rb_run "$HD_ROOT" "$log" || { cat "$log" >&2; die "rbuild host directory warm-up failed"; }
  hd_rb_check "$log" cold hd_warmup
  hd_bk_build "$LOG_DIR/hostdir-buildkit.log" ||
    { cat "$LOG_DIR/hostdir-buildkit.log" >&2; die "docker build host directory warm-up failed"; }

  for ((i = 1; i <= COLD_REPS; i++)); do hd_both cold "$i"; done
  for ((i = 1; i <= HD_REPS; i++)); do hd_both unchanged "$i"; done
  # One file changed: new content each time (one file differs from what
  # each engine saw in its previous run).
  for ((i = 1; i <= HD_REPS; i++)); do
    change_tree
    hd_both changed "$i"
  done
  say "host directory, rbuild: cold $(stats hd_rb_cold) / unchanged $(stats hd_rb_unch) / one file changed $(stats hd_rb_chg) (median min max, ms)"
  say "host directory, BuildKit: cold $(stats hd_bk_cold) / unchanged $(stats hd_bk_unch) / one file changed $(stats hd_bk_chg) (median min max, ms)"
  # Every cold and changed run committed a 240 MB snapshot / layer: give the space back.
  rb_reset "$HD_NS" "$HD_ROOT"
  bk_forget
}

# ------------------------------------------------------ early cutoff cost --
# One step that writes CO_MB MiB + CO_FILES small files and always misses (a
# new nonce each run); with RBUILD_CHANGES_DIGEST_MAX_BYTES at its default
# (on) or 0 (off). RBUILD_LOG makes rbuild log how long the digest took.
co_run() { # nonce on|off log
  local -a vars=(
    BENCH_NONCE="$1" BENCH_CUTOFF_MB="$CO_MB" BENCH_CUTOFF_FILES="$CO_FILES"
    RBUILD_ROOT="$CO_ROOT" RBUILD_CACHE_DIR="$RB_CACHE" RBUILD_NAMESPACE="$CO_NS"
    RBUILD_LOG=rbuild::machinery=debug
  )
  [[ $2 == off ]] && vars+=(RBUILD_CHANGES_DIGEST_MAX_BYTES=0)
  env -u RBUILD_CHANGES_DIGEST_MAX_BYTES "${vars[@]}" "$RBUILD" run "$CO_PIPELINE" >"$3.out" 2>"$3"
}

# co_check LOG on|off NAME: the step ran, wrote what it should, and was
# digested (on) or not (off); records NAME_step and NAME_digest (ms).
co_check() {
  local log=$1 mode=$2 name=$3 step digest known want_known=true want_out
  want_out="out.bin $((CO_MB * 1048576)) bytes, $CO_FILES small files"
  [[ $mode == off ]] && want_known=false
  step=$(rb_step_ms "$log" exec)
  read -r digest known < <(sed 's/\x1b\[[0-9;]*m//g' "$log" |
    sed -n "s/.*digested the step's changes .* ms=\([0-9]*\) known=\([a-z]*\).*/\1 \2/p" | head -n 1) || true
  if ! [[ $step =~ ^[0-9]+$ && ${digest:-x} =~ ^[0-9]+$ && $known == "$want_known" ]] ||
    [[ $(cat "$log.out") != "$want_out" ]]; then
    cat "$log" "$log.out" >&2
    die "rbuild cutoff ($mode): expected the step to run, '$want_out', digest known=$want_known; saw step '$step', digest '$digest' known '$known' (log: $log)"
  fi
  record "${name}_step" "$step"
  record "${name}_digest" "$digest"
}

bench_cutoff() {
  local log=$LOG_DIR/cutoff.log i mode
  say "early cutoff: emptying namespace $CO_NS; warm-up (compiles the pipeline, pulls the image)"
  rb_reset "$CO_NS" "$CO_ROOT"
  co_run "warmup-on-$RUN_ID" on "$log" || { cat "$log" >&2; die "rbuild cutoff warm-up failed"; }
  co_check "$log" on co_warmup
  co_run "warmup-off-$RUN_ID" off "$log" || { cat "$log" >&2; die "rbuild cutoff warm-up failed"; }
  co_check "$log" off co_warmup
  # Alternate on and off, so drifting load on the machine hits both alike.
  for ((i = 1; i <= REPS; i++)); do
    for mode in on off; do
      settle
      timed "co_$mode" "rbuild cutoff ($mode)" "$log" co_run "$RUN_ID-$i-$mode" "$mode" "$log"
      co_check "$log" "$mode" "co_$mode"
      cp "$log" "$LOG_DIR/cutoff-$mode.log"
    done
  done
  say "early cutoff: on $(stats co_on) / off $(stats co_off) (median min max, ms); digest $(stats co_on_digest) ms"
  rb_reset "$CO_NS" "$CO_ROOT"
}

# ---------------------------------------------------- the ~200 MB base image --
# Shared by "publish" and "pull". Made once, kept in the registry; its top
# layer blob is kept in BASE_DIR for the floors (fetched once with curl).
REG_URL=http://127.0.0.1:5000
MANIFEST_ACCEPT='application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json'

# reg_manifest REPO REF: the manifest (JSON) of REPO:REF or REPO@REF, or fails.
reg_manifest() { curl -sf -H "Accept: $MANIFEST_ACCEPT" "$REG_URL/v2/$1/manifests/$2"; }
# reg_blob REPO DIGEST: the blob on stdout.
reg_blob() { curl -sfL "$REG_URL/v2/$1/blobs/$2"; }

base_repo() { local r=${BASE_IMAGE#*/}; echo "${r%:*}"; }
base_tag() { echo "${BASE_IMAGE##*:}"; }

build_base_image() {
  local tmp policy=$STATE/skopeo-policy.json lib=/usr/lib/x86_64-linux-gnu
  ensure_package skopeo /usr/bin/skopeo
  ensure_package umoci /usr/bin/umoci
  ensure_package openssl /usr/bin/openssl
  printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$policy"
  rm -rf "$STATE"/base-build.* # from an interrupted build
  tmp=$(mktemp -d "$STATE/base-build.XXXXXX")
  say "base image: building $BASE_IMAGE in $tmp (busybox + $BASE_RANDOM_MIB MiB pseudo-random + ~$BASE_LIB_MIB MiB of $lib)"
  skopeo --policy "$policy" copy --quiet --src-tls-verify=false \
    "docker://$IMAGE" "oci:$tmp/layout:busybox" >"$LOG_DIR/base-image.log" 2>&1 ||
    { cat "$LOG_DIR/base-image.log" >&2; die "skopeo copy of $IMAGE failed"; }
  mkdir -p "$tmp/data/random" "$tmp/data/lib"
  # Deterministic incompressible bytes: AES-128-CTR of zeros with a fixed key, in 2 MiB files.
  # (openssl ends on SIGPIPE when head has enough: not a failure.)
  { openssl enc -aes-128-ctr -nosalt -K 00112233445566778899aabbccddeeff -iv 0 -in /dev/zero 2>/dev/null || true; } |
    head -c $((BASE_RANDOM_MIB * 1048576)) | split -b 2097152 -d -a 3 - "$tmp/data/random/r"
  # Files under 4 MB from $lib, in path order, while they fit in BASE_LIB_MIB MiB.
  find "$lib" -type f -size -4M -printf '%s %P\n' | LC_ALL=C sort -k2 |
    awk -v lim=$((BASE_LIB_MIB * 1048576)) '{ if (t + $1 > lim) next; t += $1; print $2 }' >"$tmp/lib.list"
  tar -cf - -C "$lib" -T "$tmp/lib.list" | tar -xf - -C "$tmp/data/lib"
  chmod -R u=rwX,go=rX "$tmp/data"
  find "$tmp/data" -exec touch -h -d @1700000000 {} +
  umoci insert --image "$tmp/layout:busybox" --tag base \
    --history.created_by "rbuild bench: /data ($BASE_RANDOM_MIB MiB pseudo-random, $(wc -l <"$tmp/lib.list") files of $lib)" \
    "$tmp/data" /data >>"$LOG_DIR/base-image.log" 2>&1 ||
    { cat "$LOG_DIR/base-image.log" >&2; die "umoci insert failed"; }
  skopeo --policy "$policy" copy --quiet --dest-tls-verify=false \
    "oci:$tmp/layout:base" "docker://$BASE_IMAGE" >>"$LOG_DIR/base-image.log" 2>&1 ||
    { cat "$LOG_DIR/base-image.log" >&2; die "skopeo copy to $BASE_IMAGE failed"; }
  rm -rf "$tmp"
}

# ensure_base_image: the image in the registry (built if missing), its top
# layer blob in BASE_DIR, and the facts the reports use: BASE_BLOB (digest of
# the big layer), BASE_BLOB_SIZE, BASE_BUSYBOX_BLOB, BASE_DIFF_IDS (short
# diff IDs, docker names layers by them), BASE_LAYER_FILE, BASE_UNCOMP
# (uncompressed bytes), BASE_ENTRIES (tar entries).
ensure_base_image() {
  local manifest repo config
  repo=$(base_repo)
  if ! manifest=$(reg_manifest "$repo" "$(base_tag)"); then
    build_base_image
    manifest=$(reg_manifest "$repo" "$(base_tag)") || die "$BASE_IMAGE is not in the registry after building it"
  else
    say "base image: $BASE_IMAGE present in the registry"
  fi
  BASE_BLOB=$(jq -r '.layers | max_by(.size) | .digest' <<<"$manifest")
  BASE_BLOB_SIZE=$(jq -r '.layers | max_by(.size) | .size' <<<"$manifest")
  BASE_BUSYBOX_BLOB=$(jq -r '.layers[0].digest' <<<"$manifest")
  BASE_LAYERS=$(jq -r '.layers | length' <<<"$manifest")
  config=$(reg_blob "$repo" "$(jq -r .config.digest <<<"$manifest")") || die "cannot read the config of $BASE_IMAGE"
  BASE_DIFF_IDS=$(jq -r '.rootfs.diff_ids[] | .[7:19]' <<<"$config" | tr '\n' ' ')
  BASE_LAYER_FILE=$BASE_DIR/${BASE_BLOB#sha256:}.gz
  mkdir -p "$BASE_DIR"
  if [[ ! -f $BASE_LAYER_FILE.info ]]; then
    rm -f "$BASE_DIR"/*.gz "$BASE_DIR"/*.info
    say "base image: fetching its $(awk -v b="$BASE_BLOB_SIZE" 'BEGIN { printf "%.1f MB", b / 1e6 }') layer for the floors"
    reg_blob "$repo" "$BASE_BLOB" >"$BASE_LAYER_FILE.tmp" || die "cannot fetch $BASE_BLOB"
    [[ sha256:$(sha256sum "$BASE_LAYER_FILE.tmp" | cut -d' ' -f1) == "$BASE_BLOB" ]] || die "fetched layer does not match $BASE_BLOB"
    mv "$BASE_LAYER_FILE.tmp" "$BASE_LAYER_FILE"
    echo "$(gzip -dc "$BASE_LAYER_FILE" | wc -c) $(gzip -dc "$BASE_LAYER_FILE" | tar -tf - | wc -l)" >"$BASE_LAYER_FILE.info"
  fi
  read -r BASE_UNCOMP BASE_ENTRIES <"$BASE_LAYER_FILE.info"
  say "base image: top layer ${BASE_BLOB:0:19} $BASE_BLOB_SIZE B gzip, $BASE_UNCOMP B uncompressed, $BASE_ENTRIES entries"
}

# ------------------------------------------------------- output timestamps --
# stamp: prefix each line with the wall clock (seconds.micro, bash's
# EPOCHREALTIME, no fork per line).
stamp() {
  local l
  while IFS= read -r l || [[ -n $l ]]; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done
}
# t_ms SECONDS.FRACTION -> integer milliseconds since the epoch.
t_ms() { awk -v t="$1" 'BEGIN { printf "%d\n", t * 1000 }'; }
# ts_of STAMPED_LOG ERE: the stamp of the first line whose text matches ERE.
ts_of() { awk -v re="$2" '{ t = $1; sub(/^[^ ]* /, "") } $0 ~ re { print t; exit }' "$1"; }
# file_times FILE -> "BIRTH MTIME ATIME" (seconds with nanoseconds)
file_times() { stat -c '%.9W %.9Y %.9X' "$1"; }
# ms_between A B: B - A in ms (both seconds.fraction).
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d\n", (b - a) * 1000 }'; }
# ts_done STAMPED_LOG KIND: the stamp of the DONE line of rbuild's step "#N KIND ...".
ts_done() {
  awk -v kind="$2" 'id == "" && $3 == kind { id = $2; next }
    id != "" && $2 == id && $3 == "DONE" { print $1; exit }' "$1"
}

# ---------------------------------------------------- containerd cleanup --
# snapshots_rm_all NS [PREFIX]: every snapshot of NS (whose key starts with
# PREFIX), children before parents.
snapshots_rm_all() {
  local ns=$1 prefix=${2:-} keys pass
  for ((pass = 0; pass < 3; pass++)); do
    keys=$(ctr -n "$ns" snapshots ls 2>/dev/null | awk -v pre="$prefix" '
      NR > 1 { parent[$1] = ($3 == "" ? "" : $2); keys[NR] = $1 }
      END {
        for (i in keys) {
          k = keys[i]; d = 0
          if (pre != "" && index(k, pre) != 1) continue
          for (p = parent[k]; p != "" && d < 10000; p = parent[p]) d++
          print d, k
        }
      }' | sort -rn | awk '{print $2}')
    [[ -z $keys ]] && break
    # shellcheck disable=SC2086
    ctr -n "$ns" snapshots rm $keys >/dev/null 2>&1 || true
  done
}

# ns_purge NS: remove everything in containerd namespace NS (containers,
# leases, snapshots, images, content), let the garbage collector delete the
# blobs and snapshot directories, and remove the namespace.
ns_purge() {
  local ns=$1 c i
  ctr namespaces ls -q 2>/dev/null | grep -qx "$ns" || return 0
  for c in $(ctr -n "$ns" containers ls -q 2>/dev/null); do
    ctr -n "$ns" tasks rm -f "$c" >/dev/null 2>&1 || true
    ctr -n "$ns" containers rm "$c" >/dev/null 2>&1 || true
  done
  # shellcheck disable=SC2046
  ctr -n "$ns" leases rm $(ctr -n "$ns" leases ls -q 2>/dev/null) >/dev/null 2>&1 || true
  snapshots_rm_all "$ns"
  # shellcheck disable=SC2046
  ctr -n "$ns" content rm $(ctr -n "$ns" content ls -q 2>/dev/null) >/dev/null 2>&1 || true
  # --sync: runs the garbage collector and waits for it.
  # shellcheck disable=SC2046
  ctr -n "$ns" images rm --sync $(ctr -n "$ns" images ls -q 2>/dev/null) >/dev/null 2>&1 || true
  for ((i = 0; i < 100; i++)); do
    ctr namespaces rm "$ns" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  say "WARNING: could not remove namespace $ns: $(ctr namespaces rm "$ns" 2>&1 | tail -n 1)"
  return 1
}

# blob_holders DIGEST: the namespaces whose content store has DIGEST.
blob_holders() {
  local ns
  for ns in $(ctr namespaces ls -q 2>/dev/null); do
    if ctr -n "$ns" content ls -q 2>/dev/null | grep -qx "$1"; then echo "$ns"; fi
  done
}

# assert_blob_gone: no namespace has the base's big layer, and containerd's
# content store has no file for it (the garbage collector ran); waits up to
# 20 s for the collector.
# gc_now: runs containerd's garbage collector and waits for it (a lease
# created and removed with --sync, in a namespace of its own).
gc_now() {
  local id
  id=$(ctr -n rbuild-bench-gc leases create 2>/dev/null) &&
    ctr -n rbuild-bench-gc leases rm --sync "$id" >/dev/null 2>&1
  ctr namespaces rm rbuild-bench-gc >/dev/null 2>&1 || true
}
assert_blob_gone() {
  local holders i
  holders=$(blob_holders "$BASE_BLOB" | tr '\n' ' ')
  if [[ -n $holders && -z $(tr ' ' '\n' <<<"$holders" | grep -vxE "$PULL_RB_NS|$PULL_CTR_NS|$PUB_NS|") ]]; then
    # Only the bench's own namespaces (left from an interrupted run, or a
    # purge that did not take at once): purge them again.
    say "pull: namespace(s) $holders still hold the base layer; purging again"
    pull_purge_all
    pub_purge
    holders=$(blob_holders "$BASE_BLOB" | tr '\n' ' ')
  fi
  [[ -z $holders ]] || die "containerd namespace(s) $holders hold $BASE_BLOB (the base image's layer): a pull would not download it. Remove it there (ctr -n NS images rm --sync $BASE_IMAGE; ctr -n NS content rm $BASE_BLOB)."
  for ((i = 0; i < 100; i++)); do
    [[ -e $CTD_BLOBS/${BASE_BLOB#sha256:} ]] || return 0
    # containerd may wait a while before collecting what a namespace's
    # removal released; a lease removed with --sync collects it now.
    if ((i % 10 == 0)); then gc_now; fi
    sleep 0.2
  done
  die "$CTD_BLOBS/${BASE_BLOB#sha256:} is still there although no namespace references it (containerd's garbage collector did not remove it)"
}

# docker_rm_bench_images: every image of the base's or the publish
# repositories, dangling ones and the build cache (which can hold the
# base's layers too).
docker_rm_bench_images() {
  local ids
  ids=$("$DOCKER" images --format '{{.Repository}} {{.ID}}' 2>/dev/null |
    awk -v a="${BASE_IMAGE%:*}" -v b="$PUB_REPO/" -v c="$PUB_UP_REPO/" \
      '$1 == a || index($1, b) == 1 || index($1, c) == 1 { print $2 }' | sort -u)
  # shellcheck disable=SC2086
  [[ -z $ids ]] || "$DOCKER" rmi -f $ids >/dev/null 2>&1 || true
  "$DOCKER" builder prune -af >/dev/null 2>&1 || true
  "$DOCKER" image prune -f >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- publish --
pub_purge() {
  rm -rf "$PUB_ROOT"
  ns_purge "$PUB_NS"
}

# pub_rb_run NONCE ADDRESS LOG: progress (stderr) goes to LOG.ts with stamps
# and to LOG without; stdout to LOG.out.
pub_rb_run() {
  local rc=0
  BENCH_NONCE=$1 RBUILD_ROOT=$PUB_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$PUB_NS \
    "$RBUILD" run "$PUB_PIPELINE" -- "$BASE_IMAGE" "$2" 2>&1 >"$3.out" | stamp >"$3.ts" || rc=$?
  cut -d' ' -f2- "$3.ts" >"$3"
  return "$rc"
}

# image_version ADDRESS@DIGEST: the /app/version in the image's top layer, from the registry.
image_version() {
  local ref=$1 repo digest manifest top
  repo=${ref#*/}
  repo=${repo%@*}
  repo=${repo%:*}
  digest=${ref##*@}
  manifest=$(reg_manifest "$repo" "$digest") || return 1
  top=$(jq -r '.layers[-1].digest' <<<"$manifest")
  reg_blob "$repo" "$top" | tar -xzOf - --wildcards '*app/version' 2>/dev/null
}

# pub_rb_check LOG ADDRESS NONCE NAME: the pushed image carries the nonce;
# records NAME_file (the write step's DONE), NAME_image (from that DONE line
# to the publish line: the new layer's diff and gzip, config, manifest),
# NAME_push (publish DONE) and, in NAME.what, what happened to each blob.
pub_rb_check() {
  local log=$1 addr=$2 nonce=$3 name=$4 ref file push got what
  ref=$(grep -m1 "^$addr@sha256:" "$log.out" || true)
  got=$(if [[ -n $ref ]]; then image_version "$ref" || true; fi)
  file=$(rb_step_ms "$log" write)
  push=$(rb_step_ms "$log" publish)
  if [[ -z $ref || $got != "$nonce" || ! $file =~ ^[0-9]+$ || ! $push =~ ^[0-9]+$ ]]; then
    cat "$log" "$log.out" >&2
    die "rbuild publish to $addr: expected $addr@sha256:… with /app/version '$nonce', a write step and a publish DONE; saw ref '$ref', version '$got', write '$file', publish '$push' (log: $log)"
  fi
  record "${name}_file" "$file"
  record "${name}_image" "$(ms_between "$(ts_done "$log.ts" write)" "$(ts_of "$log.ts" '^#[0-9]+ publish ')")"
  record "${name}_push" "$push"
  # "#3   sha256:690e446f6c99 1.1 MB mounted from the base image's repository";
  # layers in order, the config last.
  what=$(awk -v bb="${BASE_BUSYBOX_BLOB:7:12}" -v big="${BASE_BLOB:7:12}" '
    $1 ~ /^#[0-9]+$/ && $2 ~ /^sha256:/ {
      d = substr($2, 8, 12); how = $0
      sub(/^#[0-9]+ +sha256:[0-9a-f]+ [0-9.]+ MB /, "", how)
      if (how ~ /^mounted/) how = "mounted from the base repository"
      out[++k] = (d == bb ? "busybox layer" : d == big ? "200 MB layer" : "new layer") " " how
    }
    END {
      if (k) sub(/^new layer/, "config", out[k])
      for (i = 1; i <= k; i++) printf "%s%s", (i > 1 ? ", " : ""), out[i]
      print ""
    }' "$log")
  echo "$what" >>"$TIMES/$name.what"
}

pub_dk_build() { # address log
  "$DOCKER" build --progress=plain --build-arg "BASE=$BASE_IMAGE" -f "$PUB_DOCKERFILE" \
    -t "$1" "$PUB_CONTEXT" >"$2" 2>&1
}
pub_dk_push() { # address log
  local rc=0
  "$DOCKER" push "$1" 2>&1 | stamp >"$2.ts" || rc=$?
  cut -d' ' -f2- "$2.ts" >"$2"
  return "$rc"
}

# pub_dk_check BUILD_LOG PUSH_LOG ADDRESS NONCE NAME: COPY ran, the pushed
# image carries the nonce; records what docker did with each layer.
pub_dk_check() {
  local blog=$1 plog=$2 addr=$3 nonce=$4 name=$5 digest got copy what
  copy=$(bk_step "$blog" "$BK_COPY_RE")
  digest=$(sed -n 's/^.*: digest: \(sha256:[0-9a-f]*\) size: .*/\1/p' "$plog" | head -n 1)
  got=$(if [[ -n $digest ]]; then image_version "$addr@$digest" || true; fi)
  if [[ ! $copy =~ ^[0-9]+$ || -z $digest || $got != "$nonce" ]]; then
    cat "$blog" "$plog" >&2
    die "docker build + push to $addr: expected COPY to run and the pushed image to carry '$nonce'; saw COPY '$copy', digest '$digest', version '$got'"
  fi
  # Docker names layers by their short diff IDs; the base's are known. It
  # does not list the config.
  what=$(awk -v ids="$BASE_DIFF_IDS" -v base="$(base_repo)" '
    BEGIN { n = split(ids, b, " "); name[b[1]] = "busybox layer"; name[b[n]] = "200 MB layer" }
    length($1) == 13 && $1 ~ /^[0-9a-f]+:$/ {
      id = substr($1, 1, 12); l = $0; sub(/^[^ ]* /, "", l)
      if (l ~ /^Mounted from /) {
        l = (substr(l, 14) == base ? "mounted from the base repository" : "mounted from an earlier bench-publish repository")
      } else if (l == "Layer already exists") l = "already present"
      else if (l == "Pushed") l = "uploaded"
      else next
      n = (id in name) ? name[id] : "new layer"
      rank = (n == "busybox layer" ? 1 : n == "200 MB layer" ? 2 : 3)
      out[rank, ++k[rank]] = n " " l
    }
    END {  # in a fixed order: docker pushes layers concurrently
      for (r = 1; r <= 3; r++) for (i = 1; i <= k[r]; i++) printf "%s%s", (m++ ? ", " : ""), out[r, i]
      print ""
    }' "$plog")
  echo "$what" >>"$TIMES/$name.what"
  PUB_DK_DIGEST=$digest
}

# pub_addr ENGINE MODE ROUND: where a push goes. first and re: a new
# repository each round (re-push: the same one again); up: one under the
# registry's other name.
pub_addr() {
  case $2 in
    up) echo "$PUB_UP_REPO/up-$1-${RUN_ID,,}-$3:1" ;;
    *) echo "$PUB_REPO/$1-${RUN_ID,,}-$3:1" ;;
  esac
}

# base_repo_of REGISTRY/REPO:TAG -> REPO
base_repo_of() { local r=${1#*/}; echo "${r%:*}"; }

# pub_unlink REPO@DIGEST: delete the links of the image's layers from its
# repository (the registry keeps the data). Docker remembers where it pushed
# a layer and mounts it from there next time; without the link, the mount
# fails and it uploads again.
pub_unlink() {
  local ref=$1 repo digest d
  repo=${ref#*/}
  repo=${repo%@*}
  repo=${repo%:*}
  digest=${ref##*@}
  for d in $(reg_manifest "$repo" "$digest" | jq -r '.layers[].digest'); do
    curl -sf -o /dev/null -X DELETE "$REG_URL/v2/$repo/blobs/$d" || say "WARNING: could not delete $repo's link to $d"
  done
}

# pub_rb_once MODE ROUND: MODE first (a new repository), re (the same one
# again) or up (nothing to mount).
pub_rb_once() {
  local mode=$1 i=$2 log=$LOG_DIR/publish-rbuild.log name=pub_rb_$1 nonce t0 t1 addr
  addr=$(pub_addr rb "$mode" "$i")
  nonce=$RUN_ID-$i-$mode
  settle
  t0=$(now_ns)
  pub_rb_run "$nonce" "$addr" "$log" || { cat "$log" >&2; die "rbuild publish ($mode) failed"; }
  t1=$(now_ns)
  record "$name" $(((t1 - t0) / 1000000))
  pub_rb_check "$log" "$addr" "$nonce" "$name"
  record "${name}_rest" $(($(last "$name") - $(last "${name}_file") - $(last "${name}_image") - $(last "${name}_push")))
  cp "$log" "$LOG_DIR/publish-rbuild-$mode.log"
}

pub_dk_once() {
  local mode=$1 i=$2 blog=$LOG_DIR/publish-docker-build.log plog=$LOG_DIR/publish-docker-push.log
  local name=pub_dk_$1 nonce t0 t1 t2 addr
  addr=$(pub_addr dk "$mode" "$i")
  nonce=$RUN_ID-$i-$mode
  echo "$nonce" >"$PUB_CONTEXT/version"
  settle
  t0=$(now_ns)
  pub_dk_build "$addr" "$blog" || { cat "$blog" >&2; die "docker build ($mode) failed"; }
  t1=$(now_ns)
  pub_dk_push "$addr" "$plog" || { cat "$plog" >&2; die "docker push ($mode) failed"; }
  t2=$(now_ns)
  record "$name" $(((t2 - t0) / 1000000))
  record "${name}_build" $(((t1 - t0) / 1000000))
  record "${name}_push" $(((t2 - t1) / 1000000))
  pub_dk_check "$blog" "$plog" "$addr" "$nonce" "$name"
  if [[ $mode == up ]]; then
    # What docker uploaded for the base's big layer (it compresses again).
    record pub_dk_up_bigsize "$(reg_manifest "$(base_repo_of "$addr")" "$PUB_DK_DIGEST" | jq '[.layers[].size] | max')"
    pub_unlink "$addr@$PUB_DK_DIGEST"
  fi
  cp "$blog" "$LOG_DIR/publish-docker-build-$mode.log"
  cp "$plog" "$LOG_DIR/publish-docker-push-$mode.log"
}

# pub_curl_up_once ROUND: the upload floor, the base's big layer blob
# uploaded with curl to a new repository in one request (POST, then PUT of
# the whole blob with its digest).
pub_curl_up_once() {
  local repo loc sep t0 t1 code
  repo=$(base_repo_of "$PUB_REPO/curl-${RUN_ID,,}-$1:1")
  settle
  t0=$(now_ns)
  loc=$(curl -sf -D - -o /dev/null -X POST "$REG_URL/v2/$repo/blobs/uploads/" |
    awk -F': ' 'tolower($1) == "location" { print $2 }' | tr -d '\r')
  [[ $loc == http* ]] || loc=$REG_URL$loc
  sep='?'
  [[ $loc == *\?* ]] && sep='&'
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/octet-stream' \
    --data-binary "@$BASE_LAYER_FILE" "$loc${sep}digest=$BASE_BLOB")
  t1=$(now_ns)
  [[ $code == 201 ]] || die "curl upload of $BASE_BLOB to $repo: HTTP $code"
  record pub_curl_up $(((t1 - t0) / 1000000))
}

bench_publish() {
  local i log=$LOG_DIR/publish-rbuild.log
  PUB_STARTED=1
  say "publish: emptying namespace $PUB_NS; warm-ups (compile the pipeline, pull $BASE_IMAGE into $PUB_NS and into dockerd)"
  pub_purge
  docker_rm_bench_images
  mkdir -p "$PUB_CONTEXT"
  pub_rb_run "warmup-$RUN_ID" "$PUB_REPO/warmup-rb-${RUN_ID,,}:1" "$log" ||
    { cat "$log" >&2; die "rbuild publish warm-up failed"; }
  "$DOCKER" pull "$BASE_IMAGE" >"$LOG_DIR/publish-docker-pull.log" 2>&1 ||
    { cat "$LOG_DIR/publish-docker-pull.log" >&2; die "docker pull $BASE_IMAGE failed"; }
  echo "warmup-$RUN_ID" >"$PUB_CONTEXT/version"
  pub_dk_build "$PUB_REPO/warmup-dk-${RUN_ID,,}:1" "$LOG_DIR/publish-docker-build.log" ||
    { cat "$LOG_DIR/publish-docker-build.log" >&2; die "docker build warm-up failed"; }
  pub_dk_push "$PUB_REPO/warmup-dk-${RUN_ID,,}:1" "$LOG_DIR/publish-docker-push.log" ||
    { cat "$LOG_DIR/publish-docker-push.log" >&2; die "docker push warm-up failed"; }
  # Each round: a first push to a new repository, then a re-push to it
  # with another nonce; the engines take turns going first.
  for ((i = 1; i <= PUB_REPS; i++)); do
    if ((i % 2)); then
      pub_rb_once first "$i"; pub_rb_once re "$i"
      pub_dk_once first "$i"; pub_dk_once re "$i"
    else
      pub_dk_once first "$i"; pub_dk_once re "$i"
      pub_rb_once first "$i"; pub_rb_once re "$i"
    fi
  done
  # Pushes with nothing to mount: every layer uploaded (docker compresses
  # its layers again for that; rbuild sends the blobs it pulled).
  cat "$BASE_LAYER_FILE" >/dev/null # page cache, for the curl floor
  for ((i = 1; i <= UP_REPS; i++)); do
    if ((i % 2)); then
      pub_rb_once up "$i"; pub_dk_once up "$i"
    else
      pub_dk_once up "$i"; pub_rb_once up "$i"
    fi
    pub_curl_up_once "$i"
  done
  say "publish, rbuild: first $(stats pub_rb_first) / re-push $(stats pub_rb_re) / all uploaded $(stats pub_rb_up) (median min max, ms)"
  say "publish, docker build + push: first $(stats pub_dk_first) / re-push $(stats pub_dk_re) / all uploaded $(stats pub_dk_up) (median min max, ms)"
  pub_purge
  docker_rm_bench_images
  PUB_STARTED=
}

# ------------------------------------------------------------------- pull --
pull_purge_all() {
  rm -rf "$PULL_ROOT" "$PULL_UNTAR"
  ns_purge "$PULL_RB_NS"
  ns_purge "$PULL_CTR_NS"
}

# pull_rb_once I: rbuild in a fresh namespace and root. Records the wall
# time and its parts: pull_rb_done (its pull DONE), _exec (the step),
# _before (process start to the blob's first byte in the content store),
# _dl (the blob's ingest: its file's birth to its last write; rbuild
# unpacks during it), _unpack (from then to the pull DONE line: the end of
# the unpack, diff ID check, commit, image record), _after
# (from the pull DONE line to exit: the step, the end of the run).
pull_rb_once() {
  local log=$LOG_DIR/pull-rbuild.log t0 t1 rc done_ms exec born written _read t_done
  assert_blob_gone
  rm -rf "$PULL_ROOT"
  settle
  rc=0
  t0=$EPOCHREALTIME
  RBUILD_ROOT=$PULL_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$PULL_RB_NS \
    "$RBUILD" run "$PULL_PIPELINE" -- "$BASE_IMAGE" 2>&1 >"$log.out" | stamp >"$log.ts" || rc=$?
  t1=$EPOCHREALTIME
  cut -d' ' -f2- "$log.ts" >"$log"
  [[ $rc -eq 0 ]] || { cat "$log" >&2; die "rbuild pull run failed"; }
  done_ms=$(rb_step_ms "$log" pull)
  exec=$(rb_step_ms "$log" exec)
  if ! grep -q "^#[0-9]* DONE in [0-9]* ms ($BASE_LAYERS of $BASE_LAYERS layers fetched" "$log" ||
    [[ ! $done_ms =~ ^[0-9]+$ || ! $exec =~ ^[0-9]+$ ]] || [[ $(cat "$log.out") != "exit code 0" ]]; then
    cat "$log" "$log.out" >&2
    die "rbuild pull: expected all $BASE_LAYERS layers fetched and the step to run (log: $log)"
  fi
  read -r born written _read < <(file_times "$CTD_BLOBS/${BASE_BLOB#sha256:}")
  t_done=$(ts_done "$log.ts" pull)
  record pull_rb "$(ms_between "$t0" "$t1")"
  record pull_rb_done "$done_ms"
  record pull_rb_exec "$exec"
  record pull_rb_before "$(ms_between "$t0" "$born")"
  record pull_rb_dl "$(ms_between "$born" "$written")"
  record pull_rb_unpack "$(ms_between "$written" "$t_done")"
  record pull_rb_after "$(ms_between "$t_done" "$t1")"
  cp "$log" "$LOG_DIR/pull-rbuild-last.log"
  rm -rf "$PULL_ROOT"
  ns_purge "$PULL_RB_NS"
}

# pull_ctr_once: `ctr images pull --plain-http` (fetch, then unpack) in a
# fresh namespace. _dl as for rbuild; _unpack is ctr's own "done: Xs".
pull_ctr_once() {
  local log=$LOG_DIR/pull-ctr.log t0 t1 rc unpack born written _read
  assert_blob_gone
  settle
  rc=0
  t0=$EPOCHREALTIME
  ctr -n "$PULL_CTR_NS" images pull --plain-http "$BASE_IMAGE" >"$log" 2>&1 || rc=$?
  t1=$EPOCHREALTIME
  [[ $rc -eq 0 ]] || { tail -n 20 "$log" >&2; die "ctr images pull failed"; }
  unpack=$(sed -n 's/^done: \([0-9.]*\)\(m\{0,1\}s\).*/\1 \2/p' "$log" | tail -n 1 |
    awk '{ printf "%d\n", ($2 == "ms" ? $1 : $1 * 1000) }')
  [[ $unpack =~ ^[0-9]+$ ]] || { tail -n 20 "$log" >&2; die "ctr images pull: no 'done:' line (log: $log)"; }
  read -r born written _read < <(file_times "$CTD_BLOBS/${BASE_BLOB#sha256:}")
  record pull_ctr "$(ms_between "$t0" "$t1")"
  record pull_ctr_before "$(ms_between "$t0" "$born")"
  record pull_ctr_dl "$(ms_between "$born" "$written")"
  record pull_ctr_unpack "$unpack"
  cp "$log" "$LOG_DIR/pull-ctr-last.log"
  ns_purge "$PULL_CTR_NS"
}

# pull_dk_once: `docker pull` into the private dockerd, which has no image
# with the base's layers (docker_rm_bench_images before). Download and
# extract from the stamps of its "Pulling fs layer", "Download complete"
# and "Pull complete" lines for the big layer.
pull_dk_once() {
  local log=$LOG_DIR/pull-docker.log t0 t1 rc id a b c
  id=${BASE_BLOB:7:12}
  docker_rm_bench_images
  settle
  rc=0
  t0=$EPOCHREALTIME
  "$DOCKER" pull "$BASE_IMAGE" 2>&1 | stamp >"$log.ts" || rc=$?
  t1=$EPOCHREALTIME
  cut -d' ' -f2- "$log.ts" >"$log"
  [[ $rc -eq 0 ]] || { cat "$log" >&2; die "docker pull failed"; }
  a=$(ts_of "$log.ts" "^$id: Pulling fs layer")
  b=$(ts_of "$log.ts" "^$id: Download complete")
  c=$(ts_of "$log.ts" "^$id: Pull complete")
  [[ -n $a && -n $b && -n $c ]] || { cat "$log" >&2; die "docker pull: expected the $id layer to be downloaded and extracted (log: $log)"; }
  record pull_dk "$(ms_between "$t0" "$t1")"
  record pull_dk_before "$(ms_between "$t0" "$a")"
  record pull_dk_dl "$(ms_between "$a" "$b")"
  record pull_dk_unpack "$(ms_between "$b" "$c")"
  record pull_dk_after "$(ms_between "$c" "$t1")"
  cp "$log" "$LOG_DIR/pull-docker-last.log"
  docker_rm_bench_images
}

# Floors, from the layer blob kept in BASE_DIR (page-cached): download it
# from the registry (curl to /dev/null), decompress it (gzip -dc), and
# decompress + extract it with tar onto the file system containerd uses.
pull_floors_once() {
  local t0 t1
  settle
  t0=$(now_ns)
  curl -sfL -o /dev/null "$REG_URL/v2/$(base_repo)/blobs/$BASE_BLOB" || die "curl of $BASE_BLOB failed"
  t1=$(now_ns)
  record pull_curl $(((t1 - t0) / 1000000))
  t0=$(now_ns)
  gzip -dc "$BASE_LAYER_FILE" >/dev/null
  t1=$(now_ns)
  record pull_gzip $(((t1 - t0) / 1000000))
  rm -rf "$PULL_UNTAR"
  mkdir -p "$PULL_UNTAR"
  settle
  t0=$(now_ns)
  gzip -dc "$BASE_LAYER_FILE" | tar -xf - -C "$PULL_UNTAR"
  t1=$(now_ns)
  record pull_untar $(((t1 - t0) / 1000000))
  rm -rf "$PULL_UNTAR"
}

bench_pull() {
  local i log=$LOG_DIR/pull-rbuild.log
  PULL_STARTED=1
  say "pull: emptying namespaces $PULL_RB_NS $PULL_CTR_NS $PUB_NS and dockerd of the base image; warm-up (compiles the pipeline)"
  pull_purge_all
  pub_purge
  docker_rm_bench_images
  cat "$BASE_LAYER_FILE" >/dev/null # page cache, for the floors
  # Warm-up: compile the pipeline (its pull is not timed).
  assert_blob_gone
  RBUILD_ROOT=$PULL_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$PULL_RB_NS \
    "$RBUILD" run "$PULL_PIPELINE" -- "$BASE_IMAGE" >"$log.out" 2>"$log" ||
    { cat "$log" >&2; die "rbuild pull warm-up failed"; }
  pull_purge_all
  # Rounds: the three engines in turns (a different one goes first each
  # round), then the floors.
  local -a order=(rb ctr dk)
  for ((i = 1; i <= PULL_REPS; i++)); do
    local k e
    for ((k = 0; k < 3; k++)); do
      e=${order[$(((i - 1 + k) % 3))]}
      case $e in
        rb) pull_rb_once ;;
        ctr) pull_ctr_once ;;
        dk) pull_dk_once ;;
      esac
    done
    pull_floors_once
  done
  say "pull: rbuild $(stats pull_rb) (its pull DONE $(stats pull_rb_done)) / ctr $(stats pull_ctr) / docker $(stats pull_dk) / gzip -dc $(stats pull_gzip) (median min max, ms)"
  pull_purge_all
  PULL_STARTED=
}

# ------------------------------------------------- shared by the new four --
# rb_counts LOG -> "RUN CACHED", from rbuild's closing line
# ("rbuild: 4 steps run, 0 cached (0% hits), in 1.32 s").
rb_counts() { sed -n 's/^rbuild: \([0-9]*\) steps run, \([0-9]*\) cached .*/\1 \2/p' "$1" | tail -n 1; }

# rb_forget NS ROOT: rbuild's state root (index, cache volumes, stat cache)
# and every snapshot its steps committed in NS; the images' snapshots stay,
# so nothing is pulled again.
rb_forget() {
  rm -rf "$2"
  snapshots_rm_all "$1" rbuild-
}

# bk_runs LOG -> "RAN CACHED": how many RUN vertices of a --progress=plain
# build ran (have a DONE line) and how many were CACHED.
bk_runs() {
  awk '
    /^#[0-9]+ \[.*\] RUN / { run[$1] = 1 }
    $2 == "DONE" && ($1 in run) { ran++ }
    $2 == "CACHED" && ($1 in run) { cached++ }
    END { print ran + 0, cached + 0 }' "$1"
}

# rb_step_re LOG ERE: the DONE time (ms) of the first rbuild step whose
# progress line ("#N …") matches ERE, or CACHED; empty if absent.
rb_step_re() {
  awk -v re="$2" '
    id == "" && $0 ~ re && $1 ~ /^#[0-9]+$/ { if ($NF == "CACHED") { print "CACHED"; exit } id = $1; next }
    id != "" && $1 == id && $2 == "DONE" { print $4; exit }' "$1"
}

# --------------------------------------------------------------- parallel --
# Four independent `sleep 1` steps; each run is cold (a new nonce in every
# step's command). The engines take turns going first.
par_rb_run() { # nonce log
  BENCH_NONCE=$1 RBUILD_ROOT=$PAR_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$PAR_NS \
    "$RBUILD" run "$PAR_PIPELINE" >"$2.out" 2>"$2"
}

par_want_out() { # nonce
  local i
  for ((i = 1; i <= PAR_BRANCHES; i++)); do echo "branch $i $1"; done
}

# par_rb_check LOG NONCE: all four steps ran (none cached) and printed their
# line; records par_rb_step (each step's DONE), par_rb_steps (their sum) and
# par_rb_inflight (the most steps started and not yet DONE at once, from the
# order of the progress lines).
par_rb_check() {
  local log=$1 nonce=$2 run cached sum inflight ms
  read -r run cached < <(rb_counts "$log") || true
  if [[ ${run:-x} != "$PAR_BRANCHES" || ${cached:-x} != 0 || $(cat "$log.out") != "$(par_want_out "$nonce")" ]]; then
    cat "$log" "$log.out" >&2
    die "rbuild parallel: expected $PAR_BRANCHES steps run, 0 cached and a line from each branch; saw '$run' run, '$cached' cached (log: $log)"
  fi
  read -r sum inflight < <(awk '
    $2 == "exec" { ex[$1] = 1; n++; if (n > max) max = n; next }
    $2 == "DONE" && ($1 in ex) { n--; s += $4 }
    END { print s + 0, max + 0 }' "$log")
  while read -r ms; do
    record par_rb_step "$ms"
  done < <(awk '$2 == "exec" { ex[$1] = 1 } $2 == "DONE" && ($1 in ex) { print $4 }' "$log")
  record par_rb_steps "$sum"
  record par_rb_inflight "$inflight"
}

par_bk_build() { # nonce log
  "$DOCKER" build --progress=plain --network=none --build-arg "NONCE=$1" \
    -t bench-parallel:latest - <"$PAR_DOCKERFILE" >"$2" 2>&1
}

# par_bk_check LOG NONCE: all four RUNs ran, with the nonce; records
# par_bk_steps (the sum of their DONE times; BuildKit prints 0.1 s).
par_bk_check() {
  local log=$1 nonce=$2 ran cached with_nonce sum
  read -r ran cached < <(bk_runs "$log")
  with_nonce=$(grep -E "^#[0-9]+ \[b[0-9]+ [0-9]+/[0-9]+\] RUN .* $nonce " "$log" | awk '{print $1}' | sort -u | wc -l)
  if [[ $ran -ne $PAR_BRANCHES || $cached -ne 0 || $with_nonce -ne $PAR_BRANCHES ]]; then
    cat "$log" >&2
    die "docker build parallel: expected $PAR_BRANCHES RUN steps to run with nonce $nonce; saw $ran run, $cached CACHED, $with_nonce with the nonce (log: $log)"
  fi
  sum=$(awk '
    /^#[0-9]+ \[.*\] RUN / { run[$1] = 1 }
    $2 == "DONE" && ($1 in run) { s = $3; sub(/s$/, "", s); t += s }
    END { printf "%d\n", t * 1000 }' "$log")
  record par_bk_steps "$sum"
}

par_rb_once() { # round
  local log=$LOG_DIR/parallel-rbuild.log nonce=$RUN_ID-$1
  timed par_rb "rbuild parallel run" "$log" par_rb_run "$nonce" "$log"
  par_rb_check "$log" "$nonce"
  cp "$log" "$LOG_DIR/parallel-rbuild-last.log"
}

par_bk_once() { # round
  local log=$LOG_DIR/parallel-buildkit.log nonce=$RUN_ID-$1
  timed par_bk "docker build parallel" "$log" par_bk_build "$nonce" "$log"
  par_bk_check "$log" "$nonce"
  cp "$log" "$LOG_DIR/parallel-buildkit-last.log"
}

bench_parallel() {
  local i log=$LOG_DIR/parallel-rbuild.log
  say "parallel: emptying namespace $PAR_NS; warm-ups (compile the pipeline, pull the image into $PAR_NS and into dockerd)"
  rb_reset "$PAR_NS" "$PAR_ROOT"
  par_rb_run "warmup-$RUN_ID" "$log" || { cat "$log" >&2; die "rbuild parallel warm-up failed"; }
  par_rb_check "$log" "warmup-$RUN_ID"
  par_bk_build "warmup-$RUN_ID" "$LOG_DIR/parallel-buildkit.log" ||
    { cat "$LOG_DIR/parallel-buildkit.log" >&2; die "docker build parallel warm-up failed"; }
  : >"$TIMES/par_rb_step"
  : >"$TIMES/par_rb_steps"
  : >"$TIMES/par_rb_inflight"
  for ((i = 1; i <= REPS; i++)); do
    if ((i % 2)); then
      par_rb_once "$i"
      par_bk_once "$i"
    else
      par_bk_once "$i"
      par_rb_once "$i"
    fi
  done
  say "parallel: rbuild $(stats par_rb) / BuildKit $(stats par_bk) (median min max, ms; ideal $PAR_IDEAL_MS)"
  rb_reset "$PAR_NS" "$PAR_ROOT"
  "$DOCKER" rmi -f bench-parallel:latest >/dev/null 2>&1 || true
  "$DOCKER" builder prune -af >/dev/null 2>&1 || true
  "$DOCKER" image prune -f >/dev/null 2>&1 || true
}

# ------------------------------------------------------------------ scale --
# A chain of N trivial steps for each N of SC_STEPS: SC_COLD_REPS cold runs
# (a new nonce: all N steps run), then REPS fully cached ones. BuildKit the
# same for N = SC_BK_N, from a generated Dockerfile of N RUNs.
sc_rb_run() { # n nonce log
  BENCH_NONCE=$2 RBUILD_ROOT=$SC_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$SC_NS \
    "$RBUILD" run "$SC_PIPELINE" -- "$1" >"$3.out" 2>"$3"
}

# sc_rb_check LOG N NONCE cold|cached
sc_rb_check() {
  local log=$1 n=$2 nonce=$3 mode=$4 run cached want_run=$2 want_cached=0
  [[ $mode == cached ]] && want_run=0 want_cached=$n
  read -r run cached < <(rb_counts "$log") || true
  if [[ ${run:-x} != "$want_run" || ${cached:-x} != "$want_cached" ]] ||
    [[ $(cat "$log.out") != "$(printf 'f%s %s\nnonce %s' "$n" "$n" "$nonce")" ]]; then
    tail -n 20 "$log" >&2
    cat "$log.out" >&2
    die "rbuild scale N=$n ($mode): expected $want_run steps run and $want_cached cached, /f$n and the nonce printed; saw '$run' run, '$cached' cached (log: $log)"
  fi
}

# sc_dockerfile N: the Dockerfile of N chained RUNs (the pipeline's steps).
sc_dockerfile() {
  local n=$1 f=$SC_DIR/scale-$1.Dockerfile i
  mkdir -p "$SC_DIR"
  {
    echo "# Generated by bench/run.sh (scenario scale): $n chained RUN steps."
    echo "FROM $IMAGE"
    echo "ARG NONCE="
    echo "RUN echo \$NONCE > /nonce && echo 1 > /f1"
    for ((i = 2; i <= n; i++)); do echo "RUN echo $i > /f$i"; done
  } >"$f"
  echo "$f"
}

sc_bk_build() { # dockerfile nonce log
  "$DOCKER" build --progress=plain --network=none --build-arg "NONCE=$2" \
    -t bench-scale:latest - <"$1" >"$3" 2>&1
}

# sc_bk_check LOG N cold|cached
sc_bk_check() {
  local log=$1 n=$2 mode=$3 ran cached want_ran=$2 want_cached=0
  [[ $mode == cached ]] && want_ran=0 want_cached=$n
  read -r ran cached < <(bk_runs "$log")
  if [[ $ran -ne $want_ran || $cached -ne $want_cached ]]; then
    tail -n 40 "$log" >&2
    die "docker build scale N=$n ($mode): expected $want_ran RUN steps to run and $want_cached CACHED; saw $ran and $cached (log: $log)"
  fi
}

# sc_once ENGINE N MODE NONCE: one timed run, recorded as sc_ENGINE_MODE_N.
sc_once() {
  local e=$1 n=$2 mode=$3 nonce=$4 log t0 t1 rc=0
  log=$LOG_DIR/scale-$e.log
  t0=$(now_ns)
  if [[ $e == rb ]]; then
    sc_rb_run "$n" "$nonce" "$log" || rc=$?
  else
    sc_bk_build "$SC_DIR/scale-$n.Dockerfile" "$nonce" "$log" || rc=$?
  fi
  t1=$(now_ns)
  [[ $rc -eq 0 ]] || { tail -n 40 "$log" >&2; die "scale N=$n ($e, $mode) failed (log: $log)"; }
  if [[ $e == rb ]]; then sc_rb_check "$log" "$n" "$nonce" "$mode"; else sc_bk_check "$log" "$n" "$mode"; fi
  record "sc_${e}_${mode}_$n" $(((t1 - t0) / 1000000))
  cp "$log" "$LOG_DIR/scale-$e-$mode-$n.log"
}

bench_scale() {
  local n i nonce log=$LOG_DIR/scale-rb.log
  say "scale: emptying namespace $SC_NS; warm-up (compiles the pipeline, pulls the image)"
  rb_reset "$SC_NS" "$SC_ROOT"
  sc_rb_run 1 "warmup-$RUN_ID" "$log" || { cat "$log" >&2; die "rbuild scale warm-up failed"; }
  sc_rb_check "$log" 1 "warmup-$RUN_ID" cold
  for n in $SC_STEPS; do
    say "scale: N=$n, $SC_COLD_REPS cold run(s) and $REPS cached$([[ $n == "$SC_BK_N" ]] && echo ", each engine")"
    if [[ $n == "$SC_BK_N" ]]; then
      sc_dockerfile "$n" >/dev/null
      sc_bk_build "$SC_DIR/scale-$n.Dockerfile" "warmup-$RUN_ID" "$LOG_DIR/scale-bk.log" ||
        { tail -n 40 "$LOG_DIR/scale-bk.log" >&2; die "docker build scale warm-up failed"; }
    fi
    for ((i = 1; i <= SC_COLD_REPS; i++)); do
      nonce=$RUN_ID-$n-$i
      sc_once rb "$n" cold "$nonce"
      if [[ $n == "$SC_BK_N" ]]; then sc_once bk "$n" cold "$nonce"; fi
    done
    for ((i = 1; i <= REPS; i++)); do
      if [[ $n == "$SC_BK_N" ]] && ! ((i % 2)); then
        sc_once bk "$n" cached "$nonce"
        sc_once rb "$n" cached "$nonce"
      else
        sc_once rb "$n" cached "$nonce"
        if [[ $n == "$SC_BK_N" ]]; then sc_once bk "$n" cached "$nonce"; fi
      fi
    done
    say "scale N=$n: rbuild cold $(stats "sc_rb_cold_$n") / cached $(stats "sc_rb_cached_$n") (median min max, ms)"
  done
  say "scale: emptying namespace $SC_NS"
  rb_reset "$SC_NS" "$SC_ROOT"
  if [[ $SC_BK_N != 0 ]]; then
    "$DOCKER" rmi -f bench-scale:latest >/dev/null 2>&1 || true
    "$DOCKER" builder prune -af >/dev/null 2>&1 || true
    "$DOCKER" image prune -f >/dev/null 2>&1 || true
  fi
}

# --------------------------------------------------------------- rustdeps --
# examples/rust-deps (manifests + stub: dependencies; sources: the crate;
# then test, clippy and the program at once) on a copy of
# fixtures/rust-project, beside rust_deps.Dockerfile with BuildKit. Modes:
# cold (rbuild: new state root, so no index and empty cache volumes, and no
# step snapshots; BuildKit: `docker builder prune -af`, which drops its
# cache mounts too; both keep the Rust image), cached (nothing changed),
# changed (one line of src/main.rs, different every time).

# rd_deps: the project's dependency crates (Cargo.lock's packages but itself).
rd_deps() {
  local self
  self=$(sed -n 's/^name = "\(.*\)"/\1/p' "$RD_FIXTURE/Cargo.toml" | head -n 1)
  sed -n 's/^name = "\(.*\)"/\1/p' "$RD_FIXTURE/Cargo.lock" | grep -vx "$self" | tr '\n' ' '
}
rd_self() { sed -n 's/^name = "\(.*\)"/\1/p' "$RD_FIXTURE/Cargo.toml" | head -n 1; }

# rd_edit GREETING: the one-line change (src/main.rs's GREETING constant).
rd_edit() {
  sed -i "s/^const GREETING: &str = \".*\";\$/const GREETING: \&str = \"$1\";/" "$RD_PROJECT/src/main.rs"
  grep -q "^const GREETING: &str = \"$1\";\$" "$RD_PROJECT/src/main.rs" ||
    die "could not edit GREETING in $RD_PROJECT/src/main.rs"
}

rd_rb_run() { # log
  local ca=()
  [[ -f $RD_CA ]] && ca=(--ca-cert "$RD_CA")
  RBUILD_ROOT=$RD_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$RD_NS RBUILD_RUST_IMAGE=$RD_IMAGE \
    "$RBUILD" run "${ca[@]}" "$RD_PIPELINE" -- "$RD_PROJECT" >"$1.out" 2>"$1"
}

RD_RB_DEPS_RE='^#[0-9]+ exec cargo build --release --locked'
RD_RB_BUILD_RE='^#[0-9]+ exec sh -c .touch src/main.rs'
RD_BK_DEPS_RE='^\[dependencies [0-9]+/[0-9]+\] RUN .*cargo build'
RD_BK_BUILD_RE='^\[built [0-9]+/[0-9]+\] RUN '

# rd_compiled LOG: the dependency crates the log shows compiled, checked
# (clippy) or downloaded, space-separated ("" when none).
rd_compiled() {
  local d out=
  for d in $RD_DEPS; do
    if grep -qE "(Compiling|Checking|Downloaded) $d v" "$1"; then out+="$d "; fi
  done
  echo "$out"
}

# rd_check ENGINE LOG MODE GREETING NAME: what every mode must show (in
# rbuild's progress and output, or BuildKit's --progress=plain log):
# the program printed GREETING and the tests passed (cold, changed); cold:
# every step ran, every dependency was downloaded and compiled; cached:
# no step ran; changed: the dependencies step was CACHED, no dependency
# was compiled, downloaded or checked, the project's crate was compiled.
# Records NAME_deps and NAME_build (the two cargo build steps' times).
rd_check() {
  local e=$1 log=$2 mode=$3 greeting=$4 name=$5 text run cached deps build compiled ok=1 why=
  if [[ $e == rb ]]; then
    text=$log.out
    read -r run cached < <(rb_counts "$log") || true
    deps=$(rb_step_re "$log" "$RD_RB_DEPS_RE")
    build=$(rb_step_re "$log" "$RD_RB_BUILD_RE")
  else
    text=$log
    read -r run cached < <(bk_runs "$log")
    deps=$(bk_step "$log" "$RD_BK_DEPS_RE")
    build=$(bk_step "$log" "$RD_BK_BUILD_RE")
  fi
  compiled=$(rd_compiled "$log")
  case $mode in
    cold)
      [[ ${cached:-x} == 0 && ${run:-0} -gt 0 ]] || { ok=0; why+="steps: $run run, $cached cached; "; }
      [[ $compiled == "$RD_DEPS" ]] || { ok=0; why+="dependencies downloaded/compiled: '$compiled'; "; }
      local d
      for d in $RD_DEPS; do
        grep -qE "Downloaded $d v" "$log" || { ok=0; why+="$d not downloaded; "; }
        grep -qE "Compiling $d v" "$log" || { ok=0; why+="$d not compiled; "; }
      done
      ;;
    cached)
      [[ ${run:-x} == 0 ]] || { ok=0; why+="$run steps ran; "; }
      ;;
    changed)
      [[ $deps == CACHED ]] || { ok=0; why+="dependencies step '$deps'; "; }
      [[ -z $compiled ]] || { ok=0; why+="dependencies compiled again: $compiled; "; }
      grep -qE "Compiling $RD_SELF v" "$log" "$text" || { ok=0; why+="$RD_SELF not compiled; "; }
      ;;
  esac
  if [[ $mode != cached ]]; then
    grep -qF "$greeting (" "$text" || { ok=0; why+="no '$greeting' from the program; "; }
    grep -qF "test result: ok." "$text" || { ok=0; why+="no 'test result: ok.'; "; }
  fi
  if [[ $ok -ne 1 ]]; then
    cat "$log" >&2
    [[ $e == rb ]] && cat "$log.out" >&2
    die "rustdeps ($([[ $e == rb ]] && echo rbuild || echo BuildKit), $mode): ${why%; } (log: $log)"
  fi
  if [[ $deps =~ ^[0-9]+$ ]]; then record "${name}_deps" "$deps"; fi
  if [[ $build =~ ^[0-9]+$ ]]; then record "${name}_build" "$build"; fi
}

rd_bk_build() { # log
  local -a secret=()
  [[ -f $RD_CA ]] && secret=(--secret "id=ca,src=$RD_CA")
  "$DOCKER" build --progress=plain --network=host "${secret[@]}" \
    -f "$RD_DOCKERFILE" -t "$RD_TAG" "$RD_PROJECT" >"$1" 2>&1
}

# rd_once ENGINE MODE GREETING: one timed build (the caller edits the
# project for "changed"); cold forgets that engine's caches first.
rd_once() {
  local e=$1 mode=$2 greeting=$3 name=rd_$1_$2 log
  log=$LOG_DIR/rustdeps-$e.log
  if [[ $mode == cold ]]; then
    if [[ $e == rb ]]; then
      rb_forget "$RD_NS" "$RD_ROOT"
    else
      "$DOCKER" builder prune -af >/dev/null 2>&1 || die "docker builder prune -af failed"
    fi
  fi
  settle
  local build=rd_bk_build
  [[ $e == rb ]] && build=rd_rb_run
  timed "$name" "rustdeps ($e, $mode)" "$log" "$build" "$log"
  rd_check "$e" "$log" "$mode" "$greeting" "$name"
  cp "$log" "$LOG_DIR/rustdeps-$e-$mode.log"
  if [[ $e == rb ]]; then cp "$log.out" "$LOG_DIR/rustdeps-$e-$mode.log.out"; fi
}

# rd_both MODE GREETING ROUND: one build of each engine, taking turns going first.
rd_both() {
  if (($3 % 2)); then
    rd_once rb "$1" "$2"
    rd_once bk "$1" "$2"
  else
    rd_once bk "$1" "$2"
    rd_once rb "$1" "$2"
  fi
}

bench_rustdeps() {
  local i greeting log=$LOG_DIR/rustdeps-rb.log
  reg_manifest rust 1 >/dev/null || die "$RD_IMAGE is not in the registry: run 'make setup' (fixtures/setup.sh builds it)"
  RD_DEPS=$(rd_deps)
  RD_SELF=$(rd_self)
  [[ -n $RD_DEPS && -n $RD_SELF ]] || die "no dependencies or package name found in $RD_FIXTURE"
  say "rustdeps: project $RD_PROJECT (a copy of $RD_FIXTURE; dependencies: $RD_DEPS)"
  rm -rf "$RD_PROJECT"
  mkdir -p "$RD_PROJECT"
  cp -r "$RD_FIXTURE/." "$RD_PROJECT/"
  rm -rf "$RD_PROJECT/target"
  say "rustdeps: warm-ups (compile the pipeline, $RD_IMAGE into $RD_NS and into dockerd: minutes the first time)"
  rb_forget "$RD_NS" "$RD_ROOT"
  rd_rb_run "$log" || { cat "$log" >&2; die "rbuild rustdeps warm-up failed"; }
  "$DOCKER" pull "$RD_IMAGE" >"$LOG_DIR/rustdeps-docker-pull.log" 2>&1 ||
    { cat "$LOG_DIR/rustdeps-docker-pull.log" >&2; die "docker pull $RD_IMAGE failed"; }

  for ((i = 1; i <= RD_COLD_REPS; i++)); do rd_both cold "$RD_GREETING0" "$i"; done
  for ((i = 1; i <= RD_REPS; i++)); do rd_both cached "$RD_GREETING0" "$i"; done
  for ((i = 1; i <= RD_REPS; i++)); do
    greeting="hello after edit $i"
    rd_edit "$greeting"
    rd_both changed "$greeting" "$i"
  done
  say "rustdeps, rbuild: cold $(stats rd_rb_cold) / cached $(stats rd_rb_cached) / one line changed $(stats rd_rb_changed) (median min max, ms)"
  say "rustdeps, BuildKit: cold $(stats rd_bk_cold) / cached $(stats rd_bk_cached) / one line changed $(stats rd_bk_changed) (median min max, ms)"
  rb_forget "$RD_NS" "$RD_ROOT"
  "$DOCKER" rmi -f "$RD_TAG" >/dev/null 2>&1 || true
  "$DOCKER" builder prune -af >/dev/null 2>&1 || true
  "$DOCKER" image prune -f >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- compile --
# `rbuild run` of a one-step pipeline whose step is cached, so the time is
# the pipeline's compilation: (a) first compile with a new cache dir, (b)
# after a one-line edit, (c) unchanged; beside bare `cargo build` of the
# same generated crate (same Cargo.toml and Cargo.lock): with a new target
# dir, after the same edit, and with nothing to do.

# cp_rb_run LOG: progress and cargo's messages to LOG (LOG.ts with stamps).
cp_rb_run() {
  local rc=0
  RBUILD_ROOT=$CP_ROOT RBUILD_CACHE_DIR=$CP_CACHE RBUILD_NAMESPACE=$CP_NS \
    "$RBUILD" run "$CP_FILE" 2>&1 >"$1.out" | stamp >"$1.ts" || rc=$?
  cut -d' ' -f2- "$1.ts" >"$1"
  return "$rc"
}

# cp_edit TAG: the one-line edit (the EDIT constant the pipeline prints).
cp_edit() {
  sed -i "s/^const EDIT: &str = \".*\";\$/const EDIT: \&str = \"$1\";/" "$CP_FILE"
  grep -q "^const EDIT: &str = \"$1\";\$" "$CP_FILE" || die "could not edit EDIT in $CP_FILE"
}

# cp_manifest: the crate rbuild generated for the pipeline in CP_CACHE.
cp_manifest() {
  local m
  m=$(find "$CP_CACHE/pipelines" -mindepth 2 -maxdepth 2 -name Cargo.toml | head -n 1)
  [[ -n $m ]] || die "no generated Cargo.toml under $CP_CACHE/pipelines"
  echo "$m"
}

# cp_compiling LOG: the crates cargo compiled, space-separated.
cp_compiling() { sed -n 's/^ *Compiling \([^ ]*\) v.*/\1/p' "$1" | tr '\n' ' '; }

# cp_rb_once MODE TAG T0 T1 LOG: check an rbuild run (first|edit|unchanged)
# and record it: cp_rb_MODE (wall), and from the stamps of cargo's lines:
# _index ("Updating crates.io index" to "Locking"), _compile (the index
# update's end, or the start, to "Finished"), _after ("Finished" to exit).
cp_rb_once() {
  local mode=$1 tag=$2 log=$LOG_DIR/compile-rbuild.log name=cp_rb_$1 t0 t1 rc=0 run cached comp ok=1 why=
  local t_upd t_lock t_fin
  settle
  t0=$EPOCHREALTIME
  cp_rb_run "$log" || rc=$?
  t1=$EPOCHREALTIME
  [[ $rc -eq 0 ]] || { cat "$log" >&2; die "rbuild compile ($mode) failed (log: $log)"; }
  read -r run cached < <(rb_counts "$log") || true
  comp=$(cp_compiling "$log")
  [[ ${run:-x} == 0 && ${cached:-x} == 1 ]] || { ok=0; why+="steps: '$run' run, '$cached' cached (want 0, 1); "; }
  [[ $(cat "$log.out") == "$(printf 'compile bench\nedit %s' "$tag")" ]] || { ok=0; why+="output is not 'edit $tag'; "; }
  case $mode in
    first)
      [[ " $comp " == *" tokio "* && " $comp " == *" rbuild-sdk "* && " $comp " == *" pipeline-compile-"* ]] ||
        { ok=0; why+="expected tokio, rbuild-sdk and the pipeline compiled, saw '$comp'; "; }
      ;;
    edit)
      [[ $comp == pipeline-compile-*" " && $(wc -w <<<"$comp") -eq 1 ]] ||
        { ok=0; why+="expected only the pipeline compiled, saw '$comp'; "; }
      ;;
    unchanged)
      ! grep -qE '^ *(Compiling|Finished|Updating) ' "$log" ||
        { ok=0; why+="cargo ran (rbuild should have found the executable); "; }
      ;;
  esac
  if [[ $ok -ne 1 ]]; then
    cat "$log" "$log.out" >&2
    die "rbuild compile ($mode): ${why%; } (log: $log)"
  fi
  record "$name" "$(ms_between "$t0" "$t1")"
  [[ $mode == unchanged ]] && { cp "$log" "$LOG_DIR/compile-rbuild-$mode.log"; return; }
  t_upd=$(ts_of "$log.ts" '^ *Updating ')
  t_lock=$(ts_of "$log.ts" '^ *Locking ')
  t_fin=$(ts_of "$log.ts" '^ *Finished ')
  [[ -n $t_fin ]] || { cat "$log" >&2; die "rbuild compile ($mode): no 'Finished' line from cargo (log: $log)"; }
  if [[ -n $t_upd ]]; then
    echo 1 >>"$TIMES/${name}_updated"
    record "${name}_index" "$(ms_between "$t_upd" "${t_lock:-$t_fin}")"
    record "${name}_compile" "$(ms_between "${t_lock:-$t_upd}" "$t_fin")"
  else
    echo 0 >>"$TIMES/${name}_updated"
    record "${name}_compile" "$(ms_between "$t0" "$t_fin")"
  fi
  if grep -qE '^ *Downloaded ' "$log"; then echo 1 >>"$TIMES/${name}_downloaded"; fi
  record "${name}_after" "$(ms_between "$t_fin" "$t1")"
  cp "$log" "$LOG_DIR/compile-rbuild-$mode.log"
}

# cp_bare_once MODE: bare `cargo build` of the generated crate with its own
# target dir (first: a new one); same checks on what it compiled.
cp_bare_once() {
  local mode=$1 log=$LOG_DIR/compile-cargo.log manifest t0 t1 comp ok=1
  manifest=$(cp_manifest)
  [[ $mode == first ]] && rm -rf "$CP_BARE_TARGET"
  settle
  t0=$(now_ns)
  cargo build --manifest-path "$manifest" --target-dir "$CP_BARE_TARGET" >"$log" 2>&1 ||
    { cat "$log" >&2; die "cargo build ($mode) of $manifest failed"; }
  t1=$(now_ns)
  comp=$(cp_compiling "$log")
  case $mode in
    first) [[ " $comp " == *" tokio "* && " $comp " == *" pipeline-compile-"* ]] || ok=0 ;;
    edit) [[ $comp == pipeline-compile-*" " && $(wc -w <<<"$comp") -eq 1 ]] || ok=0 ;;
    unchanged) [[ -z $comp ]] || ok=0 ;;
  esac
  if [[ $ok -ne 1 ]]; then
    cat "$log" >&2
    die "cargo build ($mode): compiled '$comp', not what a $mode build compiles (log: $log)"
  fi
  if grep -qE '^ *Updating ' "$log"; then echo 1 >>"$TIMES/cp_bare_${mode}_updated"; fi
  record "cp_bare_$mode" $(((t1 - t0) / 1000000))
  cp "$log" "$LOG_DIR/compile-cargo-$mode.log"
}

bench_compile() {
  local i tag log=$LOG_DIR/compile-rbuild.log
  command -v cargo >/dev/null || die "cargo not on PATH (rbuild compiles pipelines with it)"
  say "compile: emptying namespace $CP_NS; warm-up (caches the pipeline's step, pulls the image)"
  rb_reset "$CP_NS" "$CP_ROOT"
  rm -rf "$CP_DIR"
  mkdir -p "$CP_DIR"
  cp "$CP_SRC" "$CP_FILE"
  tag=warmup-$RUN_ID
  cp_edit "$tag"
  # The warm-up compiles in the bench's shared cache dir (quick when it has
  # the dependencies); the step's result is in CP_ROOT's index either way.
  RBUILD_ROOT=$CP_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$CP_NS \
    "$RBUILD" run "$CP_FILE" >"$log.out" 2>"$log" || { cat "$log" >&2; die "rbuild compile warm-up failed"; }
  # (a) first compile: a new cache dir every round, then bare cargo with a new target dir.
  for ((i = 1; i <= CP_COLD_REPS; i++)); do
    rm -rf "$CP_CACHE"
    cp_rb_once first "$tag"
    cp_bare_once first
  done
  # (b) a one-line edit before each round; (c) nothing changed.
  for ((i = 1; i <= REPS; i++)); do
    tag=$RUN_ID-edit-$i
    cp_edit "$tag"
    if ((i % 2)); then
      cp_rb_once edit "$tag"
      cp_bare_once edit
    else
      cp_bare_once edit
      cp_rb_once edit "$tag"
    fi
  done
  for ((i = 1; i <= REPS; i++)); do
    cp_rb_once unchanged "$tag"
    cp_bare_once unchanged
  done
  say "compile, rbuild run: first $(stats cp_rb_first) / edit $(stats cp_rb_edit) / unchanged $(stats cp_rb_unchanged) (median min max, ms)"
  say "compile, cargo build: first $(stats cp_bare_first) / edit $(stats cp_bare_edit) / unchanged $(stats cp_bare_unchanged) (median min max, ms)"
  rb_reset "$CP_NS" "$CP_ROOT"
  rm -rf "$CP_DIR"
}

# --------------------------------------------------------------- versions --
rbuild_commit() {
  local c
  c=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  if ! git -C "$REPO" diff --quiet HEAD -- . ':(exclude)bench' 2>/dev/null; then
    c="$c (+ uncommitted changes)"
  fi
  echo "$c"
}

buildkit_version() {
  # dockerd embeds BuildKit (vendored; the binary carries no version string).
  local v
  v=$("$DOCKER" version -f '{{.Server.Version}}' 2>/dev/null || echo unknown)
  case $v in
    20.10.*) echo "embedded in dockerd $v (vendored BuildKit v0.8 series)" ;;
    *) echo "embedded in dockerd $v" ;;
  esac
}

# ---------------------------------------------------------------- report --
fmt_s() { awk -v ms="$1" 'BEGIN { printf "%.3f", ms / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'; }

row() { # label name what
  local m lo hi
  read -r m lo hi < <(stats "$2")
  printf '| %s | %s | %s – %s | %s |\n' "$1" "$(fmt_s "$m")" "$(fmt_s "$lo")" "$(fmt_s "$hi")" "$3"
}

# RESULTS.md: a header (date, machine, versions), then one section per scenario.
report_header() {
  cat <<EOF
# rbuild benchmarks

Written by \`make bench\` (\`bench/run.sh\`); see \`bench/README.md\`. Times are
wall-clock seconds of the whole command (\`date +%s%N\` around it): the median
of the runs (how many: in each section), with the min – max spread.
Scenarios run: $SCENARIOS.

- Date: $(date -u '+%Y-%m-%d %H:%M UTC')
- Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, kernel $(uname -r), $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)
- rbuild: commit $(rbuild_commit), release build
- containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR == 1 {print $3}')
EOF
  if uses_docker; then report_docker; fi
}

report_docker() {
  cat <<EOF
- Docker: client $("$DOCKER" version -f '{{.Client.Version}}' 2>/dev/null), daemon $("$DOCKER" version -f '{{.Server.Version}}' 2>/dev/null) (Debian docker.io $(dpkg-query -W -f='${Version}' docker.io)); BuildKit $(buildkit_version)
- dockerd: \`--containerd=/run/containerd/containerd.sock --bridge=none --iptables=false --ip6tables=false\`, own data-root; storage driver $("$DOCKER" info -f '{{.Driver}}' 2>/dev/null), cgroup driver $("$DOCKER" info -f '{{.CgroupDriver}}' 2>/dev/null)
EOF
}

report_ten_steps() {
  local rc rcc bc bcc fl _
  read -r rc _ < <(stats rbuild_cold)
  read -r rcc _ < <(stats rbuild_cached)
  read -r bc _ < <(stats buildkit_cold)
  read -r bcc _ < <(stats buildkit_cached)
  read -r fl _ < <(stats ctr_floor)
  local rc_step=$((rc / STEPS)) bc_step=$((bc / STEPS))

  cat <<EOF

## Scenario: 10 trivial steps

Ten chained steps \`sh -c 'echo step N'\`, each on the previous one's result,
from \`$IMAGE\` (\`bench/pipelines/ten_steps.rs\`,
\`bench/dockerfiles/ten_steps.Dockerfile\`).

- **rbuild cold**: \`rbuild run\` with a new \`BENCH_NONCE\` (in step 1's
  command, so all 10 steps execute); pipeline already compiled, image already
  pulled into the namespace. Step 1 writes the nonce into a file (in both
  engines), so its changes differ and steps 2–10 miss despite early cutoff.
- **rbuild cached**: the same nonce again; all 10 steps CACHED, end to end.
- **BuildKit cold**: \`docker build --network=none --build-arg NONCE=<new>\`
  (Dockerfile on stdin, no context); the first RUN uses the nonce, so all 10
  RUN steps execute; base image already in dockerd. Not \`--no-cache\`: this
  is the same situation as rbuild cold. Includes exporting the image
  (\`-t bench-ten:latest\`), which rbuild has no equivalent of.
- **BuildKit cached**: the same build again; all 10 RUN steps CACHED.
- **ctr floor**: \`ctr run --rm $IMAGE <id> true\`, one bare container
  (create, start, wait, delete) on the same containerd and runc.

Every timed run is checked: cold runs must execute all 10 steps, cached runs
must report all 10 CACHED, or the bench fails. Runs: $REPS of each.

| measurement | median (s) | min – max (s) | per step (median / 10) |
|---|---|---|---|
$(row "rbuild cold" rbuild_cold "$(fmt_s "$rc_step") s")
$(row "rbuild cached" rbuild_cached "")
$(row "BuildKit cold" buildkit_cold "$(fmt_s "$bc_step") s")
$(row "BuildKit cached" buildkit_cached "")
$(row "ctr floor (1 container)" ctr_floor "")

| ratio (of medians) | value |
|---|---|
| rbuild cold per step / ctr floor | $(ratio "$rc_step" "$fl") |
| rbuild cold / BuildKit cold | $(ratio "$rc" "$bc") |
| rbuild cached / BuildKit cached | $(ratio "$rcc" "$bcc") |
EOF
}

# med NAME: median in ms, or empty when nothing was recorded.
med() { if [[ -s $TIMES/$1 ]]; then stats "$1" | awk '{print $1}'; fi; }
# msr NAME: "median (min–max)" in ms for a table cell, "–" when absent.
msr() { if [[ -s $TIMES/$1 ]]; then stats "$1" | awk '{printf "%d (%d–%d)\n", $1, $2, $3}'; else echo –; fi; }
# pct A B: A as a percentage of B.
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f %%", 100 * a / b; else print "n/a" }'; }
# spread NAME: "min – max" in seconds.
spread() { local _m lo hi; read -r _m lo hi < <(stats "$1"); echo "$(fmt_s "$lo") – $(fmt_s "$hi")"; }

report_hostdir() {
  local rc ru rch bc bu bch b3 b3p cpus
  cpus=$(nproc)
  rc=$(med hd_rb_cold) ru=$(med hd_rb_unch) rch=$(med hd_rb_chg)
  bc=$(med hd_bk_cold) bu=$(med hd_bk_unch) bch=$(med hd_bk_chg)
  b3=$(med hd_b3) b3p=$(med hd_b3_par)

  cat <<EOF

## Scenario: host directory of 20,000 files (240 MB)

A generated tree, \`$TREE\`: $TREE_FILES files of $TREE_FILE_BYTES random bytes
($(awk -v n="$TREE_FILES" -v b="$TREE_FILE_BYTES" 'BEGIN { printf "%.1f MB", n * b / 1e6 }')) in $((TREE_TOP * TREE_SUB)) directories (\`d00/s00/f000\` …), imported into
busybox at \`/src\`, then \`find /src -type f | wc -l\` (must print $TREE_FILES)
(\`bench/pipelines/host_dir.rs\`, \`bench/dockerfiles/host_dir.Dockerfile\`
with the tree as the build context). The tree is in the page cache for every
run (the floors and warm-ups read it first); \`sync\` before each timed run
writes back what earlier runs left dirty.

- **rbuild cold**: \`rbuild run bench/pipelines/host_dir.rs -- $TREE\` with a
  new, empty state root (no index, no stat cache): every file is read and
  hashed, the copy and the find step run. Pipeline compiled and image pulled
  into the namespace beforehand.
- **rbuild unchanged**: the same root again: the stat cache vouches for every
  file (0 read), both steps CACHED.
- **rbuild one file changed**: \`d00/s00/f000\` rewritten with new random bytes
  (same size) before each run: 1 file read, the copy and the find step run again.
- **BuildKit cold**: \`docker build --network=none -f bench/dockerfiles/host_dir.Dockerfile $TREE\`
  after \`docker rmi\` of its tag and \`docker builder prune -af\` (which also
  drops the context BuildKit keeps from earlier builds): the whole context is
  sent, COPY and RUN run. Base image already in dockerd.
- **BuildKit unchanged** / **one file changed**: as for rbuild; COPY and RUN
  CACHED / run again.
- **b3sum**: \`find TREE -type f -print0 | xargs -0 b3sum\`, blake3 of every
  file in one process (b3sum $(b3sum --version 2>/dev/null | awk '{print $2}'), Debian's package); **b3sum × $cpus**:
  the same split over $cpus processes (\`xargs -P $cpus\`), as rbuild hashes on
  one thread per CPU. Both after a warm-up read, like every other run here.

Runs: $COLD_REPS of each cold measurement, $HD_REPS of each other one; the two
engines take turns (one run of each per round, rbuild first in odd rounds).
Every timed run is checked (files read, steps run or CACHED, the count
printed), or the bench fails.

| measurement | median (s) | min – max (s) | |
|---|---|---|---|
$(row "rbuild cold" hd_rb_cold "")
$(row "rbuild unchanged" hd_rb_unch "")
$(row "rbuild one file changed" hd_rb_chg "")
$(row "BuildKit cold" hd_bk_cold "")
$(row "BuildKit unchanged" hd_bk_unch "")
$(row "BuildKit one file changed" hd_bk_chg "")
$(row "b3sum (1 process)" hd_b3 "hash floor")
$(row "b3sum × $cpus processes" hd_b3_par "")

| ratio (of medians) | value |
|---|---|
| rbuild cold / BuildKit cold | $(ratio "$rc" "$bc") |
| rbuild unchanged / BuildKit unchanged | $(ratio "$ru" "$bu") |
| rbuild one file changed / BuildKit one file changed | $(ratio "$rch" "$bch") |
| rbuild cold / b3sum (1 process) | $(ratio "$rc" "$b3") |
| rbuild cold / b3sum × $cpus | $(ratio "$rc" "$b3p") |
| rbuild cold context scan / b3sum (1 process) | $(ratio "$(med hd_rb_cold_scan)" "$b3") |
| rbuild cold context scan / b3sum × $cpus | $(ratio "$(med hd_rb_cold_scan)" "$b3p") |

Where the time goes: median (min–max) in ms. rbuild, from its progress lines: **context
scan** is the \`#N context TREE: … files read … in X ms\` line (walk, stat, read
and hash what the stat cache does not vouch for, update the stat cache);
**copy** and **find step** are their \`#N DONE in X ms\`; **rest** = total −
those, per run (process starts, containerd connection, image resolution,
index and snapshot bookkeeping). Each cell is its own median, so a row
need not add up. BuildKit prints its times to 0.1 s. BuildKit, from \`--progress=plain\` DONE times:
\`[internal] load build context\` (the client sending the context), COPY,
RUN, exporting to image.

| rbuild (ms) | total | context scan | copy | find step | rest |
|---|---|---|---|---|---|
| cold | $(msr hd_rb_cold) | $(msr hd_rb_cold_scan) | $(msr hd_rb_cold_copy) | $(msr hd_rb_cold_exec) | $(msr hd_rb_cold_rest) |
| unchanged | $(msr hd_rb_unch) | $(msr hd_rb_unch_scan) | CACHED | CACHED | $(msr hd_rb_unch_rest) |
| one file changed | $(msr hd_rb_chg) | $(msr hd_rb_chg_scan) | $(msr hd_rb_chg_copy) | $(msr hd_rb_chg_exec) | $(msr hd_rb_chg_rest) |

| BuildKit (ms) | total | load build context | COPY | RUN | exporting to image |
|---|---|---|---|---|---|
| cold | $(msr hd_bk_cold) | $(msr hd_bk_cold_context) | $(msr hd_bk_cold_copy) | $(msr hd_bk_cold_run) | $(msr hd_bk_cold_export) |
| unchanged | $(msr hd_bk_unch) | $(msr hd_bk_unch_context) | CACHED | CACHED | – |
| one file changed | $(msr hd_bk_chg) | $(msr hd_bk_chg_context) | $(msr hd_bk_chg_copy) | $(msr hd_bk_chg_run) | $(msr hd_bk_chg_export) |
EOF
}

report_cutoff() {
  local on off on_step off_step dig diff step_diff
  on=$(med co_on) off=$(med co_off)
  on_step=$(med co_on_step) off_step=$(med co_off_step)
  dig=$(med co_on_digest)
  diff=$((on - off)) step_diff=$((on_step - off_step))

  cat <<EOF

## Scenario: early cutoff cost on a miss

One step on busybox (\`bench/pipelines/cutoff_cost.rs\`) writes $CO_MB MiB of
random bytes to \`/out.bin\` and $CO_FILES small files under \`/small\`; its
command carries a new \`BENCH_NONCE\` every run, so it always misses and runs.
After a step, rbuild hashes the files the step changed (the overlay upper
dir) so that a step re-run with the same output lets later steps hit ("early
cutoff"), up to \`RBUILD_CHANGES_DIGEST_MAX_BYTES\` (default 64 MiB; $CO_MB MiB
is under it, so all of it is hashed). **on** = the default, **off** =
\`RBUILD_CHANGES_DIGEST_MAX_BYTES=0\`. $REPS runs of each, alternating on and
off, \`sync\` before each. **step** is the step's \`#N DONE in X ms\`;
**digest** is rbuild's own timing of the hashing (its debug log line
\`digested the step's changes ms=…\`, \`RBUILD_LOG=rbuild::machinery=debug\`
in both modes; with off it times only the removal of mount stubs that
precedes the hashing).

| mode | wall median (s) | wall min – max (s) | step, ms: median (min–max) | digest, ms: median (min–max) |
|---|---|---|---|---|
| on (default) | $(fmt_s "$on") | $(spread co_on) | $(msr co_on_step) | $(msr co_on_digest) |
| off (=0) | $(fmt_s "$off") | $(spread co_off) | $(msr co_off_step) | $(msr co_off_digest) |

| cost of early cutoff ($CO_MB MiB + $CO_FILES files) | ms | per MiB | % of the step (off) |
|---|---|---|---|
| digest, rbuild's own timing (median) | $dig | $(per_mib "$dig") | $(pct "$dig" "$off_step") |
| step time, on − off (medians) | $step_diff | $(per_mib "$step_diff") | $(pct "$step_diff" "$off_step") |
| wall time, on − off (medians) | $diff | $(per_mib "$diff") | $(pct "$diff" "$off_step") |
EOF
}
# mb BYTES -> "147.4 MB"
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
# rate BYTES MS -> "MB/s"
rate() { awk -v b="$1" -v ms="$2" 'BEGIN { if (ms > 0) printf "%.0f MB/s", b / 1e3 / ms; else print "n/a" }'; }
# whats NAME: what happened to the blobs, each distinct outcome with its count of runs.
whats() {
  if [[ -s $TIMES/$1.what ]]; then
    sort "$TIMES/$1.what" | uniq -c | sort -rn | awk '{ n = $1; $1 = ""; sub(/^ /, ""); printf "%s%s (%d run%s)", (NR > 1 ? "; " : ""), $0, n, (n > 1 ? "s" : "") } END { print "" }'
  else echo –; fi
}
# base_push_bytes: the base's layers, gzip, as pulled (what rbuild uploads).
base_push_bytes() { reg_manifest "$(base_repo)" "$(base_tag)" | jq '[.layers[].size] | add'; }
base_busybox_size() { reg_manifest "$(base_repo)" "$(base_tag)" | jq -r '.layers[0].size'; }

report_base_image() {
  cat <<EOF

## The ~200 MB base image (scenarios publish and pull)

\`$BASE_IMAGE\` in the local registry, made once by \`bench/run.sh\` and kept
(skipped when present): busybox (\`$IMAGE\`, a $(mb "$(base_busybox_size)") layer) plus one layer
with \`/data\`: $BASE_RANDOM_MIB MiB of pseudo-random bytes (AES-128-CTR of zeros
with a fixed key, in 2 MiB files: incompressible) and the files under 4 MB of
this machine's \`/usr/lib/x86_64-linux-gnu\`, in path order, up to $BASE_LIB_MIB MiB
(shared objects, static archives, Perl modules: compressible), all with one
fixed mtime. Built with \`skopeo copy\` (busybox into an OCI layout),
\`umoci insert\` (the layer, gzip) and \`skopeo copy\` (to the registry).

| top layer | value |
|---|---|
| digest | \`$BASE_BLOB\` |
| gzip (as pushed, pulled, published) | $(mb "$BASE_BLOB_SIZE") |
| uncompressed (tar) | $(mb "$BASE_UNCOMP") ($(awk -v a="$BASE_UNCOMP" -v b="$BASE_BLOB_SIZE" 'BEGIN { printf "%.2f", a / b }')× the gzip) |
| tar entries | $BASE_ENTRIES |
EOF
}

report_publish() {
  local rf rr ru df dr du
  rf=$(med pub_rb_first) rr=$(med pub_rb_re) ru=$(med pub_rb_up)
  df=$(med pub_dk_first) dr=$(med pub_dk_re) du=$(med pub_dk_up)
  cat <<EOF

## Scenario: publish an image with a ~200 MB base

The base image above plus \`/app/version\` (a new nonce every run), pushed to
\`$PUB_REPO/…:1\` in the same registry as the base.

- **rbuild**: \`rbuild run bench/pipelines/publish.rs -- $BASE_IMAGE ADDRESS\`
  (\`from(base).with_new_file("/app/version", BENCH_NONCE).publish(ADDRESS)\`),
  namespace \`$PUB_NS\`; the base was pulled into it and the pipeline
  compiled by an untimed warm-up.
- **docker**: \`docker build --build-arg BASE=$BASE_IMAGE -f bench/dockerfiles/publish.Dockerfile -t ADDRESS CONTEXT\`
  (\`FROM \$BASE\` + \`COPY version /app/version\`, a context of that one
  file) then \`docker push ADDRESS\`, timed together (and apart below); the
  base was pulled into dockerd (\`docker pull\`) and built on by an untimed
  warm-up.
- **first push**: to a repository that does not exist yet (a new one each
  round); **re-push**: to the same repository right after, with another nonce.
- **nothing to mount**: a first push to \`$PUB_UP_REPO/…:1\`, the same
  registry under another name. Neither engine mounts blobs across registry
  names, so both upload every layer, the base's too: rbuild sends the gzip
  blobs it pulled (from containerd's content store), docker compresses its
  layers again (dockerd's overlay2 keeps them unpacked). After each docker
  push the script deletes the pushed layers' links from that repository, or
  docker's next push would mount them from there.

$PUB_REPS rounds of first push + re-push; in each, one engine does both, then
the other (rbuild first in odd rounds). Then $UP_REPS pushes with nothing to
mount per engine, alternating, each round followed by the upload floor:
the big layer's blob uploaded by \`curl\` in one request. \`sync\` before
each. Every run is checked:
the pushed manifest's top layer, fetched back from the registry, must hold
the nonce.

| measurement | median (s) | min – max (s) |
|---|---|---|
| rbuild, first push | $(fmt_s "$rf") | $(spread pub_rb_first) |
| rbuild, re-push | $(fmt_s "$rr") | $(spread pub_rb_re) |
| docker build + push, first push | $(fmt_s "$df") | $(spread pub_dk_first) |
| docker build + push, re-push | $(fmt_s "$dr") | $(spread pub_dk_re) |
| rbuild, nothing to mount | $(fmt_s "$ru") | $(spread pub_rb_up) |
| docker build + push, nothing to mount | $(fmt_s "$du") | $(spread pub_dk_up) |
| floor: curl upload of the $(mb "$BASE_BLOB_SIZE") blob (POST, one PUT) | $(fmt_s "$(med pub_curl_up)") | $(spread pub_curl_up) |

| ratio (of medians) | value |
|---|---|
| rbuild first push / docker first push | $(ratio "$rf" "$df") |
| rbuild re-push / docker re-push | $(ratio "$rr" "$dr") |
| rbuild nothing to mount / docker nothing to mount | $(ratio "$ru" "$du") |
| rbuild's push step, nothing to mount / curl upload floor | $(ratio "$(med pub_rb_up_push)" "$(med pub_curl_up)") |

Where the time goes, ms, median (min–max). rbuild, from its progress lines:
**write step** is the \`with_new_file\` step's \`DONE in X ms\`; **image** is
the time from that DONE line to the \`#N publish\` line (taken from when
each line arrived): the new layer (read from the steps' own overlay
directories above the base, tar, timestamps to the epoch, gzip, into the
content store), config and manifest; **push** is the publish step's
\`DONE in X ms\` (per blob: HEAD, mount or upload; then the manifest);
**rest** = total − those, per run (process starts, containerd connection,
resolving the base's tag, index). Docker: the two commands' wall times.

| rbuild (ms) | total | write step | image | push | rest |
|---|---|---|---|---|---|
| first push | $(msr pub_rb_first) | $(msr pub_rb_first_file) | $(msr pub_rb_first_image) | $(msr pub_rb_first_push) | $(msr pub_rb_first_rest) |
| re-push | $(msr pub_rb_re) | $(msr pub_rb_re_file) | $(msr pub_rb_re_image) | $(msr pub_rb_re_push) | $(msr pub_rb_re_rest) |
| nothing to mount | $(msr pub_rb_up) | $(msr pub_rb_up_file) | $(msr pub_rb_up_image) | $(msr pub_rb_up_push) ($(rate "$(base_push_bytes)" "$(med pub_rb_up_push)")) | $(msr pub_rb_up_rest) |

| docker (ms) | total | docker build | docker push |
|---|---|---|---|
| first push | $(msr pub_dk_first) | $(msr pub_dk_first_build) | $(msr pub_dk_first_push) |
| re-push | $(msr pub_dk_re) | $(msr pub_dk_re_build) | $(msr pub_dk_re_push) |
| nothing to mount | $(msr pub_dk_up) | $(msr pub_dk_up_build) | $(msr pub_dk_up_push) |

With nothing to mount, rbuild uploads the base's layers as pulled
($(mb "$(base_push_bytes)") for both); docker uploads what it compressed
again: the 200 MB layer came out at $(mb "$(med pub_dk_up_bigsize)") (gzip, another digest).

What each engine did with each blob, from its output (rbuild: the
\`#N   sha256:… uploaded | already present | mounted from the base image's repository\`
lines; docker push: \`Pushed\`, \`Layer already exists\`, \`Mounted from REPO\`
per layer; docker does not list the config), with the number of runs that
did so:

| run | blobs |
|---|---|
| rbuild, first push | $(whats pub_rb_first) |
| rbuild, re-push | $(whats pub_rb_re) |
| docker, first push | $(whats pub_dk_first) |
| docker, re-push | $(whats pub_dk_re) |
| rbuild, nothing to mount | $(whats pub_rb_up) |
| docker, nothing to mount | $(whats pub_dk_up) |
EOF
}

report_pull() {
  local rb rbd ct dk gz cu ut
  rb=$(med pull_rb) rbd=$(med pull_rb_done) ct=$(med pull_ctr) dk=$(med pull_dk)
  gz=$(med pull_gzip) cu=$(med pull_curl) ut=$(med pull_untar)
  cat <<EOF

## Scenario: pull of the ~200 MB image

\`$BASE_IMAGE\` ($BASE_LAYERS layers; the big one $(mb "$BASE_BLOB_SIZE") gzip, $(mb "$BASE_UNCOMP") unpacked) from the
loopback registry, with none of its blobs anywhere on the puller's side
beforehand: for rbuild and ctr, a namespace that does not exist yet, and
containerd's content store (shared by all namespaces) has no copy of the big
layer in any namespace nor on disk (checked before every pull; after every
pull the namespace's images, snapshots, content and leases are removed with
\`ctr … images rm --sync\`, which runs the garbage collector, and the
namespace is deleted); for docker, \`docker rmi\` of every image built on the
base and \`docker builder prune -af\` (its pull must say \`Pull complete\`
for the big layer). The 1.1 MB busybox layer is in other namespaces and
docker images already: docker says \`Already exists\`, rbuild still counts it
as fetched (\`$BASE_LAYERS of $BASE_LAYERS layers fetched\`).

- **rbuild run**: \`rbuild run bench/pipelines/pull.rs -- $BASE_IMAGE\`
  (\`from(image).with_exec(["true"])\`), a new state root and namespace
  \`$PULL_RB_NS\`; pipeline compiled beforehand. The whole run: process
  start, pull (fetch + unpack), one trivial step, exit.
- **rbuild pull step**: the same runs' \`#N pull … DONE in X ms\` line alone.
- **ctr**: \`ctr -n $PULL_CTR_NS images pull --plain-http $BASE_IMAGE\` (fetch, then unpack).
- **docker**: \`docker pull $BASE_IMAGE\` into the bench's private dockerd (overlay2).
- Floors, from the layer blob kept in \`$BASE_DIR\` (page-cached):
  **curl** the blob from the registry to /dev/null (what the registry and
  loopback can deliver); **gzip -dc** of it to /dev/null (one core);
  **gzip -dc | tar -x** of it into a directory on the same file system as
  containerd's (emptied after each).

$PULL_REPS rounds; in each, rbuild, ctr and docker pull once each (a
different one first each round), \`sync\` before every timed run, then the
floors.

| measurement | median (s) | min – max (s) |
|---|---|---|
| rbuild run (whole) | $(fmt_s "$rb") | $(spread pull_rb) |
| rbuild pull step (its DONE line) | $(fmt_s "$rbd") | $(spread pull_rb_done) |
| ctr images pull | $(fmt_s "$ct") | $(spread pull_ctr) |
| docker pull | $(fmt_s "$dk") | $(spread pull_dk) |
| floor: curl of the blob to /dev/null | $(fmt_s "$cu") | $(spread pull_curl) |
| floor: gzip -dc of the blob | $(fmt_s "$gz") | $(spread pull_gzip) |
| floor: gzip -dc \| tar -x | $(fmt_s "$ut") | $(spread pull_untar) |

| ratio (of medians) | value |
|---|---|
| rbuild run / ctr | $(ratio "$rb" "$ct") |
| rbuild pull step / ctr | $(ratio "$rbd" "$ct") |
| rbuild run / docker | $(ratio "$rb" "$dk") |
| rbuild pull step / docker | $(ratio "$rbd" "$dk") |
| rbuild run / gzip -dc floor | $(ratio "$rb" "$gz") |
| rbuild pull step / gzip -dc floor | $(ratio "$rbd" "$gz") |
| rbuild pull step / gzip -dc \| tar -x floor | $(ratio "$rbd" "$ut") |
| ctr / gzip -dc floor | $(ratio "$ct" "$gz") |
| docker / gzip -dc floor | $(ratio "$dk" "$gz") |

Where the time goes, ms, median (min–max), each cell its own median (a row
need not add up). For rbuild and ctr, **download** is the life of the big
blob's file in containerd's content store: from its birth (the ingest file
is created when the first bytes arrive) to its last write (the commit),
\`stat\` of \`$CTD_BLOBS/…\` right after the pull; **before** = process
start to that birth (process and pipeline start, connection, resolving the
tag, the small blobs). rbuild unpacks each layer *while* it downloads: the
stream from the registry is decompressed, hashed (diff ID) and extracted
straight into the overlay snapshot's upper directory, and teed into the
content store, so its **download** column is download *and* unpack, and
its **unpack** column is only what remains after the blob's last write
(the end of the tar stream, the diff ID check, snapshot commit, image
record). ctr downloads first, then unpacks (containerd's Diff.Apply):
**unpack** is its own \`done: Xs\` after \`unpacking linux/amd64 …\`.
**after**: rbuild, from the pull's DONE line to exit, mostly the \`true\`
step (its DONE: $(msr pull_rb_exec) ms; a step right after a pull is
slower than usual: deleting its task unmounts its overlay, which syncs the
file system the layer was just unpacked to). Docker, from the stamps of
its own lines for the big layer: \`Pulling fs layer\` → \`Download
complete\` (download, into a temporary file) → \`Pull complete\`
(extract: decompress + untar into overlay2).

| engine (ms) | total | before | download | download rate | unpack | after |
|---|---|---|---|---|---|---|
| rbuild | $(msr pull_rb) | $(msr pull_rb_before) | $(msr pull_rb_dl) | $(rate "$BASE_BLOB_SIZE" "$(med pull_rb_dl)") | $(msr pull_rb_unpack) | $(msr pull_rb_after) |
| ctr | $(msr pull_ctr) | $(msr pull_ctr_before) | $(msr pull_ctr_dl) | $(rate "$BASE_BLOB_SIZE" "$(med pull_ctr_dl)") | $(msr pull_ctr_unpack) | – |
| docker | $(msr pull_dk) | $(msr pull_dk_before) | $(msr pull_dk_dl) | $(rate "$BASE_BLOB_SIZE" "$(med pull_dk_dl)") | $(msr pull_dk_unpack) | $(msr pull_dk_after) |
| floors | | | curl $(msr pull_curl) | $(rate "$BASE_BLOB_SIZE" "$cu") | gzip -dc $(msr pull_gzip); gzip -dc \| tar -x $(msr pull_untar) | |
EOF
}

# count_of NAME: how many samples NAME has (0 when none).
count_of() { if [[ -s $TIMES/$1 ]]; then wc -l <"$TIMES/$1"; else echo 0; fi; }
# sum_of NAME: the sum of NAME's samples (0 when none).
sum_of() { if [[ -s $TIMES/$1 ]]; then awk '{ s += $1 } END { print s + 0 }' "$TIMES/$1"; else echo 0; fi; }
# per MS N [DECIMALS]: MS / N (ms per step).
per() { awk -v a="$1" -v n="$2" -v d="${3:-1}" 'BEGIN { if (n > 0) printf "%.*f", d, a / n; else print "n/a" }'; }
# under MS LIMIT_MS: "yes" when MS < LIMIT_MS.
under() { if [[ -n $1 && $1 -lt $2 ]]; then echo "yes"; else echo "**no**"; fi; }
# ratio_f A B: A / B for fractional numbers, "n/a" when B is not positive.
ratio_f() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'; }

report_parallel() {
  local rb bk rbs bks n4 runs
  rb=$(med par_rb) bk=$(med par_bk) rbs=$(med par_rb_steps) bks=$(med par_bk_steps)
  runs=$(count_of par_rb)
  n4=$(grep -cx "$PAR_BRANCHES" "$TIMES/par_rb_inflight" || true)
  cat <<EOF

## Scenario: parallel steps

Four independent steps \`sh -c 'sleep 1 && echo branch N NONCE'\`, each on
\`$IMAGE\` (\`bench/pipelines/parallel.rs\`): four containers whose
\`stdout()\` the pipeline awaits together (\`tokio::try_join!\`), so rbuild
gets all four at once and runs them side by side; ideally the whole run takes
1 s. BuildKit: \`bench/dockerfiles/parallel.Dockerfile\`, four stages
\`RUN sleep 1 && echo branch N \$NONCE > /out\` and a last stage that copies
\`/out\` from each, so BuildKit builds the four stages at once
(\`docker build --network=none --build-arg NONCE=<new>\`, Dockerfile on
stdin). Every run has a new nonce in every step's command: all four steps
run every time (checked: rbuild runs 4 steps, caches none and prints each
branch's line; BuildKit runs 4 RUN steps with the nonce, none CACHED).
Pipeline compiled, image pulled (both engines) by untimed warm-ups. $runs runs
of each engine, in turns (rbuild first in odd rounds).

| measurement | median (s) | min – max (s) | / 1 s ideal |
|---|---|---|---|
$(row "rbuild" par_rb "$(ratio "$rb" "$PAR_IDEAL_MS")")
$(row "BuildKit" par_bk "$(ratio "$bk" "$PAR_IDEAL_MS")")

| ratio (of medians) | value |
|---|---|
| rbuild / BuildKit | $(ratio "$rb" "$bk") |
| rbuild / 1 s ideal | $(ratio "$rb" "$PAR_IDEAL_MS") |
| BuildKit / 1 s ideal | $(ratio "$bk" "$PAR_IDEAL_MS") |
| rbuild under the 1.4 s target (median) | $(under "$rb" 1400) |

How parallel, ms, median (min–max): **one step** is each \`sleep 1\` step's
own time (rbuild: its \`#N DONE in X ms\`, all four of every run; BuildKit
prints it to 0.1 s, left out); **sum of the 4 steps** over the wall time
is how many steps ran at once on average (4 at best). rbuild had all
$PAR_BRANCHES steps started before the first one finished (from the order of its
progress lines) in $n4 of $runs runs.

| engine (ms) | wall | one step | sum of the 4 steps | sum / wall |
|---|---|---|---|---|
| rbuild | $(msr par_rb) | $(msr par_rb_step) | $(msr par_rb_steps) | $(ratio "$rbs" "$rb") |
| BuildKit | $(msr par_bk) | – | $(msr par_bk_steps) | $(ratio "$bks" "$bk") |
EOF
}

report_scale() {
  local n first second last t_first t_second t_last c_first c_second c_last bkc bkk rbc rbk prev="" _rest
  read -r first second _rest <<<"$SC_STEPS"
  last=${SC_STEPS##* }
  cat <<EOF

## Scenario: scale (a chain of N steps)

One pipeline (\`bench/pipelines/scale.rs\`, compiled once, run as
\`rbuild run bench/pipelines/scale.rs -- N\`): N steps chained on one
container from \`$IMAGE\`, step i \`sh -c 'echo i > /fi'\`; step 1 also
writes a \`BENCH_NONCE\` to \`/nonce\`, so a new nonce makes all N steps
run (a different file, so early cutoff does not let the later steps hit).
For each N ($SC_STEPS): $SC_COLD_REPS cold run(s) with a new nonce, then $REPS fully cached
runs (the same nonce). Checked from rbuild's closing line: cold runs run N
steps and cache none, cached runs run none and cache N; every run prints
\`/fN\` and the nonce. **per step** = median / N.

| N | cold (s) | cold per step (ms) | cached median (s) | cached min – max (s) | cached per step (ms) |
|---|---|---|---|---|---|
EOF
  for n in $SC_STEPS; do
    printf '| %s | %s | %s | %s | %s | %s |\n' "$n" "$(fmt_s "$(med "sc_rb_cold_$n")")" \
      "$(per "$(med "sc_rb_cold_$n")" "$n")" "$(fmt_s "$(med "sc_rb_cached_$n")")" \
      "$(spread "sc_rb_cached_$n")" "$(per "$(med "sc_rb_cached_$n")" "$n" 2)"
  done
  t_first=$(med "sc_rb_cached_$first") t_second=$(med "sc_rb_cached_$second") t_last=$(med "sc_rb_cached_$last")
  c_first=$(med "sc_rb_cold_$first") c_second=$(med "sc_rb_cold_$second") c_last=$(med "sc_rb_cold_$last")
  cat <<EOF

How the time grows: the cost of one more step between two lengths a → b,
(t(b) − t(a)) / (b − a), in ms, from the medians. With linear growth the
cost per step from $first to $last is the one from $first to $second (ratio ≈ 1); a
ratio well above 1 means each step costs more the longer the chain (below 1:
the difference $first → $second is small and noisy beside the fixed cost of a run).

| from → to | per cached step (ms) | per cold step (ms) |
|---|---|---|
EOF
  for n in $SC_STEPS; do
    if [[ -n $prev ]]; then
      printf '| %s → %s | %s | %s |\n' "$prev" "$n" \
        "$(per "$(($(med "sc_rb_cached_$n") - $(med "sc_rb_cached_$prev")))" "$((n - prev))" 3)" \
        "$(per "$(($(med "sc_rb_cold_$n") - $(med "sc_rb_cold_$prev")))" "$((n - prev))" 1)"
    fi
    prev=$n
  done
  if [[ $last != "$second" ]]; then
    printf '| %s → %s | %s | %s |\n' "$first" "$last" \
      "$(per "$((t_last - t_first))" "$((last - first))" 3)" "$(per "$((c_last - c_first))" "$((last - first))" 1)"
  fi
  cat <<EOF

| growth | value |
|---|---|
EOF
  if [[ $last != "$second" ]]; then
    cat <<EOF
| cached: per step $first → $last / per step $first → $second | $(ratio_f "$(per "$((t_last - t_first))" "$((last - first))" 6)" "$(per "$((t_second - t_first))" "$((second - first))" 6)") |
| cold: per step $first → $last / per step $first → $second | $(ratio_f "$(per "$((c_last - c_first))" "$((last - first))" 6)" "$(per "$((c_second - c_first))" "$((second - first))" 6)") |
EOF
  fi
  cat <<EOF
| fully cached N=$last run under 1 s (the target for 1000 steps) | $(under "$t_last" 1000) ($(fmt_s "$t_last") s) |
EOF
  if [[ $SC_BK_N == 0 ]]; then
    printf '\nBuildKit was not run (%s).\n' "\`BENCH_SCALE_BUILDKIT_N=0\`"
    return
  fi
  n=$SC_BK_N
  rbc=$(med "sc_rb_cold_$n") rbk=$(med "sc_rb_cached_$n") bkc=$(med "sc_bk_cold_$n") bkk=$(med "sc_bk_cached_$n")
  cat <<EOF

BuildKit, N=$n only: a generated Dockerfile (\`$SC_DIR/scale-$n.Dockerfile\`)
of the same N chained RUNs (\`RUN echo \$NONCE > /nonce && echo 1 > /f1\`,
\`RUN echo i > /fi\`), \`docker build --network=none --build-arg NONCE=…\`
(Dockerfile on stdin), cold with the same new nonce as rbuild's cold run,
then cached (the engines in turns). Checked: all N RUN steps run / CACHED.
Not for larger N: an image in dockerd's overlay2 store has at most 127
layers (one per RUN), and a 1000-RUN build would take many minutes.

| N=$n | median (s) | min – max (s) | per step (ms) |
|---|---|---|---|
$(row "rbuild cold" "sc_rb_cold_$n" "$(per "$rbc" "$n")")
$(row "rbuild cached" "sc_rb_cached_$n" "$(per "$rbk" "$n" 2)")
$(row "BuildKit cold" "sc_bk_cold_$n" "$(per "$bkc" "$n")")
$(row "BuildKit cached" "sc_bk_cached_$n" "$(per "$bkk" "$n" 2)")

| ratio (of medians), N=$n | value |
|---|---|
| rbuild cold / BuildKit cold | $(ratio "$rbc" "$bkc") |
| rbuild cached / BuildKit cached | $(ratio "$rbk" "$bkk") |
EOF
}

report_rustdeps() {
  local rc rk rch bc bk bch deps
  rc=$(med rd_rb_cold) rk=$(med rd_rb_cached) rch=$(med rd_rb_changed)
  bc=$(med rd_bk_cold) bk=$(med rd_bk_cached) bch=$(med rd_bk_changed)
  deps=$(for d in $RD_DEPS; do printf '%s%s%s, ' '`' "$d" '`'; done)
  cat <<EOF

## Scenario: a real Rust build (rustdeps)

\`examples/rust-deps\` (a pipeline crate: \`rbuild run examples/rust-deps -- PROJECT\`)
on a copy of \`fixtures/rust-project\` (\`$RD_SELF\`, with the dependencies
${deps%, }) in \`$RD_IMAGE\` (Debian's rustc and cargo, built by
\`fixtures/setup.sh\`): the manifests and a stub \`main.rs\` first, then
\`cargo build --release --locked\` (the dependencies; the step's key covers
the manifests alone), then the sources and \`cargo build\` again (the
project's own crate), then \`cargo test\`, \`cargo clippy\` and the program
at once. The cargo registry and \`target/\` are cache volumes. BuildKit:
\`bench/dockerfiles/rust_deps.Dockerfile\`, the same steps as stages, with
\`RUN --mount=type=cache\` for the registry and \`target/\` and a last stage
that copies from the test, clippy and program stages;
\`docker build --network=host --secret id=ca,src=$RD_CA -f … PROJECT\`.
Nothing is vendored: both engines fetch the index and the crates from
crates.io (rbuild's steps share the host's network; BuildKit's get
\`--network=host\`). This machine reaches crates.io through a TLS-inspecting
proxy, so both lend the host's CA bundle to cargo: the pipeline as a mounted
file, the Dockerfile as a secret mount.

- **cold**: rbuild with a new state root (no index, empty cache volumes) and
  none of its step snapshots; BuildKit after \`docker builder prune -af\`
  (no build cache, no cache mounts). Both keep the Rust image. Checked: every
  step runs, every dependency is downloaded and compiled.
- **cached**: nothing changed; checked: no step runs.
- **one line changed**: \`src/main.rs\`'s \`GREETING\` line rewritten (new
  text each round) before each round; checked: the dependencies step is
  CACHED, no dependency is compiled, checked or downloaded again (its name
  in no \`Compiling\`/\`Checking\`/\`Downloaded\` line of any step),
  \`$RD_SELF\` is compiled, the program prints the new text, the test passes.

$RD_COLD_REPS cold rounds, $RD_REPS cached and $RD_REPS changed; in each round one build per engine
(rbuild first in odd rounds), \`sync\` before each. Pipeline compiled and
image pulled (both engines) by untimed warm-ups.

| measurement | median (s) | min – max (s) |
|---|---|---|
| rbuild cold | $(fmt_s "$rc") | $(spread rd_rb_cold) |
| rbuild cached | $(fmt_s "$rk") | $(spread rd_rb_cached) |
| rbuild one line changed | $(fmt_s "$rch") | $(spread rd_rb_changed) |
| BuildKit cold | $(fmt_s "$bc") | $(spread rd_bk_cold) |
| BuildKit cached | $(fmt_s "$bk") | $(spread rd_bk_cached) |
| BuildKit one line changed | $(fmt_s "$bch") | $(spread rd_bk_changed) |

| ratio (of medians) | value |
|---|---|
| rbuild cold / BuildKit cold | $(ratio "$rc" "$bc") |
| rbuild cached / BuildKit cached | $(ratio "$rk" "$bk") |
| rbuild one line changed / BuildKit one line changed | $(ratio "$rch" "$bch") |

The two \`cargo build\` steps, ms, median (min–max): rbuild's \`#N DONE in X ms\`,
BuildKit's DONE (to 0.1 s).

| engine (ms) | cold: dependencies | cold: own crate | changed: own crate |
|---|---|---|---|
| rbuild | $(msr rd_rb_cold_deps) | $(msr rd_rb_cold_build) | $(msr rd_rb_changed_build) |
| BuildKit | $(msr rd_bk_cold_deps) | $(msr rd_bk_cold_build) | $(msr rd_bk_changed_build) |
EOF
}

report_compile() {
  local rf re ru bf be bu nf
  rf=$(med cp_rb_first) re=$(med cp_rb_edit) ru=$(med cp_rb_unchanged)
  bf=$(med cp_bare_first) be=$(med cp_bare_edit) bu=$(med cp_bare_unchanged)
  nf=$(count_of cp_rb_first)
  cat <<EOF

## Scenario: pipeline compile

\`rbuild run\` of a single-file pipeline (a working copy of
\`bench/pipelines/compile.rs\`: one step on busybox, cached by an untimed
warm-up, so the runs time the compile, not the work). rbuild generates a
crate for the file (depending on the SDK it embeds and on tokio) under its
cache dir and builds it with cargo (\`$(cargo --version 2>/dev/null)\`,
\`$(rustc --version 2>/dev/null)\`), in a target dir shared by the
pipelines of that cache dir; it skips cargo entirely when neither the file
nor the SDK changed.

- **first compile**: \`RBUILD_CACHE_DIR\` new and empty: the crate is
  generated with rbuild's own \`Cargo.lock\` (the versions rbuild was
  built and tested with; cargo drops what the pipeline does not use), and
  cargo builds all of its dependencies. cargo's own caches (\`~/.cargo/registry\`: index and
  crate sources) are not emptied. Checked: tokio, rbuild-sdk and the
  pipeline are compiled.
- **one-line edit**: the \`EDIT\` constant (which the pipeline prints)
  rewritten before each run. Checked: only the pipeline's crate compiles.
- **unchanged**: checked: cargo prints nothing (rbuild did not start it).
- **cargo build**: bare \`cargo build --manifest-path CRATE/Cargo.toml --target-dir DIR\`
  of the crate rbuild generated (same \`Cargo.toml\` and \`Cargo.lock\`)
  with a target dir of its own: a new one after each first compile, then
  after the same edits, then with nothing to do. The floor for what rbuild
  does around cargo (cargo alone does not run the pipeline).

Every rbuild run also runs the pipeline (process start, containerd
connection, one cached step). $CP_COLD_REPS first compiles of each (rbuild,
then cargo), $REPS of each other one (edits: in turns, rbuild first in odd
rounds); checked: every run's single step CACHED, the output shows the
current edit.

| measurement | median (s) | min – max (s) | |
|---|---|---|---|
$(row "rbuild run, first compile (new cache dir)" cp_rb_first "")
$(row "cargo build, new target dir" cp_bare_first "")
$(row "rbuild run, after a one-line edit" cp_rb_edit "")
$(row "cargo build, after the same edit" cp_bare_edit "")
$(row "rbuild run, unchanged (cargo not started)" cp_rb_unchanged "")
$(row "cargo build, nothing to do" cp_bare_unchanged "")

| ratio / difference (of medians) | value |
|---|---|
| rbuild first compile / cargo build, new target dir | $(ratio "$rf" "$bf") |
| rbuild after an edit / cargo build after the edit | $(ratio "$re" "$be") |
| rbuild unchanged / cargo build with nothing to do | $(ratio "$ru" "$bu") |
| compile cost of a first compile: rbuild first − rbuild unchanged | $(fmt_s "$((rf - ru))") s |
| compile cost of an edit: rbuild edit − rbuild unchanged | $(fmt_s "$((re - ru))") s |

Where rbuild's time goes, ms, median (min–max), from the time each of
cargo's lines arrived: **index** from \`Updating crates.io index\` to
\`Locking N packages\` (cargo fetching the index entries it needs from
crates.io to write a new \`Cargo.lock\`); **compile** from there (from the
start, when there is no index update) to \`Finished\`; **after** from
\`Finished\` to exit (copying the executable, running the pipeline).

| rbuild run (ms) | total | index | compile | after |
|---|---|---|---|---|
| first compile | $(msr cp_rb_first) | $(msr cp_rb_first_index) | $(msr cp_rb_first_compile) | $(msr cp_rb_first_after) |
| one-line edit | $(msr cp_rb_edit) | $(msr cp_rb_edit_index) | $(msr cp_rb_edit_compile) | $(msr cp_rb_edit_after) |

cargo updated the crates.io index and wrote a new \`Cargo.lock\`
(\`Updating crates.io index\`, \`Locking …\`) in $(sum_of cp_rb_first_updated) of $nf first compiles
and $(sum_of cp_rb_edit_updated) of $(count_of cp_rb_edit) edits; bare cargo, which finds the lock file, in
$(sum_of cp_bare_first_updated) of $(count_of cp_bare_first) first builds. The generated crate starts
from rbuild's own lock file, so a first compile needs no index update (nor
network, once the crates are in \`~/.cargo/registry\`) unless the
pipeline's cargo block adds a dependency the lock file lacks. cargo
downloaded crates in $(sum_of cp_rb_first_downloaded) of $nf first compiles.
EOF
}

# per_mib MS: MS per MiB the cutoff step wrote.
per_mib() { awk -v a="$1" -v m="$CO_MB" 'BEGIN { printf "%.2f ms", a / m }'; }

# at_most A B LIMIT: "yes" when A / B <= LIMIT, "**no**" when not, "n/a"
# when a figure is missing.
at_most() {
  awk -v a="$1" -v b="$2" -v l="$3" 'BEGIN {
    if (a == "" || b == "" || b <= 0) print "n/a"; else if (a / b <= l) print "yes"; else print "**no**" }'
}

# The issue's targets, each from this run's medians; the figures behind
# them are in the scenario sections, and PROFILES.md (appended) explains
# the misses.
report_targets() {
  local rc bc fl rcc bcc ru bu rbd ct par first second last t1 t2 t3 growth
  cat <<EOT

## Targets at a glance

From this run's medians (the sections below have the runs, spreads and
checks). Where a target is missed, **Profiles** at the end shows where the
time goes and what would fix it.

| target | this run | met |
|---|---|---|
EOT
  if want steps; then
    rc=$(med rbuild_cold) bc=$(med buildkit_cold) fl=$(med ctr_floor)
    rcc=$(med rbuild_cached) bcc=$(med buildkit_cached)
    echo "| cold trivial step ≤ 1.2× the \`ctr run\` floor | $(fmt_s "$((rc / STEPS))") s / $(fmt_s "$fl") s = $(ratio "$((rc / STEPS))" "$fl") | $(at_most "$((rc / STEPS))" "$fl" 1.2) |"
    echo "| cold trivial step ≤ 0.4× BuildKit's | $(fmt_s "$((rc / STEPS))") s / $(fmt_s "$((bc / STEPS))") s = $(ratio "$rc" "$bc") | $(at_most "$rc" "$bc" 0.4) |"
    echo "| fully cached 10 steps ≤ ⅓ of BuildKit's | $(fmt_s "$rcc") s / $(fmt_s "$bcc") s = $(ratio "$rcc" "$bcc") | $(at_most "$rcc" "$bcc" 0.3334) |"
  fi
  if want hostdir; then
    ru=$(med hd_rb_unch) bu=$(med hd_bk_unch)
    echo "| unchanged 20k-file directory ≤ 0.5× BuildKit's | $(fmt_s "$ru") s / $(fmt_s "$bu") s = $(ratio "$ru" "$bu") | $(at_most "$ru" "$bu" 0.5) |"
  fi
  if want ignored && want hostdir; then
    ru=$(med hd_rb_unch)
    echo "| call with 200 MB in an ignored target/, unchanged and changed there, ≤ the unchanged 20k-file directory | $(fmt_s "$(med ig_rb_unchanged)") s and $(fmt_s "$(med ig_rb_changed)") s / $(fmt_s "$ru") s | $(at_most "$(med ig_rb_unchanged)" "$ru" 1) / $(at_most "$(med ig_rb_changed)" "$ru" 1) |"
  fi
  if want ready; then
    echo "| service start to a consumer's first request ≤ 100 ms | $(med sv_ready) ms | $(under "$(med sv_ready)" 101) |"
  fi
  if want pull; then
    rbd=$(med pull_rb_done) ct=$(med pull_ctr)
    echo "| pull ≤ 0.6× \`ctr images pull\` (rbuild's pull step) | $(fmt_s "$rbd") s / $(fmt_s "$ct") s = $(ratio "$rbd" "$ct") | $(at_most "$rbd" "$ct" 0.6) |"
  fi
  if want parallel; then
    par=$(med par_rb)
    echo "| 4 parallel \`sleep 1\` steps < 1.4 s | $(fmt_s "$par") s | $(under "$par" 1400) |"
  fi
  if want scale; then
    read -r first second _ <<<"$SC_STEPS"
    last=${SC_STEPS##* }
    t1=$(med "sc_rb_cached_$first") t2=$(med "sc_rb_cached_$second") t3=$(med "sc_rb_cached_$last")
    echo "| fully cached $last-step run < 1 s | $(fmt_s "$t3") s | $(under "$t3" 1000) |"
    if [[ $last != "$second" ]]; then
      # Linear: a cached step costs about as much from $second to $last as
      # from $first to $second (within 2×: the first difference is small).
      growth=$(awk -v a="$t1" -v b="$t2" -v c="$t3" -v n1="$first" -v n2="$second" -v n3="$last" \
        'BEGIN { p1 = (b - a) / (n2 - n1); p2 = (c - b) / (n3 - n2); if (p1 > 0) printf "%.2f", p2 / p1; else print "n/a" }')
      echo "| cached time grows linearly ($first → $second → $last steps) | $(fmt_s "$t1") / $(fmt_s "$t2") / $(fmt_s "$t3") s; a step $second → $last costs ${growth}× a step $first → $second | $(awk -v g="$growth" 'BEGIN { if (g == "n/a") print "n/a"; else if (g <= 2) print "yes"; else print "**no**" }') |"
    fi
  fi
}

# PROFILES.md, when present: the profiles behind the missed targets.
report_profiles() {
  if [[ -f $REPO/bench/PROFILES.md ]]; then
    printf '\n'
    sed '1s/^# /## /; 2,$s/^## /### /' "$REPO/bench/PROFILES.md"
  fi
}

# --------------------------------------------------------------- services --
# Opt-in (BENCH_SCENARIOS=services), not in the default set: its cold run
# builds examples/services from nothing.
# - the examples/services matrix: cold (rb_forget: new state root, empty
#   cache volumes, no step snapshots) and fully cached (checked: no step
#   runs, no service starts, every backend's kv-test passed).
# (Service start to ready, bench/pipelines/service_ready.rs, is the
# default scenario "ready", below sv_ready_once.)
# Beside it, the same with docker build + docker compose (Debian's
# docker-compose 1.29, bench/dockerfiles/services.Dockerfile and
# bench/compose/services.yml) on the netns scenario's second dockerd, the
# one with a bridge (compose's project network): cold (build cache and image
# removed) and cached (the build all cached; compose starts every service
# again, as it must: it knows nothing of what the tests' results depend on).
SV_NS=rbuild-bench-services
SV_ROOT=$STATE/services-root
SV_PIPELINE=$REPO/examples/services/pipeline.rs
SV_READY_PIPELINE=$REPO/bench/pipelines/service_ready.rs
SV_REPS=${BENCH_SERVICES_REPS:-5}

sv_rb_run() { # log
  (cd "$REPO" && RBUILD_ROOT=$SV_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$SV_NS \
    "$RBUILD" run "$SV_PIPELINE") >"$1.out" 2>"$1"
}

# sv_check LOG MODE: every backend passed; cached: no exec step ran and no
# service line in the progress (the integrator's progress names services
# "service svc-…": adjust SV_SERVICE_RE to the final wording).
SV_SERVICE_RE='^#[0-9]+ service '
sv_check() {
  local log=$1 mode=$2 store ran
  for store in sqlite postgres redis; do
    grep -q "^$store *| 9 passed, 0 failed" "$log.out" ||
      die "services ($mode): $store's kv-test did not pass (log: $log.out)"
  done
  if [[ $mode == cached ]]; then
    ran=$(grep -E '^#[0-9]+ exec ' "$log" | grep -vc ' CACHED$' || true)
    [[ $ran -eq 0 ]] || die "services (cached): $ran steps ran (log: $log)"
    if grep -Eq "$SV_SERVICE_RE" "$log"; then die "services (cached): a service started (log: $log)"; fi
  fi
}

sv_once() { # MODE
  local mode=$1 log=$LOG_DIR/services-rb.log
  [[ $mode == cold ]] && rb_forget "$SV_NS" "$SV_ROOT"
  settle
  timed "sv_rb_$mode" "services ($mode)" "$log" sv_rb_run "$log"
  sv_check "$log" "$mode"
  cp "$log" "$LOG_DIR/services-rb-$mode.log"
  cp "$log.out" "$LOG_DIR/services-rb-$mode.log.out"
}

sv_ready_once() {
  local log=$LOG_DIR/services-ready.log ms
  BENCH_NONCE=$RUN_ID-$RANDOM-$1 RBUILD_ROOT=$SV_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$SV_NS \
    "$RBUILD" run "$SV_READY_PIPELINE" >"$log.out" 2>"$log" || { cat "$log" >&2; die "service_ready failed (log: $log)"; }
  ms=$(sed -n 's/^ready_ms=\([0-9]*\)$/\1/p' "$log.out")
  [[ -n $ms ]] || die "service_ready: no ready_ms= line (log: $log.out)"
  record sv_ready "$ms"
  # The engine's own view: the service's "ready in" (from its start
  # request: container, task, process, first accepted connection).
  ms=$(sed -n 's/^#[0-9]* service .* ready in \([0-9]*\) ms$/\1/p' "$log" | head -n 1)
  if [[ -n $ms ]]; then record sv_ready_engine "$ms"; fi
}

# ready: a busybox httpd service (bench/pipelines/service_ready.rs), every
# run a new definition; the time from its shell's start to a bound
# consumer's first successful request. Target: <= 100 ms.
bench_ready() {
  rm -rf "$SV_ROOT"
  sv_ready_once warmup
  : >"$TIMES/sv_ready"
  : >"$TIMES/sv_ready_engine"
  for ((i = 1; i <= REPS; i++)); do sv_ready_once "$i"; done
  say "ready: service start to a consumer's first request $(stats sv_ready); engine's start to ready $(stats sv_ready_engine) (median min max, ms)"
}

report_ready() {
  cat <<EOF

## Scenario: service start to ready (ready)

\`bench/pipelines/service_ready.rs\`: a busybox \`httpd\` service whose
shell writes its start time (\`/proc/uptime\`, 10 ms resolution) into the
file it serves, and one step bound to it that fetches that file and
prints its own clock minus the service's start: from the service's start
to a consumer's first successful request, on one host clock. While the
service starts, the consumer's container and task are made; its process
starts once the port accepts. $REPS runs, each a new service definition
(a cold service and a cold consumer). Beside it, the engine's "ready in"
of the service: from its start request (container, task, process) to the
first accepted connection.

| measurement | median (ms) | min – max (ms) |
|---|---|---|
| service start to a consumer's first request | $(med sv_ready) | $(stats sv_ready | awk '{print $2 " – " $3}') |
| engine: service start request to ready | $(med sv_ready_engine) | $(stats sv_ready_engine | awk '{print $2 " – " $3}') |
EOF
}

SV_COMPOSE=$REPO/bench/compose/services.yml
SV_PROJECT=rbuild-bench-kv
sv_compose() { DOCKER_HOST=unix://$NN_SOCK COMPOSE_DOCKER_CLI_BUILD=1 docker-compose -p "$SV_PROJECT" -f "$SV_COMPOSE" "$@"; }

# sv_dk_run LOG: build the image, start the matrix, wait for the three
# tests, check them, take it all down.
sv_dk_run() {
  local log=$1 store id code
  nn_docker build --network=host --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt \
    -f "$REPO/bench/dockerfiles/services.Dockerfile" -t bench-kv:latest \
    "$REPO/examples/services/app" >"$log" 2>&1 || return 1
  sv_compose up -d test-sqlite test-postgres test-redis >>"$log" 2>&1 || return 1
  : >"$log.out"
  for store in sqlite postgres redis; do
    id=$(sv_compose ps -q "test-$store")
    code=$(nn_docker wait "$id")
    nn_docker logs "$id" 2>&1 | sed "s/^/$store | /" >>"$log.out"
    [[ $code == 0 ]] || { echo "test-$store exited $code" >>"$log"; return 1; }
  done
  sv_compose down -v >>"$log" 2>&1
}

sv_dk_check() { # LOG
  local store
  for store in sqlite postgres redis; do
    grep -q "^$store | 9 passed, 0 failed" "$1.out" ||
      die "services (compose): $store's kv-test did not pass (log: $1.out)"
  done
}

# sv_dk_build_cached LOG: was the cargo build RUN step CACHED?
sv_dk_build_cached() {
  awk '/^#[0-9]+ \[build .*\] RUN .*cargo build/ { id = $1 }
    id != "" && $1 == id && $2 == "CACHED" { found = 1 }
    END { exit !found }' "$1"
}

sv_dk_forget() {
  sv_compose down -v >/dev/null 2>&1 || true
  nn_docker rmi -f bench-kv:latest >/dev/null 2>&1 || true
  nn_docker builder prune -af >/dev/null 2>&1 || true
}

bench_services() {
  local i log=$LOG_DIR/services-rb.log dlog=$LOG_DIR/services-dk.log
  say "services: warm-up (compiles the pipelines; the kv-app build fills the cache volumes: minutes)"
  sv_rb_run "$log" || { cat "$log" >&2; die "services warm-up failed"; }
  for ((i = 1; i <= SV_REPS; i++)); do sv_once cached; done
  for ((i = 1; i <= 1; i++)); do sv_once cold; done

  ensure_package docker-compose /usr/bin/docker-compose
  nn_dockerd_up
  say "services: docker compose warm-up (pulls postgres and redis into the bridge dockerd, builds once: minutes)"
  sv_dk_forget
  sv_dk_run "$dlog" || { cat "$dlog" "$dlog.out" >&2; sv_compose down -v >/dev/null 2>&1; die "compose warm-up failed"; }
  sv_dk_check "$dlog"
  for ((i = 1; i <= SV_REPS; i++)); do
    settle
    timed sv_dk_cached "docker compose (cached)" "$dlog" sv_dk_run "$dlog"
    sv_dk_check "$dlog"
    sv_dk_build_cached "$dlog" || die "services (compose, cached): the cargo build step ran (log: $dlog)"
  done
  sv_dk_forget
  settle
  timed sv_dk_cold "docker compose (cold)" "$dlog" sv_dk_run "$dlog"
  sv_dk_check "$dlog"
  cp "$dlog" "$LOG_DIR/services-dk-cold.log"
  sv_dk_forget
  nn_dockerd_down
  say "services: matrix cold $(stats sv_rb_cold) / cached $(stats sv_rb_cached); compose cold $(stats sv_dk_cold) / cached $(stats sv_dk_cached) (median min max, ms)"
}

report_services() {
  cat <<EOF

## Scenario: service containers (services)

\`examples/services/pipeline.rs\`: kv-server built once, tested against
sqlite, postgres and redis at once, each with its own database service and
the built server bound as a service. Cold: a new state root (empty cargo
cache volumes: the whole build); cached: nothing changed (checked: no step
runs, no service starts). Beside it, the same as \`docker build\` (cache
mounts, bench/dockerfiles/services.Dockerfile) + \`docker-compose up\`
(bench/compose/services.yml: health-gated depends_on, docker-init in the
servers) on the second dockerd (the one with a bridge); cold: build cache
and image removed; cached: the build all CACHED (checked), and compose
starts all five services and the three tests again. (A service's start
to ready is the \`ready\` scenario.)

| measurement | median (s) | min – max (s) |
|---|---|---|
| rbuild: matrix cold | $(fmt_s "$(med sv_rb_cold)") | $(spread sv_rb_cold) |
| rbuild: matrix fully cached | $(fmt_s "$(med sv_rb_cached)") | $(spread sv_rb_cached) |
| docker build + compose: cold | $(fmt_s "$(med sv_dk_cold)") | $(spread sv_dk_cold) |
| docker build + compose: build cached | $(fmt_s "$(med sv_dk_cached)") | $(spread sv_dk_cached) |

| ratio (of medians) | value |
|---|---|
| rbuild cold / compose cold | $(ratio "$(med sv_rb_cold)" "$(med sv_dk_cold)") |
| rbuild cached / compose cached | $(ratio "$(med sv_rb_cached)" "$(med sv_dk_cached)") |
EOF
}

# ------------------------------------------------------------------ netns --
# Ten trivial cold steps on the host network and each in a network namespace
# of its own (bench/pipelines/netns_steps.rs; a host-service binding is what
# gives a step its own namespace in this API version), beside BuildKit's
# ten RUN steps with --network=none and with its default bridge network. The
# bench's dockerd has no bridge (--bridge=none), so this scenario starts a
# second private dockerd with one (docker0 on NN_BIP, no iptables: the RUN
# steps need no traffic out), on its own socket, data and exec roots and
# containerd namespace; it is stopped (and docker0 removed) at the end.
NN_NS=rbuild-bench-netns
NN_ROOT=$STATE/netns-root
NN_PIPELINE=$REPO/bench/pipelines/netns_steps.rs
NN_BIP=${BENCH_NETNS_BIP:-172.31.254.1/24}
NN_SOCK=$RUN_DIR/docker-bridge.sock
NN_LONG=30
NN_STARTED_DOCKERD=

nn_docker() { "$DOCKER" -H "unix://$NN_SOCK" "$@"; }

nn_dockerd_up() {
  if docker_up "$NN_SOCK"; then return; fi
  say "netns: starting a dockerd with a bridge (log: $LOG_DIR/docker-bridge.log)"
  launch_dockerd NN_STARTED_DOCKERD docker-bridge "$NN_SOCK" \
    --containerd-namespace=rbuild-bench-bridge \
    --containerd-plugins-namespace=rbuild-bench-bridge-plugins \
    --bip="$NN_BIP" --iptables=false --ip6tables=false --ip-masq=false
}

# stop_pid PID: SIGTERM, then up to 10 s for it to be gone.
stop_pid() {
  kill "$1" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
}

nn_dockerd_down() {
  [[ -n $NN_STARTED_DOCKERD ]] || return 0
  stop_pid "$NN_STARTED_DOCKERD"
  ip link del docker0 2>/dev/null || true
  NN_STARTED_DOCKERD=
}

nn_rb_run() { # network nonce log [steps]
  BENCH_NETWORK=$1 BENCH_NONCE=$2 BENCH_STEPS=${4:-$STEPS} RBUILD_ROOT=$NN_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$NN_NS \
    "$RBUILD" run "$NN_PIPELINE" >"$3.out" 2>"$3"
}

# nn_rb_check NETWORK LOG [STEPS]: all steps ran, in the network asked for
# (the last step printed its namespace: the host's, or not).
nn_rb_check() {
  local network=$1 log=$2 n=${3:-$STEPS} cached ns host_ns
  cached=$(grep -c '^#[0-9]* exec .* CACHED$' "$log" || true)
  if [[ $cached -ne 0 ]] || ! grep -q "^step $n\$" "$log.out"; then
    cat "$log" >&2
    die "netns ($network): expected all $n steps to run (log: $log)"
  fi
  ns=$(sed -n 's/^\(net:\[[0-9]*\]\)$/\1/p' "$log.out")
  host_ns=$(readlink /proc/self/ns/net)
  case $network in
    host) [[ $ns == "$host_ns" ]] || die "netns (host): the steps ran in '$ns', not the host's $host_ns (log: $log.out)" ;;
    netns) [[ -n $ns && $ns != "$host_ns" ]] || die "netns (netns): the steps ran in the host's namespace (log: $log.out)" ;;
  esac
}

nn_bk_build() { # network nonce log
  nn_docker build --progress=plain --network="$1" --build-arg "NONCE=$2" \
    -t bench-netns:latest - <"$DOCKERFILE" >"$3" 2>&1
}

bench_netns() {
  local log=$LOG_DIR/netns.log i network
  say "netns: warm-ups (compile the pipeline, pull the image into $NN_NS and into the bridge dockerd)"
  rm -rf "$NN_ROOT"
  for network in host netns; do
    nn_rb_run "$network" "warmup-$RUN_ID-$network" "$log" || { cat "$log" >&2; die "netns warm-up failed"; }
  done
  nn_dockerd_up
  for network in none default; do
    nn_bk_build "$network" "warmup-$RUN_ID-$network" "$log" || { cat "$log" >&2; die "docker build (bridge dockerd) warm-up failed"; }
  done
  # Interleaved, so that a slow moment of the machine falls on all of them.
  # rbuild runs chains of 10 and of NN_LONG steps: the difference is what
  # each further step costs, apart from what a run pays once.
  for ((i = 1; i <= REPS; i++)); do
    for network in host netns; do
      timed "nn_rb_$network" "rbuild ($network)" "$log" nn_rb_run "$network" "$RUN_ID-$i-$network" "$log"
      nn_rb_check "$network" "$log"
      cp "$log" "$LOG_DIR/netns-rb-$network.log"
      timed "nn_rb_${network}_long" "rbuild ($network, $NN_LONG steps)" "$log" nn_rb_run "$network" "$RUN_ID-$i-$network-long" "$log" "$NN_LONG"
      nn_rb_check "$network" "$log" "$NN_LONG"
    done
    for network in none default; do
      timed "nn_bk_$network" "docker build (--network=$network)" "$log" nn_bk_build "$network" "$RUN_ID-$i-$network" "$log"
      check_buildkit "$log" 0
      cp "$log" "$LOG_DIR/netns-bk-$network.log"
    done
  done
  nn_docker builder prune -af >/dev/null 2>&1 || true
  nn_dockerd_down
  say "netns: rbuild host $(stats nn_rb_host) / own namespace $(stats nn_rb_netns); BuildKit none $(stats nn_bk_none) / bridge $(stats nn_bk_default) (median min max, ms)"
}

# per_step A B [N]: (A - B) / N (default STEPS) in ms, one decimal, signed.
per_step() { awk -v a="$1" -v b="$2" -v n="${3:-$STEPS}" 'BEGIN { printf "%+.1f ms", (a - b) / n }'; }

report_netns() {
  local rh rn rhl rnl bn bb _
  read -r rh _ < <(stats nn_rb_host)
  read -r rn _ < <(stats nn_rb_netns)
  read -r rhl _ < <(stats nn_rb_host_long)
  read -r rnl _ < <(stats nn_rb_netns_long)
  read -r bn _ < <(stats nn_bk_none)
  read -r bb _ < <(stats nn_bk_default)
  cat <<EOF

## Scenario: a network namespace per step (netns)

Ten chained trivial steps, all cold (a new nonce in step 1), as in "10
trivial steps" (\`bench/pipelines/netns_steps.rs\`, the same Dockerfile);
rbuild also runs chains of $NN_LONG, so that what each step costs is told
apart from what a run pays once (the first namespace, made while the pool
fills; the host service; the pool's namespaces removed at the end).
rbuild: on the host network, and each step in a network namespace of its
own (bound to a host service, which is what gives a step its own namespace
in this API version: a namespace from the pool, a veth on the CNI bridge,
its /etc/hosts); every run is checked by the namespace its last step
printed. BuildKit: \`docker build --network=none\` and with its default
bridge network, on a second private dockerd that has a bridge
(\`--bip=$NN_BIP --iptables=false\`). Runs: $REPS of each, interleaved.

| measurement | median (s) | min – max (s) | per step (median / steps) |
|---|---|---|---|
$(row "rbuild, host network" nn_rb_host "$(fmt_s $((rh / STEPS))) s")
$(row "rbuild, own namespace per step" nn_rb_netns "$(fmt_s $((rn / STEPS))) s")
$(row "rbuild, host network, $NN_LONG steps" nn_rb_host_long "$(fmt_s $((rhl / NN_LONG))) s")
$(row "rbuild, own namespace per step, $NN_LONG steps" nn_rb_netns_long "$(fmt_s $((rnl / NN_LONG))) s")
$(row "BuildKit, --network=none" nn_bk_none "$(fmt_s $((bn / STEPS))) s")
$(row "BuildKit, default (bridge)" nn_bk_default "$(fmt_s $((bb / STEPS))) s")

| what (of medians) | value |
|---|---|
| rbuild: each further step in its own namespace, beyond the host network's (($NN_LONG − 10)-step difference; target ≤ +15 ms) | $(per_step "$((rnl - rhl))" "$((rn - rh))" "$((NN_LONG - STEPS))") |
| rbuild: what a run pays once for namespaces (10 steps) | $(awk -v d="$((rn - rh))" -v m="$(( ((rnl - rhl) - (rn - rh)) ))" -v n="$STEPS" -v l="$NN_LONG" 'BEGIN { printf "%+.0f ms", d - n * m / (l - n) }') |
| rbuild: own namespace − host network, 10 steps, per step | $(per_step "$rn" "$rh") |
| BuildKit: bridge − none, per step | $(per_step "$bb" "$bn") |
| rbuild own namespace / BuildKit bridge | $(ratio "$rn" "$bb") |
| rbuild host network / BuildKit none | $(ratio "$rh" "$bn") |
EOF
}

# --------------------------------------------------------------- branches --
# Two independent branches (a `sleep 1` step each, on one base) copied into
# one container that reads them, with no join in the pipeline
# (bench/pipelines/branches.rs), beside the same as a multi-stage
# Dockerfile with two independent stages (which BuildKit runs at once).
# The yardstick is the longest branch alone: the same pipeline with one
# branch, and BuildKit's build of the one-branch Dockerfile. Every run cold
# (a new nonce). Target: two branches within 1.1x of one.
BR_NS=rbuild-bench-branches
BR_ROOT=$STATE/branches-root
BR_PIPELINE=$REPO/bench/pipelines/branches.rs
BR_DIR=$STATE/branches

# br_dockerfile N: a Dockerfile with N independent branch stages.
br_dockerfile() {
  local n=$1 i
  echo "FROM $IMAGE AS base"
  for ((i = 0; i < n; i++)); do
    printf 'FROM base AS b%d\nARG NONCE=\nRUN sleep 1; echo branch %d $NONCE > /out\n' "$i" "$i"
  done
  echo "FROM base"
  for ((i = 0; i < n; i++)); do echo "COPY --from=b$i /out /in/b$i"; done
  echo 'RUN cat /in/*'
}

br_rb_run() { # branches nonce log
  BENCH_BRANCHES=$1 BENCH_NONCE=$2 RBUILD_ROOT=$BR_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$BR_NS \
    "$RBUILD" run "$BR_PIPELINE" >"$3.out" 2>"$3"
}

# br_rb_check N LOG: N branches ran (none cached) and the output has them all.
br_rb_check() {
  local n=$1 log=$2 ran
  ran=$(grep -Ec '^#[0-9]+ exec sh -c .sleep 1' "$log" || true)
  if [[ $ran -ne $n ]] || [[ $(grep -c '^branch ' "$log.out") -ne $n ]] || grep -Eq '^#[0-9]+ exec .* CACHED$' "$log"; then
    cat "$log" "$log.out" >&2
    die "branches ($n): expected $n branches run, none cached (log: $log)"
  fi
}

br_bk_build() { # branches nonce log
  "$DOCKER" build --progress=plain --network=none --build-arg "NONCE=$2" \
    -t bench-branches:latest - <"$BR_DIR/branches-$1.Dockerfile" >"$3" 2>&1
}

bench_branches() {
  local log=$LOG_DIR/branches.log i n
  mkdir -p "$BR_DIR"
  for n in 1 2; do br_dockerfile "$n" >"$BR_DIR/branches-$n.Dockerfile"; done
  rm -rf "$BR_ROOT"
  say "branches: warm-ups (compile the pipeline, pull the image into $BR_NS)"
  for n in 1 2; do
    br_rb_run "$n" "warmup-$RUN_ID-$n" "$log" || { cat "$log" >&2; die "branches warm-up failed"; }
    br_bk_build "$n" "warmup-$RUN_ID-$n" "$log" || { cat "$log" >&2; die "docker build (branches) warm-up failed"; }
  done
  for ((i = 1; i <= REPS; i++)); do
    for n in 1 2; do
      timed "br_rb_$n" "rbuild ($n branches)" "$log" br_rb_run "$n" "$RUN_ID-$i-$n" "$log"
      br_rb_check "$n" "$log"
      cp "$log" "$LOG_DIR/branches-rb-$n.log"
      timed "br_bk_$n" "docker build ($n branches)" "$log" br_bk_build "$n" "$RUN_ID-$i-$n" "$log"
      [[ $(bk_runs "$log" | awk '{print $2}') -eq 0 ]] || { cat "$log" >&2; die "docker build (branches): a RUN was cached (log: $log)"; }
      cp "$log" "$LOG_DIR/branches-bk-$n.log"
    done
  done
  "$DOCKER" builder prune -af >/dev/null 2>&1 || true
  "$DOCKER" image prune -f >/dev/null 2>&1 || true
  say "branches: rbuild 1 $(stats br_rb_1) / 2 $(stats br_rb_2); BuildKit 1 $(stats br_bk_1) / 2 $(stats br_bk_2) (median min max, ms)"
}

report_branches() {
  cat <<EOF

## Scenario: independent branches without a join (branches)

One container copies in the \`/out\` of two independent branches (a
\`sleep 1\` step each, on the same base) and reads them
(\`bench/pipelines/branches.rs\`; the pipeline asks for one result and
joins nothing). BuildKit: the same as a multi-stage Dockerfile, two
independent stages and a final one that copies from both (\`docker build
--network=none\`). The yardstick: the same with one branch. Every run cold
(a new nonce); runs: $REPS of each, interleaved.

| measurement | median (s) | min – max (s) |
|---|---|---|
| rbuild, one branch | $(fmt_s "$(med br_rb_1)") | $(spread br_rb_1) |
| rbuild, two branches | $(fmt_s "$(med br_rb_2)") | $(spread br_rb_2) |
| BuildKit, one branch | $(fmt_s "$(med br_bk_1)") | $(spread br_bk_1) |
| BuildKit, two branches | $(fmt_s "$(med br_bk_2)") | $(spread br_bk_2) |

| ratio (of medians) | value |
|---|---|
| rbuild: two branches / one (target ≤ 1.1×) | $(ratio "$(med br_rb_2)" "$(med br_rb_1)") |
| BuildKit: two branches / one | $(ratio "$(med br_bk_2)" "$(med br_bk_1)") |
| rbuild / BuildKit, two branches | $(ratio "$(med br_rb_2)" "$(med br_bk_2)") |
EOF
}

# ---------------------------------------------------------------- ignored --
# `rbuild call bench/pipelines/ignored.rs count --source PROJECT`: a function
# whose Directory argument declares `ignore: target/`, on a generated
# project of IG_SRC_FILES small sources beside a target/ of 200 MB (one
# 150 MB binary and IG_OBJECTS objects of 50 KB, as a local `cargo build`
# leaves it). Beside it, `docker build` of the same project with a
# .dockerignore of target/ (COPY . and the same RUN). Both engines warm
# (pipeline compiled, image pulled, first build done); then unchanged
# calls, and calls after a change in the ignored part (the binary rewritten
# in part, a new object each time). Checked: rbuild reads no file and runs
# nothing, BuildKit's COPY and RUN are CACHED. Target: both rbuild cases no
# slower than the unchanged 20k-file host directory (hostdir's median, when
# hostdir runs in the same run).
IG_NS=rbuild-bench-ignored
IG_ROOT=$STATE/ignored-root
IG_PIPELINE=$REPO/bench/pipelines/ignored.rs
IG_DOCKERFILE=$REPO/bench/dockerfiles/ignored.Dockerfile
IG_PROJECT=$STATE/ignored-project
IG_SRC_FILES=100
IG_OBJECTS=1000
IG_IMAGE_TAG=bench-ignored:latest

ig_spec() { echo "src=$IG_SRC_FILES objects=$IG_OBJECTS bin=150MiB"; }

ensure_ig_project() {
  local marker=$IG_PROJECT.complete
  if [[ -f $marker && $(cat "$marker") == "$(ig_spec)" ]]; then return; fi
  say "ignored: generating $IG_PROJECT ($(ig_spec))"
  rm -rf "$IG_PROJECT" "$marker"
  mkdir -p "$IG_PROJECT/src" "$IG_PROJECT/target/debug/deps"
  printf 'target/\n' >"$IG_PROJECT/.dockerignore"
  printf '[package]\nname = "ignored"\nversion = "0.1.0"\n' >"$IG_PROJECT/Cargo.toml"
  head -c $((IG_SRC_FILES * 4096)) /dev/urandom | split -b 4096 -d -a 3 - "$IG_PROJECT/src/m"
  head -c $((150 << 20)) /dev/urandom >"$IG_PROJECT/target/debug/app"
  head -c $((IG_OBJECTS * 51200)) /dev/urandom | split -b 51200 -d -a 4 - "$IG_PROJECT/target/debug/deps/o"
  ig_spec >"$marker"
}

# The files the container must count: sources, Cargo.toml, .dockerignore.
ig_expected() { echo $((IG_SRC_FILES + 2)); }

# change_ig N: a build writes into target/: the binary's first MiB and a new object.
change_ig() {
  head -c $((1 << 20)) /dev/urandom | dd of="$IG_PROJECT/target/debug/app" conv=notrunc status=none
  head -c 51200 /dev/urandom >"$IG_PROJECT/target/debug/deps/new-$RUN_ID-$1.o"
}

ig_rb_run() { # log
  RBUILD_ROOT=$IG_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$IG_NS \
    "$RBUILD" call "$IG_PIPELINE" count --source "$IG_PROJECT" >"$1.out" 2>"$1"
}

# ig_rb_check LOG WARM: the count is right; unless WARM, no file was read
# and the copy and the step hit.
ig_rb_check() {
  local log=$1 files scan_ms copy exec out
  read -r files scan_ms < <(rb_scan "$log") || true
  copy=$(rb_step_ms "$log" copy)
  exec=$(rb_step_ms "$log" exec)
  out=$(tr -d ' \n' <"$log.out")
  if [[ $out != "$(ig_expected)" ]] || [[ -z ${2:-} && ! ($files == 0 && $copy == CACHED && $exec == CACHED) ]]; then
    cat "$log" "$log.out" >&2
    die "rbuild ignored: expected $(ig_expected) files in the container$([[ -z ${2:-} ]] && echo ', no file read, copy and exec CACHED'); saw output '$out', files read '$files', copy '$copy', exec '$exec' (log: $log)"
  fi
}

ig_bk_build() { # log
  "$DOCKER" build --progress=plain --network=none -f "$IG_DOCKERFILE" \
    -t "$IG_IMAGE_TAG" "$IG_PROJECT" >"$1" 2>&1
}

ig_bk_check() {
  local log=$1 copy run
  copy=$(bk_step "$log" "$BK_COPY_RE")
  run=$(bk_step "$log" "$BK_RUN_RE")
  if [[ $copy != CACHED || $run != CACHED ]]; then
    cat "$log" >&2
    die "docker build ignored: expected COPY and RUN CACHED; saw COPY '$copy', RUN '$run' (log: $log)"
  fi
}

# ig_both MODE I: one timed run of each engine, in turns which goes first.
ig_both() {
  local log=$LOG_DIR/ignored.log order=(rb bk) e
  (($2 % 2)) || order=(bk rb)
  for e in "${order[@]}"; do
    if [[ $e == rb ]]; then
      timed "ig_rb_$1" "rbuild call, ignored target/ ($1)" "$log" ig_rb_run "$log"
      ig_rb_check "$log"
      cp "$log" "$LOG_DIR/ignored-rbuild-$1.log"
    else
      timed "ig_bk_$1" "docker build, .dockerignore target/ ($1)" "$log" ig_bk_build "$log"
      ig_bk_check "$log"
      cp "$log" "$LOG_DIR/ignored-buildkit-$1.log"
    fi
  done
}

bench_ignored() {
  local log=$LOG_DIR/ignored.log i
  ensure_ig_project
  say "ignored: emptying namespace $IG_NS; warm-ups (compile the pipeline, pull the image, first build in both engines)"
  rb_reset "$IG_NS" "$IG_ROOT"
  ig_rb_run "$log" || { cat "$log" >&2; die "rbuild ignored warm-up failed"; }
  ig_rb_check "$log" warm
  ig_bk_build "$log" || { cat "$log" >&2; die "docker build ignored warm-up failed"; }
  for ((i = 1; i <= IG_REPS; i++)); do settle; ig_both unchanged "$i"; done
  for ((i = 1; i <= IG_REPS; i++)); do
    change_ig "$i"
    settle
    ig_both changed "$i"
  done
  rm -f "$IG_PROJECT"/target/debug/deps/new-*.o
  say "ignored: rbuild unchanged $(stats ig_rb_unchanged) / changed $(stats ig_rb_changed); BuildKit unchanged $(stats ig_bk_unchanged) / changed $(stats ig_bk_changed) (median min max, ms)"
  rb_reset "$IG_NS" "$IG_ROOT"
  "$DOCKER" rmi -f "$IG_IMAGE_TAG" >/dev/null 2>&1 || true
}

report_ignored() {
  local hd=
  if want hostdir; then hd=$(med hd_rb_unch); fi
  cat <<EOF

## Scenario: a function's directory argument with an ignored target/ (ignored)

\`rbuild call bench/pipelines/ignored.rs count --source PROJECT\`: the
function's \`Directory\` argument declares \`ignore: target/\` (Dagger's
\`+ignore\`), so the scan never lists or reads \`target/\`. The project
(\`$IG_PROJECT\`): $IG_SRC_FILES sources of 4 KiB, a \`Cargo.toml\` and a
\`.dockerignore\`, beside a \`target/\` of 200 MB (a 150 MiB binary and
$IG_OBJECTS objects of 50 KiB). BuildKit: \`docker build\` of the same
project with that \`.dockerignore\` (\`bench/dockerfiles/ignored.Dockerfile\`:
\`COPY . /src\`, the same \`find\`). Both warm; then $IG_REPS unchanged runs
of each, and $IG_REPS after a build wrote into \`target/\` (the binary's first
MiB rewritten, one new object), interleaved. Checked every run: rbuild read
no file and ran nothing (copy and step CACHED), BuildKit's COPY and RUN
CACHED, and the container counted $(ig_expected) files.

| measurement | median (s) | min – max (s) |
|---|---|---|
| rbuild call, unchanged | $(fmt_s "$(med ig_rb_unchanged)") | $(spread ig_rb_unchanged) |
| rbuild call, target/ changed | $(fmt_s "$(med ig_rb_changed)") | $(spread ig_rb_changed) |
| docker build, unchanged | $(fmt_s "$(med ig_bk_unchanged)") | $(spread ig_bk_unchanged) |
| docker build, target/ changed | $(fmt_s "$(med ig_bk_changed)") | $(spread ig_bk_changed) |

| ratio (of medians) | value |
|---|---|
| rbuild / BuildKit, unchanged | $(ratio "$(med ig_rb_unchanged)" "$(med ig_bk_unchanged)") |
| rbuild / BuildKit, target/ changed | $(ratio "$(med ig_rb_changed)" "$(med ig_bk_changed)") |
EOF
  if [[ -n $hd ]]; then
    cat <<EOF
| rbuild unchanged / unchanged 20k-file host directory (target ≤ 1×) | $(ratio "$(med ig_rb_unchanged)" "$hd") |
| rbuild target/ changed / unchanged 20k-file host directory (target ≤ 1×) | $(ratio "$(med ig_rb_changed)" "$hd") |
EOF
  fi
}

# ----------------------------------------------------------------- remote --
# shellcheck source=bench/remote.sh
source "$REPO/bench/remote.sh"
# shellcheck source=bench/explain.sh
source "$REPO/bench/explain.sh"

# ------------------------------------------------------------------ main --
# uses_docker: does a selected scenario use dockerd (BuildKit, push, pull)?
uses_docker() {
  want steps || want hostdir || want publish || want pull || want parallel || want rustdeps || want netns || want branches || want ignored || want remote ||
    { want scale && [[ $SC_BK_N != 0 ]]; }
}
if uses_docker; then
  ensure_package docker.io "$DOCKER" "$DOCKERD"
  ensure_dockerd
fi
say "scenarios: $SCENARIOS; logs in $LOG_DIR"

if want steps; then
  say "10 trivial steps: $REPS runs per measurement"
  bench_floor
  bench_rbuild
  bench_buildkit
fi
if want hostdir; then
  say "host directory: $COLD_REPS cold runs, $HD_REPS of the others"
  bench_hostdir
fi
if want cutoff; then
  say "early cutoff: $REPS runs of each mode"
  bench_cutoff
fi
if want publish || want pull; then ensure_base_image; fi
if want publish; then
  say "publish: $PUB_REPS rounds (a first push and a re-push per engine each)"
  bench_publish
fi
if want pull; then
  say "pull: $PULL_REPS pulls per engine and of each floor"
  bench_pull
fi
if want parallel; then
  say "parallel: $REPS runs of each engine"
  bench_parallel
fi
if want scale; then
  say "scale: N = $SC_STEPS"
  bench_scale
fi
if want rustdeps; then
  say "rustdeps: $RD_COLD_REPS cold builds per engine, $RD_REPS cached and $RD_REPS after a one-line change"
  bench_rustdeps
fi
if want netns; then
  say "netns: $REPS runs of each network, each engine"
  bench_netns
fi
if want branches; then
  say "branches: $REPS runs of each engine, one branch and two"
  bench_branches
fi
if want ignored; then
  say "ignored: $IG_REPS runs of each engine, unchanged and after a change in target/"
  bench_ignored
fi
if want ready; then
  say "ready: $REPS cold services and consumers"
  bench_ready
fi
if want services; then
  say "services: the examples/services matrix cold and cached"
  bench_services
fi
if want remote; then
  say "remote: $RE_REPS rounds of each engine's cold, export, fresh-runner and changed runs; $RE_SC_N steps from the remote cache"
  bench_remote
fi
if want explain; then
  say "explain: a $EX_N-step chain cold and changed, a 20,000-file directory changed"
  bench_explain
fi
if want compile; then
  say "compile: $CP_COLD_REPS first compiles, $REPS after an edit and $REPS unchanged (and bare cargo)"
  bench_compile
fi

{
  report_header
  report_targets
  if want steps; then report_ten_steps; fi
  if want hostdir; then report_hostdir; fi
  if want cutoff; then report_cutoff; fi
  if want publish || want pull; then report_base_image; fi
  if want publish; then report_publish; fi
  if want pull; then report_pull; fi
  if want parallel; then report_parallel; fi
  if want scale; then report_scale; fi
  if want rustdeps; then report_rustdeps; fi
  if want compile; then report_compile; fi
  if want netns; then report_netns; fi
  if want branches; then report_branches; fi
  if want ignored; then report_ignored; fi
  if want ready; then report_ready; fi
  if want services; then report_services; fi
  if want remote; then report_remote; fi
  if want explain; then report_explain; fi
  report_profiles
} >"$RESULTS.tmp"
mv -f "$RESULTS.tmp" "$RESULTS"
cat "$RESULTS"
say "wrote $RESULTS"
