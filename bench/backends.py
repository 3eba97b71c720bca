#!/usr/bin/env python3
# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The two storage backends on the same data in the same run (bench/backends.sh).

Both take snapshots through the real server command, ``linkdest-server gate``
run as an unprivileged account exactly as sshd's forced command runs it
(receive, then ``finalize 0``), with the laptop's rsync options. The only
thing left out on both sides is ssh itself: the rsync client reaches the gate
through a local remote-shell script, so the timings are the storage work
(rsync's receiver, the gate, the snapshot steps, btrfs's sudo hops) and not
the network. The hard-link drive is a directory on this machine's root file
system (ext4 here), the btrfs drive a loop-mounted image on the same disk.

Each linkdest snapshot is a real ``linkdest backup`` (client.py, in this
process) whose ssh is a script that drops ssh's options and hands the rest to
the same local remote shell. Bare ``rsync --link-dest`` goes through a local
remote shell too (as the account, no gate) into a directory on the hard-link
drive: the baseline every ratio is taken against, measured in the same run.

Cases, interleaved and in alternating order, median of the repeats: the first
snapshot (everything sent, a full run), an unchanged one (change list), the
same unchanged tree with ``--full`` (the safety net), and one after a 1 %
change (change list). Disk: what an unchanged snapshot adds (hard links: ``du``
counting each inode once, where it first meets it; btrfs: exclusive bytes,
``btrfs filesystem du``).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "collections")
)
from ansible_collections.linkdest.backup.plugins.module_utils import client  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCOUNT = "linkdest-bench"
CLIENT = "bench"
WORK = "/var/tmp/linkdest-bench"
SUDOERS = "/etc/sudoers.d/linkdest-bench"
LAUNCHER = WORK + "/bin/linkdest-server"
RSH = WORK + "/bin/local-rsh"
# What linkdest's client runs as ssh: drops ssh's options, then RSH.
SSH = WORK + "/bin/local-ssh"
# Bare rsync's remote shell: the account, no gate.
PLAIN_RSH = WORK + "/bin/plain-rsh"
BARE = WORK + "/bare"
BACKENDS = ("hardlink", "btrfs")
CASES = (
    "first snapshot",
    "unchanged, change list",
    "unchanged, --full",
    "after 1% change, change list",
)


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kwargs)


def drive(backend: str) -> str:
    return "%s/%s" % (WORK, backend)


def area(backend: str) -> str:
    return "%s/%s" % (drive(backend), CLIENT)


def setup(files: int, mib: int) -> None:
    os.makedirs(WORK + "/bin", exist_ok=True)
    os.chmod(WORK, 0o755)
    try:
        pwd.getpwnam(ACCOUNT)
    except KeyError:
        run("useradd", "--system", "--no-create-home", "--shell", "/bin/sh", ACCOUNT)
    with open(LAUNCHER, "w", encoding="utf-8") as handle:
        handle.write(
            "#!/usr/bin/python3 -IS\nimport sys\nsys.path.insert(0, %r)\n"
            "from ansible_collections.linkdest.backup.plugins.module_utils import server_cli\n"
            "sys.exit(server_cli.main())\n" % (REPO + "/collections")
        )
    os.chmod(LAUNCHER, 0o755)
    # rsync calls: RSH HOST COMMAND...; sshd would run the forced command as
    # the account with the command in SSH_ORIGINAL_COMMAND.
    with open(RSH, "w", encoding="utf-8") as handle:
        handle.write(
            '#!/bin/sh\nshift\nexec runuser -u %s -- env SSH_ORIGINAL_COMMAND="$*"'
            ' %s --config "$LINKDEST_BENCH_CONFIG" gate %s\n' % (ACCOUNT, LAUNCHER, CLIENT)
        )
    os.chmod(RSH, 0o755)
    with open(SSH, "w", encoding="utf-8") as handle:
        handle.write(
            "#!/bin/sh\n# ssh [-F X] [-o X]... [-O CMD] HOST WORDS...\n"
            'while [ "${1#-}" != "$1" ]; do [ "$1" = -O ] && exit 0; shift 2; done\n'
            'exec %s "$@"\n' % RSH
        )
    os.chmod(SSH, 0o755)
    with open(PLAIN_RSH, "w", encoding="utf-8") as handle:
        handle.write('#!/bin/sh\nshift\nexec runuser -u %s -- "$@"\n' % ACCOUNT)
    os.chmod(PLAIN_RSH, 0o755)
    rule = "%s ALL=(root) NOPASSWD: %s --config %s/btrfs.json subvolume *\n" % (
        ACCOUNT,
        LAUNCHER,
        WORK,
    )
    with open(SUDOERS + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(rule)
    os.chmod(SUDOERS + ".tmp", 0o440)
    run("visudo", "-cf", SUDOERS + ".tmp", stdout=subprocess.DEVNULL)
    os.replace(SUDOERS + ".tmp", SUDOERS)
    for backend in BACKENDS:
        os.makedirs(drive(backend), exist_ok=True)
        os.chmod(drive(backend), 0o711)
    image = WORK + "/btrfs.img"
    if not os.path.ismount(drive("btrfs")):
        with open(image, "wb") as handle:
            handle.truncate(max(4096, 4 * mib) * 1024 * 1024)
        run("mkfs.btrfs", "-q", "-f", image, stdout=subprocess.DEVNULL)
        run("mount", "-o", "loop", image, drive("btrfs"))
        os.chmod(drive("btrfs"), 0o711)
    for backend in BACKENDS:
        config = dict(
            root=drive(backend),
            backend=backend,
            clients={CLIENT: ACCOUNT},
            subvolume_helper=["sudo", "-n", LAUNCHER, "--config", "%s/%s.json" % (WORK, backend)],
            # No pruning in the way: the same snapshots stay on both sides.
            retention=dict(keep_all_hours=1000, min_keep=1000),
            space_guard=dict(
                min_free_percent=0,
                min_free_inodes_percent=0,
                floor_free_percent=0,
                floor_free_inodes_percent=0,
            ),
        )
        with open("%s/%s.json" % (WORK, backend), "w", encoding="utf-8") as handle:
            json.dump(config, handle)
    source = WORK + "/source"
    if not os.path.isdir(source):
        os.makedirs(source)
        run(sys.executable, REPO + "/bench/gendata.py", "create", source, str(files), str(mib))


def reset(backend: str) -> None:
    """An empty area, owned by the account (btrfs: every subvolume deleted),
    and no record of a last snapshot on the laptop's side."""
    shutil.rmtree("%s/state-%s" % (WORK, backend), ignore_errors=True)
    path = area(backend)
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            entry = os.path.join(path, name)
            if backend == "btrfs" and os.lstat(entry).st_ino == 256:
                run("btrfs", "subvolume", "delete", entry, stdout=subprocess.DEVNULL)
            elif os.path.isdir(entry) and not os.path.islink(entry):
                shutil.rmtree(entry)
            else:
                os.unlink(entry)
    else:
        os.mkdir(path, 0o700)
    account = pwd.getpwnam(ACCOUNT)
    os.chown(path, account.pw_uid, account.pw_gid)
    os.sync()


def snapshot(backend: str, full: bool = False) -> tuple[float, str, str]:
    """One ``linkdest backup`` to ``backend``: wall seconds, the snapshot, the kind."""
    os.environ["LINKDEST_BENCH_CONFIG"] = "%s/%s.json" % (WORK, backend)
    settings = client.Settings.from_mapping(
        {
            "source": WORK + "/source",
            "ssh_config": "/dev/null",
            "server": CLIENT,
            "log_file": "%s/state-%s/linkdest.log" % (WORK, backend),
            "key_file": "/dev/null",
            "user_home": WORK,
            "copy_links": False,
            "rsync_timeout": 600,
        },
        environ={},
    )
    command = client.Linkdest(settings, quiet=True)
    command.ssh_program = SSH
    began = time.monotonic()
    code = command.backup(full=full)
    seconds = time.monotonic() - began
    status = command.status.read()
    if code != 0:
        sys.exit("bench: linkdest backup to %s failed (%d): %s" % (backend, code, status))
    return seconds, status["last_snapshot"], status["last_kind"]


def bare(name: str, previous: str | None) -> float:
    """Bare rsync --link-dest of the source, through the plain remote shell."""
    argv = ["rsync", "--archive", "--delete", "--numeric-ids", "-M--fake-super"]
    if previous:
        argv.append("--link-dest=../%s" % previous)
    argv += ["-e", PLAIN_RSH, WORK + "/source/", "bench:%s/%s/" % (BARE, name)]
    began = time.monotonic()
    run(*argv, stdout=subprocess.DEVNULL)
    return time.monotonic() - began


def added_bytes(backend: str, previous: str, name: str) -> int:
    if backend == "btrfs":
        out = run(
            "btrfs",
            "filesystem",
            "du",
            "-s",
            "--raw",
            "%s/%s" % (area(backend), name),
            capture_output=True,
            text=True,
        ).stdout
        return int(out.splitlines()[-1].split()[1])
    out = run(
        "du",
        "-s",
        "--block-size=1",
        "%s/%s" % (area(backend), previous),
        "%s/%s" % (area(backend), name),
        capture_output=True,
        text=True,
    ).stdout
    return int(out.splitlines()[-1].split()[0])


def reset_bare() -> None:
    shutil.rmtree(BARE, ignore_errors=True)
    os.mkdir(BARE, 0o700)
    account = pwd.getpwnam(ACCOUNT)
    os.chown(BARE, account.pw_uid, account.pw_gid)


def main() -> int:
    files, mib, repeat = (int(x) for x in sys.argv[1:4])
    setup(files, mib)
    times: dict[tuple[str, str], list[float]] = {}
    disk: dict[str, list[int]] = {b: [] for b in BACKENDS}
    for round_ in range(1, repeat + 1):
        order = ("bare", *BACKENDS) if round_ % 2 else (*reversed(BACKENDS), "bare")
        names: dict[str, list[str]] = {b: [] for b in BACKENDS}
        for backend in BACKENDS:
            reset(backend)
        reset_bare()
        for number, case in enumerate(CASES):
            if case.startswith("after 1%"):
                run(
                    sys.executable,
                    REPO + "/bench/gendata.py",
                    "change",
                    WORK + "/source",
                    str(files),
                    str(mib),
                    str(round_),
                    stdout=subprocess.DEVNULL,
                )
            if case.startswith(("first", "after 1%")):
                # A laptop's walk does not trust a file changed moments before
                # it (changelist.RACY_NS) and sends it again the next time;
                # cron does not run that close to edits.
                time.sleep(1)
            for tool in order:
                os.sync()
                if tool == "bare":
                    seconds = bare("snap%d" % number, "snap%d" % (number - 1) if number else None)
                    kind = "bare"
                else:
                    seconds, name, kind = snapshot(tool, full="--full" in case or not number)
                    names[tool].append(name)
                    expected = "changes" if "change list" in case else "full"
                    if kind != expected:
                        sys.exit("bench: %s on %s was a %s run" % (case, tool, kind))
                times.setdefault((case, tool), []).append(seconds)
                print(
                    "round %d %-30s %-8s %6.2f s (%s)" % (round_, case, tool, seconds, kind),
                    flush=True,
                )
        for backend in BACKENDS:
            disk[backend].append(added_bytes(backend, *names[backend][:2]))
    lines = [
        "storage backends, %d files, %d MiB, median of %d (rsync %s, kernel %s)"
        % (files, mib, repeat, rsync_version(), os.uname().release),
        "",
        "| case | bare rsync (s) | hardlink (s) | btrfs (s) | hardlink / bare | btrfs / bare |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for case in CASES:
        base = statistics.median(times[(case, "bare")])
        hard = statistics.median(times[(case, "hardlink")])
        btrfs = statistics.median(times[(case, "btrfs")])
        lines.append(
            "| %s | %.2f | %.2f | %.2f | %.2f | %.2f |"
            % (case, base, hard, btrfs, hard / base, btrfs / base)
        )
    lines += [
        "",
        "disk added by an unchanged snapshot: hardlink %s bytes (du), btrfs %s bytes (exclusive)"
        % (
            statistics.median(disk["hardlink"]),
            statistics.median(disk["btrfs"]),
        ),
    ]
    report = "\n".join(lines) + "\n"
    os.makedirs(REPO + "/.cache", exist_ok=True)
    with open(REPO + "/.cache/bench-backends-%d.txt" % files, "w", encoding="utf-8") as handle:
        handle.write(report)
    print()
    print(report, end="")
    return 0


def rsync_version() -> str:
    out = run("rsync", "--version", capture_output=True, text=True).stdout
    return out.split()[2]


def cleanup() -> None:
    if os.path.ismount(drive("btrfs")):
        subprocess.run(["umount", drive("btrfs")], check=False)
    if os.path.exists(SUDOERS):
        os.unlink(SUDOERS)
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        cleanup()
