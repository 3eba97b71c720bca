# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The change list is the normal path: a backup sends what changed since the
last snapshot, the server builds the new one from current, and the result is
what a full run makes; full runs stay the safety net."""

from __future__ import annotations

import json
import shlex
import time

import linkdest_testlib as lib
import pytest

AREA = lib.ROOT + "/%s"
RECORD = lib.HOME + "/.local/state/linkdest/sent.record"

# Per path of one snapshot: type, real mode, the --fake-super record, mtime,
# content digest. Printed as JSON by the server.
SNAPSHOT_FINGERPRINT = r"""
import hashlib, json, os, stat, sys
top = sys.argv[1]
found = {}
for dirpath, dirnames, filenames in os.walk(top):
    for name in [""] + dirnames + filenames if dirpath == top else dirnames + filenames:
        path = os.path.join(dirpath, name) if name else dirpath
        st = os.lstat(path)
        try:
            fake = os.getxattr(path, "user.rsync.%stat", follow_symlinks=False).decode()
        except OSError:
            fake = None
        digest = None
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
        found[os.path.relpath(path, top)] = [
            stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), fake, st.st_mtime_ns, digest
        ]
print(json.dumps(found))
"""


def snapshot_fingerprint(server, client: str, name: str) -> dict:
    result = server.run(
        "python3 -c %s %s" % (shlex.quote(SNAPSHOT_FINGERPRINT), AREA % client + "/" + name)
    )
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def older_snapshots(server, client: str, names: list[str]) -> dict:
    """What history must keep: each older snapshot's fingerprint and inodes."""
    found = {}
    for name in names:
        inodes = server.run(
            "cd %s && find . -type f -printf '%%p %%i\\n' | sort" % (AREA % client + "/" + name)
        ).stdout
        found[name] = (snapshot_fingerprint(server, client, name), inodes)
    return found


def last_run(laptop) -> dict:
    status = lib.read_status(laptop)
    return {key: status.get(key, "") for key in ("last_kind", "last_paths", "last_full_reason")}


CHANGES = [
    # (laptop, shell commands run in the folder as alice)
    "mkdir -p cl/dir/sub && printf one > cl/dir/sub/a && printf two > 'cl/b c'",
    "printf 'x' > 'cl/-dash' && printf 'y' > \"cl/new$(printf '\\nline')\" && printf z > cl/ü",
    "chmod 0600 cl/dir/sub/a",
    "printf ONE > cl/dir/sub/a.tmp && touch -r cl/dir/sub/a cl/dir/sub/a.tmp"
    " && mv cl/dir/sub/a.tmp cl/dir/sub/a",
    "mv cl/dir cl/renamed",
    "rm 'cl/b c' && mkdir 'cl/b c' && printf inner > 'cl/b c/inner'",
    "rm -r 'cl/b c' && printf 'a file again' > 'cl/b c'",
    "ln cl/ü cl/ü-link && rm cl/-dash",
]


@pytest.mark.parametrize("laptop_name", ["laptop-a", "laptop-b"])
def test_a_change_list_snapshot_is_what_a_full_run_makes(laptop_name, server):
    laptop = lib.get_host(laptop_name)
    # Earlier tests changed the folder moments ago: let one run settle them.
    lib.backup_ok(laptop)
    time.sleep(1.1)
    lib.backup_ok(laptop)
    for step in CHANGES:
        older = lib.snapshot_names(server, laptop_name)
        history = older_snapshots(server, laptop_name, older[-3:])
        assert lib.as_user(laptop, "cd %s && %s" % (shlex.quote(lib.SOURCE), step)).rc == 0, step
        # rsync's last pass over directory times compares whole seconds: a
        # directory written within the second of its own mtime keeps the
        # receiver's time, in any kind of run. Cron does not run that close
        # to an edit; this test would.
        time.sleep(1.1)
        by_list = lib.backup_ok(laptop)
        assert last_run(laptop)["last_kind"] == "changes", (step, last_run(laptop))
        by_full = lib.backup_ok(laptop, "linkdest backup --full")
        assert last_run(laptop)["last_kind"] == "full"
        assert snapshot_fingerprint(server, laptop_name, by_list) == snapshot_fingerprint(
            server, laptop_name, by_full
        ), step
        assert older_snapshots(server, laptop_name, older[-3:]) == history, step


def test_half_hourly_backups_go_through_the_change_list(laptop_a, server):
    lib.backup_ok(laptop_a)
    cursor = lib.journal_cursor(server)
    lib.write_file(laptop_a, "cl/half-hourly.txt", "one more\n")
    name = lib.backup_ok(laptop_a)
    run = last_run(laptop_a)
    assert run["last_kind"] == "changes"
    # The new file and its folder, and what changed within two seconds
    # before the last walk (sent again: its ctime is not trusted yet).
    files = int(lib.as_user(laptop_a, "find %s | wc -l" % lib.SOURCE).stdout)
    assert 2 <= int(run["last_paths"]) < files / 2, (run, files)
    log = lib.journal_since(server, cursor)
    assert "prepared incomplete_" in log, log
    assert "change list against" in log, log
    assert server.file(AREA % "laptop-a" + "/%s/cl/half-hourly.txt" % name).exists
    report = lib.as_user(laptop_a, "linkdest status")
    assert "Last run:      change list, %s paths sent" % run["last_paths"] in report.stdout


def test_the_safety_net_full_runs(laptop_a, server):
    lib.backup_ok(laptop_a)
    lib.backup_ok(laptop_a, "linkdest backup --full")
    assert last_run(laptop_a)["last_full_reason"] == "asked for (--full)"
    # A record made against a snapshot that is no longer current: the server
    # says so and the laptop sends everything.
    # (Each run that must make a snapshot has something new to send: with
    # nothing new a run makes none.)
    assert lib.as_user(laptop_a, "cp %s %s.old" % (RECORD, RECORD)).rc == 0
    lib.write_file(laptop_a, "safety-net.txt", "one\n")
    lib.backup_ok(laptop_a)
    assert lib.as_user(laptop_a, "mv %s.old %s" % (RECORD, RECORD)).rc == 0
    lib.backup_ok(laptop_a)
    run = last_run(laptop_a)
    assert run["last_kind"] == "full"
    assert "not current" in run["last_full_reason"], run
    lib.write_file(laptop_a, "safety-net.txt", "two\n")
    lib.backup_ok(laptop_a)
    assert last_run(laptop_a)["last_kind"] == "changes"
    # Other excludes: everything again, once.
    variant = "/tmp/linkdest-excludes"
    assert (
        laptop_a.run(
            "cp /usr/local/bin/linkdest %s && chmod 755 %s && sed -i %s %s"
            % (
                variant,
                variant,
                shlex.quote('s|^    "excludes": .*|    "excludes": ["*.skip"],|'),
                variant,
            )
        ).rc
        == 0
    )
    assert lib.as_user(laptop_a, variant + " backup").rc == 0
    run = last_run(laptop_a)
    assert run["last_kind"] == "full"
    assert "excludes" in run["last_full_reason"]
    lib.backup_ok(laptop_a)
    assert last_run(laptop_a)["last_kind"] == "full"  # back to the role's excludes
    lib.write_file(laptop_a, "safety-net.txt", "three\n")
    lib.backup_ok(laptop_a)
    assert last_run(laptop_a)["last_kind"] == "changes"
