#!/usr/bin/env bash
# The drive mirror against the article's whole-drive `rsync -aH --delete`, in
# the same run, on this machine (no containers): issue 3's benchmark.
#
# A backup drive holding one laptop's area of N snapshots of the bench data set
# (bench/gendata.py; 1 % of the files change between two snapshots, and each
# snapshot links against the previous one, as the server makes them). Two
# mirror drives start identical to it: one kept by `linkdest-server mirror`,
# one by `rsync -aH --delete DRIVE/ MIRROR/`. Then, at each checkpoint (10, 20,
# 30 snapshots by default), one new snapshot is made and both mirrors are
# timed bringing themselves up to date, BENCH_REPEAT times (a new snapshot
# each time, the order alternating). Reported: the median wall time of each
# and the ratio whole-drive / linkdest. Issue 3's target: at least 10x at 30
# snapshots, and flat for linkdest as the snapshots grow.
#
# Env: BENCH_FILES (20000), BENCH_MB (1024), BENCH_REPEAT (3),
#      BENCH_CHECKPOINTS ("10 20 30"), BENCH_WORK (/var/tmp/linkdest-mirror-bench,
#      removed at the end unless BENCH_KEEP=1).
# Needs python3 and rsync. Nothing outside BENCH_WORK and .cache/ is written.
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."
export LC_ALL=C

FILES=${BENCH_FILES:-20000}
MIB=${BENCH_MB:-1024}
REPEAT=${BENCH_REPEAT:-3}
CHECKPOINTS=${BENCH_CHECKPOINTS:-10 20 30}
WORK=${BENCH_WORK:-/var/tmp/linkdest-mirror-bench}
OUT=.cache/bench-mirror-latest.txt
for setting in "BENCH_FILES=$FILES" "BENCH_MB=$MIB" "BENCH_REPEAT=$REPEAT"; do
  if [[ ! ${setting#*=} =~ ^[1-9][0-9]*$ ]]; then
    echo "mirror_bench: $setting must be a positive integer" >&2
    exit 64
  fi
done
previous=0
for checkpoint in $CHECKPOINTS; do
  if [[ ! $checkpoint =~ ^[1-9][0-9]*$ ]] || ((checkpoint <= previous)); then
    echo "mirror_bench: BENCH_CHECKPOINTS must be increasing positive integers" >&2
    exit 64
  fi
  previous=$checkpoint
done
case $WORK in
  /*/*) ;;
  *)
    echo "mirror_bench: BENCH_WORK must be an absolute path below a directory" >&2
    exit 64
    ;;
esac

readonly DATA=$WORK/data
readonly DRIVE=$WORK/drive          # the backup drive
readonly AREA=$DRIVE/bench-laptop
readonly MIRROR=$WORK/mirror         # kept by linkdest-server mirror
readonly WHOLE=$WORK/whole           # kept by rsync -aH --delete
readonly COLLECTIONS=$PWD/collections

cleanup() {
  if [[ ${BENCH_KEEP:-0} != 1 ]]; then
    rm -rf -- "$WORK"
  fi
}
trap cleanup EXIT
rm -rf -- "$WORK"
mkdir -p -- "$DATA" "$AREA" "$MIRROR" "$WHOLE" "$WORK/state"

# The same launcher the backup_server role installs, pointing at this checkout.
cat >"$WORK/linkdest-server" <<PY
#!/usr/bin/python3 -I
import sys

sys.path.insert(0, "$COLLECTIONS")
from ansible_collections.linkdest.backup.plugins.module_utils.server_cli import main  # noqa: E402

sys.exit(main())
PY
chmod 0755 "$WORK/linkdest-server"
cat >"$WORK/mirror.json" <<JSON
{"source": "$DRIVE", "destination": "$MIRROR", "source_must_be_mount": false,
 "destination_must_be_mount": false, "state_dir": "$WORK/state", "log_file": "$WORK/mirror.log"}
JSON

echo "== Writing the data set ($FILES files, $MIB MiB) into $DATA"
python3 bench/gendata.py create "$DATA" "$FILES" "$MIB" >"$WORK/dataset.json"

count=0
round=0
# One snapshot as the server makes it: into incomplete_back-T with
# --link-dest against current, renamed when complete, current swapped.
snapshot() {
  local stamp link=()
  stamp=$(date -u -d "2026-01-01 00:00:00 UTC + $count minutes" +%Y-%m-%dT%H_%M_%S)
  if [[ -L $AREA/current ]]; then
    link=("--link-dest=../$(readlink "$AREA/current")")
  fi
  (cd "$AREA" && rsync -a "${link[@]}" "$DATA/" "incomplete_back-$stamp/")
  mv -T "$AREA/incomplete_back-$stamp" "$AREA/back-$stamp"
  ln -sfn "back-$stamp" "$AREA/current.tmp"
  mv -T "$AREA/current.tmp" "$AREA/current"
  count=$((count + 1))
}

change_and_snapshot() {
  round=$((round + 1))
  python3 bench/gendata.py change "$DATA" "$FILES" "$MIB" "$round" >/dev/null
  snapshot
}

run_mirror() {
  "$WORK/linkdest-server" mirror --config "$WORK/mirror.json" --quiet
}

run_whole() {
  rsync -aH --delete "$DRIVE/" "$WHOLE/"
}

timed() { # LOG COMMAND...
  python3 bench/timed.py "$WORK/$1" "${@:2}"
}

snapshot
"$WORK/linkdest-server" mirror --config "$WORK/mirror.json" setup >/dev/null

declare -A samples=()
started=$SECONDS
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for checkpoint in $CHECKPOINTS; do
  echo "== Growing the drive to $checkpoint snapshots; both mirrors catch up (untimed)"
  while ((count < checkpoint)); do
    change_and_snapshot
  done
  run_mirror
  run_whole
  for ((repeat = 1; repeat <= REPEAT; repeat++)); do
    change_and_snapshot
    sync
    if ((repeat % 2)); then order=(linkdest whole); else order=(whole linkdest); fi
    for kind in "${order[@]}"; do
      sync
      if [[ $kind == linkdest ]]; then
        seconds=$(timed mirror.out "$WORK/linkdest-server" mirror --config "$WORK/mirror.json" --quiet)
      else
        seconds=$(timed whole.out rsync -aH --delete "$DRIVE/" "$WHOLE/")
      fi
      samples[$checkpoint/$kind]+="$seconds "
      printf '   %3d snapshots + 1  %-8s %8s s\n' "$checkpoint" "$kind" "$seconds"
    done
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# Both mirrors must now hold every snapshot, and the newest one whole.
newest=$(readlink "$AREA/current")
for copy in "$MIRROR/bench-laptop" "$WHOLE/bench-laptop"; do
  found=$(find "$copy/$newest" -type f -printf . | wc -c)
  want=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["files"])' "$WORK/dataset.json")
  if [[ $found -ne $want ]]; then
    echo "mirror_bench: $copy/$newest holds $found files, expected $want" >&2
    exit 1
  fi
  if [[ $(find "$copy" -mindepth 1 -maxdepth 1 -name 'back-*' | wc -l) -ne $count ]]; then
    echo "mirror_bench: $copy does not hold all $count snapshots" >&2
    exit 1
  fi
done
last_summary=$(grep 'mirror ok: ' "$WORK/mirror.log" | tail -n 1 | sed 's/^.*mirror ok: //')

median() {
  tr ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

report() {
  printf 'linkdest mirror bench, %s (UTC)\n' "$(date -u '+%Y-%m-%d %H:%M')"
  printf 'data set: %s\n' "$(cat "$WORK/dataset.json")"
  printf 'one laptop area; 1%% of the files change between snapshots; %s: %s\n' "$(rsync --version | head -n 1)" "$WORK"
  printf 'host: %s CPUs, load averages %s at start, %s after; page cache warm (not dropped)\n' \
    "$(nproc)" "$load_before" "$load_after"
  printf 'wall time to bring a mirror up to date after one new snapshot, median of %s (order alternates)\n\n' "$REPEAT"
  printf '%-22s | %18s | %22s | %s\n' "snapshots on drive" "linkdest mirror (s)" "rsync -aH --delete (s)" "ratio whole/linkdest"
  printf '%-22s-+-%18s-+-%22s-+-%s\n' "----------------------" "------------------" "----------------------" "--------------------"
  local checkpoint ours whole
  for checkpoint in $CHECKPOINTS; do
    ours=$(median <<<"${samples[$checkpoint/linkdest]}")
    whole=$(median <<<"${samples[$checkpoint/whole]}")
    printf '%-22s | %18.3f | %22.3f | %.1f\n' "$checkpoint + 1" "$ours" "$whole" \
      "$(awk -v a="$whole" -v b="$ours" 'BEGIN { print a / b }')"
  done
  printf '\nlinkdest mirror: each new snapshot pre-linked against the previous one (same source inode),\n'
  printf 'the rest by rsync -aHXX --numeric-ids --ignore-existing --link-dest, then syncfs and a rename;\n'
  printf 'rsync -aH --delete walks every snapshot on the drive (and keeps no xattrs).\n'
  printf 'last mirror summary: %s\n' "$last_summary"
  printf 'samples (s):\n'
  for checkpoint in $CHECKPOINTS; do
    printf '  %3s  linkdest: %s| whole: %s\n' "$checkpoint" "${samples[$checkpoint/linkdest]}" "${samples[$checkpoint/whole]}"
  done
}

mkdir -p .cache
echo
report | tee "$OUT"
printf '\n(also in %s) mirror_bench: whole run took %d s\n' "$OUT" "$((SECONDS - started))"
