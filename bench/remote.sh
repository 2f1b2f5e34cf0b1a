# shellcheck shell=bash
# Scenario "remote" of bench/run.sh (sourced by it): a fleet's shared cache
# in a registry. rbuild's --cache-to / --cache-from beside BuildKit's
# registry-backed inline cache (BUILDKIT_INLINE_CACHE=1, pushed, then
# --cache-from on a second dockerd with an empty data root), on the same
# 10-step and rust-deps pipelines:
#   cold          a cold run, no export (the baseline)
#   cold_export   a cold run that exports: rbuild --cache-to (the run ends
#                 when its pushes have), BuildKit build + docker push
#   fresh         a fresh runner (nothing local: rbuild a new state root and
#                 an emptied namespace, BuildKit a new dockerd data root),
#                 everything from the remote cache
#   changed       a fresh runner after a one-line change (the 10-step
#                 pipeline's last step; src/main.rs of the Rust project)
# and rbuild alone: a RE_SC_N-step chain on a fresh runner, all remote hits.

RE_NS=rbuild-bench-remote
RE_ROOT=$STATE/remote-root
RE_FRESH_NS=rbuild-bench-remote-fresh
RE_FRESH_ROOT=$STATE/remote-fresh-root
RE_SOCK=$RUN_DIR/docker-remote.sock
RE_REPS=${BENCH_REMOTE_REPS:-3}
RE_SC_N=${BENCH_REMOTE_SCALE_N:-1000}
RE_STARTED_DOCKERD=
[[ $RE_REPS =~ ^[0-9]+$ && $RE_REPS -ge 3 ]] || die "BENCH_REMOTE_REPS must be a number >= 3 (got '$RE_REPS')"
[[ $RE_SC_N =~ ^[0-9]+$ && $RE_SC_N -ge 1 ]] || die "BENCH_REMOTE_SCALE_N must be a number >= 1 (got '$RE_SC_N')"

# Repositories of this bench run only (nothing cached from an earlier one).
re_repo() { echo "127.0.0.1:5000/rbuild-bench-remote-${RUN_ID,,}/$1"; }

# re_rb NS ROOT LOG ARGS...: `rbuild [ARGS]` in a runner (env from the caller).
re_rb() {
  local ns=$1 root=$2 log=$3
  shift 3
  RBUILD_ROOT=$root RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$ns RBUILD_PROGRESS=plain \
    "$RBUILD" "$@" >"$log.out" 2>"$log"
}

# re_rb_check LOG RAN REMOTE OUT: the run's counts, and its output's last line.
re_rb_check() {
  local log=$1 want_ran=$2 want_remote=$3 want_out=$4 run cached remote
  read -r run cached < <(rb_counts "$log") || true
  remote=$(grep -c ' CACHED (remote ' "$log" || true)
  if [[ ${run:-x} != "$want_ran" || $remote != "$want_remote" ]] ||
    [[ $(tail -n 1 "$log.out") != "$want_out" ]]; then
    tail -n 30 "$log" >&2
    tail -n 5 "$log.out" >&2
    die "remote (rbuild): expected $want_ran steps run, $want_remote remote hits and '$want_out'; saw $run run, $remote remote hits, '$(tail -n 1 "$log.out")' (log: $log)"
  fi
  if grep -q 'warning: remote cache' "$log"; then
    grep 'warning: remote cache' "$log" >&2
    die "remote (rbuild): a remote cache warning (log: $log)"
  fi
}

# re_fresh: the fresh runner has nothing: no state root, no snapshot, no image.
re_fresh() { rb_reset "$RE_FRESH_NS" "$RE_FRESH_ROOT"; }

# re_dockerd_fresh: the second dockerd, with an empty data root.
re_dockerd_fresh() {
  re_dockerd_down
  rm -rf "${STATE:?}/docker-remote"
  launch_dockerd RE_STARTED_DOCKERD docker-remote "$RE_SOCK" \
    --containerd-namespace=rbuild-bench-remote-moby \
    --containerd-plugins-namespace=rbuild-bench-remote-moby-plugins \
    --bridge=none --iptables=false --ip6tables=false
}

re_dockerd_down() {
  [[ -n $RE_STARTED_DOCKERD ]] || return 0
  stop_pid "$RE_STARTED_DOCKERD"
  RE_STARTED_DOCKERD=
}

# re_bk_check LOG RAN CACHED: RUN steps that ran and were CACHED.
re_bk_check() {
  local ran cached
  read -r ran cached < <(bk_runs "$1")
  if [[ $ran -ne $2 || $cached -ne $3 ]]; then
    tail -n 40 "$1" >&2
    die "remote (BuildKit): expected $2 RUN steps to run and $3 CACHED; saw $ran and $cached (log: $1)"
  fi
}

# re_time NAME WHAT LOG COMMAND...: `timed` with `sync` first.
re_time() {
  settle
  timed "$@"
}

# ----------------------------------------------------------- 10 steps --
re_ten_rb() { # nonce log [--cache-to|--cache-from REPO] (BENCH_LAST from the caller)
  local nonce=$1 log=$2 ns=$RE_NS root=$RE_ROOT
  shift 2
  [[ ${1:-} == --cache-from ]] && ns=$RE_FRESH_NS root=$RE_FRESH_ROOT
  BENCH_NONCE=$nonce re_rb "$ns" "$root" "$log" "$@" run "$PIPELINE"
}

re_ten_bk() { # sock nonce last log docker-build-args...
  local sock=$1 nonce=$2 last=$3 log=$4
  shift 4
  "$DOCKER" -H "unix://$sock" build --progress=plain --network=none \
    --build-arg "NONCE=$nonce" --build-arg "LAST=$last" "$@" - <"$DOCKERFILE" >"$log" 2>&1
}

re_ten_bk_export() { # nonce log ref
  re_ten_bk "$DOCKER_SOCK" "$1" "" "$2" --build-arg BUILDKIT_INLINE_CACHE=1 -t "$3" &&
    "$DOCKER" -H "unix://$DOCKER_SOCK" push "$3" >>"$2" 2>&1
}

bench_remote_ten() {
  local i nonce log=$LOG_DIR/remote-ten repo ref
  repo=$(re_repo ten)
  for ((i = 1; i <= RE_REPS; i++)); do
    nonce=remote-$RUN_ID-$i
    ref=$(re_repo buildkit-ten):$i
    # rbuild: cold, cold with export, fresh, fresh after a change.
    rb_forget "$RE_NS" "$RE_ROOT"
    re_time re_rb_ten_cold "rbuild cold" "$log-rb" re_ten_rb "$nonce-a" "$log-rb"
    re_rb_check "$log-rb" "$STEPS" 0 "step $STEPS"
    rb_forget "$RE_NS" "$RE_ROOT"
    re_time re_rb_ten_cold_export "rbuild cold --cache-to" "$log-rb" re_ten_rb "$nonce" "$log-rb" --cache-to "$repo"
    re_rb_check "$log-rb" "$STEPS" 0 "step $STEPS"
    grep -q "remote cache $repo: pushed $STEPS steps" "$log-rb" || die "remote: rbuild pushed no $STEPS steps (log: $log-rb)"
    re_fresh
    re_time re_rb_ten_fresh "rbuild fresh runner" "$log-rb" re_ten_rb "$nonce" "$log-rb" --cache-from "$repo"
    re_rb_check "$log-rb" 0 "$STEPS" "step $STEPS"
    re_fresh
    BENCH_LAST=" changed" re_time re_rb_ten_changed "rbuild fresh runner, changed" "$log-rb" \
      re_ten_rb "$nonce" "$log-rb" --cache-from "$repo"
    re_rb_check "$log-rb" 1 $((STEPS - 1)) "step $STEPS changed"
    cp "$log-rb" "$LOG_DIR/remote-ten-rb-changed.log"

    # BuildKit: the same four.
    "$DOCKER" builder prune -af >/dev/null 2>&1 || true
    re_time re_bk_ten_cold "docker build (cold)" "$log-bk" re_ten_bk "$DOCKER_SOCK" "$nonce-a" "" "$log-bk"
    re_bk_check "$log-bk" "$STEPS" 0
    "$DOCKER" builder prune -af >/dev/null 2>&1 || true
    re_time re_bk_ten_cold_export "docker build + push (inline cache)" "$log-bk" re_ten_bk_export "$nonce" "$log-bk" "$ref"
    re_bk_check "$log-bk" "$STEPS" 0
    re_dockerd_fresh
    re_time re_bk_ten_fresh "docker build --cache-from (fresh dockerd)" "$log-bk" \
      re_ten_bk "$RE_SOCK" "$nonce" "" "$log-bk" --cache-from "$ref"
    re_bk_check "$log-bk" 0 "$STEPS"
    re_dockerd_fresh
    re_time re_bk_ten_changed "docker build --cache-from (fresh dockerd), changed" "$log-bk" \
      re_ten_bk "$RE_SOCK" "$nonce" " changed" "$log-bk" --cache-from "$ref"
    re_bk_check "$log-bk" 1 $((STEPS - 1))
    cp "$log-bk" "$LOG_DIR/remote-ten-bk-changed.log"
  done
  re_dockerd_down
  say "remote, 10 steps: rbuild cold $(stats re_rb_ten_cold) / export $(stats re_rb_ten_cold_export) / fresh $(stats re_rb_ten_fresh) / changed $(stats re_rb_ten_changed); BuildKit cold $(stats re_bk_ten_cold) / export $(stats re_bk_ten_cold_export) / fresh $(stats re_bk_ten_fresh) / changed $(stats re_bk_ten_changed)"
}

# ----------------------------------------------------------- rust-deps --
re_rd_rb() { # log [--cache-to|--cache-from REPO]
  local log=$1 ns=$RE_NS root=$RE_ROOT ca=()
  shift
  [[ ${1:-} == --cache-from ]] && ns=$RE_FRESH_NS root=$RE_FRESH_ROOT
  [[ -f $RD_CA ]] && ca=(--ca-cert "$RD_CA")
  RBUILD_RUST_IMAGE=$RD_IMAGE re_rb "$ns" "$root" "$log" "$@" run "${ca[@]}" "$RD_PIPELINE" -- "$RD_PROJECT"
}

re_rd_bk() { # sock log docker-build-args...
  local sock=$1 log=$2 secret=()
  shift 2
  [[ -f $RD_CA ]] && secret=(--secret "id=ca,src=$RD_CA")
  "$DOCKER" -H "unix://$sock" build --progress=plain --network=host "${secret[@]}" "$@" \
    -f "$RD_DOCKERFILE" "$RD_PROJECT" >"$log" 2>&1
}

re_rd_bk_export() { # log ref
  re_rd_bk "$DOCKER_SOCK" "$1" --build-arg BUILDKIT_INLINE_CACHE=1 -t "$2" &&
    "$DOCKER" -H "unix://$DOCKER_SOCK" push "$2" >>"$1" 2>&1
}

# re_rd_out LOG: the program's line ("run   | hello … (…)"), for the checks.
re_rd_out() { tail -n 1 "$1.out"; }

bench_remote_rustdeps() {
  local i log=$LOG_DIR/remote-rd repo ref want changed_out ran _
  repo=$(re_repo rustdeps)
  reg_manifest rust 1 >/dev/null || die "$RD_IMAGE is not in the registry: run 'make setup'"
  rm -rf "$RD_PROJECT"
  mkdir -p "$RD_PROJECT"
  cp -r "$RD_FIXTURE/." "$RD_PROJECT/"
  rm -rf "$RD_PROJECT/target"
  "$DOCKER" pull "$RD_IMAGE" >/dev/null 2>&1 || die "docker pull $RD_IMAGE failed"
  for ((i = 1; i <= RE_REPS; i++)); do
    ref=$(re_repo buildkit-rustdeps):$i
    # Each round's export is of a new text, so that it is cold for both.
    rd_edit "remote round $i of $RUN_ID"
    rb_forget "$RE_NS" "$RE_ROOT"
    re_time re_rb_rd_cold "rbuild rust-deps cold" "$log-rb" re_rd_rb "$log-rb"
    [[ $(re_rd_out "$log-rb") == "run   | remote round $i of $RUN_ID"* ]] || die "remote rust-deps cold: wrong output (log: $log-rb.out)"
    rd_edit "remote round $i export of $RUN_ID"
    want="run   | remote round $i export of $RUN_ID"
    rb_forget "$RE_NS" "$RE_ROOT"
    re_time re_rb_rd_cold_export "rbuild rust-deps cold --cache-to" "$log-rb" re_rd_rb "$log-rb" --cache-to "$repo"
    [[ $(re_rd_out "$log-rb") == "$want"* ]] || die "remote rust-deps: no '$want' (log: $log-rb.out)"
    grep -q "remote cache $repo: pushed" "$log-rb" || die "remote rust-deps: nothing pushed (log: $log-rb)"
    re_fresh
    re_time re_rb_rd_fresh "rbuild rust-deps fresh runner" "$log-rb" re_rd_rb "$log-rb" --cache-from "$repo"
    read -r ran _ < <(rb_counts "$log-rb")
    [[ $ran == 0 && $(re_rd_out "$log-rb") == "$want"* ]] ||
      die "remote rust-deps fresh runner: $ran steps ran, or no '$want' (log: $log-rb)"
    rd_edit "remote round $i changed of $RUN_ID"
    changed_out="run   | remote round $i changed of $RUN_ID"
    re_fresh
    re_time re_rb_rd_changed "rbuild rust-deps fresh runner, changed" "$log-rb" re_rd_rb "$log-rb" --cache-from "$repo"
    [[ $(re_rd_out "$log-rb") == "$changed_out"* ]] || die "remote rust-deps changed: no '$changed_out' (log: $log-rb.out)"
    [[ $(rb_step_re "$log-rb" "$RD_RB_DEPS_RE") == CACHED ]] || grep -q "exec cargo build --release --locked CACHED (remote" "$log-rb" ||
      die "remote rust-deps changed: the dependencies step ran (log: $log-rb)"
    cp "$log-rb" "$LOG_DIR/remote-rd-rb-changed.log"

    # BuildKit, the same texts.
    rd_edit "remote round $i of $RUN_ID"
    "$DOCKER" builder prune -af >/dev/null 2>&1 || true
    re_time re_bk_rd_cold "docker build rust-deps (cold)" "$log-bk" re_rd_bk "$DOCKER_SOCK" "$log-bk"
    rd_edit "remote round $i export of $RUN_ID"
    "$DOCKER" builder prune -af >/dev/null 2>&1 || true
    re_time re_bk_rd_cold_export "docker build + push rust-deps (inline cache)" "$log-bk" re_rd_bk_export "$log-bk" "$ref"
    re_dockerd_fresh
    re_time re_bk_rd_fresh "docker build rust-deps --cache-from (fresh dockerd)" "$log-bk" \
      re_rd_bk "$RE_SOCK" "$log-bk" --cache-from "$ref"
    cp "$log-bk" "$LOG_DIR/remote-rd-bk-fresh.log"
    rd_edit "remote round $i changed of $RUN_ID"
    re_dockerd_fresh
    re_time re_bk_rd_changed "docker build rust-deps --cache-from (fresh dockerd), changed" "$log-bk" \
      re_rd_bk "$RE_SOCK" "$log-bk" --cache-from "$ref"
  done
  re_dockerd_down
  rd_edit "$RD_GREETING0"
  # What BuildKit's inline cache let the fresh dockerd skip.
  read -r RE_BK_RD_FRESH_RAN RE_BK_RD_FRESH_CACHED < <(bk_runs "$LOG_DIR/remote-rd-bk-fresh.log")
  say "remote, rust-deps: rbuild cold $(stats re_rb_rd_cold) / export $(stats re_rb_rd_cold_export) / fresh $(stats re_rb_rd_fresh) / changed $(stats re_rb_rd_changed); BuildKit cold $(stats re_bk_rd_cold) / export $(stats re_bk_rd_cold_export) / fresh $(stats re_bk_rd_fresh) / changed $(stats re_bk_rd_changed)"
}

# ------------------------------------------------------------ N steps --
bench_remote_scale() {
  local i log=$LOG_DIR/remote-scale repo nonce=remote-scale-$RUN_ID
  repo=$(re_repo scale)
  rb_forget "$RE_NS" "$RE_ROOT"
  say "remote: a cold $RE_SC_N-step run that pushes (minutes)"
  re_time re_rb_sc_cold_export "rbuild $RE_SC_N steps cold --cache-to" "$log" \
    env BENCH_NONCE="$nonce" RBUILD_ROOT="$RE_ROOT" RBUILD_CACHE_DIR="$RB_CACHE" RBUILD_NAMESPACE="$RE_NS" RBUILD_PROGRESS=plain \
    sh -c '"$0" run --cache-to "$1" "$2" -- "$3" stdout >"$4.out" 2>"$4"' "$RBUILD" "$repo" "$SC_PIPELINE" "$RE_SC_N" "$log"
  re_rb_check "$log" "$RE_SC_N" 0 "f$RE_SC_N"
  for ((i = 1; i <= REPS; i++)); do
    re_fresh
    re_time re_rb_sc_fresh "rbuild $RE_SC_N steps, fresh runner" "$log" \
      env BENCH_NONCE="$nonce" RBUILD_ROOT="$RE_FRESH_ROOT" RBUILD_CACHE_DIR="$RB_CACHE" RBUILD_NAMESPACE="$RE_FRESH_NS" RBUILD_PROGRESS=plain \
      sh -c '"$0" run --cache-from "$1" "$2" -- "$3" stdout >"$4.out" 2>"$4"' "$RBUILD" "$repo" "$SC_PIPELINE" "$RE_SC_N" "$log"
    re_rb_check "$log" 0 "$RE_SC_N" "f$RE_SC_N"
  done
  rb_forget "$RE_NS" "$RE_ROOT"
  say "remote, $RE_SC_N steps: cold with export $(stats re_rb_sc_cold_export) / fresh runner $(stats re_rb_sc_fresh) (median min max, ms)"
}

bench_remote() {
  say "remote: warm-ups (compile the pipelines; images into $RE_NS)"
  rb_reset "$RE_NS" "$RE_ROOT"
  re_ten_rb "warmup-$RUN_ID" "$LOG_DIR/remote-warmup" || { cat "$LOG_DIR/remote-warmup" >&2; die "rbuild warm-up failed"; }
  BENCH_NONCE=warmup-$RUN_ID re_rb "$RE_NS" "$RE_ROOT" "$LOG_DIR/remote-warmup" run "$SC_PIPELINE" -- 1 stdout ||
    { cat "$LOG_DIR/remote-warmup" >&2; die "rbuild warm-up failed"; }
  bench_remote_ten
  if [[ ${BENCH_REMOTE_RUSTDEPS:-1} == 1 ]]; then bench_remote_rustdeps; fi
  bench_remote_scale
  rb_reset "$RE_NS" "$RE_ROOT"
  re_fresh
}

report_remote() {
  local sc
  sc=$(med re_rb_sc_fresh)
  cat <<EOF

## Scenario: a fleet's shared cache in a registry (remote)

rbuild's remote cache (\`--cache-to REPO\` on the runner that runs a step,
\`--cache-from REPO\` on the others; \`docs/remote-cache.md\`) beside
BuildKit's registry-backed inline cache (\`--build-arg
BUILDKIT_INLINE_CACHE=1\` and \`docker push\`, then \`docker build
--cache-from REF\` on a second dockerd started with an empty data root), both
on the local registry (127.0.0.1:5000), on the 10-step pipeline and
Dockerfile and on rust-deps (as in their scenarios). $RE_REPS rounds; in each:

- **cold**: nothing cached (rbuild: a new state root, no step snapshot;
  BuildKit: \`docker builder prune -af\`); both have the base image.
- **cold + export**: the same with the export: rbuild's run ends when its
  pushes (which overlap the run) have; BuildKit's build then \`docker push\`.
- **fresh runner**: nothing local at all (rbuild: a new state root and an
  emptied namespace, no image; BuildKit: a new data root), everything from
  the remote cache. Checked: rbuild ran no step (every step a remote hit),
  BuildKit's 10 RUN steps CACHED.
- **fresh runner, one line changed**: the 10-step pipeline's last step (9
  hits, 1 run, checked), rust-deps' \`src/main.rs\` (the dependencies step a
  remote hit, checked).

| measurement | rbuild (s) | BuildKit (s) | rbuild / BuildKit |
|---|---|---|---|
| 10 steps, cold | $(fmt_s "$(med re_rb_ten_cold)") | $(fmt_s "$(med re_bk_ten_cold)") | $(ratio "$(med re_rb_ten_cold)" "$(med re_bk_ten_cold)") |
| 10 steps, cold + export | $(fmt_s "$(med re_rb_ten_cold_export)") | $(fmt_s "$(med re_bk_ten_cold_export)") | $(ratio "$(med re_rb_ten_cold_export)" "$(med re_bk_ten_cold_export)") |
| 10 steps, fresh runner | $(fmt_s "$(med re_rb_ten_fresh)") | $(fmt_s "$(med re_bk_ten_fresh)") | $(ratio "$(med re_rb_ten_fresh)" "$(med re_bk_ten_fresh)") |
| 10 steps, fresh runner, last step changed | $(fmt_s "$(med re_rb_ten_changed)") | $(fmt_s "$(med re_bk_ten_changed)") | $(ratio "$(med re_rb_ten_changed)" "$(med re_bk_ten_changed)") |
EOF
  if [[ -s $TIMES/re_rb_rd_cold ]]; then
    cat <<EOF
| rust-deps, cold | $(fmt_s "$(med re_rb_rd_cold)") | $(fmt_s "$(med re_bk_rd_cold)") | $(ratio "$(med re_rb_rd_cold)" "$(med re_bk_rd_cold)") |
| rust-deps, cold + export | $(fmt_s "$(med re_rb_rd_cold_export)") | $(fmt_s "$(med re_bk_rd_cold_export)") | $(ratio "$(med re_rb_rd_cold_export)" "$(med re_bk_rd_cold_export)") |
| rust-deps, fresh runner | $(fmt_s "$(med re_rb_rd_fresh)") | $(fmt_s "$(med re_bk_rd_fresh)") | $(ratio "$(med re_rb_rd_fresh)" "$(med re_bk_rd_fresh)") |
| rust-deps, fresh runner, one line changed | $(fmt_s "$(med re_rb_rd_changed)") | $(fmt_s "$(med re_bk_rd_changed)") | $(ratio "$(med re_rb_rd_changed)" "$(med re_bk_rd_changed)") |
EOF
  fi
  cat <<EOF

| target | this run | met |
|---|---|---|
| export adds ≤ 10% to a cold run (10 steps) | $(ratio "$(med re_rb_ten_cold_export)" "$(med re_rb_ten_cold)") | $(awk -v a="$(med re_rb_ten_cold_export)" -v b="$(med re_rb_ten_cold)" 'BEGIN { print (a <= 1.10 * b) ? "yes" : "no" }') |
EOF
  if [[ -s $TIMES/re_rb_rd_cold ]]; then
    cat <<EOF
| export adds ≤ 10% to a cold run (rust-deps) | $(ratio "$(med re_rb_rd_cold_export)" "$(med re_rb_rd_cold)") | $(awk -v a="$(med re_rb_rd_cold_export)" -v b="$(med re_rb_rd_cold)" 'BEGIN { print (a <= 1.10 * b) ? "yes" : "no" }') |
| fresh runner ≤ 0.5× BuildKit's (rust-deps) | $(ratio "$(med re_rb_rd_fresh)" "$(med re_bk_rd_fresh)") | $(awk -v a="$(med re_rb_rd_fresh)" -v b="$(med re_bk_rd_fresh)" 'BEGIN { print (a <= 0.5 * b) ? "yes" : "no" }') |
EOF
  fi
  cat <<EOF
| fresh runner ≤ 0.5× BuildKit's (10 steps) | $(ratio "$(med re_rb_ten_fresh)" "$(med re_bk_ten_fresh)") | $(awk -v a="$(med re_rb_ten_fresh)" -v b="$(med re_bk_ten_fresh)" 'BEGIN { print (a <= 0.5 * b) ? "yes" : "no" }') |
| $RE_SC_N steps on a fresh runner, all remote hits, < 2 s | $(fmt_s "$sc") s (min – max $(spread re_rb_sc_fresh) s, $REPS runs) | $(awk -v a="$sc" 'BEGIN { print (a < 2000) ? "yes" : "no" }') |

The $RE_SC_N-step chain (\`bench/pipelines/scale.rs -- $RE_SC_N stdout\`): one
cold run with \`--cache-to\` took $(fmt_s "$(med re_rb_sc_cold_export)") s (pushes included);
then $REPS fresh runners each answered it from the remote cache, one GET per
step, in sequence (each step's key needs its parent's result).
EOF
  if [[ -n ${RE_BK_RD_FRESH_RAN:-} ]]; then
    cat <<EOF
BuildKit's inline cache on the fresh dockerd, rust-deps' last round: it ran
$RE_BK_RD_FRESH_RAN RUN steps and found $RE_BK_RD_FRESH_CACHED CACHED.
EOF
  fi
}
