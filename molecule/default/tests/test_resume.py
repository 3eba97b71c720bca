# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""An interrupted backup is resumed by the next run, not sent again."""

import linkdest_testlib as lib

MIB = 1024 * 1024
FILES = ("resume/part1.bin", "resume/part2.bin", "resume/part3.bin", "resume/part4.bin")
SIZE = 6 * MIB


def _incomplete_dirs(server):
    area = "%s/laptop-b" % lib.ROOT
    return [n for n in server.file(area).listdir() if n.startswith("incomplete_back-")]


def test_a_killed_backup_is_resumed_and_sends_only_what_was_missing(laptop_b, server):
    # A slow first run, killed once the first file has fully arrived.
    arrived = lib.kill_a_backup_midway(laptop_b, server, "laptop-b", FILES, SIZE)
    assert _incomplete_dirs(server), "the interrupted run left no incomplete snapshot"
    arrived_bytes = SIZE * len(arrived)

    name = lib.backup_ok(laptop_b)
    status = lib.read_status(laptop_b)
    sent = int(status["last_bytes_sent"])
    total = SIZE * len(FILES)
    # What had arrived is linked from the interrupted run, not sent again.
    assert sent < total - arrived_bytes + MIB, (sent, total, arrived)
    for rel in FILES:
        source = laptop_b.run("sha256sum %s/%s" % (lib.SOURCE, rel)).stdout.split()[0]
        copy = server.run("sha256sum %s/laptop-b/%s/%s" % (lib.ROOT, name, rel)).stdout.split()[0]
        assert source == copy, rel
    # The resumed run superseded the interrupted one, and current moved on.
    assert _incomplete_dirs(server) == []
    assert server.file("%s/laptop-b/current" % lib.ROOT).linked_to.endswith(name)
    assert lib.as_user(laptop_b, "rm -r %s/resume" % lib.SOURCE).rc == 0
