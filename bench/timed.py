#!/usr/bin/env python3
# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""timed.py LOG COMMAND...: run COMMAND, print its wall time in seconds.

Runs inside the laptop container, so `docker exec` and interpreter start-up
are outside the measured interval. The command's output is appended to LOG;
on failure the end of LOG goes to stderr and the command's exit code is ours.
"""

import subprocess
import sys
import time


def main() -> int:
    if len(sys.argv) < 3:
        sys.stderr.write(__doc__)
        return 64
    log, command = sys.argv[1], sys.argv[2:]
    with open(log, "ab") as handle:
        handle.write(("$ %s\n" % " ".join(command)).encode())
        handle.flush()
        start = time.monotonic()
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT)
        elapsed = time.monotonic() - start
    if code != 0:
        with open(log, "rb") as handle:
            tail = handle.read()[-3000:].decode(errors="replace")
        sys.stderr.write("timed.py: %s exited %d; end of %s:\n%s" % (command[0], code, log, tail))
        return code
    print("%.3f" % elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
