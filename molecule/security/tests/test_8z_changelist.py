# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Change lists with the laptop's own key: a snapshot built from current must
never let the laptop reach a finished snapshot's inode or a path outside the
new snapshot. Run last but the report: some attempts make snapshots."""

import shlex

import linkdest_testlib as lib
import pytest
from conftest import WORK, alice

SSH = "ssh -F %s linkdest-server" % lib.SSH_CONFIG


def current(server) -> str:
    return server.run("readlink /media/backup_drive/c1/current").stdout.strip()


def send_list(entries: bytes, base: str) -> str:
    """A shell command sending ``entries`` (the raw list) as a change list for ``base``."""
    write = "import sys; sys.stdout.buffer.write(bytes.fromhex(sys.argv[1]))"
    return "python3 -c %s %s | %s changes %s" % (shlex.quote(write), entries.hex(), SSH, base)


BAD_LISTS = [
    ("a path with ..", b"- ../c10/shared.txt\0\0"),
    ("an absolute path", b"- /etc/passwd\0\0"),
    ("a path that climbs out in the middle", b"f docs/../../../etc\0\0"),
    ("an empty part", b"- docs//c1-notes.txt\0\0"),
    ("an unknown kind", b"x shared.txt\0\0"),
    ("an entry cut short", b"- shared.txt"),
    ("no end mark (a list abandoned half way)", b"- shared.txt\0"),
]


@pytest.mark.parametrize(("what", "entries"), BAD_LISTS, ids=[b[0] for b in BAD_LISTS])
def test_a_bad_change_list_is_refused_and_changes_nothing(attack, c1, server, world, what, entries):
    attack.attempt(
        "change list",
        "changes against current with %s" % what,
        lambda: alice(c1, send_list(entries, current(server))),
        expect="linkdest-server: refused",
    )


def test_a_huge_change_list_is_refused(attack, c1, server, world):
    # One entry more than the server takes, made on the laptop.
    make = (
        'python3 -c \'import sys; sys.stdout.buffer.write(b"- x\\0" * 1000001 + b"\\0")\''
        " | %s changes %s" % (SSH, current(server))
    )
    attack.attempt(
        "change list",
        "changes with 1,000,001 entries",
        lambda: alice(c1, make),
        expect="linkdest-server: refused",
    )


def test_a_base_that_is_not_current_asks_for_a_full_run(attack, c1, server, world):
    oldest = world["c1"]["snapshots"][0]
    result = alice(c1, send_list(b"- shared.txt\0\0", oldest))
    before_after = lib.fingerprint(server)
    problems = [] if result.rc == 76 and "full run needed" in result.output else ["not refused"]
    assert lib.fingerprint_diff(before_after, lib.fingerprint(server)) == []
    attack.record(
        "change list",
        "changes against an older snapshot (%s), deleting shared.txt" % oldest,
        "exit %d: %s" % (result.rc, result.output.strip().splitlines()[-1]),
        problems,
    )
    assert not problems, result.output


def test_an_upload_without_a_change_list_is_refused(attack, c1, server, world):
    attack.attempt(
        "change list",
        "rsync to changes/ with no change list prepared",
        lambda: alice(
            c1,
            "printf 'shared.txt\\0' > %s/list && rsync -tpog --from0 --files-from=%s/list"
            " %s %s/ linkdest-server:changes/ </dev/null" % (WORK, WORK, lib.RSYNC_SSH, lib.SOURCE),
        ),
        expect="linkdest-server: refused",
    )


FORBIDDEN_IN_CHANGES = [
    ("--checksum (a match would set attributes on the old inode)", "-c"),
    ("symlinks (-l)", "-l"),
    ("devices and specials (-D)", "-D"),
    ("--delete", "--delete"),
    ("-H", "-H"),
]


@pytest.mark.parametrize(
    ("what", "option"), FORBIDDEN_IN_CHANGES, ids=[f[1] for f in FORBIDDEN_IN_CHANGES]
)
def test_options_that_could_touch_old_inodes_are_refused(attack, c1, server, world, what, option):
    attack.attempt(
        "change list",
        "rsync to changes/ with %s" % what,
        lambda: alice(
            c1,
            "printf 'shared.txt\\0' > %s/list && rsync -tpog %s --from0 --files-from=%s/list"
            " %s %s/ linkdest-server:changes/ </dev/null"
            % (WORK, option, WORK, lib.RSYNC_SSH, lib.SOURCE),
        ),
        expect="linkdest-server: refused",
    )


def test_a_metadata_change_sent_outside_the_list_gets_a_new_inode(attack, c1, server, world):
    """The list names nothing, then rsync sends mode.txt with a new mode (same
    size and mtime: rsync's quick check would only set attributes, on the
    inode every snapshot shares). The server's --ignore-times writes it anew."""
    old = lib.snapshot_names(server, "c1")
    base = current(server)
    before = lib.fingerprint(server)
    shared = before["areas"]["c1"]["files"]["%s/mode.txt" % base]
    assert lib.as_user(c1, "chmod 0640 %s/mode.txt" % lib.SOURCE).rc == 0
    result = alice(
        c1,
        "%s && printf 'mode.txt\\0' > %s/list"
        " && rsync -tpog --from0 --files-from=%s/list %s %s/ linkdest-server:changes/ </dev/null"
        " && %s finalize 0 </dev/null"
        % (send_list(b"\0", base), WORK, WORK, lib.RSYNC_SSH, lib.SOURCE, SSH),
    )
    after = lib.fingerprint(server)
    new = result.output.split()[-1] if result.output.split() else ""
    files = after["areas"]["c1"]["files"]
    changed = [
        path
        for path, record in before["areas"]["c1"]["files"].items()
        if path.split("/", 1)[0] in old
        and record[:1] + record[2:] != files.get(path, record)[:1] + files.get(path, record)[2:]
    ]
    record = files.get("%s/mode.txt" % new)
    problems = ["older snapshots changed: %s" % changed[:3]] if changed else []
    if record is None or record[0] == shared[0]:
        problems.append("mode.txt of %s is %s (shared inode %d)" % (new, record, shared[0]))
    elif not record[7].startswith("100640 "):
        problems.append("the new mode.txt is %s" % record[7])
    attack.record_verdict(
        "change list",
        "an empty change list, then rsync -tpog of mode.txt with a new mode + finalize",
        "exit %d: %s" % (result.rc, new),
        "contained: a new inode in %s; every older snapshot unchanged" % new
        if not problems
        else "FAIL: " + "; ".join(problems),
    )
    assert result.rc == 0, result.output
    assert not problems
