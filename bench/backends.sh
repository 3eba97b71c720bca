#!/usr/bin/env bash
# `make bench`, part 4: the hardlink and btrfs storage backends on the same
# data in the same run, through the real linkdest-server gate (bench/backends.py),
# beside bare rsync --link-dest and rsnapshot (Debian's package, its default
# `cp -al` + rsync mode, pulling over ssh on loopback).
# Needs root, btrfs-progs, sudo, OpenSSH and rsnapshot (installed here if
# missing, without recommends: no cron daemon for rsnapshot; the bench runs
# its own sshd on 127.0.0.1, so the package's own sshd is kept from starting
# while it is installed).
# Env: BENCH_FILES (20000), BENCH_MB (1024), BENCH_REPEAT (3).
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."
missing=()
for pkg in btrfs-progs sudo rsync openssh-client openssh-server rsnapshot; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  apt-get update -qq
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" # Debian's "start no service" hook
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 bench/backends.py "${BENCH_FILES:-20000}" "${BENCH_MB:-1024}" "${BENCH_REPEAT:-3}"
