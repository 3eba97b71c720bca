# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""One laptop's key reaches its own area only, and c1 never matches c10: no
path the laptop names leads out of its area, and the account, not only the
gate, keeps c1 out of c10's snapshots."""

import shlex
import zlib

import linkdest_testlib as lib
import pytest
from conftest import C10_SECRET, WORK, Result, alice

SSH = "ssh -F %s linkdest-server" % lib.SSH_CONFIG


def _names(world) -> dict:
    return {
        "c1_latest": world["c1"]["latest"],
        "c10_latest": world["c10"]["latest"],
        "c10_only": world["c10"]["only"],
    }


def incompletes(server, client: str) -> set[str]:
    area = "%s/%s" % (lib.ROOT, client)
    return {n for n in server.file(area).listdir() if n.startswith("incomplete_back-")}


def remove_incompletes(server, client: str, names) -> None:
    """Test cleanup (as root): remove incomplete snapshots an attempt left."""
    for name in names:
        assert name.startswith("incomplete_back-")
        server.run("rm -rf --one-file-system -- %s/%s/%s" % (lib.ROOT, client, name))


# An upload naming a destination the gate must refuse: '..' and absolute
# paths (issue 5: "refuses ... any path the laptop names, '..', absolute paths").
UPLOAD_DESTINATIONS = [
    ("c10's area by ..", "../c10/"),
    ("c10's finished snapshot by ..", "../c10/{c10_latest}/"),
    ("c10's finished snapshot by absolute path", "/media/backup_drive/c10/{c10_latest}/"),
    ("c1's own finished snapshot by absolute path", "/media/backup_drive/c1/{c1_latest}/"),
    ("the manifests by ..", "../.linkdest-manifests/c1/"),
    ("the manifests by absolute path", "/media/backup_drive/.linkdest-manifests/c1/"),
    ("/etc", "/etc/"),
    ("the accounts' home", "/var/lib/linkdest-server/.ssh/"),
]


@pytest.mark.parametrize(
    ("what", "destination"), UPLOAD_DESTINATIONS, ids=[d[0] for d in UPLOAD_DESTINATIONS]
)
def test_upload_to_a_path_outside_the_area_is_refused(attack, c1, server, world, what, destination):
    destination = destination.format(**_names(world))
    marker = "upload-to-%08x.txt" % zlib.crc32(destination.encode())
    lib.as_user(c1, f"rm -rf {WORK}/up && mkdir {WORK}/up && echo payload > {WORK}/up/{marker}")
    before = incompletes(server, "c1")

    def nowhere_else(_result):
        landed = server.run(
            "find /etc /var/lib/linkdest-server %s -name %s" % (lib.ROOT, marker)
        ).stdout.split()
        inside = "%s/c1/incomplete_back-" % lib.ROOT
        outside = [p for p in landed if not p.startswith(inside)]
        if outside:
            return ["the payload landed at %s" % outside]
        # The gate ignored the path: the upload went where every upload goes.
        return ["note: the payload landed only in %s" % p[len(lib.ROOT) + 1 :] for p in landed]

    try:
        attack.attempt(
            "path",
            "rsync -a SRC/ linkdest-server:%s (%s)" % (destination, what),
            lambda: alice(
                c1,
                "rsync -a %s %s/up/ linkdest-server:%s </dev/null"
                % (lib.RSYNC_SSH, WORK, destination),
            ),
            expect="linkdest-server: refused",
            check=nowhere_else,
        )
    finally:
        remove_incompletes(server, "c1", incompletes(server, "c1") - before)


READ_SOURCES = [
    ("c10's area by ..", "../c10/"),
    ("c10's finished snapshot by ..", "../c10/{c10_latest}/"),
    ("c10's current by ..", "../c10/current/"),
    ("c10's secret file by absolute path", "/media/backup_drive/c10/{c10_latest}/c10-secret.txt"),
    ("c10's snapshot through c1's snapshot and ..", "{c1_latest}/../../c10/{c10_latest}/"),
    ("a snapshot name only c10 has", "{c10_only}/"),
    ("/etc/passwd after an empty path part", "{c1_latest}//etc/passwd"),
    ("the server's /etc", "/etc/"),
    ("c1's area itself (journal, lock)", "./"),
    ("c1's current", "current/"),
    ("the drive's root", "/media/backup_drive/"),
]


@pytest.mark.parametrize(("what", "source"), READ_SOURCES, ids=[s[0] for s in READ_SOURCES])
def test_read_outside_the_own_snapshots_is_refused(attack, c1, world, what, source):
    source = source.format(**_names(world))

    def nothing_read(result):
        got = lib.as_user(c1, "find %s/got -mindepth 1" % WORK).stdout.split()
        secret = lib.as_user(c1, "grep -rl %s %s/got" % (shlex.quote(C10_SECRET), WORK)).stdout
        problems = ["read %s" % got[:5]] if got else []
        if secret or C10_SECRET in result.output:
            problems.append("c10's secret reached c1")
        return problems

    attack.attempt(
        "path",
        "rsync -a linkdest-server:%s DIR/ (%s)" % (source, what),
        lambda: alice(
            c1,
            f"rm -rf {WORK}/got && mkdir {WORK}/got && rsync -a {lib.RSYNC_SSH}"
            f" linkdest-server:{shlex.quote(source)} {WORK}/got/ </dev/null",
        ),
        expect="linkdest-server: ",
        check=nothing_read,
    )


LOOKUPS = [
    ("locate by ..", "locate ../c10/c10-secret.txt"),
    ("locate by absolute path", "locate /media/backup_drive/c10/{c10_latest}/c10-secret.txt"),
    ("versions by ..", "versions ../../c10/{c10_latest}/c10-secret.txt"),
    ("locate of a file only c10 has", "locate c10-secret.txt"),
    ("versions of a file only c10 has", "versions c10-secret.txt"),
    ("the manifest of c10's snapshot by name", "manifest {c10_latest}"),
    ("the manifest of c10's snapshot by ..", "manifest ../c10/{c10_latest}"),
    ("the manifests of every laptop", "manifest --all"),
]


@pytest.mark.parametrize(("what", "command"), LOOKUPS, ids=[lookup[0] for lookup in LOOKUPS])
def test_lookups_outside_the_own_area_find_nothing(attack, c1, world, what, command):
    command = command.format(**_names(world))
    attack.attempt(
        "path",
        "ssh linkdest-server %s (%s)" % (command, what),
        lambda: alice(c1, "%s %s </dev/null" % (SSH, command)),
        expect="linkdest-server: ",
        forbidden_output=(world["c10"]["only"],),
    )


def test_list_shows_only_the_own_snapshots(attack, c1, server, world):
    result = alice(c1, "%s list </dev/null" % SSH)
    listed = [line.split()[0] for line in result.output.splitlines() if line.strip()]
    own = lib.snapshot_names(server, "c1")
    attack.record_verdict(
        "other laptop",
        "ssh linkdest-server list",
        "exit %d: %d snapshots listed" % (result.rc, len(listed)),
        "only c1's own snapshots" if listed == own else "HOLE: lists %s" % listed,
    )
    assert result.rc == 0, result.output
    assert listed == own
    assert world["c10"]["only"] not in result.output


@pytest.mark.parametrize(
    ("laptop_name", "account"),
    [("c1", "bk-c10"), ("c1", "root"), ("c10", "bk-c1")],
)
def test_a_key_logs_in_as_its_own_account_only(attack, c1, c10, laptop_name, account):
    laptop = {"c1": c1, "c10": c10}[laptop_name]
    attack.attempt(
        "other laptop",
        "%s's key as %s: ssh -l %s linkdest-server list" % (laptop_name, account, account),
        lambda: alice(laptop, "%s -l %s list </dev/null" % (SSH, account)),
        expect="Permission denied (publickey)",
        forbidden_output=("back-",),
    )


def test_each_forced_command_names_its_own_laptop(server, c1, c10):
    """c1's key runs `gate c1` as bk-c1, whatever the laptop sends; never c10's."""
    keys = {}
    for client, laptop in (("c1", c1), ("c10", c10)):
        public = laptop.file(lib.HOME + "/.ssh/linkdest_ed25519.pub").content_string
        keys[client] = public.split()[1]
    for client in ("c1", "c10"):
        content = server.file("/etc/linkdest/authorized_keys/bk-" + client).content_string
        lines = [line for line in content.splitlines() if line and not line.startswith("#")]
        assert len(lines) == 1, lines
        forced = 'restrict,command="/usr/local/sbin/linkdest-server gate %s" ' % client
        assert lines[0].startswith(forced), lines[0]
        assert lines[0][len(forced) :].split()[:2] == ["ssh-ed25519", keys[client]]
    assert keys["c1"] != keys["c10"]


SERVER_SIDE = [
    ("list", "list", "linkdest-server: refused: account bk-c1 is not the account of client c10"),
    (
        "a read of c10's snapshot",
        "rsync --server --sender -logDtpre.iLsfxCIvu . {c10_latest}/",
        "linkdest-server: refused: account bk-c1 is not the account of client c10",
    ),
    (
        "an upload",
        "rsync --server -logDtpre.iLsfxCIvu . snapshot/",
        "linkdest-server: refused: account bk-c1 is not the account of client c10",
    ),
]


@pytest.mark.parametrize(
    ("what", "command", "expect"), SERVER_SIDE, ids=[s[0] for s in SERVER_SIDE]
)
def test_the_gate_of_c10_refuses_the_account_of_c1(attack, server, world, what, command, expect):
    """Even if c1's session reached `gate c10` (a forged forced command), the
    gate runs as bk-c1 and refuses: the account decides, not the words."""
    command = command.format(**_names(world))

    def run():
        result = server.run(
            "cd / && runuser -u bk-c1 -- env SSH_ORIGINAL_COMMAND=%s"
            " /usr/local/sbin/linkdest-server gate c10 </dev/null" % shlex.quote(command)
        )
        return Result(result.rc, result.stdout + result.stderr)

    attack.attempt(
        "other laptop",
        "on the server: bk-c1 runs `linkdest-server gate c10` with %s" % what,
        run,
        expect=expect,
        client="c10",
        forbidden_output=(C10_SECRET,),
    )


def test_the_kernel_keeps_c1_out_of_c10s_area(attack, server, world):
    secret = "%s/c10/%s/c10-secret.txt" % (lib.ROOT, world["c10"]["latest"])

    def run():
        result = server.run(
            "runuser -u bk-c1 -- sh -c %s"
            % shlex.quote("ls %s/c10; cat %s" % (lib.ROOT, shlex.quote(secret)))
        )
        return Result(result.rc, result.stdout + result.stderr)

    def nothing_listed(result):
        listed = [line for line in result.output.splitlines() if line.startswith("back-")]
        return ["listed %s" % listed] if listed else []

    attack.attempt(
        "other laptop",
        "on the server: bk-c1 lists c10's area and reads c10's file",
        run,
        expect="Permission denied",
        forbidden_output=(C10_SECRET,),
        check=nothing_listed,
    )
