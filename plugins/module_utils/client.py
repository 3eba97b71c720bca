# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""``linkdest``: the laptop's command (backup, status, list, latest, versions,
compare, restore, verify).

The backup_client role installs this file, codes.py, manifest.py and
client_platform.py under /usr/local/lib/linkdest/ and writes
/usr/local/bin/linkdest: the settings of this laptop and a call of main().
Everything the server must agree on (exit codes, snapshot names, the words
its gate accepts) comes from codes.py, which the server runs too.

Standard library only, and no GNU-only tools: the next laptops are Macs.
What differs between systems (power, network addresses) is in
client_platform.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ansible_collections.linkdest.backup.plugins.module_utils import (
    changelist,
    client_platform,
    codes,
)
from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf

# cron's bare environment must behave like a login shell's.
PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
SENDMAIL = "/usr/sbin/sendmail"
# One ssh connection per run: rsync's ssh stays up as a master for this many
# idle seconds, so finalize rides on it; a run killed outright leaves a
# master that ends by itself.
MASTER_IDLE = 60
# How long a run waits for the connection it opened while walking.
SSH_OPEN_WAIT = 120
HEALTHCHECK_TIMEOUT = 10
HEALTHCHECK_ATTEMPTS = 3
# ssh's own words for "this laptop is away from home": a skip, not a failure.
_AWAY_RE = re.compile(
    r"Could not resolve hostname|Network is unreachable|No route to host"
    r"|Connection timed out|Operation timed out"
)
# ssh failed when ssh says so: rsync reports that as 255 or, racing with the
# closed pipe, as 12, so the exit code alone cannot tell. (Only ssh's own
# "Permission denied (publickey...)", not rsync's "(13)".)
_SSH_ERROR_RE = re.compile(
    r"^ssh: |Host key verification failed"
    r"|Permission denied \((publickey|password|keyboard-interactive|gssapi)"
    r"|REMOTE HOST IDENTIFICATION",
    re.MULTILINE,
)
_BYTES_SENT_RE = re.compile(r"^Total bytes sent: ([0-9,.]+)", re.MULTILINE)
USAGE = """\
usage: linkdest backup [--quiet] [--full] | status [--raw] | list | latest | versions PATH
       | compare [SNAPSHOT] | restore [PATH] [--at TIME|SNAPSHOT] [--to DIR] [--overwrite]
       | verify [PATH]
"""


FULL = "full"
CHANGES = "changes"
# Nothing changed since the last snapshot: the server records a check, no snapshot.
UNCHANGED = "unchanged"
KIND_DIR = changelist.KIND_DIR
# The record of what the last snapshot holds, beside the status file.
RECORD_FILE = "sent.record"
# The record's name before format 2 (a gzip text file): removed when a new one is written.
OLD_RECORD_FILE = "sent.gz"
# Bump when what the client sends for the same folder changes: the record of
# an older client is then not used (one full run).
CLIENT_FORMAT = 1
# The server's answers to a change list that a full run would get too (the
# backup drive is not mounted, or below the space guard's floor).
REFUSALS_NO_RUN_CURES = (codes.EXIT_NOT_MOUNTED, codes.EXIT_NO_SPACE)
# The kernel stamps ctimes from a clock that lags the real time by up to one
# tick (4 ms at HZ=250, 10 ms at HZ=100).
CLOCK_TICK_NS = 10 * 10**6
_FILES_TRANSFERRED_RE = re.compile(r"^Number of regular files transferred: ([0-9,.]+)", re.M)


def files_transferred(output: str) -> int:
    found = _FILES_TRANSFERRED_RE.search(output)
    return int(re.sub(r"[,.]", "", found.group(1))) if found else 0


@dataclass
class Plan:
    """What one backup sends: everything, or the paths of a change list."""

    kind: str
    reason: str = ""
    walk: changelist.Walk | None = None
    record: changelist.Record | None = None
    listed: list[tuple[str, str]] = field(default_factory=list)
    # The paths rsync reads (--files-from), for a change list, and the
    # top-level names it may send when the folder itself is listed.
    list_file: str = ""
    include_file: str = ""
    sent_files: int = 0
    # UNCHANGED: when the server recorded the check (UTC, ISO 8601).
    checked: str = ""
    # Seconds per step, for the log: where a run's time went.
    steps: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, step: str):
        began = time.monotonic()
        try:
            yield
        finally:
            self.steps[step] = self.steps.get(step, 0.0) + time.monotonic() - began


class Finished(Exception):
    """Stop the command with this exit code (after it said why)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


@dataclass
class Settings:
    """What the backup_client role wrote into /usr/local/bin/linkdest."""

    source: str
    ssh_config: str
    server: str
    log_file: str
    key_file: str
    user_home: str
    log_max_kib: int = 1024
    rsync_timeout: int = 600
    copy_links: bool = False
    excludes: list[str] = field(default_factory=list)
    stale_after_hours: int = 24
    alert_command: str = ""
    alert_email: str = ""
    healthcheck_url: str = ""
    require_ac_power: bool = False
    power_supplies: str = client_platform.POWER_SUPPLIES
    allowed_networks: list[str] = field(default_factory=list)
    keychain: bool = False
    bwlimit: int = 0
    # A full run at least this often (0: always, the change list is off).
    full_every_hours: int = 24
    # A new snapshot even when nothing changed (else the server records a check).
    snapshot_unchanged: bool = False
    # Where the server answers, tried in order ("host" or "host:port"): home
    # first, the dynamic-DNS name second. Empty: the ssh configuration's HostName.
    server_addresses: list[str] = field(default_factory=list)
    # Seconds each address but the last may take to connect.
    connect_timeout: int = 5

    @classmethod
    def from_mapping(cls, data: dict, environ: dict | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        settings = cls(**data)
        settings.source = settings.source.rstrip("/") or "/"
        settings.healthcheck_url = settings.healthcheck_url.rstrip("/")
        # One run may ask for a bandwidth limit of its own (KiB/s).
        if environ.get("LINKDEST_BWLIMIT", "").isdigit():
            settings.bwlimit = int(environ["LINKDEST_BWLIMIT"])
        return settings

    @property
    def state_dir(self) -> str:
        return os.path.dirname(self.log_file)

    @property
    def status_file(self) -> str:
        return os.path.join(self.state_dir, "status")

    @property
    def lock_file(self) -> str:
        return os.path.join(self.state_dir, "lock")


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusFile:
    """KEY=VALUE lines: last attempt, last success, exit code, snapshot name.

    ``linkdest status --raw`` prints it for playbooks/status.yml; a rewrite
    replaces the file atomically and keeps the keys it does not set.
    """

    def __init__(self, path: str):
        self.path = path

    def read(self) -> dict[str, str]:
        values: dict[str, str] = {}
        with (
            contextlib.suppress(FileNotFoundError),
            open(self.path, encoding="utf-8", errors="surrogateescape") as handle,
        ):
            for line in handle:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    values[key] = value
        return values

    def get(self, key: str) -> str:
        return self.read().get(key, "")

    def record(self, **values) -> None:
        kept = {k: v for k, v in self.read().items() if k not in values}
        kept.update({k: str(v) for k, v in values.items()})
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as handle:
            # One line a value: a newline in a message must not start a key.
            handle.writelines("%s=%s\n" % (k, v.replace("\n", " ")) for k, v in kept.items())
        os.replace(tmp, self.path)


def hours_since(epoch: str) -> int:
    """Whole hours since ``epoch`` (a large number when never)."""
    if not epoch.isdigit():
        return 999999
    return int((time.time() - int(epoch)) // 3600)


def quote(word: str) -> str:
    """WORD for a command line the server splits (POSIX shell words)."""
    return shlex.quote(word)


def parse_time(text: str) -> str:
    """An ISO 8601 time (UTC unless it says otherwise) as the server's
    ``locate`` takes it: YYYY-MM-DDTHH:MM:SS in UTC."""
    text = text.strip()
    if text.startswith("@") and text[1:].isdigit():
        when = datetime.fromtimestamp(int(text[1:]), timezone.utc)
    else:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def relative_to_source(path: str, source: str, cwd: str | None = None) -> str:
    """PATH (absolute, or relative to the current directory, reached through
    symlinks or not) as a path inside the backed-up folder; "." for the
    folder itself."""
    given = os.path.normpath(os.path.join(cwd or os.getcwd(), path))
    # The parents resolved, the last name kept: a symlink in the folder is
    # restored as the symlink it is.
    full = os.path.join(os.path.realpath(os.path.dirname(given)), os.path.basename(given))
    for top in (source, os.path.realpath(source)):
        if full == top:
            return "."
        if full.startswith(top.rstrip("/") + "/"):
            return full[len(top.rstrip("/")) + 1 :]
    raise ValueError("%s is not inside the backed-up folder %s" % (path, source))


def transfer_summary(output: str) -> tuple[int, str]:
    """From rsync's output: the bytes sent, and ssh's own error (empty if none)."""
    sent = _BYTES_SENT_RE.search(output)
    ssh_error = _SSH_ERROR_RE.search(output)
    line = ""
    if ssh_error:
        start = output.rfind("\n", 0, ssh_error.start()) + 1
        end = output.find("\n", ssh_error.start())
        line = output[start : end if end >= 0 else len(output)]
    return (int(re.sub(r"[,.]", "", sent.group(1))) if sent else 0), line


def split_address(address: str) -> tuple[str, str]:
    """ "host", "host:port", "[v6]:port" or a bare IPv6 address: (host, port
    or "")."""
    if address.startswith("["):
        host, _bracket, rest = address[1:].partition("]")
        return host, rest.removeprefix(":")
    if address.count(":") == 1:
        host, _colon, port = address.partition(":")
        return host, port
    return address, ""


# A DNS name or IPv4 address, or an IPv6 address (used with fullmatch).
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?)+|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*"
)


def checked_addresses(value, default_port: int | None = None) -> list[str]:
    """The server's addresses as the backup_client role takes them: one
    string or a list, each "host", "host:port" or "[IPv6]:port". ValueError
    saying what is wrong. With ``default_port`` and several addresses, each
    comes back with its port spelled out (the ssh configuration's Port is
    the first address's, which a later bare host must not inherit)."""
    if isinstance(value, str):
        value = [value] if value.strip() else []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("must be an address or a list of addresses, not %r" % (value,))
    for address in value:
        host, port = split_address(address)
        if not _HOST_RE.fullmatch(host) or ("[" in address and ":" not in host):
            raise ValueError("%r is not a host name or IP address" % address)
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError("%r: the port must be a number from 1 to 65535" % address)
    if len(set(value)) != len(value):
        raise ValueError("lists an address twice: %r" % (value,))
    if default_port is None or len(value) < 2:
        return value
    spelled = []
    for address in value:
        host, port = split_address(address)
        shown = "[%s]" % host if ":" in host else host
        spelled.append("%s:%s" % (shown, port or default_port))
    if len(set(spelled)) != len(spelled):
        raise ValueError("lists an address twice: %r" % (spelled,))
    return spelled


def server_reason(output: str) -> str:
    """The server's own explanation of a refusal, if it gave one."""
    for line in output.splitlines():
        if "linkdest-server: " in line:
            return line
    return "the server keeps the incomplete snapshot for the next run"


def itemized_difference(line: str) -> str | None:
    """One line of ``compare``: rsync's itemized change from snapshot to folder."""
    name = line[12:]
    if line.startswith("*deleting "):
        return "new:     " + name
    if line.startswith((">f+++++++++ ", "cd+++++++++ ", "cL+++++++++ ")):
        return "deleted: " + name
    if line.startswith((">f", "cL")):
        return "changed: " + name
    return None


def sent_manifest(lines, rel: str) -> tuple[dict | None, Iterator[mf.Entry]]:
    """A manifest as the gate sends it (a JSON line of what verify knows, then
    the manifest): its header (None if it is not one), and its entries at or
    under ``rel`` ("." for all)."""
    lines = iter(lines)
    header = json.loads(next(lines, "null") or "null")
    if not isinstance(header, dict) or not next(lines, "").startswith(mf.MAGIC + " "):
        return None, iter(())

    def entries() -> Iterator[mf.Entry]:
        for line in lines:
            if line.startswith("end "):
                return
            entry = mf.entry_of(line.rstrip("\n"))
            if rel == "." or entry.path == rel or entry.path.startswith(rel + "/"):
                yield entry

    return header, entries()


def compare_with_manifest(lines, source: str, rel: str, follow: bool, out) -> int:
    """``verify``: compare the folder with a manifest the server sent.

    Only files whose size and mtime (to the second) match the snapshot's are
    read: those must hold the same bytes; a file edited since is "changed".
    Returns EXIT_DAMAGED when a file differs without a trace or the server
    reported damage, else 0.
    """
    header, entries = sent_manifest(lines, rel)
    if header is None:
        out.write("linkdest: the server sent no manifest\n")
        return codes.EXIT_NOT_FOUND
    counts = {"same": 0, "changed": 0, "deleted": 0, "differs": 0}
    for entry in entries:
        full = os.path.join(source, entry.path)
        try:
            st = os.stat(full) if follow else os.lstat(full)
        except OSError:
            counts["deleted"] += 1
            out.write("deleted: %s\n" % entry.path)
            continue
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns // 10**9) != (
            entry.size,
            entry.mtime_ns // 10**9,
        ):
            counts["changed"] += 1
            out.write("changed: %s\n" % entry.path)
            continue
        with open(full, "rb") as handle:
            same = mf.digest_fd(handle.fileno()) == entry.sha256
        if same:
            counts["same"] += 1
        else:
            counts["differs"] += 1
            out.write(
                "DIFFERS: %s (same size and time as in the snapshot, other bytes)\n" % entry.path
            )
    out.write(
        "verify: %(same)d same, %(changed)d changed since, %(deleted)d deleted since,"
        " %(differs)d differ without a trace" % counts + " (against %s)\n" % header["snapshot"]
    )
    if header.get("damaged"):
        out.write(
            "server: DAMAGED in %s: %s\n" % (header["snapshot"], ", ".join(header["damaged"]))
        )
    elif header.get("verified"):
        out.write("server: the snapshot verified intact on %s\n" % header["verified"])
    else:
        out.write("server: the snapshot has not been verified yet (the server's weekly verify)\n")
    return codes.EXIT_DAMAGED if counts["differs"] or header.get("damaged") else 0


def check_restored_tree(lines, target: str, rel: str, out) -> tuple[bool, set[str]]:
    """After a restore: every file of the snapshot's manifest under ``rel``
    must be in ``target`` as a regular file with its size, mtime (to the
    second) and bytes. Says what differs and how it went; returns whether all
    were the same, and the manifest's paths (relative to the snapshot)."""
    header, entries = sent_manifest(lines, rel)
    if header is None:
        out.write("check: the server sent no manifest\n")
        return False, set()
    same, bad, paths = 0, 0, set()
    for entry in entries:
        paths.add(entry.path)
        inside = entry.path if rel == "." else entry.path[len(rel) + 1 :]
        full = os.path.join(target, inside) if inside else target
        try:
            st = os.lstat(full)
        except OSError:
            bad += 1
            out.write("MISSING: %s\n" % entry.path)
            continue
        if stat.S_ISLNK(st.st_mode):
            # The server keeps a symlink (--fake-super) as a file that holds
            # its target: the target is what must match.
            target_bytes = os.readlink(os.fsencode(full))
            if hashlib.sha256(target_bytes).hexdigest() == entry.sha256:
                same += 1
            else:
                bad += 1
                out.write("DIFFERS: %s (symlink target)\n" % entry.path)
            continue
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns // 10**9) != (
            entry.size,
            entry.mtime_ns // 10**9,
        ):
            bad += 1
            out.write("DIFFERS: %s (size, time or type)\n" % entry.path)
            continue
        with open(full, "rb") as handle:
            if mf.digest_fd(handle.fileno()) == entry.sha256:
                same += 1
            else:
                bad += 1
                out.write("DIFFERS: %s (other bytes)\n" % entry.path)
    out.write("check: %d file(s) the same as in %s, %d not\n" % (same, header.get("snapshot"), bad))
    return bad == 0, paths


class Linkdest:
    """One run of the command: settings, log, status file, and the server."""

    def __init__(self, settings: Settings, platform=None, quiet: bool = False):
        self.settings = settings
        self.platform = platform or client_platform.current(settings.power_supplies)
        self.quiet = quiet
        self.status = StatusFile(settings.status_file)
        self.environ = dict(os.environ, PATH=PATH)
        # The address this run reached the server at (None: not chosen yet).
        self.address: str | None = None

    # --- log, alerts, health checks ---

    def log(self, message: str) -> None:
        with open(self.settings.log_file, "a", encoding="utf-8", errors="replace") as handle:
            handle.write("%s %s\n" % (now_utc(), message))

    def say(self, message: str) -> None:
        self.log(message)
        if not self.quiet:
            sys.stderr.write("linkdest: %s\n" % message)

    def rotate_log(self) -> None:
        """Keep the log bounded: one previous generation, log_max_kib each."""
        with contextlib.suppress(FileNotFoundError):
            if os.path.getsize(self.settings.log_file) > self.settings.log_max_kib * 1024:
                os.replace(self.settings.log_file, self.settings.log_file + ".1")

    def _append_output(self, command: list[str], env: dict) -> int:
        """Run a helper with its output into the log; its exit code."""
        with open(self.settings.log_file, "ab") as log:
            return subprocess.call(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )

    def alert(self, event: str, message: str) -> None:
        """Run every configured alert (failure, recovery, stale)."""
        self.log("alert (%s): %s" % (event, message))
        if self.settings.alert_command:
            env = dict(self.environ, LINKDEST_EVENT=event, LINKDEST_MESSAGE=message)
            command = ["/bin/sh", "-c", self.settings.alert_command, "linkdest-alert"]
            if self._append_output([*command, event, message], env=env) != 0:
                self.log("the alert command failed")
        if self.settings.alert_email:
            if not os.access(SENDMAIL, os.X_OK):
                self.log("no local MTA (%s): alert mail not sent" % SENDMAIL)
                return
            mail = "To: %s\nSubject: linkdest on %s: %s\n\n%s\n" % (
                self.settings.alert_email,
                socket.gethostname(),
                event,
                message,
            )
            with open(self.settings.log_file, "ab") as log:
                sent = subprocess.run(
                    [SENDMAIL, "-t"], input=mail.encode(), stdout=log, stderr=log, check=False
                )
            if sent.returncode != 0:
                self.log("sending the alert mail failed")

    def ping_health(self, kind: str) -> None:
        """The health-check service's three endpoints: start, success, fail."""
        if not self.settings.healthcheck_url:
            return
        url = self.settings.healthcheck_url + {"start": "/start", "fail": "/fail"}.get(kind, "")
        # The laptop has no Ansible: the standard library's HTTP client.
        opener = urllib.request.build_opener()
        for attempt in range(HEALTHCHECK_ATTEMPTS):
            try:
                with opener.open(url, timeout=HEALTHCHECK_TIMEOUT) as response:
                    response.read()
                return
            except Exception as exc:  # noqa: BLE001 - URLError, HTTPException, bad URL
                error = exc
                if attempt + 1 < HEALTHCHECK_ATTEMPTS:
                    time.sleep(1)
        self.log("health-check ping (%s) failed: %s" % (kind, error))

    # --- outcomes of a backup ---

    def skip(self, reason: str) -> Finished:
        """A run that could not happen (away, on battery): not a failure, but
        once the last success grows old, say so once."""
        self.say("skipped: %s" % reason)
        self.status.record(last_result="skipped", last_error=reason)
        values = self.status.read()
        stale = hours_since(values.get("last_success_epoch", ""))
        if stale >= self.settings.stale_after_hours and values.get("stale_alerted") != "1":
            self.alert(
                "stale",
                "no backup for more than %d hours (last: %s; now: %s)"
                % (self.settings.stale_after_hours, values.get("last_success", ""), reason),
            )
            self.status.record(stale_alerted="1")
        return Finished(codes.EXIT_SKIPPED)

    def fail(self, code: int, message: str) -> Finished:
        """Record, alert on the first failure of a series."""
        self.say("backup failed: %s" % message)
        self.status.record(last_result="failed", last_exit=code, last_error=message)
        self.ping_health("fail")
        if self.status.get("failing") != "1":
            self.alert("failure", message)
            self.status.record(failing="1")
        return Finished(code)

    # --- ssh ---

    # Tests stand a script in for ssh and sshd's forced command.
    ssh_program = "ssh"

    def ssh_command(self, *options: str) -> list[str]:
        config = ("-F", self.settings.ssh_config)
        return [self.ssh_program, *config, *self._address_options(), *options]

    @property
    def several_addresses(self) -> bool:
        return len(self.settings.server_addresses) > 1

    def _address_options(self, index: int | None = None) -> list[str]:
        """ssh options for one of several addresses: ``index``, else the one
        this run reached (chosen on first use). One address: the ssh
        configuration has it."""
        if not self.several_addresses:
            return []
        if index is None:
            if self.address is None:
                self._choose_address()
            index = self.settings.server_addresses.index(self.address)
        host, port = split_address(self.settings.server_addresses[index])
        options = ["-o", "HostName=" + host]
        if port:
            options += ["-o", "Port=" + port]
        if index < len(self.settings.server_addresses) - 1:
            # Only the last address may take the configuration's long wait.
            options += ["-o", "ConnectTimeout=%d" % self.settings.connect_timeout]
        return options

    def _choose_address(self) -> None:
        """For a command other than a backup: the first address that lets
        this laptop in (a connection opened and closed). When none does, the
        one that refused the key, else the last: the command then fails with
        ssh's own words."""
        control_dir = tempfile.mkdtemp(prefix="linkdest-ssh.", dir="/tmp")
        probe = os.path.join(control_dir, "probe")
        try:
            self._reach(self._open_master(probe))
            self._stop_master(probe)
        finally:
            shutil.rmtree(control_dir, ignore_errors=True)

    def _excluded_folder(self):
        """Whether the run leaves out a folder: this laptop's excludes, as
        the change list applies them; none when it cannot (rsync can)."""
        try:
            return changelist.Excludes(self.settings.excludes).excluded
        except changelist.Unsupported:
            return client_platform.nothing_excluded

    def load_agent(self) -> bool:
        """With keychain the key has a passphrase: use the agent the user's
        login unlocked it into (keychain on Linux, the login keychain on a
        Mac). True when that agent holds the key."""
        if not self.settings.keychain:
            return True
        self.platform.find_agent(self.environ, self.settings.user_home)
        if not self.environ.get("SSH_AUTH_SOCK"):
            return False
        listed = subprocess.run(
            ["ssh-keygen", "-lf", self.settings.key_file + ".pub"],
            capture_output=True,
            text=True,
            env=self.environ,
            check=False,
        ).stdout.split()
        held = subprocess.run(
            ["ssh-add", "-l"], capture_output=True, text=True, env=self.environ, check=False
        )
        return len(listed) > 1 and held.returncode == 0 and listed[1] in held.stdout

    def server_call(self, *words: str, **kwargs) -> subprocess.CompletedProcess:
        """One request to the server's gate (stdout captured)."""
        return subprocess.run(
            [*self.ssh_command(), self.settings.server, *words],
            stdout=subprocess.PIPE,
            env=self.environ,
            check=False,
            **kwargs,
        )

    @contextlib.contextmanager
    def connection(self):
        """A private directory for one ssh master; the master and the
        directory go when the run ends, however it ends."""
        control_dir = tempfile.mkdtemp(prefix="linkdest-ssh.", dir="/tmp")
        master = os.path.join(control_dir, "master")
        try:
            yield master
        finally:
            self._stop_master(master)
            shutil.rmtree(control_dir, ignore_errors=True)

    def _stop_master(self, master: str) -> None:
        """Stop the ssh master at ``master``, if one is up. The bare command:
        stopping a master needs no address (and must not start a probe while
        a failed run unwinds)."""
        if os.path.exists(master):
            subprocess.run(
                [self.ssh_program, "-F", self.settings.ssh_config]
                + ["-o", "ControlPath=" + master, "-O", "exit", self.settings.server],
                capture_output=True,
                env=self.environ,
                check=False,
            )

    # --- backup ---

    def rsync_options(self, plan: Plan | None = None) -> list[str]:
        """The laptop's rsync options: a full run, or the paths of a change list."""
        if plan is not None and plan.kind == CHANGES:
            # Just the listed paths; the server removed what they replace or
            # what is gone. No -l or -D: symlinks and specials go by full runs.
            options = ["--times", "--perms", "--owner", "--group", "--from0"]
            options.append("--files-from=" + plan.list_file)
            if plan.include_file:
                options += ["--include-from=" + plan.include_file, "--exclude=/*"]
        else:
            # --delete-excluded: a file excluded later must leave the next
            # snapshot too (on btrfs a run starts as a copy of the last one).
            options = ["--archive", "--delete", "--delete-excluded"]
            options += ["--exclude=" + pattern for pattern in self.settings.excludes]
        options += ["--numeric-ids", "--stats", "--timeout=%d" % self.settings.rsync_timeout]
        if self.settings.copy_links:
            options.append("--copy-links")
        if self.settings.bwlimit > 0:
            options.append("--bwlimit=%d" % self.settings.bwlimit)
        return options

    def backup(self, full: bool = False) -> int:
        os.makedirs(self.settings.state_dir, exist_ok=True)
        with open(self.settings.lock_file, "w") as lock:
            # A kernel lock: a killed run cannot leave it stuck. It is not
            # inherited by rsync or ssh (close_fds), so a lingering ssh master
            # never holds it.
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.say(
                    "already running (another linkdest backup holds %s)" % self.settings.lock_file
                )
                return codes.EXIT_BUSY
            try:
                self._backup_locked(full)
            except Finished as finished:
                return finished.code
            except Exception as exc:  # noqa: BLE001 - a backup must never fail silently
                self.log(traceback.format_exc().rstrip())
                return self.fail(1, "linkdest failed unexpectedly: %r (see the log)" % exc).code
        return 0

    def _backup_locked(self, full: bool) -> None:
        self.rotate_log()
        started = now_utc()
        self.status.record(last_attempt=started)
        if self.settings.require_ac_power and not self.platform.on_ac_power():
            raise self.skip("on battery")
        if not self.platform.on_networks(self.settings.allowed_networks):
            raise self.skip(
                "not on an allowed network (%s)" % " ".join(self.settings.allowed_networks)
            )
        if not os.path.isdir(self.settings.source):
            raise self.fail(
                codes.EXIT_NO_SOURCE, "source folder %s is missing" % self.settings.source
            )
        blocked = self.platform.privacy_block(
            self.settings.source, self._excluded_folder(), self.settings.copy_links
        )
        if blocked:
            raise self.fail(codes.EXIT_PRIVACY, blocked)
        try:
            self.platform.rsync()
        except client_platform.NoUsableRsync as exc:
            raise self.fail(codes.EXIT_NO_RSYNC, str(exc)) from exc
        if not self.load_agent():
            raise self.fail(
                codes.EXIT_NO_AGENT,
                "the ssh agent holds no unlocked backup key: " + self.platform.AGENT_HELP,
            )
        self._refuse_empty_first_run()
        self.ping_health("start")
        self.say("backup of %s started" % self.settings.source)
        plan = Plan(kind=FULL)
        try:
            with self.connection() as master:
                plan = self.plan(master, full)
                if plan.kind == UNCHANGED:
                    return self._unchanged(plan, started)
                self.say(
                    "sending %d changed paths (change list against %s)"
                    % (len(plan.listed), plan.record.snapshot)
                    if plan.kind == CHANGES
                    else "sending everything (full run: %s)" % plan.reason
                )
                # The record stays until this run finishes: if it fails, the
                # server refuses a list against it (current is unchanged, or
                # an interrupted run waits) and the next run is a full one.
                with plan.timed("transfer"):
                    code = self._transfer(master, plan)
                with plan.timed("finalize"):
                    snapshot = self._finalize(master, code)
        finally:
            for path in (plan.list_file, plan.include_file):
                if path:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        with plan.timed("record"):
            self._remember(plan, snapshot, code)
        self.log("took: " + ", ".join("%s %.2f s" % item for item in plan.steps.items()))
        self.say("snapshot %s finished" % snapshot)
        self.ping_health("success")
        values = self.status.read()
        if values.get("failing") == "1" or values.get("stale_alerted") == "1":
            self.alert("recovery", "backups work again: snapshot %s" % snapshot)
        self.status.record(
            last_result="success",
            last_exit=code,
            last_error="",
            last_success=started,
            last_success_epoch=int(time.time()),
            last_snapshot=snapshot,
            last_checked="",
            last_kind=plan.kind,
            last_paths=len(plan.listed) if plan.kind == CHANGES else plan.sent_files,
            last_full_reason="" if plan.kind == CHANGES else plan.reason,
            last_address=self.reached_at(),
            failing="0",
            stale_alerted="0",
        )

    def _unchanged(self, plan: Plan, started: str) -> None:
        """Nothing changed since the last snapshot, and the server noted it:
        a successful backup that needed no new snapshot."""
        snapshot = plan.record.snapshot
        self.log("took: " + ", ".join("%s %.2f s" % item for item in plan.steps.items()))
        self.say(
            "nothing changed since %s: no new snapshot (checked at %s)" % (snapshot, plan.checked)
        )
        self.ping_health("success")
        values = self.status.read()
        if values.get("failing") == "1" or values.get("stale_alerted") == "1":
            self.alert("recovery", "backups work again: nothing changed since %s" % snapshot)
        self.status.record(
            last_result="success",
            last_exit=0,
            last_error="",
            last_success=started,
            last_success_epoch=int(time.time()),
            last_snapshot=snapshot,
            last_checked=plan.checked,
            last_kind=UNCHANGED,
            last_paths=0,
            last_bytes_sent=0,
            last_duration=int(sum(plan.steps.values())),
            last_full_reason="",
            last_address=self.reached_at(),
            failing="0",
            stale_alerted="0",
        )

    def reached_at(self) -> str:
        """The address this run reached the server at, for the status file."""
        if self.address is not None:
            return self.address
        return (self.settings.server_addresses or [self.settings.server])[0]

    def _refuse_empty_first_run(self) -> None:
        """A laptop that never backed up, with an empty folder, must not make
        an empty snapshot the newest of a history it inherited: that is a new
        laptop whose files have not been restored yet."""
        if self.status.get("last_success") or os.listdir(self.settings.source):
            return
        listing = self.server_call(codes.VERB_LIST, stderr=subprocess.DEVNULL)
        held = [
            line
            for line in listing.stdout.decode("utf-8", "replace").splitlines()
            if line.startswith(codes.SNAPSHOT_PREFIX)
        ]
        if listing.returncode == 0 and held:
            raise self.fail(
                codes.EXIT_NO_SOURCE,
                "%s is empty and this laptop has never backed up, while the server holds %d"
                " snapshot(s) of its area: restore them first (linkdest restore --to %s),"
                " or put files in the folder"
                % (self.settings.source, len(held), os.path.dirname(self.settings.source)),
            )

    # --- the change list ---

    @property
    def record_file(self) -> str:
        return os.path.join(self.settings.state_dir, RECORD_FILE)

    def settings_digest(self) -> str:
        """What the record is only good for: the same folder, excludes, client."""
        return changelist.settings_digest(
            source=self.settings.source,
            excludes=self.settings.excludes,
            copy_links=self.settings.copy_links,
            client=CLIENT_FORMAT,
        )

    def _record_for_changes(self, full: bool) -> tuple[changelist.Record | None, str]:
        """The record a change list can be made against, or None and why not."""
        if full:
            return None, "asked for (--full)"
        every = self.settings.full_every_hours
        if every <= 0:
            return None, "the change list is off (backup_client_full_every_hours: 0)"
        record = changelist.load_record(self.record_file)
        if record is None:
            return None, "no record of the last snapshot"
        if record.settings != self.settings_digest():
            return None, "the folder, the excludes or the client changed"
        if time.time() - record.full_epoch >= every * 3600:
            return None, "the last full run is %d hours old or older" % every
        return record, ""

    def plan(self, master: str, full: bool) -> Plan:
        """Walk the folder and decide: a change list, a full run (and why), or,
        when nothing changed, no snapshot at all (a check the server records).

        The ssh connection takes shape while the laptop walks. The server's
        clone of current starts as soon as the walk finds the first change
        (or before the walk, with snapshot_unchanged: a snapshot comes
        anyway), so an unchanged folder costs the server no clone. The list
        follows when the walk is done; a run that turns out to need
        everything abandons it.
        """
        plan = Plan(kind=FULL)
        with plan.timed("reading the record"):
            record, plan.reason = self._record_for_changes(full)
        try:
            excludes = changelist.Excludes(self.settings.excludes)
        except changelist.Unsupported as exc:
            plan.reason = "%s" % exc
            return plan
        may_skip = record is not None and not self.settings.snapshot_unchanged
        # With several addresses the connection is always opened first: it
        # chooses the address every later call dials.
        opening = self._open_master(master) if may_skip or self.several_addresses else None
        preparing = None
        if record is not None and not may_skip:
            self._opened(opening)
            preparing = self._start_changes(master, record.snapshot)

        def first_change() -> None:
            nonlocal preparing
            if preparing is None:
                self._opened(opening)
                preparing = self._start_changes(master, record.snapshot)

        try:
            with plan.timed("walk"):
                plan.walk = changelist.walk(
                    self.settings.source,
                    excludes,
                    self.settings.copy_links,
                    time.time_ns(),
                    previous=record.entries if may_skip else None,
                    on_change=first_change,
                )
                if record is not None:
                    plan.listed, plan.reason = self._changes_since(record, plan.walk)
        except changelist.Unsupported as exc:
            plan.walk, plan.listed, plan.reason = None, [], "%s" % exc
        except BaseException:
            if preparing is not None:
                plan.reason = "the walk failed"
                self._finish_changes(preparing, plan)
            raise
        if may_skip and plan.reason == "" and not plan.listed:
            with plan.timed("check"):
                self._opened(opening)
                if self._record_check(master, record, plan):
                    return plan
        if preparing is None and record is not None and plan.reason == "":
            # Only removals, found at the end of the walk; or a server that
            # records no checks.
            preparing = self._start_changes(master, record.snapshot)
        self._opened(opening)
        with plan.timed("waiting for the server's clone"):
            ready = preparing is not None and self._finish_changes(preparing, plan)
        if ready:
            plan.kind, plan.record = CHANGES, record
            self._write_rsync_lists(plan)
        return plan

    def _open_master(self, master: str, index: int | None = None) -> subprocess.Popen:
        """Start the run's ssh connection in the background (no command: the
        gate runs nothing); it stays as the master the run's calls share.
        (Without a session its idle time starts at once: after a walk longer
        than MASTER_IDLE the next call opens a new one.) With several
        addresses, this opens address ``index`` (by default the first, or the
        one already chosen)."""
        if index is None:
            index = (
                self.settings.server_addresses.index(self.address)
                if self.several_addresses and self.address is not None
                else 0
            )
        # ssh's words go to a file, not a pipe: the master that stays in the
        # background would keep a pipe open.
        error_file = master + ".err"
        with open(error_file, "wb") as said:
            opening = subprocess.Popen(
                [
                    self.ssh_program,
                    *("-F", self.settings.ssh_config, *self._address_options(index)),
                    *("-o", "ControlMaster=yes", "-o", "ControlPath=" + master),
                    *("-o", "ControlPersist=%d" % MASTER_IDLE, "-N", "-f", self.settings.server),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=said,
                env=self.environ,
            )
        opening.error_file = error_file
        opening.master = master
        opening.index = index
        return opening

    def _reach(self, opening: subprocess.Popen) -> list[tuple[str, str]]:
        """Wait for the connection ``opening`` opens; with several addresses,
        go on to the next address while one fails (no route, refused, timed
        out, or another host's key: a home address dialled from elsewhere).
        Sets ``self.address``. What each failed address said, empty when one
        let the laptop in."""
        failures = []
        addresses = self.settings.server_addresses
        while True:
            try:
                opening.wait(timeout=SSH_OPEN_WAIT)
            except subprocess.TimeoutExpired:
                opening.kill()
                opening.wait()
            ssh_error = ""
            if opening.returncode == 255:
                with open(opening.error_file, "rb") as said:
                    ssh_error = transfer_summary(said.read().decode("utf-8", "replace"))[1]
            if self.several_addresses:
                self.address = addresses[opening.index]
            if opening.returncode == 0:
                return []
            address = addresses[opening.index] if self.several_addresses else self.settings.server
            failures.append((address, ssh_error.strip() or "exit %s" % opening.returncode))
            if not self.several_addresses or opening.index + 1 >= len(addresses):
                refused = [address for address, error in failures if "Permission denied" in error]
                if refused and self.several_addresses:
                    # The server itself refused the key there: later calls
                    # go to that address and meet the same refusal, not a
                    # time-out elsewhere that would read as "away".
                    self.address = refused[0]
                return failures
            # A new laptop's first command (a restore) may come before any
            # backup made the log's directory.
            with contextlib.suppress(OSError):
                self.log("server not reached at %s (%s)" % failures[-1])
            opening = self._open_master(opening.master, opening.index + 1)

    def _opened(self, opening: subprocess.Popen | None) -> None:
        """Wait until the background connection is up, or failed: a call made
        before then would open a second connection. When ssh says why it
        failed (away from home, a host key, a key), the run ends here as a
        skip or a failure; anything else, the next call meets and reports."""
        if opening is None or opening.returncode is not None:
            return
        failures = self._reach(opening)
        if not failures:
            return
        # A refused key comes after the pinned host key matched: this is the
        # server, refusing this laptop, whatever the other addresses said.
        refused = [error for _address, error in failures if "Permission denied" in error]
        if refused:
            self._ssh_failed(refused[0])
        # Else the last address decides: away (a skip), or a failure. What
        # every address said goes into the reason: a host key that failed at
        # home shows in the status, not only the name's time-out.
        if _SSH_ERROR_RE.search(failures[-1][1]):
            self._ssh_failed(failures[-1][1], ["%s: %s" % failure for failure in failures[:-1]])

    def _record_check(self, master: str, record: changelist.Record, plan: Plan) -> bool:
        """Nothing changed since ``record.snapshot``: ask the server to record a
        check instead of a snapshot. True when it did (``plan`` says so);
        False to go on as before: a full run when ``plan.reason`` says why,
        else a change-list snapshot (a server that records no checks)."""
        result = subprocess.run(
            [
                *self.ssh_command(*self.master_options(master)),
                self.settings.server,
                codes.VERB_UNCHANGED,
                record.snapshot,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self.environ,
            check=False,
        )
        said = result.stderr.decode("utf-8", "replace")
        with open(self.settings.log_file, "a", encoding="utf-8") as log:
            log.write(said)
        checked = result.stdout.decode("utf-8", "replace").strip()
        if result.returncode == 0 and checked:
            plan.kind, plan.record, plan.checked = UNCHANGED, record, checked
            return True
        if result.returncode == 255:
            # ssh's own words, picked as from a transfer's output.
            ssh_error = transfer_summary(said)[1] or (said.strip().splitlines() or ["exit 255"])[-1]
            self._ssh_failed(ssh_error.strip())
        if result.returncode == codes.EXIT_BUSY:
            # A prune or the mirror holds the area: a full run would wait the same.
            raise self.skip("the server is busy (%s)" % server_reason(said))
        if result.returncode == codes.EXIT_NOT_MOUNTED:
            raise self.fail(
                result.returncode, "the server refused the backup: %s" % server_reason(said)
            )
        if result.returncode != codes.EXIT_REFUSED:
            lines = said.strip().splitlines()
            plan.reason = "the server asked for it (%s)" % (
                lines[-1] if lines else "exit %d" % result.returncode
            )
        return False

    def _ssh_failed(self, ssh_error: str, earlier: list[str] | None = None) -> None:
        """ssh could not reach or log in to the server: away (a skip), or a
        failure. ``ssh_error`` decides; ``earlier`` (what the addresses tried
        before said) goes into the reason."""
        # No network, or a network that does not reach the server, is a
        # laptop away from home; anything else (refused, host key, key) is a
        # failure.
        said = "; ".join([ssh_error.removeprefix("ssh: "), *(earlier or [])])
        if _AWAY_RE.search(ssh_error):
            raise self.skip("server unreachable (%s)" % said)
        raise self.fail(255, "ssh to the server failed: %s" % said)

    def _changes_since(
        self, record: changelist.Record, walk: changelist.Walk
    ) -> tuple[list[tuple[str, str]], str]:
        """The change list against ``record``, or no list and why a full run."""
        listed = changelist.changes(record.entries, walk)
        odd = [
            path
            for kind, path in listed
            if kind != changelist.KIND_GONE and walk.kind(path) in ("l", "s")
        ]
        if odd:
            return [], "a symlink or special file changed (%s)" % odd[0]
        if len(listed) > changelist.MAX_ENTRIES:
            return [], "more than %d paths changed" % changelist.MAX_ENTRIES
        if (KIND_DIR, ".") not in listed and any("/" not in path for _k, path in listed):
            # Writing at the top changes the top's time on the server, and
            # only a listed "." has it set back (deeper directories come
            # along as the parents of what is listed).
            listed.insert(0, (KIND_DIR, "."))
        return listed, ""

    def _start_changes(self, master: str, base: str) -> subprocess.Popen:
        """Ask the server to prepare a snapshot from ``base``; the list comes later."""
        return subprocess.Popen(
            [
                *self.ssh_command(*self.master_options(master)),
                self.settings.server,
                codes.VERB_CHANGES,
                base,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.environ,
        )

    def _finish_changes(self, preparing: subprocess.Popen, plan: Plan) -> bool:
        """Send the list (or, with no list, abandon it); True when the server
        prepared the snapshot. Else ``plan.reason`` says why not."""
        data = changelist.encode(plan.listed) if plan.reason == "" else b""
        try:
            _out, said = preparing.communicate(data)
        except BrokenPipeError:
            _out, said = None, preparing.stderr.read()
            preparing.wait()
        with open(self.settings.log_file, "ab") as log:
            log.write(said or b"")
        if preparing.returncode == 0 and data:
            return True
        if preparing.returncode in REFUSALS_NO_RUN_CURES:
            # The drive is unplugged or full: a full run would be refused the same way.
            raise self.fail(
                preparing.returncode,
                "the server refused the backup: %s"
                % (server_reason((said or b"").decode("utf-8", "replace"))),
            )
        if plan.reason == "":
            lines = (said or b"").decode("utf-8", "replace").strip().splitlines()
            said_last = lines[-1] if lines else "exit %d" % preparing.returncode
            plan.reason = (
                "the server could not be asked for a change list (%s)" % said_last
                if preparing.returncode == 255
                else "the server asked for it (%s)" % said_last
            )
        plan.listed = []
        return False

    def _write_rsync_lists(self, plan: Plan) -> None:
        """The paths rsync sends (--files-from), and the top-level names it may
        send when the folder itself is listed."""
        sent = [path for kind, path in plan.listed if kind != changelist.KIND_GONE]
        # "./" first: rsync skips a --files-from name that starts with "#"
        # or ";" as a comment.
        plan.list_file = self._write_list(
            "files-from.",
            (
                (path if path == "." else "./" + path).encode("utf-8", "surrogateescape") + b"\0"
                for path in sent
            ),
        )
        if "." in sent:
            # rsync sends a listed "." with everything at its top: only the
            # listed top-level names may pass (the rest is excluded after them).
            plan.include_file = self._write_list(
                "include-from.",
                (
                    changelist.top_level_rule(path).encode("utf-8", "surrogateescape") + b"\0"
                    for path in sent
                    if path != "." and "/" not in path
                ),
            )

    def _write_list(self, prefix: str, records) -> str:
        """A NUL-separated list for rsync, in the state directory; its path."""
        fd, path = tempfile.mkstemp(prefix=prefix, dir=self.settings.state_dir)
        with os.fdopen(fd, "wb") as handle:
            handle.writelines(records)
        return path

    def _remember(self, plan: Plan, snapshot: str, code: int) -> None:
        """Record what the finished snapshot holds, for the next run's list.

        Only after a clean run: with exit 23 or 24 some listed paths may be
        missing from the snapshot, so the next run is a full one.
        """
        changelist.forget_record(os.path.join(self.settings.state_dir, OLD_RECORD_FILE))
        if code != 0 or plan.walk is None:
            changelist.forget_record(self.record_file)
            return
        full_epoch = plan.record.full_epoch if plan.kind == CHANGES else int(time.time())
        try:
            changelist.save_record(
                self.record_file,
                changelist.Record(snapshot, self.settings_digest(), full_epoch, plan.walk.entries),
            )
        except OSError as exc:
            # The snapshot is finished all the same; the next run is a full one.
            self.say("warning: could not record what %s holds: %s" % (snapshot, exc))
            changelist.forget_record(self.record_file)

    def master_options(self, master: str) -> list[str]:
        """ssh options that open the run's master connection, or reuse it."""
        return [
            "-o", "ControlMaster=auto",
            "-o", "ControlPath=" + master,
            "-o", "ControlPersist=%d" % MASTER_IDLE,
        ]  # fmt: skip

    def _transfer(self, master: str, plan: Plan) -> int:
        """rsync to the server over the run's ssh master; rsync's exit code."""
        shell = " ".join(self.ssh_command(*self.master_options(master)))
        output_file = os.path.join(self.settings.state_dir, "last-run.out")
        began = time.monotonic()
        # The server chooses every path; the destination word only says
        # which kind of upload this is.
        destination = (
            codes.CHANGES_DESTINATION if plan.kind == CHANGES else codes.UPLOAD_DESTINATION
        )
        argv = [self.platform.rsync(), *self.rsync_options(plan), "-e", shell, "--"]
        argv += [self.settings.source + "/", "%s:%s" % (self.settings.server, destination)]
        with open(output_file, "w+b") as output:
            code = subprocess.call(
                argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output, env=self.environ
            )
            output.seek(0)
            text = output.read().decode("utf-8", "replace")
        with open(self.settings.log_file, "a", encoding="utf-8") as log:
            log.write(text)
        sent, ssh_error = transfer_summary(text)
        plan.sent_files = files_transferred(text)
        self.status.record(last_bytes_sent=sent, last_duration=int(time.monotonic() - began))
        if code != 0 and ssh_error:
            self._ssh_failed(ssh_error)
        if code == 24:
            self.say("warning: some files vanished during the transfer (rsync exit 24)")
        elif code == 23:
            self.say(
                "warning: some files could not be read (rsync exit 23); see %s"
                % self.settings.log_file
            )
        elif code != 0:
            # The server explains its own refusals (drive not mounted, full, busy).
            raise self.fail(code, "rsync exit %d: %s" % (code, server_reason(text)))
        return code

    def _finalize(self, master: str, code: int) -> str:
        """The server classifies the exit code (one table) and finalizes, or
        not; the finished snapshot's name."""
        with open(self.settings.log_file, "ab") as log:
            result = subprocess.run(
                [
                    *self.ssh_command("-o", "ControlMaster=no", "-o", "ControlPath=" + master),
                    self.settings.server,
                    codes.VERB_FINALIZE,
                    str(code),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self.environ,
                check=False,
            )
        snapshot = result.stdout.decode("utf-8", "replace").strip()
        if result.returncode != 0 or not codes.is_snapshot_name(snapshot):
            raise self.fail(
                codes.EXIT_NOT_FINALIZED,
                "the server kept the snapshot incomplete (rsync exit %d)" % code,
            )
        return snapshot

    # --- status and the server's snapshots ---

    def status_report(self, raw: bool = False) -> int:
        out = sys.stdout
        if raw:
            # KEY=VALUE lines, for playbooks/status.yml and playbooks/restore.yml.
            out.write("source=%s\n" % self.settings.source)
            with contextlib.suppress(FileNotFoundError), open(self.status.path, "rb") as handle:
                out.flush()
                sys.stdout.buffer.write(handle.read())
            return 0
        if not os.path.exists(self.status.path):
            out.write("linkdest: no backup has run yet\n")
            return 1
        values = self.status.read()
        hours = hours_since(values.get("last_success_epoch", ""))
        if values.get("last_success") and values.get("last_kind") == UNCHANGED:
            out.write(
                "Last backup:   up to date as of %s (snapshot %s), %d hours ago\n"
                % (values.get("last_checked", ""), values.get("last_snapshot", ""), hours)
            )
        elif values.get("last_success"):
            out.write(
                "Last backup:   %s, %d hours ago (%s)\n"
                % (values.get("last_snapshot", ""), hours, values["last_success"])
            )
        else:
            out.write("Last backup:   never\n")
        out.write(
            "Last attempt:  %s: %s %s\n"
            % (
                values.get("last_attempt", ""),
                values.get("last_result", ""),
                values.get("last_error", ""),
            )
        )
        out.write(
            "Last transfer: %s bytes in %s s\n"
            % (values.get("last_bytes_sent", ""), values.get("last_duration", ""))
        )
        if values.get("last_kind") == UNCHANGED:
            out.write("Last run:      nothing changed, no new snapshot needed\n")
        elif values.get("last_kind") == CHANGES:
            out.write("Last run:      change list, %s paths sent\n" % values.get("last_paths", ""))
        elif values.get("last_kind") == FULL:
            out.write(
                "Last run:      full, %s files sent (%s)\n"
                % (values.get("last_paths", ""), values.get("last_full_reason", ""))
            )
        if values.get("last_address"):
            out.write("Reached at:    %s\n" % values["last_address"])
        listing = subprocess.run(
            [*self.ssh_command("-o", "ConnectTimeout=5"), self.settings.server, codes.VERB_LIST],
            capture_output=True,
            text=True,
            env=self.environ,
            check=False,
        )
        if listing.returncode == 0:
            count = sum(
                1 for line in listing.stdout.splitlines() if line.startswith(codes.SNAPSHOT_PREFIX)
            )
            out.write("On the server: %d snapshots\n" % count)
        else:
            out.write("On the server: not reachable now\n")
        if hours >= self.settings.stale_after_hours:
            out.write(
                "STALE: no successful backup for more than %d hours\n"
                % self.settings.stale_after_hours
            )
            return 1
        return 0

    def snapshots(self) -> list[str]:
        listing = self.server_call(codes.VERB_LIST)
        if listing.returncode != 0:
            raise Finished(listing.returncode)
        # Other lines (the last check) are not snapshots.
        return [
            line.split()[0]
            for line in listing.stdout.decode().splitlines()
            if line.startswith(codes.SNAPSHOT_PREFIX)
        ]

    def list_snapshots(self) -> int:
        result = self.server_call(codes.VERB_LIST)
        sys.stdout.buffer.write(result.stdout)
        return result.returncode

    def latest(self) -> int:
        names = self.snapshots()
        if not names:
            return 1
        sys.stdout.write(names[-1] + "\n")
        return 0

    def relative(self, path: str) -> str:
        try:
            return relative_to_source(path, self.settings.source)
        except ValueError as exc:
            sys.stderr.write("linkdest: %s\n" % exc)
            raise Finished(codes.EXIT_USAGE) from None

    def versions(self, path: str) -> int:
        rel = self.relative(path)
        sys.stdout.write("SNAPSHOT                  SIZE       MODIFIED (UTC)\n")
        sys.stdout.flush()
        result = self.server_call(codes.VERB_VERSIONS, quote(rel))
        sys.stdout.buffer.write(result.stdout)
        return result.returncode

    def rsync_over_ssh(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            [
                self.platform.rsync(),
                *args[:-2],
                "-e",
                " ".join(self.ssh_command()),
                "--",
                *args[-2:],
            ],
            env=self.environ,
            **kwargs,
        )

    def compare(self, snapshot: str | None) -> int:
        if snapshot is None:
            names = self.snapshots()
            if not names:
                sys.stderr.write("linkdest: no snapshot yet\n")
                return codes.EXIT_NOT_FOUND
            snapshot = names[-1]
        # A dry run from the snapshot to the folder lists what differs; nothing is written.
        rsync = self.rsync_over_ssh(
            "--archive",
            "--dry-run",
            "--delete",
            "--itemize-changes",
            "%s:%s/" % (self.settings.server, snapshot),
            self.settings.source + "/",
            stdout=subprocess.PIPE,
        )
        for raw in rsync.stdout:
            line = itemized_difference(raw.decode("utf-8", "surrogateescape").rstrip("\n"))
            if line is not None:
                sys.stdout.write(line + "\n")
        code = rsync.wait()
        sys.stdout.write("(compared with %s)\n" % snapshot)
        return code

    def locate(self, rel: str, at: str | None) -> str:
        """The snapshot a restore reads: named, or the newest (at or before
        ``at``) holding ``rel``. Raises Finished with the table's exit code."""
        if at and at.startswith(codes.SNAPSHOT_PREFIX):
            return at
        words = [codes.VERB_LOCATE, quote(rel)]
        if at:
            try:
                words.append(parse_time(at))
            except ValueError:
                sys.stderr.write(
                    "linkdest: cannot read the time %s (ISO 8601, such as"
                    " 2026-05-01T14:00, UTC unless it says otherwise)\n" % at
                )
                raise Finished(codes.EXIT_USAGE) from None
        located = self.server_call(*words)
        if located.returncode == 255:
            sys.stderr.write("linkdest: the server could not be reached (ssh failed)\n")
            raise Finished(255)
        if located.returncode != 0:
            raise Finished(codes.EXIT_NOT_FOUND)
        return located.stdout.decode().strip()

    def restore(self, path: str | None, at: str | None, to: str | None, overwrite: bool) -> int:
        """PATH (or, with none, the whole folder) as it was in a snapshot.

        A whole folder may go into an empty directory, the backed-up folder
        itself included (a new laptop): then the backup lock is held so that
        cron cannot snapshot a half-restored folder, and when the tree checks
        out against the snapshot's manifest it becomes the record the next
        backup's change list starts from.
        """
        rel = "." if path is None else self.relative(path)
        snapshot = self.locate(rel, at)
        dest = to or os.path.join(os.path.expanduser("~"), "linkdest-restore", snapshot)
        whole = rel == "."
        target = os.path.join(dest, os.path.basename(self.settings.source if whole else rel))
        into_source = whole and os.path.realpath(target) == os.path.realpath(self.settings.source)
        was_empty = whole and os.path.isdir(target) and not os.listdir(target)
        if os.path.lexists(target) and not overwrite and not was_empty:
            sys.stderr.write("linkdest: %s exists; not overwriting it (add --overwrite)\n" % target)
            return codes.EXIT_EXISTS
        lock = None
        if into_source:
            os.makedirs(self.settings.state_dir, exist_ok=True)
            lock = open(self.settings.lock_file, "w")  # noqa: SIM115 - held to the end
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                sys.stderr.write("linkdest: a backup is running; restore when it has ended\n")
                return codes.EXIT_BUSY
        try:
            # Only the newest snapshot can be the base of the next change list.
            seed = into_source and was_empty and at is None
            return self._restore_locked(rel, snapshot, dest, target, seed)
        finally:
            if lock is not None:
                lock.close()

    def _restore_locked(
        self, rel: str, snapshot: str, dest: str, target: str, seed_record: bool
    ) -> int:
        whole = rel == "."
        os.makedirs(target if whole else dest, exist_ok=True)
        # The server sends with --fake-super, so modes, times and symlinks
        # come back as they were. A whole folder goes into target itself.
        source = "%s/" % snapshot if whole else "%s/%s" % (snapshot, rel)
        progress = ["--info=progress2", "--human-readable"] if sys.stdout.isatty() else []
        rsync = self.rsync_over_ssh(
            "--archive",
            *progress,
            "%s:%s" % (self.settings.server, source),
            (target if whole else dest) + "/",
        )
        code = rsync.wait()
        restored_ns = time.time_ns()
        if code != 0:
            sys.stderr.write(
                "linkdest: restoring %s from %s failed (rsync exit %d)\n" % (rel, snapshot, code)
            )
            return code
        sys.stdout.write("restored %s from %s to %s\n" % (rel, snapshot, target))
        sys.stdout.flush()
        # The walk comes before the check: a file changed after the walk is
        # caught by the next backup (its ctime), one changed before it fails
        # the check (and nothing is recorded).
        walked = self._walk_restored(restored_ns) if seed_record else None
        checked, paths = self.check_restored(snapshot, rel, target)
        if checked is False:
            return codes.EXIT_DAMAGED
        if walked is not None and checked:
            # Only a folder that is the snapshot file for file (no file left
            # out by this laptop's excludes) is a record to build on.
            # (The server keeps symlinks and specials as files: in the manifest.)
            files = {path for path in walked.entries if walked.kind(path) != "d"}
            if files == paths:
                self._record_restored(snapshot, walked)
            else:
                sys.stdout.write("note: the next backup sends everything (excludes differ)\n")
        return 0

    def check_restored(self, snapshot: str, rel: str, target: str) -> tuple[bool | None, set[str]]:
        """Compare what was restored with the snapshot's manifest; say how it
        went. True: every file the same; False: not; None: no manifest. With
        the manifest's paths."""
        with tempfile.TemporaryFile() as manifest:
            result = subprocess.run(
                [*self.ssh_command(), self.settings.server, codes.VERB_MANIFEST, snapshot],
                stdout=manifest,
                stderr=subprocess.DEVNULL,
                env=self.environ,
                check=False,
            )
            manifest.seek(0)
            lines = (line.decode("utf-8", "surrogateescape") for line in manifest)
            if result.returncode != 0:
                sys.stdout.write(
                    "check: not checked, the server has no manifest of %s\n" % snapshot
                )
                return None, set()
            return check_restored_tree(lines, target, rel, sys.stdout)

    def _walk_restored(self, restored_ns: int) -> changelist.Walk | None:
        """The restored folder as the next backup's walk will see it."""
        # Past the racy windows (changelist.RACY_DIR_NS): what rsync just
        # wrote is then recorded as settled, not as "changed too recently".
        time.sleep(changelist.RACY_DIR_NS / 10**9 + 0.1)
        try:
            walked = changelist.walk(
                self.settings.source,
                changelist.Excludes(self.settings.excludes),
                self.settings.copy_links,
                time.time_ns(),
            )
        except changelist.Unsupported as exc:
            sys.stdout.write("note: the next backup sends everything (%s)\n" % exc)
            return None
        # Whatever changed after rsync ended (a chmod, an edit) is not what the
        # snapshot holds: recorded as never equal, the next backup sends it.
        # (ctime comes from the kernel's coarse clock: up to a tick behind.)
        changed_after = restored_ns - CLOCK_TICK_NS
        ctime = changelist.CTIME
        for path, entry in walked.entries.items():
            if entry[ctime] >= changed_after:
                walked.entries[path] = (*entry[:ctime], -1, *entry[ctime + 1 :])
        return walked

    def _record_restored(self, snapshot: str, walked: changelist.Walk) -> None:
        """The restored folder is what ``snapshot`` holds: the next backup
        sends only what changes from here (a change list), if ``snapshot`` is
        still the server's newest by then."""
        record = changelist.Record(
            snapshot, self.settings_digest(), int(time.time()), walked.entries
        )
        try:
            changelist.save_record(self.record_file, record)
        except OSError as exc:
            # The next backup is a full run; nothing is lost.
            sys.stdout.write("note: the next backup sends everything (%s)\n" % exc)
            changelist.forget_record(self.record_file)
            return
        sys.stdout.write("the next backup continues from %s\n" % snapshot)

    def verify(self, path: str | None) -> int:
        rel = self.relative(path) if path is not None else "."
        with tempfile.TemporaryFile() as manifest:
            result = subprocess.run(
                [*self.ssh_command(), self.settings.server, codes.VERB_MANIFEST],
                stdout=manifest,
                env=self.environ,
                check=False,
            )
            if result.returncode != 0:
                sys.stderr.write("linkdest: the server has no manifest of the newest snapshot\n")
                return codes.EXIT_NOT_FOUND
            manifest.seek(0)
            lines = (line.decode("utf-8", "surrogateescape") for line in manifest)
            code = compare_with_manifest(
                lines, self.settings.source, rel, self.settings.copy_links, sys.stdout
            )
        return code


def _usage() -> Finished:
    sys.stderr.write(USAGE)
    return Finished(codes.EXIT_USAGE)


def _restore_arguments(args: list[str]) -> tuple[str | None, str | None, str | None, bool]:
    """PATH (None: the whole folder), --at, --to, --overwrite."""
    path, at, to, overwrite = None, None, None, False
    args = list(args)
    while args:
        word = args.pop(0)
        if word in ("--at", "--to"):
            if not args:
                raise _usage()
            if word == "--at":
                at = args.pop(0)
            else:
                to = args.pop(0)
        elif word == "--overwrite":
            overwrite = True
        elif word.startswith("-") or path is not None:
            raise _usage()
        else:
            path = word
    return path, at, to, overwrite


def run(settings: Settings, argv: list[str]) -> int:
    if not argv:
        raise _usage()
    verb, args = argv[0], argv[1:]
    if verb == "backup":
        if not set(args) <= {"--quiet", "--full"} or len(set(args)) != len(args):
            raise _usage()
        return Linkdest(settings, quiet="--quiet" in args).backup(full="--full" in args)
    command = Linkdest(settings)
    if verb in ("compare", "restore", "verify"):
        command.platform.rsync()  # refused before the server is asked anything
    command.load_agent()
    if verb == "status" and args in ([], ["--raw"]):
        return command.status_report(raw=bool(args))
    if verb == "list" and not args:
        return command.list_snapshots()
    if verb == "latest" and not args:
        return command.latest()
    if verb == "versions" and len(args) == 1:
        return command.versions(args[0])
    if verb == "compare" and len(args) <= 1:
        return command.compare(args[0] if args else None)
    if verb == "restore":
        return command.restore(*_restore_arguments(args))
    if verb == "verify" and len(args) <= 1:
        return command.verify(args[0] if args else None)
    raise _usage()


def main(settings: dict, argv: list[str] | None = None) -> int:
    """The entry point /usr/local/bin/linkdest calls with its settings."""
    os.umask(0o077)
    try:
        return run(Settings.from_mapping(settings), sys.argv[1:] if argv is None else argv)
    except Finished as finished:
        return finished.code
    except client_platform.UnsupportedPlatform as exc:
        sys.stderr.write("linkdest: %s\n" % exc)
        return codes.EXIT_USAGE
    except client_platform.NoUsableRsync as exc:
        sys.stderr.write("linkdest: %s\n" % exc)
        return codes.EXIT_NO_RSYNC
    except KeyboardInterrupt:
        return 130
