# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The attack suite's world and bookkeeping.

Every attack runs on a laptop as its user, with the laptop's own key through
its real ssh configuration: what malware on a stolen laptop could do. Each
attempt is recorded with what was observed; the last test writes the table to
.cache/security-attempts.md and the terminal summary prints it.
"""

from __future__ import annotations

import pathlib
import re
import shlex
import time
from dataclasses import dataclass

import linkdest_testlib as lib
import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
REPORT = REPO / ".cache" / "security-attempts.md"
LAPTOPS = ("c1", "c10")
# The attacker's workspace on the laptops (owned by the laptop user).
WORK = "/tmp/linkdest-attack"
# What a laptop's folder holds at the start of the suite. The fixed mtime
# keeps shared.txt one inode in every snapshot, run after run.
FIXED_MTIME = "2026-01-02 03:04:05"
SOURCE_FILES = {
    "c1": {
        "shared.txt": ("shared by every snapshot of c1\n", "0644"),
        "mode.txt": ("a file whose mode the attack changes\n", "0644"),
        "mtime.txt": ("a file whose mtime the attack changes\n", "0644"),
        "docs/c1-notes.txt": ("c1's own notes\n", "0600"),
    },
    "c10": {
        "shared.txt": ("shared by every snapshot of c10\n", "0644"),
        "c10-secret.txt": ("C10 PRIVATE: never readable with c1's key\n", "0600"),
    },
}
C10_SECRET = "C10 PRIVATE"
# Finished snapshots each laptop has before the attacks start.
MIN_SNAPSHOTS = 4

# Every attempt, in the order the tests made them (see Attack.record).
ATTEMPTS: list[dict] = []

# A small helper the attacks run on the laptops: connect to HOST PORT (through
# a SOCKS5 proxy when a third argument is given) and print what came back.
PROBE = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), timeout=5)
    if len(sys.argv) > 3:
        s.sendall(b"\x05\x01\x00")
        print("socks greeting:", s.recv(2))
        target = int(sys.argv[3])
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + target.to_bytes(2, "big"))
        print("socks reply:", s.recv(10))
    print("received:", s.recv(64))
except OSError as exc:
    print("probe failed:", exc)
"""

# Records the remote command rsync would run (instead of running ssh).
RECORD_RSH = """#!/bin/sh
shift
printf '%s\\n' "$*" > "$(dirname "$0")/remote-command"
exit 1
"""

# Notes that ssh asked for a password (it must never get that far).
ASKPASS = """#!/bin/sh
echo asked >> "$(dirname "$0")/askpass.log"
echo wrong-password
"""


@dataclass
class Result:
    """What an attempt printed and how it ended (rc < 0: judged by a probe)."""

    rc: int
    output: str


def alice(laptop, command: str) -> Result:
    """Run a shell command as the laptop user; stdout and stderr together."""
    result = lib.as_user(laptop, command)
    return Result(result.rc, result.stdout + result.stderr)


def server_address(laptop) -> str:
    """The server's address as the laptop's ssh configuration dials it."""
    return laptop.run("sed -n 's/^ *HostName //p' %s" % lib.SSH_CONFIG).stdout.strip()


def offered_methods(ssh_verbose_output: str) -> set[str]:
    """The authentication methods the server offered, from `ssh -v` output."""
    return {
        line.split("can continue: ", 1)[1].strip()
        for line in ssh_verbose_output.splitlines()
        if "Authentications that can continue: " in line
    }


def _outcome(result: Result, expect: str) -> str:
    lines = [line.strip() for line in result.output.splitlines() if line.strip()]
    shown = [line for line in lines if expect and expect in line] or lines or ["(no output)"]
    text = " ".join(shown[0].split())
    text = text if len(text) <= 110 else text[:107] + "..."
    # A negative code: the attempt's result was judged by a probe, not an exit code.
    return text if result.rc < 0 else "exit %d: %s" % (result.rc, text)


class Attack:
    """Run attempts against the server and record what happened."""

    def __init__(self, server):
        self.server = server

    def record(self, category: str, what: str, outcome: str, problems: list[str]) -> None:
        verdict = "refused, nothing changed" if not problems else "FAIL: " + "; ".join(problems)
        ATTEMPTS.append(
            {"category": category, "attempt": what, "outcome": outcome, "verdict": verdict}
        )

    def record_verdict(self, category: str, what: str, outcome: str, verdict: str) -> None:
        """Record an attempt whose verdict is not a plain refusal (e.g. contained)."""
        ATTEMPTS.append(
            {"category": category, "attempt": what, "outcome": outcome, "verdict": verdict}
        )

    def gate_logged(self, cursor: str, client: str) -> bool:
        """Whether the gate logged a refusal naming the client since ``cursor``."""
        for _ in range(25):
            log = lib.journal_since(self.server, cursor)
            if any(
                line.startswith("client=%s " % client) and "refused" in line
                for line in log.splitlines()
            ):
                return True
            time.sleep(0.2)
        return False

    def attempt(
        self,
        category: str,
        what: str,
        run,
        expect: str,
        client: str = "c1",
        forbidden_output: tuple[str, ...] = (),
        check=None,
    ) -> Result:
        """Make one attempt and assert it was refused and changed nothing.

        ``run`` makes the attempt and returns a Result; refused means a
        non-zero exit with ``expect`` in the output (a refusal by the gate is
        also looked up in the server's log). ``forbidden_output`` must not
        appear (e.g. "uid=" for a command that must not run); ``check``
        returns extra problems (e.g. a forwarded port that answered), and
        notes for the outcome column as "note: ..." strings.
        """
        before = lib.fingerprint(self.server)
        cursor = lib.journal_cursor(self.server)
        result = run()
        after = lib.fingerprint(self.server)
        problems = []
        if result.rc == 0 or expect not in result.output:
            problems.append("not refused (exit %d)" % result.rc)
        elif expect.startswith("linkdest-server: refused") and not self.gate_logged(cursor, client):
            problems.append("refused without a log line naming %s" % client)
        for text in forbidden_output:
            if text in result.output:
                problems.append("output shows %r" % text)
        found = check(result) if check is not None else []
        notes = [text[len("note: ") :] for text in found if text.startswith("note: ")]
        problems += [text for text in found if not text.startswith("note: ")]
        changes = lib.fingerprint_diff(before, after)
        if changes:
            more = " (and %d more changes)" % (len(changes) - 1) if len(changes) > 1 else ""
            problems.append("server changed: %s%s" % (changes[0], more))
        outcome = "; ".join([_outcome(result, expect)] + notes)
        self.record(category, what, outcome, problems)
        assert not problems, "%s: %s\n%s\n%s" % (
            what,
            problems,
            result.output,
            "\n".join(changes),
        )
        return result


def reset_source(laptop, client: str) -> None:
    """Put the laptop's folder back to the suite's known content."""
    result = lib.as_user(
        laptop, "rm -rf %s && mkdir -p %s" % (shlex.quote(lib.SOURCE), shlex.quote(lib.SOURCE))
    )
    assert result.rc == 0, result.stderr
    for relpath, (content, mode) in SOURCE_FILES[client].items():
        lib.write_file(laptop, relpath, content, mode=mode, mtime=FIXED_MTIME)


def make_workspace(laptop) -> None:
    """The attacker's scratch directory and helper scripts, as the laptop user."""
    result = lib.as_user(laptop, "rm -rf %s && mkdir -p %s/empty" % (WORK, WORK))
    assert result.rc == 0, result.stderr
    for name, content, mode in (
        ("probe.py", PROBE, "0644"),
        ("record-rsh", RECORD_RSH, "0755"),
        ("askpass", ASKPASS, "0755"),
    ):
        lib.put_file(laptop, "%s/%s" % (WORK, name), content, mode=mode, owner=lib.USER)


@pytest.fixture(scope="session")
def server():
    return lib.get_host("sec-server")


@pytest.fixture(scope="session")
def c1():
    return lib.get_host("c1")


@pytest.fixture(scope="session")
def c10():
    return lib.get_host("c10")


@pytest.fixture(scope="session")
def world(server, c1, c10):
    """Both laptops with known files and a history of finished snapshots.

    Returns, per laptop, its finished snapshots (oldest first) and the newest.
    The newest two were made from SOURCE_FILES in this session.
    """
    found = {}
    for client, laptop in (("c1", c1), ("c10", c10)):
        make_workspace(laptop)
        reset_source(laptop, client)
        # --full: a run with nothing new since the last snapshot makes none,
        # and this history is of unchanged files.
        full = "linkdest backup --full"
        made = [lib.backup_ok(laptop, full) for _ in range(2)]
        while len(lib.snapshot_names(server, client)) < MIN_SNAPSHOTS:
            made.append(lib.backup_ok(laptop, full))
        names = lib.snapshot_names(server, client)
        assert made[-1] == names[-1]
        found[client] = {"snapshots": names, "latest": names[-1]}
    # A snapshot name only c10 has: reading it with c1's key must find nothing.
    only_c10 = [n for n in found["c10"]["snapshots"] if n not in found["c1"]["snapshots"]]
    assert only_c10, found
    found["c10"]["only"] = only_c10[-1]
    return found


@pytest.fixture(scope="session")
def attack(server, world):
    return Attack(server)


# Snapshot names change with every run; the table shows them as back-T.
_SNAPSHOT_NAME = re.compile(r"back-20[1-9]\d-\d\d-\d\dT\d\d_\d\d_\d\d")


def attempts_table() -> str:
    lines = [
        "| # | Category | Attempt (as alice on the laptop, with its own key) | Observed outcome"
        " | Verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for number, item in enumerate(ATTEMPTS, 1):
        cells = [str(number)] + [
            _SNAPSHOT_NAME.sub("back-T", item[key]).replace("|", "\\|").replace("\n", " ")
            for key in ("category", "attempt", "outcome", "verdict")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter):
    if ATTEMPTS:
        terminalreporter.section("attack suite: every attempt and its outcome")
        terminalreporter.write(attempts_table())
