#!/usr/bin/env python3
# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The two storage backends on the same data in the same run (bench/backends.sh).

Everything goes over real ssh: a private sshd on 127.0.0.1 (its own host
key, config and port; no PAM) and one unprivileged account. Each linkdest
snapshot is a real ``linkdest backup`` (client.py, in this process, with its
own ssh master connection) whose key has a forced command, ``linkdest-server
gate`` of that backend's configuration, as the backup_server role installs
it. Bare ``rsync --link-dest`` logs in to the same account with a plain key
(no forced command) and writes into a directory on the hard-link drive: the
baseline every ratio is taken against, measured in the same run. The hard-link
drive is a directory on this machine's root file system (ext4 here), the btrfs
drive a loop-mounted image on the same disk; the network is loopback.

Cases, interleaved and in alternating order, median of the repeats: the first
snapshot (everything sent, a full run), an unchanged one (change list), the
same unchanged tree with ``--full`` (the safety net), and one after a 1 %
change (change list). Disk: what an unchanged snapshot adds (hard links: ``du``
counting each inode once, where it first meets it; btrfs: exclusive bytes,
``btrfs filesystem du``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
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


def start_sshd() -> None:
    """A private sshd on loopback; an ssh config per backend (and one for bare
    rsync), each with its own key: the backends' keys have the gate as their
    forced command, like the keys the backup_server role installs."""
    os.makedirs(SSH_DIR, exist_ok=True)
    os.makedirs(HOME, exist_ok=True)
    account = pwd.getpwnam(ACCOUNT)
    os.chown(HOME, account.pw_uid, account.pw_gid)
    # "*": no password, but not locked ("!"), which sshd without PAM refuses.
    run("usermod", "--home", HOME, "--password", "*", ACCOUNT)
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation
    keys = {}
    for name in ("host", *BACKENDS, "bare"):
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
    for name in (*BACKENDS, "bare"):
        with open("%s/config-%s" % (SSH_DIR, name), "w", encoding="utf-8") as handle:
            handle.write(
                "Host %s\n  HostName 127.0.0.1\n  Port %d\n  User %s\n"
                "  IdentityFile %s/%s_ed25519\n  IdentitiesOnly yes\n  BatchMode yes\n"
                "  HostKeyAlias linkdest-bench\n  UserKnownHostsFile %s/known_hosts\n"
                "  StrictHostKeyChecking yes\n" % (CLIENT, port, ACCOUNT, SSH_DIR, name, SSH_DIR)
            )


def ssh_config(name: str) -> str:
    return "%s/config-%s" % (SSH_DIR, name)


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
    settings = client.Settings.from_mapping(
        {
            "source": WORK + "/source",
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
    argv += ["-e", "ssh -F " + ssh_config("bare"), WORK + "/source/"]
    argv.append("%s:%s/%s/" % (CLIENT, BARE, name))
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
    steps: dict[tuple[str, str], str] = {}  # the last round's, per case and backend
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
                    steps[(case, tool)] = last_steps(tool)
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
