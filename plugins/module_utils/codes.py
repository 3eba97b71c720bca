# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the laptop and the server must agree on, written once: exit codes,
snapshot names and the words a laptop may send to its forced command.

The laptop's ``linkdest`` (client.py) and the server's ``linkdest-server``
(server_cli.py, gate.py) both import this file; the roles install it on both.
Standard library only.
"""

from __future__ import annotations

import re

# --- exit codes (sysexits.h where one fits; rsync's own 1-35 pass through) ---
# verify: a file differs without a trace, or the server's copy is damaged.
EXIT_DAMAGED = 4
EXIT_USAGE = 64
# The server kept the snapshot incomplete (it is resumed by the next run).
EXIT_NOT_FINALIZED = 65
# The laptop's source folder is missing.
EXIT_NO_SOURCE = 66
# No such snapshot, or no snapshot holds the path.
EXIT_NOT_FOUND = 67
# The run could not happen now (on battery, away from home): not a failure.
EXIT_SKIPPED = 69
# The laptop has no usable rsync (3.1 or later; a Mac's own is not).
EXIT_NO_RSYNC = 71
# The backup drive is not mounted (or not the file system the backend needs).
EXIT_NOT_MOUNTED = 72
# EX_CANTCREAT: the server's drive is below the space guard's hard floor; on
# the laptop, a restore whose target exists (both: nothing was written).
EXIT_NO_SPACE = 73
EXIT_EXISTS = 73
# Another run holds the lock.
EXIT_BUSY = 75
# changes: the change list's base is not current, or an interrupted run waits
# to be resumed; the laptop sends everything instead (a full run).
EXIT_FULL_RUN_NEEDED = 76
# The gate refused the request.
EXIT_REFUSED = 77
# The ssh agent holds no unlocked backup key (keychain, after a reboot).
EXIT_NO_AGENT = 78
# macOS's privacy protection keeps linkdest from reading part of the source
# (Full Disk Access not granted): no snapshot is made without it.
EXIT_PRIVACY = 79

# --- snapshot names: chosen by the server, in UTC ---
SNAPSHOT_PREFIX = "back-"
SNAPSHOT_RE = re.compile(r"^back-\d{4}-\d{2}-\d{2}T\d{2}_\d{2}_\d{2}\Z")


def is_snapshot_name(name: str) -> bool:
    """A finished snapshot's name (``back-2026-01-02T03_04_05``)."""
    return bool(SNAPSHOT_RE.match(name))


# --- the words the gate accepts besides ``rsync --server ...`` ---
VERB_FINALIZE = "finalize"  # finalize RSYNC_EXIT
VERB_LIST = "list"
VERB_LOCATE = "locate"  # locate PATH [WHEN]
VERB_VERSIONS = "versions"  # versions PATH
VERB_MANIFEST = "manifest"  # manifest [SNAPSHOT]
VERB_CHANGES = "changes"  # changes BASE, a change list on stdin (changelist.py)
# unchanged BASE: nothing changed since the finished snapshot BASE (current);
# the server records the check and makes no snapshot. It prints the time.
VERB_UNCHANGED = "unchanged"
# The path a laptop's rsync names as its destination. The server chooses every
# path itself; this word only says which kind of upload it is.
UPLOAD_DESTINATION = "snapshot/"
CHANGES_DESTINATION = "changes/"
