#!/usr/bin/env bash
# rbuild benchmarks beside BuildKit (dockerd) and a bare `ctr run` floor.
#
# `make bench` runs this after `make setup` (containerd + test registries) and
# `make build` (target/release/rbuild). It writes bench/RESULTS.md and prints
# the same tables on stdout. See bench/README.md.
#
# Environment:
#   BENCH_SCENARIOS="steps hostdir cutoff"
#                          which scenarios to run (default: all three)
#   BENCH_REPS=10          timed repetitions per measurement (at least 5);
#                          10 trivial steps, and both modes of early cutoff
#   BENCH_HOSTDIR_REPS=5   host directory: unchanged and one-file-changed runs,
#                          and the floors (at least 5)
#   BENCH_COLD_REPS=5      host directory: cold runs of each engine (at least 3)
#   BENCH_CUTOFF_MB=50     early cutoff: MiB the step writes (plus 1000 small files)
#   BENCH_KEEP_DOCKERD=1   leave the dockerd this script started running
#   BENCH_RESET=0          keep rbuild's bench state (index, snapshots) from
#                          earlier runs instead of starting from empty
#   BENCH_RESULTS=PATH     where to write the report (default bench/RESULTS.md)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

SCENARIOS=${BENCH_SCENARIOS:-steps hostdir cutoff}
REPS=${BENCH_REPS:-10}
HD_REPS=${BENCH_HOSTDIR_REPS:-5}
COLD_REPS=${BENCH_COLD_REPS:-5}
CO_MB=${BENCH_CUTOFF_MB:-50}
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

# Debian's docker.io (client and daemon from the same package); not the newer
# client in /usr/local/bin. A private dockerd: own socket, data and exec roots.
DOCKER=/usr/bin/docker
DOCKERD=/usr/sbin/dockerd
DOCKER_SOCK=$RUN_DIR/docker.sock
DOCKERD_PIDFILE=$RUN_DIR/dockerd.pid
DOCKERD_LOG=$LOG_DIR/dockerd.log
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
for s in $SCENARIOS; do
  case $s in
    steps | hostdir | cutoff) ;;
    *) die "BENCH_SCENARIOS: unknown scenario '$s' (known: steps hostdir cutoff)" ;;
  esac
done
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
cleanup() {
  local rc=$?
  if declare -F floor_cleanup >/dev/null; then floor_cleanup || true; fi
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
docker_up() { timeout 10 "$DOCKER" info >/dev/null 2>&1; }

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
  setsid nohup "$DOCKERD" \
    --containerd=/run/containerd/containerd.sock \
    --bridge=none --iptables=false --ip6tables=false \
    --host="unix://$DOCKER_SOCK" \
    --data-root="$STATE/docker" \
    --exec-root="$RUN_DIR/docker" \
    --pidfile="$DOCKERD_PIDFILE" \
    </dev/null >>"$DOCKERD_LOG" 2>&1 &
  STARTED_DOCKERD=$!
  local i
  for ((i = 0; i < 300; i++)); do
    if docker_up; then
      STARTED_DOCKERD=$(cat "$DOCKERD_PIDFILE" 2>/dev/null || echo "$STARTED_DOCKERD")
      say "dockerd: up (pid $STARTED_DOCKERD)"
      return
    fi
    kill -0 "$STARTED_DOCKERD" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 30 "$DOCKERD_LOG" >&2 || true
  die "dockerd did not answer 'docker info' (log: $DOCKERD_LOG)"
}

# ----------------------------------------------------------------- timing --
now_ns() { date +%s%N; }

# record NAME MS: append one sample (milliseconds); all samples, in order,
# also go to $LOG_DIR/samples.tsv.
record() {
  echo "$2" >>"$TIMES/$1"
  printf '%s\t%s\t%s\n' "$RUN_ID" "$1" "$2" >>"$LOG_DIR/samples.tsv"
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
  local log=$LOG_DIR/rbuild.log i t0 t1 nonce
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
    t0=$(now_ns)
    rb_run "$nonce" "$log" || { cat "$log" >&2; die "rbuild cold run failed"; }
    t1=$(now_ns)
    check_rbuild "$log" 0
    record rbuild_cold $(((t1 - t0) / 1000000))
    cp "$log" "$LOG_DIR/rbuild-cold.log"
  done
  for ((i = 1; i <= REPS; i++)); do
    t0=$(now_ns)
    rb_run "$nonce" "$log" || { cat "$log" >&2; die "rbuild cached run failed"; }
    t1=$(now_ns)
    check_rbuild "$log" "$STEPS"
    record rbuild_cached $(((t1 - t0) / 1000000))
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
  local log=$LOG_DIR/buildkit.log i t0 t1 nonce
  say "BuildKit: warm-up (pulls the base image into dockerd)"
  bk_build "warmup-$RUN_ID" "$log" || { cat "$log" >&2; die "docker build warm-up failed"; }
  bk_build "warmup-$RUN_ID" "$log" || { cat "$log" >&2; die "docker build warm-up failed"; }
  check_buildkit "$log" "$STEPS"

  for ((i = 1; i <= REPS; i++)); do
    nonce=$RUN_ID-$i
    t0=$(now_ns)
    bk_build "$nonce" "$log" || { cat "$log" >&2; die "docker build (cold) failed"; }
    t1=$(now_ns)
    check_buildkit "$log" 0
    record buildkit_cold $(((t1 - t0) / 1000000))
    cp "$log" "$LOG_DIR/buildkit-cold.log"
  done
  for ((i = 1; i <= REPS; i++)); do
    t0=$(now_ns)
    bk_build "$nonce" "$log" || { cat "$log" >&2; die "docker build (cached) failed"; }
    t1=$(now_ns)
    check_buildkit "$log" "$STEPS"
    record buildkit_cached $(((t1 - t0) / 1000000))
    cp "$log" "$LOG_DIR/buildkit-cached.log"
  done
  # Drop the build cache of this run's cold builds (keeps dockerd's data-root small).
  "$DOCKER" builder prune -af >/dev/null 2>&1 || true
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
wall-clock seconds of the whole command (\`date +%s%N\` around it), median of
$REPS runs, with the min – max spread.

- Date: $(date -u '+%Y-%m-%d %H:%M UTC')
- Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")
- rbuild: commit $(rbuild_commit), release build
- containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR == 1 {print $3}')
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
  pulled into the namespace.
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
must report all 10 CACHED, or the bench fails.

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

# ------------------------------------------------------------------ main --
ensure_docker_package
ensure_dockerd
say "runs: $REPS per measurement; logs in $LOG_DIR"

bench_floor
bench_rbuild
bench_buildkit

{
  report_header
  report_ten_steps
} >"$RESULTS.tmp"
mv -f "$RESULTS.tmp" "$RESULTS"
cat "$RESULTS"
say "wrote $RESULTS"
