#!/bin/bash
# What a container costs on this machine, below rbuild: `ctr run --rm … true`
# alone, the same with every container in one shim (runc shim v2 grouping,
# a keeper container holding the shim), and `runc run` on a mounted
# snapshot with no shim and no containerd. Prints the median of N runs (ms).
# Used for bench/PROFILES.md; needs `make setup` (containerd, registry).
#   bash bench/task_floor.sh [N]
set -euo pipefail
N=${1:-12}
IMG=127.0.0.1:5000/busybox:latest
NS=rbuild-task-floor
BUNDLE=$(mktemp -d /tmp/rbuild-task-floor.XXXXXX)

cleanup() {
  umount "$BUNDLE/rootfs" 2>/dev/null || true
  ctr -n $NS snapshots rm task-floor-rootfs 2>/dev/null || true
  for c in $(ctr -n $NS containers ls -q 2>/dev/null); do
    ctr -n $NS tasks rm -f "$c" >/dev/null 2>&1 || true
    ctr -n $NS containers rm "$c" >/dev/null 2>&1 || true
  done
  # shellcheck disable=SC2046
  ctr -n $NS images rm --sync $(ctr -n $NS images ls -q 2>/dev/null) >/dev/null 2>&1 || true
  ctr namespaces rm $NS >/dev/null 2>&1 || true
  rm -rf "$BUNDLE"
}
trap cleanup EXIT

ms() { # command…: its wall time in ms
  local a b
  a=$EPOCHREALTIME
  "$@" >/dev/null 2>&1
  b=$EPOCHREALTIME
  awk -v a="$a" -v b="$b" 'BEGIN { printf "%d\n", (b - a) * 1000 }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

ctr -n $NS images pull --plain-http $IMG >/dev/null
ctr -n $NS run --rm $IMG task-floor-warm true >/dev/null

echo "ctr run --rm true: $(for i in $(seq "$N"); do ms ctr -n $NS run --rm $IMG "plain-$i" true; done | median) ms"

ctr -n $NS run -d --annotation io.containerd.runc.v2.group=rbuild-task-floor $IMG keeper sleep 100000 >/dev/null
echo "ctr run --rm true, one shim for all: $(for i in $(seq "$N"); do
  ms ctr -n $NS run --rm --annotation io.containerd.runc.v2.group=rbuild-task-floor $IMG "grouped-$i" true
done | median) ms (shims of the namespace: $(pgrep -fc "containerd-shim-runc-v2 -namespace $NS"))"
ctr -n $NS tasks kill -s KILL keeper
ctr -n $NS tasks rm -f keeper >/dev/null 2>&1 || true
ctr -n $NS containers rm keeper

# runc alone: the image's (single) layer snapshot as the rootfs.
layer=$(ctr -n $NS snapshots ls | awk 'NR > 1 && NF == 2 && $2 == "Committed" { print $1; exit }')
mkdir -p "$BUNDLE/rootfs"
eval "$(ctr -n $NS snapshots prepare --target "$BUNDLE/rootfs" task-floor-rootfs "$layer")"
(cd "$BUNDLE" && runc spec && sed -i 's/"terminal": true/"terminal": false/; s/"sh"/"true"/' config.json)
echo "runc run true (no shim, no containerd): $(for i in $(seq "$N"); do ms runc run --bundle "$BUNDLE" "rbuild-task-floor-$i"; done | median) ms"
