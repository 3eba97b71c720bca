# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every rsync option outside the gate's allow-list, sent by a real rsync
through the laptop's own ssh configuration, in the direction where the rsync
client really passes it to the server (or with --remote-option where it never
would by itself)."""

import linkdest_testlib as lib
import pytest
from conftest import WORK, alice

UPLOAD, READ = "upload", "read"

# (the option as the issue names it, direction, the rsync arguments sent).
# {c1_latest}, {c1_oldest} and {c10_latest} are snapshot names.
OPTIONS = [
    ("--inplace", UPLOAD, "--inplace"),
    ("--append", UPLOAD, "--append"),
    ("--append-verify", UPLOAD, "--append-verify"),
    ("-s", UPLOAD, "-s"),
    ("--secluded-args", UPLOAD, "--secluded-args"),
    ("-s (read)", READ, "-s"),
    ("--copy-devices", READ, "--copy-devices"),
    ("--write-devices", UPLOAD, "--write-devices"),
    ("--write-devices alone", UPLOAD, "--remote-option=--write-devices"),
    ("--log-file", UPLOAD, "--remote-option=--log-file=/tmp/linkdest-attack.log"),
    ("--log-file (read)", READ, "--remote-option=--log-file=/tmp/linkdest-attack.log"),
    ("--partial-dir", UPLOAD, "--partial --partial-dir=../../c10"),
    ("--temp-dir", UPLOAD, "--temp-dir=/tmp"),
    ("--backup-dir", UPLOAD, "--backup --backup-dir=../{c1_oldest}"),
    ("--backup-dir alone", UPLOAD, "--remote-option=--backup-dir=../{c1_oldest}"),
    ("--link-dest", UPLOAD, "--link-dest=/media/backup_drive/c10/{c10_latest}"),
    ("--compare-dest", UPLOAD, "--compare-dest=../../c10/{c10_latest}"),
    ("--copy-dest", UPLOAD, "--copy-dest=../{c1_latest}"),
    ("--remove-source-files", READ, "--remove-source-files"),
    ("-K", UPLOAD, "-K"),
    ("-L", READ, "-L"),
    ("-k", READ, "-k"),
    # Beyond the list.
    ("--files-from a server file", READ, "--files-from=:/etc/passwd"),
    ("--files-from alone", READ, "--remote-option=--files-from=/etc/passwd"),
    ("--inplace as a remote option", UPLOAD, "--remote-option=--inplace"),
    ("--super", UPLOAD, "--super"),
]


@pytest.fixture(scope="module")
def attack_source(c1):
    """The attacker's upload: c1's shared file with new content, and a payload."""
    result = lib.as_user(
        c1,
        f"rm -rf {WORK}/src && mkdir -p {WORK}/src && printf 'RANSOM\\n' > {WORK}/src/shared.txt"
        f" && printf 'payload\\n' > {WORK}/src/payload.txt",
    )
    assert result.rc == 0, result.stderr
    return WORK + "/src"


def remote_command(laptop, arguments: str) -> str:
    """The command rsync would run on the server for ``arguments``."""
    result = lib.as_user(
        laptop,
        f"rm -f {WORK}/remote-command; rsync -a {arguments} -e {WORK}/record-rsh"
        f" </dev/null >/dev/null 2>&1; cat {WORK}/remote-command",
    )
    return result.stdout.strip()


@pytest.mark.parametrize(("name", "direction", "template"), OPTIONS, ids=[o[0] for o in OPTIONS])
def test_forbidden_rsync_option_is_refused(
    attack, c1, server, world, attack_source, name, direction, template
):
    option = template.format(
        c1_latest=world["c1"]["latest"],
        c1_oldest=world["c1"]["snapshots"][0],
        c10_latest=world["c10"]["latest"],
    )
    if direction == UPLOAD:
        paths = "%s/ linkdest-server:snapshot/" % attack_source
    else:
        paths = "linkdest-server:%s/ %s/got/" % (world["c1"]["latest"], WORK)
    # The attack is real only if the option reaches the server's command line.
    baseline = remote_command(c1, paths)
    sent = remote_command(c1, "%s %s" % (option, paths))
    assert baseline.startswith("rsync --server"), baseline
    assert sent != baseline, "rsync does not pass %s to the server: %s" % (option, sent)

    def nothing_read_or_logged(_result):
        problems = []
        got = lib.as_user(c1, "find %s/got -mindepth 1" % WORK).stdout.split()
        if got:
            problems.append("read from the server: %s" % got[:5])
        if server.file("/tmp/linkdest-attack.log").exists:
            problems.append("the server wrote /tmp/linkdest-attack.log")
        return problems

    attack.attempt(
        "rsync option",
        "rsync -a %s (%s; the server is sent: %s)" % (option, direction, sent),
        lambda: alice(
            c1,
            f"rm -rf {WORK}/got && mkdir {WORK}/got"
            f" && rsync -a {option} {lib.RSYNC_SSH} {paths} </dev/null",
        ),
        expect="linkdest-server: refused",
        check=nothing_read_or_logged,
    )
