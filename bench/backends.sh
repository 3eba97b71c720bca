#!/usr/bin/env bash
# `make bench`, part 4: the hardlink and btrfs storage backends on the same
# data in the same run, through the real linkdest-server gate (bench/backends.py).
# Needs root, btrfs-progs and sudo (installed here if missing).
# Env: BENCH_FILES (20000), BENCH_MB (1024), BENCH_REPEAT (3).
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."
missing=()
for pkg in btrfs-progs sudo rsync; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
exec python3 bench/backends.py "${BENCH_FILES:-20000}" "${BENCH_MB:-1024}" "${BENCH_REPEAT:-3}"
