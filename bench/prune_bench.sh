#!/usr/bin/env bash
# Pruning one snapshot against `rm -rf` of an identical one, in the same run,
# on this machine (no containers): issue 4's benchmark.
#
# A drive directory holds a snapshot of the bench data set (bench/gendata.py)
# plus a hard-linked copy per repeat and per contender (`cp -al`, as the
# server's snapshots share unchanged files). Each repeat removes one copy with
# snapshots.delete_snapshot (rename out of back-*, then remove without
# following links), the way `linkdest-server prune` does, and one with
# `rm -rf`, the order alternating. Reported: the medians and their ratio.
# Issue 4's target: pruning costs no more than 1.1x rm -rf.
#
# Env: BENCH_FILES (20000), BENCH_MB (1024), BENCH_REPEAT (5),
#      BENCH_WORK (/var/tmp/linkdest-prune-bench, removed at the end).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
FILES=${BENCH_FILES:-20000}
MIB=${BENCH_MB:-1024}
REPEAT=${BENCH_REPEAT:-5}
WORK=${BENCH_WORK:-/var/tmp/linkdest-prune-bench}
case $WORK in
  /*/*) ;;
  *) echo "prune_bench: BENCH_WORK must be an absolute path below a directory" >&2; exit 64 ;;
esac
rm -rf -- "$WORK"
mkdir -p -- "$WORK/area"
trap 'rm -rf -- "$WORK"' EXIT

mkdir -p -- "$WORK/area/back-2026-01-01T00_00_00"
python3 bench/gendata.py create "$WORK/area/back-2026-01-01T00_00_00" "$FILES" "$MIB" >/dev/null
i=0
for ((r = 1; r <= REPEAT; r++)); do
  for _contender in prune rm; do
    i=$((i + 1))
    cp -al "$WORK/area/back-2026-01-01T00_00_00" "$(printf '%s/area/back-2026-01-02T00_00_%02d' "$WORK" "$i")"
  done
done
sync

# time_one KIND NAME: seconds to remove one copy, flushed to disk before and after.
time_one() {
  local kind=$1 name=$2
  sync
  python3 - "$kind" "$WORK/area" "$name" <<'PY'
import os, subprocess, sys, time
sys.path.insert(0, os.path.join(os.getcwd(), "collections"))
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots
kind, area, name = sys.argv[1:]
start = time.monotonic()
if kind == "prune":
    snapshots.delete_snapshot(area, name)
else:
    subprocess.run(["rm", "-rf", "--", os.path.join(area, name)], check=True)
os.sync()
print("%.3f" % (time.monotonic() - start))
PY
}

prune_times=()
rm_times=()
i=0
for ((r = 1; r <= REPEAT; r++)); do
  first=prune
  ((r % 2 == 0)) && first="rm"
  for who in "$first" "$([ "$first" = prune ] && echo rm || echo prune)"; do
    i=$((i + 1))
    name=$(printf 'back-2026-01-02T00_00_%02d' "$i")
    t=$(time_one "$who" "$name")
    if [ "$who" = prune ]; then prune_times+=("$t"); else rm_times+=("$t"); fi
  done
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p=$(median "${prune_times[@]}")
m=$(median "${rm_times[@]}")
{
  echo "linkdest prune bench, $(date -u '+%Y-%m-%d %H:%M') (UTC), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "one snapshot of $FILES files, $MIB MiB (hard-linked copies), median of $REPEAT, order alternating"
  printf '%-34s | %8s\n' "remove one snapshot" "seconds"
  printf '%-34s | %8s\n' "rm -rf" "$m"
  printf '%-34s | %8s\n' "snapshots.delete_snapshot (prune)" "$p"
  printf 'ratio prune / rm -rf: %.2f (target <= 1.10)\n' "$(echo "$p $m" | awk '{print ($2 > 0) ? $1 / $2 : 0}')"
  echo "samples prune: ${prune_times[*]}; rm: ${rm_times[*]}"
} | tee .cache/bench-prune-latest.txt
