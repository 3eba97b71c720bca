# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""A stolen laptop fills the drive: does the space guard then erase history?

Ransomware on c1 encrypts the folder and cron backs it up three times: each
run is a full new copy, which on a real drive of the usual size fills it. The
drive here is a Docker volume on the host's disk, far too big to fill, so its
fullness is simulated the only way the server can see it: the space guard is
told that no free space is enough (min_free_percent 100), exactly what it
would measure on a drive the uploads filled. Everything else is real: c1's
backups and finalize through its key, and the nightly prune as cron runs it.

The security model promises that ransomware on a laptop cannot destroy
history, and that a laptop cannot touch another laptop's snapshots. A laptop's
finalize only thins (by the server's clock); the nightly space guard never
takes the last protect_days (30) days nor the snapshot before them, so here,
where every snapshot is minutes old, nothing may go: the drive stays short
and says so, and the hard floor would refuse the next upload.
"""

import json

import linkdest_testlib as lib
from conftest import SOURCE_FILES, reset_source

SERVER_JSON = "/etc/linkdest/server.json"


def test_filling_the_drive_does_not_erase_history(attack, c1, server, world):
    original = server.file(SERVER_JSON).content_string
    config = json.loads(original)
    config["space_guard"].update(
        min_free_percent=100, floor_free_percent=0, floor_free_mib=0, floor_free_inodes_percent=0
    )
    before = {client: lib.snapshot_names(server, client) for client in ("c1", "c10")}
    made = []
    try:
        lib.put_file(server, SERVER_JSON, json.dumps(config, indent=4) + "\n")
        for round_ in range(3):
            # Encrypted: every file new, nothing linked to older snapshots.
            for relpath, (content, mode) in SOURCE_FILES["c1"].items():
                lib.write_file(c1, relpath + ".locked", content[::-1] + str(round_), mode=mode)
            made.append(lib.backup_ok(c1))
        nightly = server.run("/usr/local/sbin/linkdest-server prune --all --quiet")
    finally:
        lib.put_file(server, SERVER_JSON, original)
        reset_source(c1, "c1")
    after = {client: lib.snapshot_names(server, client) for client in ("c1", "c10")}
    lost = {client: [n for n in before[client] if n not in after[client]] for client in before}
    problems = [
        "%s lost %d of its %d snapshots" % (client, len(names), len(before[client]))
        for client, names in lost.items()
        if names
    ]
    attack.record_verdict(
        "drive full",
        "ransomware on c1: 3 encrypted backups fill the drive (simulated: min_free_percent 100),"
        " then the nightly linkdest-server prune --all",
        "c1 keeps %d snapshots (%d of them the encrypted ones); c10 keeps %d of %d"
        % (
            len(after["c1"]),
            len(set(after["c1"]) & set(made)),
            len(after["c10"]),
            len(before["c10"]),
        ),
        "history kept" if not problems else "HOLE: " + "; ".join(problems),
    )
    assert nightly.rc == 0, nightly.stderr
    assert "still short of room after the space guard removed all it may" in nightly.stderr
    assert not problems, (
        "the space guard removes finished snapshots a laptop's uploads pushed out: %s" % problems
    )
