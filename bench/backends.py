#!/usr/bin/env python3
# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The two storage backends, bare rsync and rsnapshot on the same data in the
same run (bench/backends.sh).

Everything goes over real ssh: a private sshd on 127.0.0.1 (its own host
key, config and port; no PAM) and one unprivileged account. Each linkdest
snapshot is a real ``linkdest backup`` (client.py, in this process, with its
own ssh master connection) whose key has a forced command, ``linkdest-server
gate`` of that backend's configuration, as the backup_server role installs
it. Bare ``rsync --link-dest`` logs in to the same account with a plain key
(no forced command) and writes into a directory on the hard-link drive: the
baseline every ratio is taken against, measured in the same run. rsnapshot
(Debian's package, its default mode: ``cp -al`` of the newest snapshot, then
rsync into it) runs as root on the server's side and pulls the data set over
the same sshd, as the same account with a plain key of its own, into a
snapshot root on the hard-link drive: the peer users would pick. The hard-link
drive is a directory on this machine's root file system (ext4 here), the btrfs
drive a loop-mounted image on the same disk; the network is loopback.

Cases, interleaved and in alternating order, median of the repeats: the first
snapshot (everything sent, a full run), an unchanged one (change list), the
same unchanged tree with ``--full`` (the safety net), and one after a 1 %
change (change list). rsnapshot has no change list: each of its runs compares
everything, so its two unchanged cases are the same run. Disk: what an
unchanged snapshot adds (hard links and rsnapshot: ``du`` counting each inode
once, where it first meets it; btrfs: exclusive bytes, ``btrfs filesystem du``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
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
SSH_DIR = WORK + "/ssh"
SSHD_PID = SSH_DIR + "/sshd.pid"
HOME = WORK + "/home"
BARE = WORK + "/bare"
SOURCE = WORK + "/source"
RSNAPSHOT = WORK + "/rsnapshot"  # its snapshot_root, on the hard-link drive
RSNAPSHOT_CONF = WORK + "/rsnapshot.conf"
BACKENDS = ("hardlink", "btrfs")
TOOLS = ("bare", "rsnapshot", *BACKENDS)
CASES = (
    "first snapshot",
    "unchanged half hour",
    "unchanged, --full",
    "after 1% change, change list",
)
# What kind of run linkdest must make in each case (its status file's last_kind):
# nothing changed is a check the server records, with no new snapshot.
EXPECTED_KIND = {
    "first snapshot": "full",
    "unchanged half hour": "unchanged",
    "unchanged, --full": "full",
    "after 1% change, change list": "changes",
}


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kwargs)


def drive(backend: str) -> str:
    return "%s/%s" % (WORK, backend)


def area(backend: str) -> str:
    return "%s/%s" % (drive(backend), CLIENT)


def setup(files: int, mib: int) -> None:
    # rsnapshot reads the data set as the account: modes as on a laptop.
    os.umask(0o022)
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
    start_sshd()
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
            # Root's records of the runs it started, removed with the rest.
            state_dir="%s/state-server-%s" % (WORK, backend),
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
    if not os.path.isdir(SOURCE):
        os.makedirs(SOURCE)
        run(sys.executable, REPO + "/bench/gendata.py", "create", SOURCE, str(files), str(mib))
    write_rsnapshot_conf()


def start_sshd() -> None:
    """A private sshd on loopback; an ssh config per backend (and one for bare
    rsync), each with its own key: the backends' keys have the gate as their
    forced command, like the keys the backup_server role installs. rsnapshot,
    root on the server's side, logs in to the laptop (the same sshd and
    account here) with a plain key to read the data set."""
    os.makedirs(SSH_DIR, exist_ok=True)
    os.makedirs(HOME, exist_ok=True)
    account = pwd.getpwnam(ACCOUNT)
    os.chown(HOME, account.pw_uid, account.pw_gid)
    # "*": no password, but not locked ("!"), which sshd without PAM refuses.
    run("usermod", "--home", HOME, "--password", "*", ACCOUNT)
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation
    keys = {}
    for name in ("host", *BACKENDS, "bare", "rsnapshot"):
        path = "%s/%s_ed25519" % (SSH_DIR, name)
        if not os.path.exists(path):
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path)
        with open(path + ".pub", encoding="utf-8") as handle:
            keys[name] = handle.read().strip()
    with open(SSH_DIR + "/authorized_keys", "w", encoding="utf-8") as handle:
        for backend in BACKENDS:
            handle.write(
                'command="%s --config %s/%s.json gate %s",restrict %s\n'
                % (LAUNCHER, WORK, backend, CLIENT, keys[backend])
            )
        handle.write("restrict %s\n" % keys["bare"])
        handle.write("restrict %s\n" % keys["rsnapshot"])
    with open(SSH_DIR + "/known_hosts", "w", encoding="utf-8") as handle:
        handle.write("linkdest-bench %s\n" % " ".join(keys["host"].split()[:2]))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(SSH_DIR + "/sshd_config", "w", encoding="utf-8") as handle:
        handle.write(
            "ListenAddress 127.0.0.1\nPort %d\nHostKey %s/host_ed25519\n"
            "AuthorizedKeysFile %s/authorized_keys\nAllowUsers %s\nPidFile %s\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "PermitRootLogin no\nStrictModes no\nLogLevel ERROR\n"
            % (port, SSH_DIR, SSH_DIR, ACCOUNT, SSHD_PID)
        )
    run("/usr/sbin/sshd", "-f", SSH_DIR + "/sshd_config", "-E", SSH_DIR + "/sshd.log")
    for name in (*BACKENDS, "bare", "rsnapshot"):
        # rsnapshot names the laptop as its users do, user@address:path.
        host = "127.0.0.1" if name == "rsnapshot" else CLIENT
        with open(ssh_config(name), "w", encoding="utf-8") as handle:
            handle.write(
                "Host %s\n  HostName 127.0.0.1\n  Port %d\n  User %s\n"
                "  IdentityFile %s/%s_ed25519\n  IdentitiesOnly yes\n  BatchMode yes\n"
                "  HostKeyAlias linkdest-bench\n  UserKnownHostsFile %s/known_hosts\n"
                "  StrictHostKeyChecking yes\n" % (host, port, ACCOUNT, SSH_DIR, name, SSH_DIR)
            )


def write_rsnapshot_conf() -> None:
    """rsnapshot's configuration: its defaults (``link_dest 0``, ``sync_first
    0``, rsync's default arguments), a level that never rotates a snapshot
    away during the bench, its own lock file, no syslog (no ``cmd_logger``)
    and no log file. Fields are separated by tabs, as rsnapshot requires."""
    os.makedirs(RSNAPSHOT, mode=0o700, exist_ok=True)
    if os.stat(RSNAPSHOT).st_dev != os.stat(drive("hardlink")).st_dev:
        sys.exit("bench: %s is not on the hard-link drive" % RSNAPSHOT)
    fields = [
        ("config_version", "1.2"),
        ("snapshot_root", RSNAPSHOT + "/"),
        ("no_create_root", "1"),
        *(("cmd_" + name, shutil.which(name) or name) for name in ("cp", "rm", "rsync", "ssh")),
        ("ssh_args", "-F " + ssh_config("rsnapshot")),
        ("link_dest", "0"),
        ("sync_first", "0"),
        ("lockfile", WORK + "/rsnapshot.pid"),
        ("retain", "alpha\t1000"),
        ("backup", "%s@127.0.0.1:%s/\t%s/" % (ACCOUNT, SOURCE, CLIENT)),
    ]
    with open(RSNAPSHOT_CONF, "w", encoding="utf-8") as handle:
        handle.writelines("%s\t%s\n" % field for field in fields)
    out = subprocess.run(
        ["rsnapshot", "-c", RSNAPSHOT_CONF, "configtest"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.exit("bench: rsnapshot configtest: %s%s" % (out.stdout, out.stderr))


def ssh_config(name: str) -> str:
    return "%s/config-%s" % (SSH_DIR, name)


def reset(backend: str) -> None:
    """An empty area, as the backup_server role makes it (hard links: the
    account's, 0700; btrfs: root's, the account's group, 0750, every subvolume
    deleted, the account's files and the lock made by root's ``adopt``), and
    no record of a last snapshot on the laptop's side."""
    shutil.rmtree("%s/state-%s" % (WORK, backend), ignore_errors=True)
    shutil.rmtree("%s/state-server-%s" % (WORK, backend), ignore_errors=True)
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
    if backend == "btrfs":
        os.chown(path, 0, account.pw_gid)
        os.chmod(path, 0o750)
        run(
            LAUNCHER,
            "--config",
            "%s/%s.json" % (WORK, backend),
            "adopt",
            CLIENT,
            stdout=subprocess.DEVNULL,
        )
    else:
        os.chown(path, account.pw_uid, account.pw_gid)
        os.chmod(path, 0o700)
    os.sync()


def snapshot(backend: str, full: bool = False) -> tuple[float, str, str]:
    """One ``linkdest backup`` to ``backend``: wall seconds, the snapshot, the kind."""
    settings = client.Settings.from_mapping(
        {
            "source": SOURCE,
            "ssh_config": ssh_config(backend),
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
    began = time.monotonic()
    code = command.backup(full=full)
    seconds = time.monotonic() - began
    status = command.status.read()
    if code != 0:
        sys.exit("bench: linkdest backup to %s failed (%d): %s" % (backend, code, status))
    return seconds, status["last_snapshot"], status["last_kind"]


def last_steps(backend: str) -> str:
    """Where the last run's time went, from the ``took:`` line it logged."""
    with open("%s/state-%s/linkdest.log" % (WORK, backend), encoding="utf-8") as handle:
        took = [line for line in handle if " took: " in line]
    return took[-1].split("took: ", 1)[1].strip() if took else "(no took: line)"


def bare(name: str, previous: str | None) -> float:
    """Bare rsync --link-dest of the source, over ssh with the plain key (no gate)."""
    argv = ["rsync", "--archive", "--delete", "--numeric-ids", "-M--fake-super"]
    if previous:
        argv.append("--link-dest=../%s" % previous)
    argv += ["-e", "ssh -F " + ssh_config("bare"), SOURCE + "/"]
    argv.append("%s:%s/%s/" % (CLIENT, BARE, name))
    began = time.monotonic()
    run(*argv, stdout=subprocess.DEVNULL)
    return time.monotonic() - began


def rsnapshot() -> float:
    """One ``rsnapshot alpha``: wall seconds (rotation, ``cp -al``, rsync over ssh)."""
    began = time.monotonic()
    done = subprocess.run(
        ["rsnapshot", "-c", RSNAPSHOT_CONF, "alpha"], stdout=subprocess.DEVNULL, check=False
    )
    seconds = time.monotonic() - began
    if done.returncode != 0:  # 2 is rsnapshot's "finished with warnings"
        sys.exit("bench: rsnapshot failed (%d)" % done.returncode)
    return seconds


def tree(root: str) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root``: its type, and a regular file's size and mtime."""
    entries = {}
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(parent, name)
            info = os.lstat(path)
            regular = stat.S_ISREG(info.st_mode)
            entries[os.path.relpath(path, root)] = (
                stat.S_IFMT(info.st_mode),
                info.st_size if regular else 0,
                int(info.st_mtime) if regular else 0,
            )
    return entries


def check_rsnapshot(case: str, source: dict[str, tuple[int, int, int]]) -> None:
    """The newest rsnapshot snapshot holds the data set as it is now (rsync's
    ``--relative``, rsnapshot's default, keeps the source's full path)."""
    got = tree(os.path.join(RSNAPSHOT, "alpha.0", CLIENT, SOURCE.lstrip("/")))
    if got != source:
        count = sum(1 for kind, _, _ in got.values() if kind == stat.S_IFREG)
        want = sum(1 for kind, _, _ in source.values() if kind == stat.S_IFREG)
        differ = sum(1 for path in got.keys() | source.keys() if got.get(path) != source.get(path))
        sys.exit(
            "bench: rsnapshot's snapshot after %s holds %d files, the source %d"
            " (%d paths differ)" % (case, count, want, differ)
        )


def rsnapshot_names() -> list[str]:
    """The round's rsnapshot snapshots, oldest first (alpha.0 is the newest)."""
    return ["alpha.%d" % n for n in reversed(range(len(CASES)))]


def du_added(previous: str, path: str) -> int:
    """What ``path`` adds to ``previous``: ``du`` counts each inode once,
    where it first meets it."""
    out = run("du", "-s", "--block-size=1", previous, path, capture_output=True, text=True).stdout
    return int(out.splitlines()[-1].split()[0])


def area_usage(backend: str) -> int:
    """Bytes the backend's area takes: allocated blocks, each inode counted once
    (``du``; on btrfs, the shared and exclusive bytes of ``btrfs filesystem du``)."""
    os.sync()
    if backend == "btrfs":
        out = run(
            "btrfs", "filesystem", "du", "-s", "--raw", area(backend),
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        total, exclusive, shared = out.splitlines()[-1].split()[:3]
        return int(exclusive) + int(shared)
    out = run("du", "-s", "--block-size=1", area(backend), capture_output=True, text=True).stdout
    return int(out.split()[0])


def reset_bare() -> None:
    shutil.rmtree(BARE, ignore_errors=True)
    os.mkdir(BARE, 0o700)
    account = pwd.getpwnam(ACCOUNT)
    os.chown(BARE, account.pw_uid, account.pw_gid)


def reset_rsnapshot() -> None:
    shutil.rmtree(RSNAPSHOT, ignore_errors=True)
    os.mkdir(RSNAPSHOT, 0o700)


def main() -> int:
    files, mib, repeat = (int(x) for x in sys.argv[1:4])
    setup(files, mib)
    times: dict[tuple[str, str], list[float]] = {}
    disk: dict[str, list[int]] = {b: [] for b in (*BACKENDS, "rsnapshot", "bare")}
    steps: dict[tuple[str, str], str] = {}  # the last round's, per case and backend
    for round_ in range(1, repeat + 1):
        order = TOOLS if round_ % 2 else tuple(reversed(TOOLS))
        names: dict[str, list[str]] = {b: [] for b in BACKENDS}
        for backend in BACKENDS:
            reset(backend)
        reset_bare()
        reset_rsnapshot()
        for number, case in enumerate(CASES):
            if case.startswith("after 1%"):
                run(
                    sys.executable,
                    REPO + "/bench/gendata.py",
                    "change",
                    SOURCE,
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
            source = tree(SOURCE)  # what rsnapshot's snapshot must hold
            for tool in order:
                os.sync()
                if tool == "bare":
                    seconds = bare("snap%d" % number, "snap%d" % (number - 1) if number else None)
                    kind = "bare"
                elif tool == "rsnapshot":
                    seconds = rsnapshot()
                    check_rsnapshot(case, source)
                    kind = "cp -al + rsync" if number else "rsync"
                else:
                    used = area_usage(tool) if EXPECTED_KIND[case] == "unchanged" else 0
                    seconds, name, kind = snapshot(tool, full="--full" in case or not number)
                    steps[(case, tool)] = last_steps(tool)
                    names[tool].append(name)
                    if kind != EXPECTED_KIND[case]:
                        sys.exit("bench: %s on %s was a %s run" % (case, tool, kind))
                    if kind == "unchanged":
                        # No new snapshot: what the area grew by is all it cost.
                        disk[tool].append(area_usage(tool) - used)
                times.setdefault((case, tool), []).append(seconds)
                print(
                    "round %d %-30s %-9s %6.2f s (%s)" % (round_, case, tool, seconds, kind),
                    flush=True,
                )
        disk["bare"].append(du_added(BARE + "/snap0", BARE + "/snap1"))
        first, unchanged = rsnapshot_names()[:2]
        disk["rsnapshot"].append(
            du_added(os.path.join(RSNAPSHOT, first), os.path.join(RSNAPSHOT, unchanged))
        )
    lines = [
        "storage backends, %d files, %d MiB, median of %d (rsync %s, rsnapshot %s, kernel %s)"
        % (files, mib, repeat, rsync_version(), rsnapshot_version(), os.uname().release),
        "",
        "| case | bare rsync (s) | hardlink (s) | btrfs (s) | rsnapshot (s) "
        "| hardlink / bare | btrfs / bare | rsnapshot / bare |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in CASES:
        base = statistics.median(times[(case, "bare")])
        hard = statistics.median(times[(case, "hardlink")])
        btrfs = statistics.median(times[(case, "btrfs")])
        peer = statistics.median(times[(case, "rsnapshot")])
        lines.append(
            "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |"
            % (case, base, hard, btrfs, peer, hard / base, btrfs / base, peer / base)
        )
    lines += [
        "",
        "rsnapshot has no change list: its two unchanged cases are the same run"
        " (rotation, cp -al of the newest, rsync of everything into it).",
        "",
        "disk added by an unchanged half hour: bare rsync %s bytes (its new tree, du),"
        " rsnapshot %s bytes (du), linkdest hardlink %s bytes and btrfs %s bytes (what the"
        " area grew by: linkdest makes no snapshot, it records a check)"
        % (
            statistics.median(disk["bare"]),
            statistics.median(disk["rsnapshot"]),
            statistics.median(disk["hardlink"]),
            statistics.median(disk["btrfs"]),
        ),
        "",
        "where a linkdest run's time went (the laptop log's took: line, last round):",
    ]
    lines += ["- %s, %s: %s" % (case, b, steps[(case, b)]) for case in CASES for b in BACKENDS]
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


def rsnapshot_version() -> str:
    out = run("rsnapshot", "version", capture_output=True, text=True).stdout
    return out.split()[-1]


def cleanup() -> None:
    with contextlib.suppress(OSError, ValueError), open(SSHD_PID, encoding="utf-8") as handle:
        os.kill(int(handle.read().strip()), signal.SIGTERM)
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
