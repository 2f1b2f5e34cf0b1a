# shellcheck shell=bash
# Scenario "explain" of bench/run.sh (sourced by it): what miss
# explanations cost. rbuild compares each missed step's key parts with the
# step it replaces (recording the host listings they name first) and logs
# the time that took per step ("miss explained", RBUILD_LOG=rbuild=debug);
# the parts themselves are written with the step's index row, in its
# transaction. Measured on
#   chain    the scale pipeline's EX_N-step chain run cold, then with a new
#            nonce (every step misses and is compared with its last run)
#   hostdir  the hostdir scenario's 20,000-file tree, copied in, after one
#            file changed (its new listing recorded, both compared)
# and the index's growth: bytes of recorded parts per step. There is no
# peer figure: BuildKit explains nothing, so the cost is shown against the
# run's own time.

EX_NS=rbuild-bench-explain
EX_ROOT=$STATE/explain-root
EX_N=${BENCH_EXPLAIN_N:-300}
EX_DIR=$STATE/explain
[[ $EX_N =~ ^[0-9]+$ && $EX_N -ge 2 ]] || die "BENCH_EXPLAIN_N must be a number >= 2 (got '$EX_N')"

# ex_rb LOG ARGS...: `rbuild ARGS` in the scenario's namespace, debug log on.
ex_rb() {
  local log=$1
  shift
  RBUILD_ROOT=$EX_ROOT RBUILD_CACHE_DIR=$RB_CACHE RBUILD_NAMESPACE=$EX_NS RBUILD_PROGRESS=plain \
    RBUILD_LOG=rbuild=debug "$RBUILD" "$@" >"$log.out" 2>"$log"
}

# ex_costs LOG NAME: the per-step explanation times (µs) of a run, recorded as NAME.
ex_costs() {
  local log=$1 name=$2
  sed 's/\x1b\[[0-9;]*m//g' "$log" | grep 'miss explained' |
    sed -n 's/.* us=\([0-9]*\).*/\1/p' >"$TIMES/$name"
  [[ -s $TIMES/$name ]] || die "explain: no 'miss explained' line in $log"
}

# ex_wall LOG: the run's wall time in ms, from its summary line.
ex_wall() { sed -n 's/^rbuild: .* in \([0-9.]*\) s$/\1/p' "$1" | tail -n 1 | awk '{printf "%d", $1 * 1000}'; }

# ex_pct NAME P: the P-th percentile of NAME's values.
ex_pct() { sort -n "$TIMES/$1" | awk -v p="$2" '{v[NR] = $1} END { i = int((NR - 1) * p / 100) + 1; print v[i] }'; }

# ex_sum NAME: the sum of NAME's values.
ex_sum() { awk '{s += $1} END {printf "%d", s}' "$TIMES/$1"; }

bench_explain() {
  local log=$LOG_DIR/explain
  rb_reset "$EX_NS" "$EX_ROOT"
  mkdir -p "$EX_DIR"
  say "explain: chain of $EX_N steps, cold then every step changed"
  BENCH_NONCE=a-$RUN_ID ex_rb "$log-chain-cold" run "$REPO/bench/pipelines/scale.rs" -- "$EX_N" ||
    { tail -n 30 "$log-chain-cold" >&2; die "explain: the cold chain failed"; }
  BENCH_NONCE=b-$RUN_ID ex_rb "$log-chain-changed" run "$REPO/bench/pipelines/scale.rs" -- "$EX_N" ||
    { tail -n 30 "$log-chain-changed" >&2; die "explain: the changed chain failed"; }
  grep -q 'cache miss: its input ".*" changed (see that step' "$log-chain-changed" ||
    die "explain: the changed chain's steps did not say why (log: $log-chain-changed)"
  ex_costs "$log-chain-cold" ex_chain_cold
  ex_costs "$log-chain-changed" ex_chain_changed
  EX_CHAIN_WALL=$(ex_wall "$log-chain-changed")
  read -r EX_ROWS EX_BYTES < <(python3 -c '
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
print(*c.execute("SELECT count(*), coalesce(sum(length(recorded)), 0) FROM step_inputs").fetchone())
' "$EX_ROOT/index.db")

  say "explain: host directory of 20,000 files, one changed"
  local tree=$EX_DIR/tree
  if [[ ! -d $tree ]]; then
    mkdir -p "$tree"
    python3 -c '
import os, sys
root = sys.argv[1]
for d in range(100):
    os.makedirs(f"{root}/d{d}", exist_ok=True)
    for f in range(200):
        with open(f"{root}/d{d}/f{f}.txt", "w") as fh:
            fh.write(f"{d} {f}\n")
' "$tree"
  fi
  echo "before $RUN_ID" >"$tree/d0/f0.txt"
  ex_rb "$log-host-cold" run "$REPO/bench/pipelines/host_dir.rs" -- "$tree" ||
    { tail -n 30 "$log-host-cold" >&2; die "explain: the host directory run failed"; }
  echo "after $RUN_ID" >"$tree/d0/f0.txt"
  ex_rb "$log-host-changed" run "$REPO/bench/pipelines/host_dir.rs" -- "$tree" ||
    { tail -n 30 "$log-host-changed" >&2; die "explain: the changed host directory run failed"; }
  grep -q 'cache miss: host directory .*: changed d0/f0.txt (content)' "$log-host-changed" ||
    die "explain: the host directory's change was not named (log: $log-host-changed)"
  ex_costs "$log-host-changed" ex_host_changed
  EX_HOST_WALL=$(ex_wall "$log-host-changed")
  EX_LISTING_BYTES=$(python3 -c '
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
print(c.execute("SELECT coalesce(max(length(entries)), 0) FROM host_listings").fetchone()[0])
' "$EX_ROOT/index.db")
  rb_reset "$EX_NS" "$EX_ROOT"
}

report_explain() {
  local chain_sum
  chain_sum=$(ex_sum ex_chain_changed)
  cat <<EOF

## Scenario: what miss explanations cost (explain)

Each step that misses has its key's parts recorded in the index (values,
secret names, input identities; host listings by digest) and compared with
the step it most likely replaces (its call site's earlier keys). The
solver logs the time that takes per missed step (\`RBUILD_LOG=rbuild=debug\`,
"miss explained"); the parts are then written in the same transaction as
the step's index row (one sync for both). A cached step records nothing.

| measurement | median | p95 | max |
|---|---|---|---|
| chain of $EX_N steps, cold (nothing to compare) | $(med ex_chain_cold) µs | $(ex_pct ex_chain_cold 95) µs | $(ex_pct ex_chain_cold 100) µs |
| chain of $EX_N steps, every step changed (compared) | $(med ex_chain_changed) µs | $(ex_pct ex_chain_changed 95) µs | $(ex_pct ex_chain_changed 100) µs |

The 20,000-file host directory after one file changed: the step that
copies it in (its new listing recorded, then compared with the last one)
took $(sed -n 1p "$TIMES/ex_host_changed") µs to explain, the step after it (\`find\`)
$(sed -n 2p "$TIMES/ex_host_changed") µs.

- The changed chain spent $((chain_sum / 1000)) ms explaining in a
  $(fmt_s "$EX_CHAIN_WALL") s run ($(awk -v a="$chain_sum" -v b="$EX_CHAIN_WALL" 'BEGIN { printf "%.1f", a / 10 / b }')% of its wall time; the chain's steps run one after another).
- The host-directory run took $(fmt_s "$EX_HOST_WALL") s.
- The index: $EX_ROWS recorded keys, $EX_BYTES bytes of parts ($((EX_BYTES / (EX_ROWS > 0 ? EX_ROWS : 1))) bytes per step); the 20,000-file listing is $EX_LISTING_BYTES bytes (zstd).
- Bounds: 8 keys per call site, 3 listings per host directory, a listing of more than 50,000 entries recorded by digest only, a gone key forgotten after 30 days, the timelines of the last 50 runs.
EOF
}
