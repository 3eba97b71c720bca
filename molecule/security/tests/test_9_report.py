# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Last: the table of every attempt and its outcome, for the README."""

from pathlib import Path

from conftest import ATTEMPTS, REPORT, attempts_table

# The btrfs backend's own attempts run in molecule/btrfs (a real btrfs drive),
# as the laptop's account with a shell on the server; each is asserted there
# with the drive's fingerprint unchanged, so this list cannot claim more.
BTRFS_ATTEMPTS = (Path(__file__).parents[1] / "btrfs-attempts.md").read_text(encoding="utf-8")


def test_write_the_attempts_table():
    assert ATTEMPTS, "no attempt was recorded"
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(
        "# linkdest.backup attack suite: every attempt and its outcome\n\n"
        "Every attempt uses a laptop's own key through its real ssh configuration, as the"
        " laptop user (what malware on a stolen laptop could do), unless it says it runs"
        " on the server. 'Nothing changed' compares a fingerprint of every path in every"
        " finished snapshot of both laptops (content sha256, inode, link count, mode,"
        " owner, mtime, the --fake-super record) and of every snapshot's manifest (the"
        " root-owned record verify checks snapshots against), plus each area's names and"
        " `current`, before and after. Verdicts: *refused, nothing changed*; *contained*"
        " (something a laptop may do, such as uploading a new snapshot, that reached"
        " neither history nor another area); *FAIL* (not what issue 5 promises); *HOLE*"
        " (history or another laptop's data was harmed, or a protection went away)."
        " Snapshot names are shown"
        " as back-T.\n\n" + attempts_table() + "\n" + BTRFS_ATTEMPTS,
        encoding="utf-8",
    )
    print(attempts_table())
