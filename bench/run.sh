#!/usr/bin/env bash
# `make bench`: wall time of linkdest snapshots against bare rsync doing the
# same work, measured in the same run in the demo containers, interleaved.
# See bench/README.md. Env: BENCH_FILES (20000), BENCH_MB (1024), BENCH_REPEAT (3).
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."
export LC_ALL=C.UTF-8 # printf and awk: a decimal point, not a comma; Ansible (scripts/demo) needs UTF-8
if [[ -d .venv/bin ]]; then
  PATH=$PWD/.venv/bin:$PATH # scripts/demo needs molecule
fi

FILES=${BENCH_FILES:-20000}
MIB=${BENCH_MB:-1024}
REPEAT=${BENCH_REPEAT:-3}
for setting in "BENCH_FILES=$FILES" "BENCH_MB=$MIB" "BENCH_REPEAT=$REPEAT"; do
  if [[ ! ${setting#*=} =~ ^[1-9][0-9]*$ ]]; then
    echo "bench: $setting must be a positive integer" >&2
    exit 64
  fi
done

readonly SERVER=demo-server
readonly LAPTOP=demo-laptop
readonly DRIVE=/media/backup_drive
readonly AREA=$DRIVE/$LAPTOP                  # the laptop's linkdest area
readonly BENCH_DIR=$DRIVE/.bench              # bare rsync's snapshots
readonly SAVED_SERVER=$DRIVE/.bench-saved     # the demo's area while we run
readonly HOME_DIR=/home/alice
readonly SOURCE=$HOME_DIR/Dropbox             # linkdest's source is fixed
readonly SAVED_LAPTOP=$HOME_DIR/.bench-saved  # alice's own Dropbox while we run
readonly STATUS_FILE=$HOME_DIR/.local/state/linkdest/status
readonly LOCK_FILE=$HOME_DIR/.local/state/linkdest/lock
readonly HELPERS=/tmp/linkdest-bench
readonly BENCH_KEY=$HOME_DIR/.ssh/bench_ed25519
readonly BENCH_CONFIG=$HOME_DIR/.ssh/bench_config
readonly BENCH_HOST=linkdest-bench
readonly OUT=.cache/bench-latest.txt

# on CONTAINER [ARG...] <<'EOF': a root bash script (stdin) in a container.
# Nothing in these scripts may read stdin: it is the script itself.
on() {
  local container=$1
  shift
  docker exec -i "$container" bash -o errexit -o nounset -o pipefail -s -- "$@"
}

# timed LOG COMMAND...: COMMAND as alice on the laptop; prints its wall time,
# measured inside the container (no docker exec in the interval). No -i:
# the command's stdin is empty, as under cron.
timed() {
  docker exec "$LAPTOP" runuser -u alice -- python3 "$HELPERS/timed.py" "$HELPERS/$1" "${@:2}"
}

# Wait until no linkdest backup (its own flock) and no rsync of alice's runs,
# e.g. one a Ctrl-C left running inside the container. Waiting only.
wait_laptop_idle() {
  on "$LAPTOP" "$LOCK_FILE" <<'EOF'
lock=$1
if [ -e "$lock" ]; then
  flock --wait 900 "$lock" true
fi
for _ in $(seq 120); do
  pgrep -u alice -x rsync >/dev/null || exit 0
  sleep 1
done
echo "bench: an rsync of alice's is still running on the laptop" >&2
exit 1
EOF
}

container_up() {
  [[ "$(docker inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" == true ]]
}

# Put back what we set aside (the demo's area, alice's Dropbox and status
# file, cron) and remove what we made, except the bench account and key.
# Also run at the start, so an interrupted run is repaired first.
restore() {
  local failed=0
  wait_laptop_idle || failed=1
  on "$SERVER" "$AREA" "$BENCH_DIR" "$SAVED_SERVER" <<'EOF' || failed=1
area=$1 bench=$2 saved=$3
if [ -d "$bench" ]; then
  find "$bench" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
fi
if [ -d "$saved/area" ]; then
  rm -rf "$area"
  mv "$saved/area" "$area"
fi
if [ -e "$saved/cron-was-active" ]; then
  systemctl start cron
fi
rm -rf "$saved"
EOF
  on "$LAPTOP" "$SOURCE" "$SAVED_LAPTOP" "$STATUS_FILE" "$HELPERS" <<'EOF' || failed=1
source=$1 saved=$2 status=$3 helpers=$4
if [ -d "$saved/Dropbox" ]; then
  rm -rf "$source"
  mv "$saved/Dropbox" "$source"
fi
if [ -e "$saved/status" ]; then
  cp -p "$saved/status" "$status"
elif [ -e "$saved/no-status" ]; then
  rm -f "$status"
fi
if [ -e "$saved/cron-was-active" ]; then
  systemctl start cron
fi
rm -rf "$saved" "$helpers"
EOF
  if [[ $failed -ne 0 ]]; then
    echo "bench: WARNING: restoring the demo failed; see above" >&2
  fi
  return "$failed"
}

# --- 1. the demo containers ---------------------------------------------------
if ! container_up "$SERVER" || ! container_up "$LAPTOP"; then
  echo "== The demo containers are not running: scripts/demo sets them up"
  scripts/demo
fi
if ! docker exec "$LAPTOP" test -x /usr/local/bin/linkdest; then
  echo "bench: $LAPTOP has no /usr/local/bin/linkdest; run make demo" >&2
  exit 1
fi

started=$SECONDS
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
restore # a previous run that was killed left things set aside
trap 'exit 130' INT TERM
trap 'restore || true' EXIT

# --- set aside what the demo holds -----------------------------------------------
echo "== Setting aside the demo's snapshots (server) and alice's ~/Dropbox (laptop);"
echo "   both come back at the end. cron is stopped meanwhile so no scheduled"
echo "   linkdest backup runs during the measurements."
on "$LAPTOP" "$SAVED_LAPTOP" <<'EOF'
saved=$1
mkdir -m 0700 "$saved"
if systemctl is-active --quiet cron; then
  systemctl stop cron
  touch "$saved/cron-was-active"
fi
EOF
wait_laptop_idle # a backup cron started before it stopped finishes first
on "$SERVER" "$AREA" "$SAVED_SERVER" <<'EOF'
area=$1 saved=$2
mkdir -m 0700 "$saved"
if systemctl is-active --quiet cron; then
  systemctl stop cron
  touch "$saved/cron-was-active"
fi
owner=$(stat -c %U "$area") group=$(stat -c %G "$area") mode=$(stat -c %a "$area")
mv "$area" "$saved/area"
install -d -o "$owner" -g "$group" -m "$mode" "$area"
EOF
on "$LAPTOP" "$SOURCE" "$SAVED_LAPTOP" "$STATUS_FILE" "$HELPERS" <<'EOF'
source=$1 saved=$2 status=$3 helpers=$4
if [ -e "$status" ]; then cp -p "$status" "$saved/status"; else touch "$saved/no-status"; fi
if [ -d "$source" ]; then
  mode=$(stat -c %a "$source")
  mv "$source" "$saved/Dropbox"
else
  mode=755
fi
install -d -o alice -g alice -m "$mode" "$source"
install -d -o alice -g alice -m 0755 "$helpers"
EOF
for helper in gendata.py timed.py; do
  docker cp --quiet "bench/$helper" "$LAPTOP:$HELPERS/$helper"
done
docker exec "$LAPTOP" chown -R alice:alice "$HELPERS"

# --- 3. the bare rsync account: same server, drive, ssh options ----------------------
echo "== Bare rsync account benchrsync on $SERVER, key $BENCH_KEY, config $BENCH_CONFIG"
pubkey=$(on "$LAPTOP" "$BENCH_KEY" "$BENCH_CONFIG" "$BENCH_HOST" <<'EOF'
key=$1 config=$2 alias=$3
runuser -u alice -- sh -c '
  set -e
  [ -f "$1" ] || ssh-keygen -q -t ed25519 -N "" -C "linkdest bench (plain rsync)" -f "$1" </dev/null
  {
    echo "# linkdest bench only: /etc/linkdest/ssh_config with another alias, user and key,"
    echo "# the same host, port, ciphers and pinned host key. Written by bench/run.sh."
    sed -e "/^#/d" \
      -e "s/^Host linkdest-server\$/Host $3/" \
      -e "s/^\\([[:space:]]*\\)User .*/\\1User benchrsync/" \
      -e "s|^\\([[:space:]]*\\)IdentityFile .*|\\1IdentityFile $1|" /etc/linkdest/ssh_config
  } >"$2.tmp"
  chmod 0600 "$2.tmp"
  mv -f "$2.tmp" "$2"
' sh "$key" "$config" "$alias"
for line in "Host $alias" "User benchrsync" "IdentityFile $key" "HostKeyAlias linkdest-server" \
  "UserKnownHostsFile /etc/linkdest/known_hosts" "StrictHostKeyChecking yes"; do
  grep -qxE "[[:space:]]*$line" "$config" || { echo "bench: $config lacks '$line'" >&2; exit 1; }
done
cat "$key.pub"
EOF
)
on "$SERVER" "$pubkey" "$BENCH_DIR" <<'EOF'
pubkey=$1 bench=$2
if ! id -u benchrsync >/dev/null 2>&1; then
  useradd --create-home --shell /bin/sh --comment "linkdest bench, plain rsync over ssh" benchrsync
fi
home=$(getent passwd benchrsync | cut -d: -f6)
install -d -o benchrsync -g benchrsync -m 0700 "$home/.ssh"
printf '%s\n' "$pubkey" >"$home/.ssh/authorized_keys"
chown benchrsync:benchrsync "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"
install -d -o benchrsync -g benchrsync -m 0700 "$bench"
EOF
docker exec "$LAPTOP" runuser -u alice -- ssh -n -F "$BENCH_CONFIG" "$BENCH_HOST" true

# --- 2. the data set -------------------------------------------------------------------
echo "== Writing the data set into $LAPTOP:$SOURCE ($FILES files, $MIB MiB, fixed seeds)"
dataset=$(docker exec "$LAPTOP" runuser -u alice -- python3 "$HELPERS/gendata.py" create "$SOURCE" "$FILES" "$MIB")
json() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
data_files=$(json "$dataset" files)
data_bytes=$(json "$dataset" bytes)
data_dirs=$(json "$dataset" dirs)
data_depth=$(json "$dataset" max_depth)
data_median=$(json "$dataset" median)
data_largest=$(json "$dataset" largest)
# Read it once so the page cache is equally warm for whichever runs first.
docker exec "$LAPTOP" tar -cf /dev/null -C "$SOURCE" .

# --- 4. measurements ---------------------------------------------------------------------
declare -A samples=()
change_files=0
change_bytes=0

sync_server() {
  # Untimed: no run pays for the previous run's writeback.
  docker exec "$SERVER" sync
}

# bare rsync leaves its writes in the page cache, linkdest's finalize flushes
# them (syncfs of the drive) before the rename: time that flush separately
# on the server right after each bare run, the way snapshots.py does it.
flush_server() {
  docker exec "$SERVER" python3 -c '
import ctypes, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
libc = ctypes.CDLL(None, use_errno=True)
start = time.monotonic()
if libc.syncfs(fd) != 0:
    raise OSError(ctypes.get_errno(), "syncfs")
print("%.3f" % (time.monotonic() - start))
' "$DRIVE"
}

time_bare() { # SNAPSHOT [PREVIOUS]
  local -a argv=(rsync --archive --delete --numeric-ids --timeout=300 --copy-links -M--fake-super)
  if [[ -n ${2:-} ]]; then
    argv+=("--link-dest=../$2")
  fi
  argv+=(-e "ssh -F $BENCH_CONFIG" -- "$SOURCE/" "$BENCH_HOST:$BENCH_DIR/$1/")
  timed bare.log "${argv[@]}"
}

# linkdest backup sends a change list when it has a record of the last
# snapshot (every case but the first); LINKDEST_ARGS=(--full) makes it a full run.
LINKDEST_ARGS=()
time_linkdest() {
  timed linkdest.log /usr/local/bin/linkdest backup "${LINKDEST_ARGS[@]}"
}

# pair CASE BARE_SNAPSHOT [BARE_PREVIOUS]: both tools, in this repeat's order.
pair() {
  local kind seconds flushed
  for kind in "${order[@]}"; do
    sync_server
    if [[ $kind == bare ]]; then
      seconds=$(time_bare "$2" "${3:-}")
      flushed=$(flush_server)
      samples[$1/flush]+="$flushed "
    else
      seconds=$(time_linkdest)
    fi
    samples[$1/$kind]+="$seconds "
    printf '   %-10s %-9s %8s s\n' "$1" "$kind" "$seconds"
  done
}

newest_linkdest() { # the newest two finished snapshots, oldest first
  docker exec "$SERVER" find "$AREA" -mindepth 1 -maxdepth 1 -name 'back-*' -printf '%f\n' | sort | tail -n 2
}

# disk DIR OLD NEW: bytes NEW adds to OLD, "apparent allocated". du counts an
# inode once, where it first meets it (in OLD), so NEW's line is what it adds.
disk() {
  on "$SERVER" "$@" <<'EOF'
cd "$1"
apparent=$(du -s --bytes -- "$2" "$3" | awk 'NR == 2 { print $1 }')
allocated=$(du -s --block-size=1 -- "$2" "$3" | awk 'NR == 2 { print $1 }')
echo "$apparent $allocated"
EOF
}

count_files() {
  docker exec "$SERVER" find "$1" -type f -printf . | wc -c
}

reset_server() {
  on "$SERVER" "$AREA" "$BENCH_DIR" <<'EOF'
area=$1 bench=$2
find "$bench" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
cd "$area"
rm -rf back-* current incomplete_* .linkdest-received
EOF
}

ssh_samples=""
for _ in 1 2 3 4 5; do
  ssh_samples+="$(timed ssh.log ssh -n -F "$BENCH_CONFIG" "$BENCH_HOST" true) "
done

for ((round = 1; round <= REPEAT; round++)); do
  if ((round % 2)); then order=(bare linkdest); else order=(linkdest bare); fi
  echo "== Repeat $round of $REPEAT (${order[0]} first)"
  reset_server
  sleep 1 # a file changed just before a walk is sent again by the next run
  pair first snap1
  pair unchanged snap2 snap1
  # Nothing changed: linkdest makes no snapshot (the server records a check).
  mapfile -t snaps < <(newest_linkdest)
  if [[ ${#snaps[@]} -ne 1 ]]; then
    echo "bench: an unchanged run made a snapshot in $AREA (found ${#snaps[@]})" >&2
    exit 1
  fi
  if [[ $(docker exec "$LAPTOP" grep '^last_kind=' "$STATUS_FILE") != last_kind=unchanged ]]; then
    echo "bench: the unchanged run was not a check (see the laptop's linkdest.log)" >&2
    exit 1
  fi
  bare_disk=$(disk "$BENCH_DIR" snap1 snap2)
  ld_disk="0 0"
  samples[disk/bare]+="${bare_disk/ //} "
  samples[disk/linkdest]+="${ld_disk/ //} "
  # The safety net: linkdest --full (rsync walks everything on both ends, as
  # before change lists) against bare rsync of the same unchanged tree.
  LINKDEST_ARGS=(--full)
  pair full snap2f snap2
  LINKDEST_ARGS=()
  mapfile -t snaps < <(newest_linkdest)
  for snapshot in "$BENCH_DIR/snap2" "$AREA/${snaps[1]}"; do
    found=$(count_files "$snapshot")
    if [[ $found -ne $data_files ]]; then
      echo "bench: $snapshot holds $found files, expected $data_files" >&2
      exit 1
    fi
  done
  changed=$(docker exec "$LAPTOP" runuser -u alice -- python3 "$HELPERS/gendata.py" change "$SOURCE" "$FILES" "$MIB" "$round")
  change_files=$(json "$changed" changed_files)
  change_bytes=$(json "$changed" changed_bytes)
  docker exec "$LAPTOP" tar -cf /dev/null -C "$SOURCE" .
  sleep 1 # linkdest sends a file changed just before its walk once more next time
  pair changed snap3 snap2f
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 5. the report ---------------------------------------------------------------------------
median() {
  tr ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

rsync_laptop=$(docker exec "$LAPTOP" rsync --version | awk 'NR == 1 { print $3 }')
rsync_server=$(docker exec "$SERVER" rsync --version | awk 'NR == 1 { print $3 }')
ssh_version=$(docker exec "$LAPTOP" ssh -V 2>&1 | awk '{ print $1 }')
others=$(docker ps --format '{{.Names}}' | grep -cvxE "$SERVER|$LAPTOP" || true)
ssh_median=$(median <<<"$ssh_samples")

declare -A labels=(
  [first]="first snapshot (empty server side)"
  [unchanged]="unchanged (linkdest: no snapshot)"
  [full]="unchanged, linkdest --full"
  [changed]="after 1% change (change list)"
)

report() {
  local case label bare ld
  printf 'linkdest bench, %s (UTC)\n' "$(date -u '+%Y-%m-%d %H:%M')"
  printf 'data set: %s files, %s bytes (%.2f GiB) in %s dirs (max depth %s), median file %s B, largest %.1f MiB\n' \
    "$data_files" "$data_bytes" "$(awk -v b="$data_bytes" 'BEGIN { print b / 2^30 }')" \
    "$data_dirs" "$data_depth" "$data_median" "$(awk -v b="$data_largest" 'BEGIN { print b / 2^20 }')"
  printf 'source: %s:%s (the bench data replaced its contents during the run; restored after)\n' "$LAPTOP" "$SOURCE"
  printf 'rsync %s (laptop) / %s (server), %s; host: %s CPUs, load averages %s at start, %s after the measurements, %s other containers running\n' \
    "$rsync_laptop" "$rsync_server" "$ssh_version" "$(nproc)" "$load_before" "$load_after" "$others"
  printf 'wall time, median of %s interleaved repeats (order alternates), measured on the laptop\n\n' "$REPEAT"
  printf '%-34s | %14s | %12s | %s\n' case "bare rsync (s)" "linkdest (s)" "ratio linkdest/bare"
  printf '%-34s-+-%14s-+-%12s-+-%s\n' "$(printf -- '-%.0s' {1..34})" "$(printf -- '-%.0s' {1..14})" \
    "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..19})"
  for case in first unchanged full changed; do
    label=${labels[$case]}
    bare=$(median <<<"${samples[$case/bare]}")
    ld=$(median <<<"${samples[$case/linkdest]}")
    printf '%-34s | %14.3f | %12.3f | %.2f\n' "$label" "$bare" "$ld" "$(awk -v a="$ld" -v b="$bare" 'BEGIN { print a / b }')"
  done
  printf '\nbare rsync leaves its writes in the page cache; linkdest flushes them (syncfs) before it\n'
  printf 'finalizes. The same flush, timed on the server right after each bare run (not in the table above):\n'
  printf '%-34s | %16s | %12s | %s\n' case "bare + flush (s)" "linkdest (s)" "ratio linkdest/(bare + flush)"
  for case in first unchanged full changed; do
    label=${labels[$case]}
    bare=$(paste -d+ <(tr ' ' '\n' <<<"${samples[$case/bare]}" | awk 'NF') \
      <(tr ' ' '\n' <<<"${samples[$case/flush]}" | awk 'NF') | awk -F+ '{ print $1 + $2 }' | median)
    ld=$(median <<<"${samples[$case/linkdest]}")
    printf '%-34s | %16.3f | %12.3f | %.2f\n' "$label" "$bare" "$ld" "$(awk -v a="$ld" -v b="$bare" 'BEGIN { print a / b }')"
  done
  printf '\n1%% change: %s files rewritten (every 100th), %s bytes, new mtimes\n' "$change_files" "$change_bytes"
  local bare_disk=${samples[disk/bare]%% *} ld_disk=${samples[disk/linkdest]%% *}
  printf 'disk added by an unchanged half hour (du -s of old and new together; an inode counts once, in old;\n'
  printf 'linkdest made no snapshot, so it added none):\n'
  printf '  bare rsync %8.1f KiB apparent (du --bytes), %8.1f KiB allocated (du --block-size=1)\n' \
    "$(awk -v b="${bare_disk%/*}" 'BEGIN { print b / 1024 }')" "$(awk -v b="${bare_disk#*/}" 'BEGIN { print b / 1024 }')"
  printf '  linkdest   %8.1f KiB apparent (du --bytes), %8.1f KiB allocated (du --block-size=1)\n' \
    "$(awk -v b="${ld_disk%/*}" 'BEGIN { print b / 1024 }')" "$(awk -v b="${ld_disk#*/}" 'BEGIN { print b / 1024 }')"
  printf '  (every repeat: bare %s; linkdest %s, as apparent/allocated bytes)\n' "${samples[disk/bare]% }" "${samples[disk/linkdest]% }"
  printf 'one ssh connection (ssh %s true), median of 5: %s s; what a second connection per snapshot would cost (linkdest opens one since issue 11, as bare rsync does)\n' \
    "$BENCH_HOST" "$ssh_median"
  printf 'samples (s), in repeat order:\n'
  for case in first unchanged full changed; do
    printf '  %-10s bare: %s| flush after bare: %s| linkdest: %s\n' "$case" "${samples[$case/bare]}" \
      "${samples[$case/flush]}" "${samples[$case/linkdest]}"
  done
}

mkdir -p .cache
echo
report | tee "$OUT"
echo
echo "(also in $OUT; the demo's snapshots and ~/Dropbox are being restored)"
restore
trap - EXIT
printf 'bench: whole run took %d s\n' "$((SECONDS - started))"
