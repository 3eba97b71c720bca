# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Scrub and self-heal on two real drives (issue 12), by fault injection.

Bytes are flipped inside files on one drive or both, keeping size and mtime,
which rsync's quick check cannot see; ``linkdest-server verify`` must find
the damage, name every snapshot it touches, repair it from the other drive
without touching the good copy, and report what it cannot repair. Runs after
test_mirror.py, on the snapshots it left.
"""

import json
import shlex

import linkdest_testlib as lib
import pytest
from test_mirror import AREA, CLIENT, DST, MIRROR_AREA, SRC, contents, mirror, names

testinfra_hosts = ["mirror-server"]

VERIFY = "/usr/local/sbin/linkdest-server verify"
ALERTS = "/var/log/linkdest-server-alerts"
MANIFESTS = ".linkdest-manifests/" + CLIENT


def inode(server, path: str) -> int:
    return lib.server_py(server, "import os; print(os.lstat(%r).st_ino)" % path)


def sharing(server, area: str, relpath: str) -> list[str]:
    """The snapshots whose ``relpath`` is the same inode as in the newest one."""
    newest = names(server, area)[-1]
    ino = inode(server, "%s/%s/%s" % (area, newest, relpath))
    return [
        name
        for name in names(server, area)
        if server.file("%s/%s/%s" % (area, name, relpath)).exists
        and inode(server, "%s/%s/%s" % (area, name, relpath)) == ino
    ]


def verify(server, args: str = ""):
    return server.run("%s %s" % (VERIFY, args))


def alerts(server) -> list[str]:
    if not server.file(ALERTS).exists:
        return []
    return server.file(ALERTS).content_string.splitlines()


@pytest.fixture(scope="module")
def clean(host, laptop, quiet):
    """Three fresh snapshots sharing shared.txt, on both drives, all verified."""
    lib.write_file(laptop, "scrub/shared.txt", "the same bytes in every snapshot\n" * 200)
    for label in ("s1", "s2", "s3"):
        lib.write_file(laptop, "scrub/%s.txt" % label, label + "\n")
        lib.backup_ok(laptop)
    assert mirror(host).rc == 0
    result = verify(host, "--restart")
    assert result.rc == 0, result.stdout + result.stderr
    return {"before": contents(host, AREA), "mirror_before": contents(host, MIRROR_AREA)}


def test_every_snapshot_has_a_trusted_manifest_on_both_drives(host, clean):
    for drive in (SRC, DST):
        listed = lib.server_py(
            host,
            "import os, json; print(json.dumps(sorted(os.listdir(%r))))"
            % ("%s/%s" % (drive, MANIFESTS)),
        )
        assert listed == names(host, "%s/%s" % (drive, CLIENT)), drive
        manifests = host.file("%s/.linkdest-manifests" % drive)
        assert (manifests.user, manifests.mode) == ("root", 0o700)


def test_a_clean_pass_reads_both_drives_to_the_end(host, clean):
    result = verify(host, "--restart")
    assert result.rc == 0, result.stdout
    for drive in (SRC, DST):
        assert "%s: " % drive in result.stdout
    assert result.stdout.count("end of the drive") == 2
    assert "without a manifest" not in result.stdout


def test_flipped_bytes_on_drive_one_are_found_everywhere_and_repaired_from_drive_two(host, clean):
    affected = sharing(host, AREA, "scrub/shared.txt")
    assert len(affected) >= 3
    bad = "%s/%s/scrub/shared.txt" % (AREA, affected[-1])
    good = "%s/%s/scrub/shared.txt" % (MIRROR_AREA, affected[-1])
    bad_inode, good_inode = inode(host, bad), inode(host, good)
    lib.flip_on(host, bad, 100)
    assert contents(host, AREA) == clean["before"]  # invisible to size, mtime, xattrs

    result = verify(host, "--restart")

    assert result.rc == 0, result.stdout + result.stderr
    for name in affected:
        assert (
            "%s: %s/%s/scrub/shared.txt: content differs from the manifest (repaired from %s)"
            % (SRC, CLIENT, name, DST)
            in result.stdout
        ), result.stdout
    assert any(line.startswith("repaired ") for line in alerts(host))
    assert inode(host, bad) != bad_inode
    assert inode(host, good) == good_inode  # the good copy was only read
    assert sharing(host, AREA, "scrub/shared.txt") == affected  # one new inode, every name
    digests = lib.server_py(
        host,
        "import hashlib, json; print(json.dumps([hashlib.sha256(open(p, 'rb').read()).hexdigest()"
        " for p in %r]))" % [bad, good],
    )
    assert digests[0] == digests[1]
    assert contents(host, AREA) == clean["before"]
    assert verify(host, "--restart").rc == 0


def test_damage_on_drive_two_is_repaired_from_drive_one(host, clean):
    name = names(host, MIRROR_AREA)[-1]
    lib.flip_on(host, "%s/%s/scrub/s3.txt" % (MIRROR_AREA, name))
    result = verify(host, "--restart")
    assert result.rc == 0, result.stdout
    assert (
        "%s: %s/%s/scrub/s3.txt: content differs from the manifest (repaired from %s)"
        % (DST, CLIENT, name, SRC)
        in result.stdout
    )
    assert contents(host, MIRROR_AREA) == clean["mirror_before"]


def test_the_same_damage_on_both_drives_is_reported_not_repaired(host, clean):
    name = names(host, AREA)[-1]
    rel = "%s/scrub/s3.txt" % name
    for area in (AREA, MIRROR_AREA):
        lib.flip_on(host, "%s/%s" % (area, rel))
    damaged = host.file("%s/%s" % (AREA, rel)).content

    result = verify(host, "--restart")

    assert result.rc == 4, result.stdout
    assert (
        "%s: %s/%s: content differs from the manifest (not repaired: the copy on %s is"
        " damaged too)" % (SRC, CLIENT, rel, DST) in result.stdout
    )
    assert host.file("%s/%s" % (AREA, rel)).content == damaged  # nothing "repaired"
    assert any(line.startswith("damaged ") for line in alerts(host))
    check = host.run("/usr/local/sbin/linkdest-server check")
    assert check.rc == 1
    assert "damaged file(s) not repaired in %s/%s" % (CLIENT, name) in check.stdout

    # What README tells a user to do: put the file back (here: the laptop still
    # has it) and verify again; the damage is then closed everywhere.
    for area in (AREA, MIRROR_AREA):
        lib.flip_on(host, "%s/%s" % (area, rel))
    assert verify(host, "--restart").rc == 0
    assert "damaged" not in host.run("/usr/local/sbin/linkdest-server check").stdout


def test_a_damaged_new_file_is_not_mirrored_onto_the_good_drive(host, laptop, clean):
    lib.write_file(laptop, "scrub/late.txt", "written after the last mirror run\n" * 50)
    name = lib.backup_ok(laptop)
    lib.flip_on(host, "%s/%s/scrub/late.txt" % (AREA, name), 10)

    result = mirror(host)

    assert result.rc == 1
    assert name in names(host, MIRROR_AREA)
    assert not host.file("%s/%s/scrub/late.txt" % (MIRROR_AREA, name)).exists
    assert host.file("%s/%s/scrub/s3.txt" % (MIRROR_AREA, name)).exists
    log = host.file("/var/log/linkdest-mirror.log").content_string
    assert "fail its manifest on the backup drive" in log
    assert "scrub/late.txt" in log
    # verify sees it on both drives: damaged here, missing there.
    report = verify(host, "--restart")
    assert report.rc == 4
    assert "%s/%s/scrub/late.txt: content differs" % (CLIENT, name) in report.stdout
    assert "%s: %s/%s/scrub/late.txt: missing" % (DST, CLIENT, name) in report.stdout
    # Put right by hand on the backup drive (the laptop still has the file):
    # the next verify fills the mirror's missing copy from it.
    lib.flip_on(host, "%s/%s/scrub/late.txt" % (AREA, name), 10)
    result = verify(host, "--restart")
    assert result.rc == 0, result.stdout
    assert (
        "%s: %s/%s/scrub/late.txt: missing (repaired from %s)"
        % (
            DST,
            CLIENT,
            name,
            SRC,
        )
        in result.stdout
    )
    assert host.file("%s/%s/scrub/late.txt" % (MIRROR_AREA, name)).exists
    assert verify(host, "--restart").rc == 0


@pytest.mark.parametrize("tamper", ["truncated", "laptop-edited"])
def test_a_truncated_or_laptop_edited_manifest_is_not_trusted(host, clean, tamper):
    name = names(host, AREA)[0]
    path = "%s/%s/%s" % (SRC, MANIFESTS, name)
    saved = "/root/saved-manifest"
    assert host.run("cp -a %s %s" % (path, saved)).rc == 0
    if tamper == "truncated":
        assert host.run("truncate -s 100 %s" % path).rc == 0
        expect = "truncated or damaged"
    else:
        # The laptop's account cannot even reach the manifests ...
        account = "bk-" + CLIENT
        attempt = host.run("su -s /bin/sh %s -c %s" % (account, shlex.quote("cat %s" % path)))
        assert attempt.rc != 0
        assert "Permission denied" in attempt.stderr
        # ... suppose it could: it rewrites a digest (to bless other content),
        # keeping the file well formed, and the file is then its own.
        edit = (
            "import gzip; p = %r; lines = gzip.decompress(open(p, 'rb').read()).split(b'\\n');"
            " lines[1] = b'0' * 64 + lines[1][64:];"
            " open(p, 'wb').write(gzip.compress(b'\\n'.join(lines)))" % path
        )
        assert host.run("python3 -c %s" % shlex.quote(edit)).rc == 0
        assert host.run("chown %s %s" % (account, path)).rc == 0
        expect = "not trusted"
    try:
        result = verify(host, "--restart")
        assert result.rc == 4, result.stdout
        assert expect in result.stdout, result.stdout
        # The mirror drive's own copy still verifies the snapshot there.
        assert "%s: %s/%s" % (DST, CLIENT, name) not in result.stdout
    finally:
        host.run("cp -a %s %s && chown root:root %s" % (saved, path, path))
    assert verify(host, "--restart").rc == 0


def test_the_verify_state_and_metrics_record_the_last_complete_pass(host, clean):
    state = json.loads(host.file("/var/lib/linkdest-server/state/verify.json").content_string)
    for drive in (SRC, DST):
        assert state["drives"][drive]["last_complete"]
        assert state["drives"][drive]["damage"] == []


def test_an_unplugged_mirror_drive_is_named_and_left_untouched(host, clean):
    # The mirror drive's mount moved away, as an unplug leaves it: an empty
    # directory on the system disk where the drive was.
    away = "/mnt/unplugged-mirror"
    before = contents(host, MIRROR_AREA)
    assert host.run("mkdir -p %s && mount --move %s %s" % (away, DST, away)).rc == 0
    try:
        result = verify(host, "--quiet --restart")
        module = lib.run_module(
            "mirror-server", "linkdest.backup.snapshot_verify", {"other_root": DST, "restart": True}
        )
        left_behind = host.run("find %s -mindepth 1" % DST).stdout
    finally:
        assert host.run("mount --move %s %s" % (away, DST)).rc == 0
    assert result.rc == 72, result.stdout + result.stderr
    assert result.stdout == ""
    assert (
        "only the backup drive: the mirror drive is not available: destination drive %s" % DST
        in result.stderr
    )
    assert module.get("failed"), module
    assert module["msg"] == "backup drive %s is not mounted" % DST
    assert module["drive_mounted"] is False
    assert left_behind == ""
    # The drive is back: both drives verify as before.
    again = verify(host, "--restart")
    assert again.rc == 0, again.stdout + again.stderr
    assert again.stdout.count("end of the drive") == 2
    assert contents(host, MIRROR_AREA) == before
