# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""`linkdest verify` on the laptop (issue 12): the folder against the newest
snapshot's manifest, which root made at finalize and the gate hands over."""

import linkdest_testlib as lib

SERVER_CMD = "/usr/local/sbin/linkdest-server"


def test_verify_after_a_backup_finds_the_folder_as_sent(laptop_a, server):
    lib.write_file(laptop_a, "verify/kept.txt", "kept as it was\n")
    lib.write_file(laptop_a, "verify/edited.txt", "before\n")
    lib.backup_ok(laptop_a)

    result = lib.as_user(laptop_a, "linkdest verify")
    assert result.rc == 0, result.stdout + result.stderr
    assert " 0 differ without a trace" in result.stdout
    assert "server: " in result.stdout

    lib.write_file(laptop_a, "verify/edited.txt", "after, longer\n")
    result = lib.as_user(laptop_a, "linkdest verify %s/verify" % lib.SOURCE)
    assert result.rc == 0, result.stdout
    assert "changed: verify/edited.txt" in result.stdout
    assert "kept.txt" not in result.stdout


def test_verify_names_a_file_that_changed_without_a_trace(laptop_a, server):
    lib.write_file(laptop_a, "verify/silent.txt", "these bytes were sent\n")
    lib.backup_ok(laptop_a)
    lib.flip_on(laptop_a, lib.SOURCE + "/verify/silent.txt")
    outside = lib.as_user(laptop_a, "cd / && linkdest verify etc/passwd")
    assert outside.rc == 64, outside.stdout + outside.stderr
    assert "is not inside the backed-up folder" in outside.stderr
    assert outside.stdout == ""
    # A path relative to the current directory, as for restore and versions.
    result = lib.as_user(laptop_a, "cd %s && linkdest verify verify/silent.txt" % lib.SOURCE)
    assert result.rc == 4, result.stdout + result.stderr
    assert "DIFFERS: verify/silent.txt" in result.stdout
    lib.flip_on(laptop_a, lib.SOURCE + "/verify/silent.txt")


def test_verify_says_when_the_servers_copy_is_damaged(laptop_a, server):
    lib.write_file(laptop_a, "verify/precious.txt", "only copy of a thesis\n")
    name = lib.backup_ok(laptop_a)
    on_server = "%s/laptop-a/%s/verify/precious.txt" % (lib.ROOT, name)
    lib.flip_on(server, on_server)
    try:
        # No mirror drive in this scenario: found, reported, not repaired.
        scrub = server.run("%s verify --restart" % SERVER_CMD)
        assert scrub.rc == 4, scrub.stdout + scrub.stderr
        assert "laptop-a/%s/verify/precious.txt: content differs" % name in scrub.stdout
        result = lib.as_user(laptop_a, "linkdest verify")
        assert result.rc == 4, result.stdout + result.stderr
        assert "server: DAMAGED in %s: verify/precious.txt" % name in result.stdout
    finally:
        lib.flip_on(server, on_server)
    assert server.run("%s verify --restart" % SERVER_CMD).rc == 0
    result = lib.as_user(laptop_a, "linkdest verify")
    assert "server: the snapshot verified intact on " in result.stdout
