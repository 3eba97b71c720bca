# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""``linkdest-server``: the server's command, shared by the forced SSH command
(``gate``) and the administrator (``finalize``, ``list``, ``prune``, ``adopt``).

The role installs this file and snapshots.py/gate.py under
/usr/local/lib/linkdest/ and a three-line launcher that calls main(). The
configuration is /etc/linkdest/server.json, written by the backup_server role.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import pwd
import stat
import subprocess
import sys
import syslog
from datetime import datetime, timezone

from ansible_collections.linkdest.backup.plugins.module_utils import codes, retention, subvolumes
from ansible_collections.linkdest.backup.plugins.module_utils import gate as gate_lib
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

# Every ssh session of a laptop starts this program: the modules only some
# verbs need (the change list, manifests and verification, health checks) are
# imported in the functions that use them (a third off the gate's start-up).
MANIFEST_MODULE = "ansible_collections.linkdest.backup.plugins.module_utils.manifest"

CONFIG_PATH = "/etc/linkdest/server.json"
RECEIVED_MARKER = ".linkdest-received"
# A clone prepared for a change list: {"incomplete": NAME, "base": NAME}.
CHANGES_MARKER = ".linkdest-changes"
JOURNAL = ".linkdest-journal"
# What the account writes in a btrfs area, whose directory is root's: files
# root made for it (root_helper.py), written in place.
ACCOUNT_FILES = (JOURNAL, RECEIVED_MARKER, CHANGES_MARKER, snap.CHECKED_FILE)

# Exit codes the laptop must read the same way: one table, in codes.py.
EXIT_REFUSED = codes.EXIT_REFUSED
EXIT_BUSY = codes.EXIT_BUSY
EXIT_FULL_RUN_NEEDED = codes.EXIT_FULL_RUN_NEEDED
EXIT_NOT_FINALIZED = codes.EXIT_NOT_FINALIZED
EXIT_NOT_FOUND = codes.EXIT_NOT_FOUND
EXIT_NOT_MOUNTED = codes.EXIT_NOT_MOUNTED
EXIT_NO_SPACE = codes.EXIT_NO_SPACE
EXIT_DAMAGED = codes.EXIT_DAMAGED
# Between linkdest-server and its root helper only: the name is taken (EEXIST).
HELPER_EXIT_EXISTS = 17

# How the drive is measured; tests put a fake file system here.
STATVFS = os.statvfs
# How long an administrator's prune waits for a busy area (a running backup).
PRUNE_LOCK_WAIT = 60


class Config:
    def __init__(self, data: dict):
        self.root = data["root"]
        self.rsync = data.get("rsync", "/usr/bin/rsync")
        self.timeout = int(data.get("rsync_timeout", 600))
        self.partial_policy = data.get("partial_policy", "finalize")
        self.root_must_be_mount = bool(data.get("root_must_be_mount", False))
        # Missing keys take the role's defaults (retention.py holds the same).
        self.retention = retention.Policy.from_mapping(data.get("retention"))
        self.space_guard = retention.SpaceGuard.from_mapping(data.get("space_guard"))
        # client name -> the system account that client's key logs in as
        self.clients = data.get("clients", {})
        # The server's storage backend, and the laptops that use another one.
        self.backend = data.get("backend", "hardlink")
        self.backends = dict(data.get("backends", {}))
        for backend in [self.backend, *self.backends.values()]:
            if backend not in subvolumes.BACKENDS:
                raise snap.LayoutError(
                    "backend must be one of %s, not %r" % (", ".join(subvolumes.BACKENDS), backend)
                )
        # How a laptop's account asks root for a btrfs step (a sudo rule allows
        # exactly this command line, followed by an operation and a name).
        self.subvolume_helper = list(
            data.get("subvolume_helper", ["sudo", "-n", "/usr/local/sbin/linkdest-server"])
        )
        # Root's own records (which runs root started for each laptop).
        self.state_dir = data.get("state_dir", "/var/lib/linkdest-server/state")
        # The server's own check (linkdest-server check).
        check = data.get("check", {})
        self.stale_after_hours = float(check.get("stale_after_hours", 24))
        self.mirror_stale_after_hours = float(check.get("mirror_stale_after_hours", 36))
        self.alert_command = check.get("alert_command", "")
        self.alert_email = check.get("alert_email", "")
        self.metrics_dir = check.get("metrics_dir", "")

    @classmethod
    def load(cls, path: str = CONFIG_PATH) -> Config:
        with open(path, encoding="utf-8") as handle:
            return cls(json.load(handle))

    def backend_of(self, client: str) -> str:
        return self.backends.get(client, self.backend)

    def area(self, client: str) -> str:
        if client not in self.clients:
            raise gate_lib.GateRefused("unknown client %r" % client)
        return os.path.join(self.root, client)


def _log(client: str, message: str, priority: int = syslog.LOG_INFO) -> None:
    syslog.openlog("linkdest-server", syslog.LOG_PID, syslog.LOG_AUTH)
    syslog.syslog(priority, "client=%s %s" % (client, message))


def _journal(area: str, **fields) -> None:
    """One line in the area's journal (for people: a failure only warns)."""
    fields["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        snap.write_area_file(area, JOURNAL, json.dumps(fields, sort_keys=True) + "\n", append=True)
    except OSError as exc:
        _log("-", "could not write the journal of %s: %s" % (area, exc), syslog.LOG_WARNING)


def _read_marker(area: str) -> tuple[str, int] | None:
    try:
        name, code = snap.read_area_file(area, RECEIVED_MARKER).split()
        return name, int(code)
    except ValueError:
        return None


def _write_marker(area: str, name: str, code: int) -> None:
    snap.write_area_file(area, RECEIVED_MARKER, "%s %d\n" % (name, code))


RECEIVE_LOCK_WAIT = 60
# rsync accepts at most 20 --link-dest directories.
MAX_LINK_DESTS = 20


def receiver_argv(
    config: Config,
    request: gate_lib.ReceiveRequest,
    link_dests: list[str],
    dest: str,
    backend: str | None = None,
) -> list[str]:
    """The rsync receiver command line; paths are the server's, never the laptop's.

    Run from inside the area, so the paths stay short (rsync 3.5 resolves every
    path component of every file) and relative --link-dest names a sibling.
    """
    argv = [
        config.rsync,
        "--server",
        *request.options,
        "--fake-super",
        "--timeout=%d" % config.timeout,
    ]
    btrfs = (backend or config.backend) == "btrfs"
    if btrfs:
        # The run starts as a writable snapshot of current: rewrite only the
        # blocks that changed (copy-on-write keeps the old ones for the older
        # snapshots). The gate never takes these options from a laptop.
        argv += ["--inplace", "--no-whole-file"]
        if not request.changes:
            # ... and delete what the laptop deleted (a change list's
            # deletions were made by the server before this receiver ran).
            argv.append("--delete")
    elif request.changes:
        # The destination is a hard-link clone of current: every file there
        # is an inode finished snapshots share. A listed file was removed
        # from the clone; anything else the laptop sends is written anew too
        # (no quick check, so no attribute is ever set on an old inode).
        # --link-dest keeps the old file as the basis of the delta.
        argv.append("--ignore-times")
    argv += ["--link-dest=../%s" % name for name in link_dests[:MAX_LINK_DESTS]]
    return argv + [".", dest + "/"]


def run_as_root(config: Config, *args: str, text: bool = True) -> subprocess.CompletedProcess:
    """Run one root step through the sudo rule (``linkdest-server ARGS``), output captured."""
    return subprocess.run(
        [*config.subvolume_helper, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=text,
        check=False,
    )


def ask_root(config: Config):
    """How this process (a laptop's account) asks root for a btrfs step."""

    def privileged(operation: str, name: str) -> None:
        result = run_as_root(config, "subvolume", operation, name)
        if result.returncode == HELPER_EXIT_EXISTS:
            raise FileExistsError(errno.EEXIST, "exists", name)
        if result.returncode != 0:
            raise snap.SnapshotError(
                "root's subvolume helper failed to %s %s: %s"
                % (operation, name, result.stderr.strip() or "exit %d" % result.returncode)
            )

    return privileged


def link_dests_for(config: Config, area: str, backend: str | None = None) -> list[str]:
    """What a new transfer links against: ``current``, then interrupted runs.

    An interrupted transfer is resumed, not restarted: what it already
    received is linked from its incomplete directory instead of being sent
    again. The new run still writes only into its own fresh directory.
    """
    if (backend or config.backend) == "btrfs":
        return []  # the run starts from current (or resumes) instead
    base = snap.current_snapshot(area)
    interrupted = [s.name for s in reversed(snap.list_incomplete(area))]
    return ([base.name] if base else []) + interrupted


def drive_missing(config: Config) -> str | None:
    """Why the backup drive is not there, or None (snapshots.drive_missing)."""
    return snap.drive_missing(config.root, config.root_must_be_mount)


def refuse_missing_drive(config: Config, client: str) -> int | None:
    """EXIT_NOT_MOUNTED, said and logged, when the drive is not there."""
    missing = drive_missing(config)
    if missing is None:
        return None
    _log(client, "refused: " + missing, syslog.LOG_ERR)
    sys.stderr.write("linkdest-server: %s\n" % missing)
    return EXIT_NOT_MOUNTED


def _receive_refusal(config: Config, client: str) -> int | None:
    """Why no upload may start now (drive missing, wrong file system, full), or None."""
    refused = refuse_missing_drive(config, client)
    if refused is not None:
        return refused
    if config.backend_of(client) == "btrfs" and not subvolumes.is_btrfs(config.root):
        message = "refused: backend btrfs, but backup drive %s is not btrfs" % config.root
        _log(client, message, syslog.LOG_ERR)
        sys.stderr.write("linkdest-server: %s\n" % message)
        return EXIT_NOT_MOUNTED
    # The last step of the space guard: thinning and the daily space pruning
    # could not make room, so no transfer starts at all.
    short = retention.floor_shortfall(retention.measure(config.root, STATVFS), config.space_guard)
    if short:
        message = (
            "refused: backup drive %s is nearly full: %s (the hard floor); no backup until"
            " space is freed (see linkdest-server prune --dry-run --all)" % (config.root, short)
        )
        _log(client, message, syslog.LOG_ERR)
        sys.stderr.write("linkdest-server: %s\n" % message)
        return EXIT_NO_SPACE
    return None


def _gate_receive(config: Config, client: str, area: str, request) -> int:
    refusal = _receive_refusal(config, client)
    if refusal is not None:
        return refusal
    backend = config.backend_of(client)
    try:
        # Wait a little: the receiver of a run the laptop just lost may still
        # be winding down, and prune or the mirror may hold the area briefly.
        with snap.area_lock(area, wait=RECEIVE_LOCK_WAIT):
            snap.finish_deletions(area)
            prepared = _take_changes_marker(area)
            if request.changes:
                if prepared is None or not _still_prepared(area, prepared):
                    message = "refused: no change list was prepared for this upload"
                    _log(client, message, syslog.LOG_WARNING)
                    sys.stderr.write("linkdest-server: %s\n" % message)
                    return EXIT_REFUSED
                dest, link_dests = prepared["incomplete"], [prepared["base"]]
                how = "change list against %s" % prepared["base"]
            else:
                # A clone prepared but never used is an interrupted run now:
                # this full run resumes from it like from any other.
                link_dests = link_dests_for(config, area, backend)
                dest = snap.start_incomplete(
                    area, datetime.now(timezone.utc), backend, ask_root(config)
                ).name
                how = (
                    "btrfs"
                    if backend == "btrfs"
                    else "link-dest %s" % (", ".join(link_dests) or "none")
                )
            if backend == "btrfs":
                link_dests = []
            argv = receiver_argv(config, request, link_dests, dest, backend)
            _log(client, "receiving %s (%s)" % (dest, how))
            code = subprocess.call(argv, cwd=area)
            _write_marker(area, dest, code)
            _log(client, "received %s, rsync receiver exit %d" % (dest, code))
            return code
    except snap.LockBusyError as exc:
        sys.stderr.write("linkdest-server: busy: %s\n" % exc)
        return EXIT_BUSY


def _take_changes_marker(area: str) -> dict | None:
    """The prepared clone's marker, removed: one upload uses it, at most."""
    text = snap.read_area_file(area, CHANGES_MARKER)
    if not text:
        return None
    try:
        prepared = json.loads(text)
    except ValueError:
        prepared = None
    snap.clear_area_file(area, CHANGES_MARKER)
    return prepared if isinstance(prepared, dict) else None


def _still_prepared(area: str, prepared: dict) -> bool:
    """The clone is there and its base is still current."""
    base = snap.current_snapshot(area)
    incomplete = [s.name for s in snap.list_incomplete(area)]
    return (
        base is not None
        and base.name == prepared.get("base")
        and incomplete == [prepared.get("incomplete")]
    )


def _clone_current(config: Config, area: str, base: str, backend: str) -> str:
    """A new incomplete snapshot that starts as a copy of ``base`` (current).

    btrfs: a writable snapshot of current (start_incomplete does that when no
    interrupted run waits). Hard links: ``cp -al``, new directories holding
    hard links to every file of current, their xattrs (the --fake-super
    modes and owners) and times kept.
    """
    incoming = snap.start_incomplete(area, datetime.now(timezone.utc), backend, ask_root(config))
    if backend == "btrfs":
        # The new subvolume's top starts private (0700); the listed paths may
        # not include the folder itself, so it takes current's top as it was.
        try:
            _copy_top_attributes(os.path.join(area, base), os.path.join(area, incoming.name))
        except OSError:
            snap.delete_snapshot(area, incoming.name, privileged=ask_root(config))
            raise
    else:
        result = subprocess.run(
            ["cp", "-al", "--", base + "/.", incoming.name + "/"],
            cwd=area,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            snap.delete_snapshot(area, incoming.name, privileged=ask_root(config))
            raise snap.SnapshotError("could not clone %s: %s" % (base, result.stderr.strip()[:500]))
    return incoming.name


FAKE_SUPER_XATTR = "user.rsync.%stat"


def _copy_top_attributes(source: str, dest: str) -> None:
    """Mode, --fake-super record and times of one directory onto another."""
    st = os.lstat(source)
    os.chmod(dest, stat.S_IMODE(st.st_mode))
    try:
        os.setxattr(dest, FAKE_SUPER_XATTR, os.getxattr(source, FAKE_SUPER_XATTR))
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        with contextlib.suppress(OSError):
            os.removexattr(dest, FAKE_SUPER_XATTR)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))


def _base_is_current(client: str, area: str, base, what: str, named: str) -> bool:
    """Whether a run may build on ``named``: it is current and no interrupted
    run waits (one must be resumed by a full run). Else says why, logs it."""
    why = None
    if base is None or base.name != named:
        why = "%s %s is not current (%s)" % (what, named, base.name if base else "none")
    elif snap.list_incomplete(area):
        why = "an interrupted run waits to be resumed"
    if why:
        _log(client, "full run needed: %s" % why)
        sys.stderr.write("linkdest-server: full run needed: %s\n" % why)
    return why is None


def _gate_changes(config: Config, client: str, area: str, request, stdin=None) -> int:
    """Prepare the next snapshot from current and the laptop's change list.

    Only when the list was made against current and no interrupted run waits
    (it must be resumed by a full run): else EXIT_FULL_RUN_NEEDED, and the
    laptop sends everything. The list is read and applied under the area's
    lock; a bad list discards the clone and changes nothing else.
    """
    from ansible_collections.linkdest.backup.plugins.module_utils import changelist

    refusal = _receive_refusal(config, client)
    if refusal is not None:
        return refusal
    backend = config.backend_of(client)
    if stdin is None:
        stdin = changelist.TimedReader(sys.stdin.buffer, config.timeout)
    try:
        with snap.area_lock(area, wait=RECEIVE_LOCK_WAIT):
            snap.finish_deletions(area)
            _take_changes_marker(area)
            base = snap.current_snapshot(area)
            if not _base_is_current(client, area, base, "the change list's base", request.base):
                return EXIT_FULL_RUN_NEEDED
            try:
                name = _clone_current(config, area, base.name, backend)
            except (snap.SnapshotError, subvolumes.SubvolumeError, OSError) as exc:
                _log(client, "full run needed: could not clone %s: %s" % (base.name, exc))
                sys.stderr.write("linkdest-server: full run needed: could not clone: %s\n" % exc)
                return EXIT_FULL_RUN_NEEDED
            try:
                counts = changelist.apply_removals(
                    os.path.join(area, name),
                    changelist.decode(stdin),
                    keep_files=backend == "btrfs",
                )
            except (changelist.ChangeListError, OSError) as exc:
                snap.delete_snapshot(area, name, privileged=ask_root(config))
                _log(client, "refused change list: %s" % exc, syslog.LOG_WARNING)
                sys.stderr.write("linkdest-server: refused: %s\n" % exc)
                return EXIT_REFUSED
            snap.write_area_file(
                area, CHANGES_MARKER, json.dumps({"incomplete": name, "base": base.name})
            )
            _log(
                client,
                "prepared %s from %s: %d listed, %d removed"
                % (name, base.name, counts["listed"], counts["removed"]),
            )
            return 0
    except snap.LockBusyError as exc:
        sys.stderr.write("linkdest-server: busy: %s\n" % exc)
        return EXIT_BUSY


def _gate_unchanged(config: Config, client: str, area: str, request) -> int:
    """Nothing changed on the laptop since ``request.base``: no snapshot, a check.

    Only when the base is current and no interrupted run waits (else
    EXIT_FULL_RUN_NEEDED, as for a change list): the check vouches for
    current alone. Prints the check's time (UTC) for the laptop's status.
    """
    if config.backend_of(client) == "btrfs" and not subvolumes.is_btrfs(config.root):
        # What every upload would be told (_receive_refusal): not a check's to hide.
        message = "refused: backend btrfs, but backup drive %s is not btrfs" % config.root
        _log(client, message, syslog.LOG_ERR)
        sys.stderr.write("linkdest-server: %s\n" % message)
        return EXIT_NOT_MOUNTED
    try:
        with snap.area_lock(area, wait=RECEIVE_LOCK_WAIT):
            base = snap.current_snapshot(area)
            if not _base_is_current(client, area, base, "the laptop's last snapshot", request.base):
                return EXIT_FULL_RUN_NEEDED
            now = datetime.now(timezone.utc)
            snap.record_check(area, base.name, now)
    except snap.LockBusyError as exc:
        sys.stderr.write("linkdest-server: busy: %s\n" % exc)
        return EXIT_BUSY
    except OSError as exc:
        # No record of the check (the file root makes for it is missing, say):
        # the laptop makes a snapshot instead, as before checks existed.
        message = "full run needed: could not record the check: %s" % exc
        _log(client, message, syslog.LOG_WARNING)
        sys.stderr.write("linkdest-server: %s\n" % message)
        return EXIT_FULL_RUN_NEEDED
    _log(client, "checked: nothing changed since %s, no snapshot" % base.name)
    sys.stdout.write(now.isoformat(timespec="seconds") + "\n")
    return 0


def _gate_finalize(config: Config, client: str, area: str, request) -> int:
    result = snap.classify_rsync_exit(request.rsync_exit, config.partial_policy)
    with snap.area_lock(area, wait=120):
        marker = _read_marker(area)
        if marker is None:
            sys.stderr.write("linkdest-server: nothing received to finalize\n")
            return EXIT_NOT_FINALIZED
        name, receiver_code = marker
        if not result.finalize or receiver_code not in (0, 23, 24):
            _journal(
                area,
                snapshot=name,
                rsync_exit=request.rsync_exit,
                outcome=result.outcome,
                finalized=False,
            )
            _log(client, "kept %s incomplete: %s" % (name, result.message))
            sys.stderr.write("linkdest-server: kept %s incomplete: %s\n" % (name, result.message))
            return EXIT_NOT_FINALIZED
        plan = snap.finalize(area, name, privileged=ask_root(config))
        snap.clear_area_file(area, RECEIVED_MARKER)
        # The interrupted runs this one resumed are superseded now. The
        # snapshot is finished whatever happens here: a failure only warns.
        for stale in snap.list_incomplete(area):
            try:
                snap.delete_snapshot(area, stale.name, privileged=ask_root(config))
            except (snap.SnapshotError, subvolumes.SubvolumeError, OSError) as exc:
                _log(client, "could not remove superseded %s: %s" % (stale.name, exc))
                sys.stderr.write(
                    "linkdest-server: warning: could not remove %s: %s\n" % (stale.name, exc)
                )
                continue
            _log(client, "removed superseded %s" % stale.name)
        _make_manifest(config, client, plan.final)
        _journal(
            area,
            snapshot=plan.final,
            rsync_exit=request.rsync_exit,
            outcome=result.outcome,
            finalized=True,
        )
        _log(client, "finalized %s (%s)" % (plan.final, result.outcome))
        # Only after a success: a client whose backups fail keeps its history.
        _prune_after_finalize(config, client, area)
        sys.stdout.write(plan.final + "\n")
        return 0


def _make_manifest(config: Config, client: str, name: str) -> None:
    """Have root write the new snapshot's manifest, under the lock finalize holds.

    The laptop's account cannot write manifests (that is their point), so it
    asks root through the sudo rule for ``manifest NAME``. The snapshot is
    finished whatever happens here: a failure warns, and root's daily
    ``manifest --all`` makes the missing manifest later.
    """
    from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf
    from ansible_collections.linkdest.backup.plugins.module_utils import scrub

    if os.geteuid() == 0:
        try:
            scrub.make_manifest(config.root, client, name)
        except (OSError, snap.SnapshotError, mf.ManifestError) as exc:
            failure = str(exc)
        else:
            return
    else:
        result = run_as_root(config, "manifest", name)
        if result.returncode == 0:
            return
        failure = result.stderr.strip() or "exit %d" % result.returncode
    _log(client, "no manifest for %s yet: %s" % (name, failure), syslog.LOG_WARNING)
    sys.stderr.write("linkdest-server: warning: no manifest for %s yet: %s\n" % (name, failure))


def _prune_after_finalize(config: Config, client: str, area: str) -> None:
    """Thin the client's area, under the lock finalize holds.

    Runs as the laptop's account, so it reaches only this client's area, and
    only thinning: which snapshots thinning keeps depends on the times the
    server gave them, which a laptop cannot choose. The space guard, which a
    laptop could drive by uploading junk, runs from root's daily prune alone;
    here a short drive is only reported. A failure never undoes the finalize:
    it is logged and reported to the laptop's log as a warning. stdout stays
    the snapshot's name alone.
    """

    def removed(_client, decision):
        _log(client, "pruned %s (%s)" % (decision.name, decision.rule))
        _journal(area, pruned=decision.name, rule=decision.rule)

    try:
        if config.backend_of(client) == "btrfs":
            # Finished snapshots are root's read-only subvolumes, which this
            # account cannot delete (by design): root's daily prune thins.
            report = None
        else:
            report = retention.prune(
                {client: area},
                config.retention,
                datetime.now(timezone.utc),
                on_remove=removed,
            )
        short = retention.prune_shortfall(
            retention.measure(config.root, STATVFS), config.space_guard
        )
    except (snap.SnapshotError, subvolumes.SubvolumeError, OSError) as exc:
        _log(client, "prune after finalize failed: %s" % exc, syslog.LOG_ERR)
        sys.stderr.write("linkdest-server: warning: prune after finalize failed: %s\n" % exc)
        return
    gone = report.areas[client].removed if report is not None else []
    if gone:
        sys.stderr.write(
            "linkdest-server: pruned %d snapshot(s): %s\n" % (len(gone), ", ".join(gone))
        )
    if short:
        message = "backup drive short of room: %s (the daily prune makes room)" % short
        _log(client, message, syslog.LOG_WARNING)
        sys.stderr.write("linkdest-server: warning: %s\n" % message)


def _print_list(area: str, usage: bool = False) -> int:
    current = snap.read_current(area)
    finished = snap.list_snapshots(area)
    added = retention.added_usage(area, [s.name for s in finished]) if usage else {}
    for item in finished:
        line = item.name + (" current" if item.name == current else "")
        if usage:
            nbytes, inodes = added[item.name]
            line += " adds %s in %d inodes" % (retention.format_bytes(nbytes), inodes)
        sys.stdout.write(line + "\n")
    checked = snap.last_check(area)
    if checked is not None:
        # Not a snapshot: readers that want names take lines starting back-.
        sys.stdout.write(
            "checked %s: nothing changed since %s\n"
            % (checked[1].isoformat(timespec="seconds"), checked[0])
        )
    return 0


def cmd_gate(config: Config, client: str) -> int:
    command = os.environ.get("SSH_ORIGINAL_COMMAND")
    try:
        area = config.area(client)
        account = config.clients[client]
        me = pwd.getpwuid(os.getuid()).pw_name
        if me != account:
            raise gate_lib.GateRefused("account %s is not the account of client %s" % (me, client))
        request = gate_lib.parse_request(command)
    except gate_lib.GateRefused as exc:
        _log(client, "refused %r: %s" % ((command or "")[:200], exc), syslog.LOG_WARNING)
        sys.stderr.write("linkdest-server: refused: %s\n" % exc)
        return EXIT_REFUSED
    # Reads too: an unplugged drive is not "no snapshots" and not "no such path".
    refused = refuse_missing_drive(config, client)
    if refused is not None:
        return refused
    if isinstance(request, gate_lib.ReceiveRequest):
        return _gate_receive(config, client, area, request)
    if isinstance(request, gate_lib.ChangesRequest):
        return _gate_changes(config, client, area, request)
    if isinstance(request, gate_lib.UnchangedRequest):
        return _gate_unchanged(config, client, area, request)
    if isinstance(request, gate_lib.FinalizeRequest):
        return _gate_finalize(config, client, area, request)
    if isinstance(
        request, (gate_lib.SendRequest, gate_lib.LocateRequest, gate_lib.VersionsRequest)
    ):
        return _gate_read(config, client, area, request)
    if isinstance(request, gate_lib.ManifestRequest):
        return _gate_manifest(config, client, area, request)
    return _print_list(area)


def sender_argv(config: Config, request: gate_lib.SendRequest) -> list[str]:
    """The rsync sender for a restore: the laptop's options, the server's path.

    --fake-super makes the sender hand back the modes, owners and symlinks
    the receiver recorded in xattrs, so a restore is faithful.
    """
    path = request.snapshot + "/" + request.relpath if request.relpath else request.snapshot + "/"
    argv = [config.rsync, "--server", "--sender", *request.options, "--fake-super"]
    return argv + ["--timeout=%d" % config.timeout, ".", path]


def _parse_when(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    except ValueError:
        raise gate_lib.GateRefused(
            "cannot read the time %r (want YYYY-MM-DDTHH:MM:SS, UTC)" % text
        ) from None


def _gate_read(config: Config, client: str, area: str, request) -> int:
    """Read-only access to the client's own finished snapshots."""
    try:
        if isinstance(request, gate_lib.LocateRequest):
            when = _parse_when(request.when) if request.when else None
            sys.stdout.write(snap.locate(area, request.relpath, when).name + "\n")
            return 0
        if isinstance(request, gate_lib.VersionsRequest):
            versions = snap.changed_versions(snap.find_versions(area, request.relpath))
            if not versions:
                raise snap.SnapshotNotFoundError("%s is in no snapshot" % request.relpath)
            for item, st in versions:
                stamp = datetime.fromtimestamp(st.st_mtime, timezone.utc).strftime(
                    "%Y-%m-%d %H:%M:%S"
                )
                sys.stdout.write("%-25s %10d %s\n" % (item.name, st.st_size, stamp))
            return 0
        # Resolving checks every part: no escape from the snapshot.
        snap.resolve_in_snapshot(area, request.snapshot, request.relpath)
    except (snap.SnapshotError, gate_lib.GateRefused) as exc:
        _log(client, "read refused: %s" % exc, syslog.LOG_WARNING)
        sys.stderr.write("linkdest-server: %s\n" % exc)
        return EXIT_NOT_FOUND
    _log(client, "sending %s/%s" % (request.snapshot, request.relpath))
    return subprocess.call(sender_argv(config, request), cwd=area)


def _gate_manifest(config: Config, client: str, area: str, request) -> int:
    """A finished snapshot's manifest, for ``linkdest verify`` on the laptop.

    Manifests are root's alone (another laptop's would tell its file names),
    so the account asks root for its own through the sudo rule.
    """
    finished = [s.name for s in snap.list_snapshots(area)]
    name = request.snapshot or (finished[-1] if finished else None)
    if name is None or name not in finished:
        # Not the name back: a laptop learns nothing of names outside its area.
        sys.stderr.write(
            "linkdest-server: %s\n"
            % ("no such finished snapshot" if request.snapshot else "no finished snapshot yet")
        )
        return EXIT_NOT_FOUND
    if os.geteuid() == 0:
        return show_manifest(config, client, name)
    result = run_as_root(config, "manifest", name, "--show", text=False)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    return EXIT_NOT_FOUND if result.returncode else 0


def show_manifest(config: Config, client: str, name: str) -> int:
    """Print one trusted manifest, after a line of what verify last found for it."""
    from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf
    from ansible_collections.linkdest.backup.plugins.module_utils import scrub

    manifest = mf.load(config.root, client, name)
    state = scrub.read_state(config.state_dir)
    facts = scrub.verification_of(config.root, client, [name], state)[name]
    header = {"snapshot": name, "verified": facts["verified"], "damaged": facts["damaged"]}
    sys.stdout.write(json.dumps(header, sort_keys=True) + "\n")
    sys.stdout.write(mf.text_of(manifest))
    return 0


def cmd_finalize(config: Config, client: str, snapshot: str) -> int:
    area = config.area(client)
    with snap.area_lock(area, wait=120):
        plan = snap.finalize(area, snapshot)
    sys.stdout.write("%s %s\n" % (plan.final, "finalized" if plan.changed else "already final"))
    return 0


def _existing_areas(config: Config, clients: list[str]) -> dict[str, str]:
    areas = {}
    for client in clients:
        area = config.area(client)
        if os.path.isdir(area) and not os.path.islink(area):
            areas[client] = area
    return areas


def cmd_prune(
    config: Config,
    clients: list[str],
    dry_run: bool = False,
    quiet: bool = False,
    every: bool = False,
) -> int:
    """Thin each client's area, then prune the drive's oldest snapshots for room.

    A dry run takes no lock and changes nothing; a real run locks every area
    it prunes. With ``every`` (--all, the daily cron job) a busy area is
    skipped, as it is pruned after its running backup anyway; a single named
    client that stays busy is an error (EXIT_BUSY).
    """
    out = (lambda text: None) if quiet else (lambda text: sys.stdout.write(text + "\n"))
    areas = _existing_areas(config, clients)
    busy = []
    with contextlib.ExitStack() as stack:
        locked = {}
        for client, area in sorted(areas.items()):
            if dry_run:
                locked[client] = area
                continue
            try:
                stack.enter_context(snap.area_lock(area, wait=PRUNE_LOCK_WAIT))
            except snap.LockBusyError:
                busy.append(client)
                _log(client, "prune skipped: a backup is running", syslog.LOG_NOTICE)
                continue
            locked[client] = area

        def removed(client, decision):
            _log(client, "pruned %s (%s)" % (decision.name, decision.rule))

        try:
            report = retention.prune(
                locked,
                config.retention,
                datetime.now(timezone.utc),
                guard=config.space_guard,
                root=config.root,
                dry_run=dry_run,
                statvfs=STATVFS,
                on_remove=removed,
            )
        except retention.PruneError as exc:
            _print_prune(exc.report, out)
            raise
    _print_prune(report, out)
    for client in busy:
        out("%s: busy (a backup is running), skipped" % client)
    if report.still_short:
        message = (
            "backup drive still short of room after the space guard removed all it may"
            " (min_keep %d per laptop, the last %d days and the snapshot before them stay):"
            " %s; backups stop at the hard floor"
            % (config.retention.min_keep, config.space_guard.protect_days, report.still_short)
        )
        syslog.syslog(syslog.LOG_WARNING, message)
        sys.stderr.write("linkdest-server: warning: %s\n" % message)
    if busy and not every:
        sys.stderr.write("linkdest-server: busy: a backup of %s is running\n" % clients[0])
        return EXIT_BUSY
    return 0


def _print_prune(report: retention.PruneReport, out) -> None:
    for client, part in sorted(report.areas.items()):
        for name in part.finished_deletions:
            out("%s %s remove: interrupted deletion" % (client, name))
        for decision in part.decisions:
            out("%s %s %s" % (client, decision.name, decision.text))
        out(
            "%s: %d kept, %d %s"
            % (
                client,
                len(part.kept),
                len(part.removed),
                "to remove (dry run, nothing changed)" if report.dry_run else "removed",
            )
        )
    if report.usage_after is not None:
        out(
            "drive: %s%s"
            % (report.usage_after.describe(), " (estimated)" if report.dry_run else "")
        )


# --- adopting trees made by the article's script --------------------------------

# rsync --fake-super keeps a file's real mode and owner in this attribute.
FAKE_SUPER_XATTR = "user.rsync.%stat"


# The area's own files: a root-owned one (say a lock file a root process
# created) would lock the laptop's account out of its own area.
AREA_FILES = (snap.LOCK_FILE, JOURNAL, RECEIVED_MARKER, snap.CHECKED_FILE)


def _adoptable(name: str, st: os.stat_result, roots_layout: bool) -> bool:
    if stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and st.st_ino == subvolumes.SUBVOLUME_ROOT_INODE:
        return False  # a sealed btrfs snapshot: root's by design
    if roots_layout and name in (snap.LOCK_FILE, snap.CURRENT_LINK):
        # A btrfs area's lock and `current` are root's: the account opens the
        # lock read-only, and only root's seal moves `current`.
        return False
    if name == snap.CURRENT_LINK:
        return stat.S_ISLNK(st.st_mode)
    if name in AREA_FILES:
        return stat.S_ISREG(st.st_mode)
    if name.startswith(snap.TRASH_PREFIX):
        name = name[len(snap.TRASH_PREFIX) :]
    return snap.parse_snapshot_name(name) is not None and stat.S_ISDIR(st.st_mode)


def _record_and_chown(fd: int, st: os.stat_result, uid: int, gid: int, xattrs: list) -> None:
    """Keep the old mode and owner as rsync --fake-super would, then hand over."""
    if xattrs[0]:
        try:
            os.getxattr(fd, FAKE_SUPER_XATTR)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                xattrs[0] = False  # a file system without user xattrs
            elif exc.errno == errno.ENODATA:
                value = "%o 0,0 %d:%d" % (st.st_mode, st.st_uid, st.st_gid)
                os.setxattr(fd, FAKE_SUPER_XATTR, value.encode())
            else:
                raise
    os.fchown(fd, uid, gid)


def adopt_area(
    area: str, uid: int, gid: int, dry_run: bool = False, roots_layout: bool = False
) -> dict[str, int]:
    """Hand the snapshots another user made in ``area`` to ``uid``:``gid``.

    Returns, per adopted top-level entry (snapshot, incomplete snapshot,
    interrupted deletion, ``current``, the area's lock, journal and marker
    files), how many entries changed owner.

    Root runs this in a directory a laptop's account controls, so it works on
    file descriptors only: every directory is opened relative to its parent
    with O_NOFOLLOW (os.fwalk), files are opened with O_NOFOLLOW and changed
    through their descriptor, symlinks are changed with lchown; nothing is
    ever followed out of the area. Bottom-up, so a snapshot's own directory
    changes last and an interrupted run is finished by the next one.
    Entries the account already owns are left as they are, and so are
    sealed btrfs snapshots (root's read-only subvolumes) and, with
    ``roots_layout`` (a btrfs area whose directory is root's), the lock and
    ``current``.
    """
    area_fd = os.open(area, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    adopted = {}
    xattrs = [True]
    try:
        for entry in sorted(os.scandir(area_fd), key=lambda e: e.name):
            st = entry.stat(follow_symlinks=False)
            if st.st_uid == uid or not _adoptable(entry.name, st, roots_layout):
                continue
            if stat.S_ISDIR(st.st_mode):
                adopted[entry.name] = _adopt_tree(area_fd, entry.name, uid, gid, dry_run, xattrs)
                continue
            adopted[entry.name] = 1
            if not dry_run:
                # `current` (lchown) or one of the area's own plain files.
                os.chown(entry.name, uid, gid, dir_fd=area_fd, follow_symlinks=False)
    finally:
        os.close(area_fd)
    return adopted


def _adopt_tree(area_fd: int, top: str, uid: int, gid: int, dry_run: bool, xattrs: list) -> int:
    count = 0
    for _path, dirnames, filenames, dir_fd in os.fwalk(
        top, topdown=False, follow_symlinks=False, dir_fd=area_fd
    ):
        for name in filenames + dirnames:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode) or st.st_uid == uid:
                continue  # a directory is handled through its own descriptor
            count += 1
            if dry_run:
                continue
            if stat.S_ISREG(st.st_mode):
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                fd = os.open(name, flags, dir_fd=dir_fd)
                try:
                    st = os.fstat(fd)
                    if stat.S_ISREG(st.st_mode):
                        _record_and_chown(fd, st, uid, gid, xattrs)
                        continue
                finally:
                    os.close(fd)
            # Symlinks, devices, fifos, sockets: the owner only, never followed.
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        st = os.fstat(dir_fd)
        if st.st_uid != uid:
            count += 1
            if not dry_run:
                _record_and_chown(dir_fd, st, uid, gid, xattrs)
    return count


def cmd_adopt(config: Config, client: str, dry_run: bool = False) -> int:
    from ansible_collections.linkdest.backup.plugins.module_utils import scrub

    area = config.area(client)
    account = pwd.getpwnam(config.clients[client])
    # A btrfs area's directory is root's (the role sets it), and so is its lock.
    roots = config.backend_of(client) == "btrfs" and os.lstat(area).st_uid == 0
    adopted = adopt_area(area, account.pw_uid, account.pw_gid, dry_run, roots_layout=roots)
    if roots and not dry_run:
        # The files the account writes there are made for it (also after a migration).
        for name in snap.ensure_account_files(area, ACCOUNT_FILES, account.pw_uid, account.pw_gid):
            adopted[name] = 1
        if snap.ensure_lock_file(area):
            adopted[snap.LOCK_FILE] = 1
    for name, count in adopted.items():
        sys.stdout.write(
            "%s %s (%d entries) to %s\n"
            % ("would adopt" if dry_run else "adopted", name, count, account.pw_name)
        )
        if not dry_run:
            _log(client, "adopted %s (%d entries) for %s" % (name, count, account.pw_name))
    if adopted and not dry_run and os.geteuid() == 0:
        # The adopted snapshots get manifests now, oldest first. (Snapshots
        # of an area with nothing to adopt get theirs from root's daily
        # `manifest --all`, not from a converge that would read a whole drive.)
        made = scrub.catch_up(config.root, [client], log=lambda text: _log(client, text))
        if made:
            sys.stdout.write("made %d manifest(s) for %s\n" % (made, client))
    return 0


MIRROR_CONFIG = "/etc/linkdest/mirror.json"
MIRROR_LAST_SUCCESS = "/var/lib/linkdest-mirror/last-success"


def _mirror_last_success() -> datetime | None:
    try:
        with open(MIRROR_LAST_SUCCESS, encoding="utf-8") as handle:
            return datetime.fromisoformat(handle.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def run_alert(config: Config, event: str, message: str) -> None:
    """The server's alerts: a command (event and message as $1 and $2) and mail."""
    if config.alert_command:
        env = dict(os.environ, LINKDEST_EVENT=event, LINKDEST_MESSAGE=message)
        command = ["/bin/sh", "-c", config.alert_command, "linkdest-alert", event, message]
        if subprocess.call(command, env=env) != 0:
            _log("-", "the alert command failed", syslog.LOG_ERR)
    if config.alert_email:
        if not os.access("/usr/sbin/sendmail", os.X_OK):
            _log("-", "no local MTA (/usr/sbin/sendmail): alert mail not sent", syslog.LOG_WARNING)
            return
        mail = "To: %s\nSubject: linkdest server %s: %s\n\n%s\n" % (
            config.alert_email,
            os.uname().nodename,
            event,
            message,
        )
        subprocess.run(["/usr/sbin/sendmail", "-t"], input=mail, text=True, check=False)


def cmd_check(config: Config, quiet: bool = False) -> int:
    """What the laptops cannot report: stale laptops, a stale mirror, a full drive."""
    from ansible_collections.linkdest.backup.plugins.module_utils import health, scrub

    missing = drive_missing(config)
    since = health.absent_since(config.state_dir, missing is not None, datetime.now(timezone.utc))
    if missing is not None:
        # One finding, not one "no finished snapshot" per laptop: the drive is
        # not there, the snapshots may well be.
        message = "%s (since %s)" % (
            missing,
            health.describe_since(since, datetime.now(timezone.utc)),
        )
        _log("-", "check: " + message, syslog.LOG_ERR)
        sys.stdout.write("linkdest-server check: %s\n" % message)
        if config.metrics_dir:
            path = os.path.join(config.metrics_dir, "linkdest.prom")
            health.write_atomically(path, health.drive_missing_metrics(since))
        run_alert(config, "drive", message)
        return EXIT_NOT_MOUNTED
    areas = [health.area_facts(config.root, client) for client in sorted(config.clients)]
    drive = health.drive_facts(config.root)
    mirror_last = _mirror_last_success()
    report = health.check(
        areas,
        drive,
        now=datetime.now(timezone.utc),
        stale_after_hours=config.stale_after_hours,
        mirror_last_success=mirror_last,
        mirror_expected=os.path.exists(MIRROR_CONFIG),
        mirror_stale_after_hours=config.mirror_stale_after_hours,
        min_free_percent=config.space_guard.min_free_percent,
    )
    verify_state = scrub.read_state(config.state_dir)
    damaged = scrub.open_damage(verify_state)
    if damaged:
        # Stays until a verify run finds the files intact (README: when both
        # copies of a file are bad).
        snapshots = sorted({"%(client)s/%(snapshot)s" % d for d in damaged})
        report.findings.append(
            "%d damaged file(s) not repaired in %s (see linkdest-server verify)"
            % (len(damaged), ", ".join(snapshots[:10]))
        )
    if config.metrics_dir:
        path = os.path.join(config.metrics_dir, "linkdest.prom")
        text = health.metrics_text(areas, drive, mirror_last) + scrub.metrics_text(verify_state)
        health.write_atomically(path, text)
    for finding in report.findings:
        _log("-", "check: " + finding, syslog.LOG_WARNING)
        sys.stdout.write("linkdest-server check: %s\n" % finding)
    if not report.ok:
        run_alert(config, "stale", "; ".join(report.findings))
        return 1
    if not quiet:
        sys.stdout.write("linkdest-server check: ok (%d laptops)\n" % len(areas))
    return 0


def _mirror_drive() -> tuple[str | None, str]:
    """The mirror drive's root when it is set up and present, else why not."""
    if not os.path.exists(MIRROR_CONFIG):
        return None, "no drive mirror is set up"
    from ansible_collections.linkdest.backup.plugins.module_utils import mirror

    try:
        mirror_config = mirror.load_config(MIRROR_CONFIG)
        mirror.check_drive(
            mirror_config.destination,
            mirror.DESTINATION,
            mirror_config.destination_must_be_mount,
        )
        marker = mirror.read_marker(mirror_config.destination)
    except (mirror.MirrorError, OSError) as exc:
        return None, "the mirror drive is not available: %s" % exc
    if marker is None or marker.role != mirror.DESTINATION:
        return None, "the mirror drive carries no destination marker (not set up yet)"
    return mirror_config.destination, ""


def cmd_verify(
    config: Config,
    sample_percent: float | None = None,
    max_time: float | None = None,
    restart: bool = False,
    repair: bool = True,
    quiet: bool = False,
) -> int:
    """Re-read the snapshots of both drives, compare with the manifests, repair.

    Each drive keeps a cursor: a run goes on where the last one stopped and,
    without --sample or --max-time, to the end of the drive (a full pass).
    """
    from ansible_collections.linkdest.backup.plugins.module_utils import scrub

    if os.geteuid() != 0:
        raise gate_lib.GateRefused("verify: only root runs this")
    out = (lambda text: None) if quiet else (lambda text: sys.stdout.write(text + "\n"))
    mirror_root, why_not = _mirror_drive()
    # A mirror that is set up but whose drive is not there is said even with
    # --quiet and makes the run fail (after the backup drive is verified): a
    # pass over one drive of two is not the scrub the cron job promised.
    mirror_absent = mirror_root is None and os.path.exists(MIRROR_CONFIG)
    if mirror_absent:
        _log("-", "verify: only the backup drive: " + why_not, syslog.LOG_ERR)
        sys.stderr.write("linkdest-server: verify: only the backup drive: %s\n" % why_not)
    elif mirror_root is None:
        out("verify: only the backup drive: %s" % why_not)
    run = scrub.run_verify(
        config.root,
        sorted(config.clients),
        mirror_root,
        config.state_dir,
        sample_percent=sample_percent,
        max_time=max_time,
        restart=restart,
        repair=repair,
        statvfs=STATVFS,
        log=lambda text: _log("-", text),
    )
    for report in run.reports:
        for finding in report.findings:
            _log(finding.client, "verify: " + finding.describe(), syslog.LOG_ERR)
            sys.stdout.write(finding.describe() + "\n")
        for problem in report.manifest_problems:
            _log("-", "verify: " + problem, syslog.LOG_ERR)
            sys.stdout.write("%s: %s\n" % (report.drive, problem))
        out(
            "%s: %d file(s) in %d snapshot(s), %d inode(s) read (%s), %s%s"
            % (
                report.drive,
                report.files,
                len(report.snapshots),
                report.inodes_read,
                retention.format_bytes(report.bytes_read),
                "end of the drive" if report.complete else "stopped (the next run goes on)",
                ", %d without a manifest" % len(report.no_manifest) if report.no_manifest else "",
            )
        )
    if run.repaired:
        run_alert(
            config,
            "repaired",
            "verify repaired %d damaged file(s) from the other drive: %s"
            % (len(run.repaired), "; ".join(f.describe() for f in run.repaired[:20])),
        )
    if run.damaged or run.problems:
        lines = [
            "%(drive)s: %(client)s/%(snapshot)s/%(path)s: %(problem)s" % d for d in run.damaged
        ]
        run_alert(
            config,
            "damaged",
            "verify: %d damaged file(s) not repaired, %d manifest problem(s): %s"
            % (len(run.damaged), len(run.problems), "; ".join((lines + run.problems)[:20])),
        )
        return EXIT_DAMAGED
    return EXIT_NOT_MOUNTED if mirror_absent else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkdest-server", description="linkdest.backup server command"
    )
    parser.add_argument(
        "--config", default=CONFIG_PATH, help="configuration file (default %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gate = sub.add_parser("gate", help="forced SSH command of a laptop's key")
    gate.add_argument("client")
    fin = sub.add_parser("finalize", help="finalize an incomplete snapshot")
    fin.add_argument("client")
    fin.add_argument("snapshot", help="incomplete_back-T, back-T or T")
    lst = sub.add_parser("list", help="list a client's finished snapshots")
    lst.add_argument("client")
    lst.add_argument(
        "--usage",
        action="store_true",
        help="also show the disk each snapshot alone holds (walks every file)",
    )
    prune = sub.add_parser(
        "prune",
        help="thin snapshots, then remove the oldest while the drive is short of room",
        description="Print every finished snapshot with keep or remove and the rule that"
        " decided, then carry it out (thinning, then the drive-wide space guard).",
    )
    which = prune.add_mutually_exclusive_group(required=True)
    which.add_argument("client", nargs="?")
    which.add_argument("--all", action="store_true", help="every client in the configuration")
    prune.add_argument("--dry-run", action="store_true", help="decide and print, remove nothing")
    prune.add_argument("--quiet", action="store_true", help="print nothing but errors (cron)")
    adopt = sub.add_parser(
        "adopt", help="hand snapshots another user made (the article's script) to the account"
    )
    adopt.add_argument("client")
    adopt.add_argument("--dry-run", action="store_true", help="say what would change")
    subvol = sub.add_parser(
        "subvolume", help="root's btrfs steps for a laptop's account (through sudo only)"
    )
    subvol.add_argument("operation", choices=subvolumes.HELPER_OPERATIONS)
    subvol.add_argument("name", help="incomplete_back-T")
    check = sub.add_parser(
        "check", help="alert on stale laptops, a stale mirror or a full drive; write metrics"
    )
    check.add_argument("--quiet", action="store_true", help="print nothing when all is well")
    check.add_argument(
        "--stale-after-hours",
        type=float,
        help="this run's threshold instead of the configured one",
    )
    manifest = sub.add_parser(
        "manifest",
        help="write the manifests snapshots lack (root: --all; a laptop's account: one, via sudo)",
    )
    manifest.add_argument("snapshot", nargs="?", help="back-T (a laptop's account only)")
    manifest.add_argument("--all", action="store_true", help="every client's snapshots")
    manifest.add_argument("--quiet", action="store_true", help="print nothing but errors (cron)")
    manifest.add_argument(
        "--show", action="store_true", help="print the snapshot's manifest (a laptop's account)"
    )
    verify = sub.add_parser(
        "verify",
        help="re-read snapshots on both drives, compare with the manifests, repair",
        description="Goes on where the last run stopped; without --sample or --max-time"
        " it reads to the end of each drive. Exit 4: damage that was not repaired, or a"
        " manifest that cannot be trusted.",
    )
    verify.add_argument(
        "--sample",
        type=float,
        metavar="PERCENT",
        help="stop after reading this share of each drive's used space",
    )
    verify.add_argument("--max-time", type=float, metavar="SECONDS", help="stop after this long")
    verify.add_argument("--restart", action="store_true", help="start again from the beginning")
    verify.add_argument("--no-repair", action="store_true", help="report damage, repair nothing")
    verify.add_argument("--quiet", action="store_true", help="print nothing but damage (cron)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mirror"]:
        # The drive mirror has its own options and its own module.
        from ansible_collections.linkdest.backup.plugins.module_utils import mirror

        return mirror.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = Config.load(args.config)
        if args.command == "check":
            if args.stale_after_hours is not None:
                config.stale_after_hours = args.stale_after_hours
            return cmd_check(config, quiet=args.quiet)
        if args.command != "gate":
            refused = refuse_missing_drive(config, getattr(args, "client", None) or "-")
            if refused is not None:
                return refused
        if args.command == "gate":
            return cmd_gate(config, args.client)
        if args.command == "finalize":
            return cmd_finalize(config, args.client, args.snapshot)
        if args.command == "prune":
            clients = sorted(config.clients) if args.all else [args.client]
            return cmd_prune(
                config, clients, dry_run=args.dry_run, quiet=args.quiet, every=args.all
            )
        if args.command == "subvolume":
            from ansible_collections.linkdest.backup.plugins.module_utils import root_helper

            return root_helper.cmd_subvolume(config, args.operation, args.name)
        if args.command == "adopt":
            return cmd_adopt(config, args.client, dry_run=args.dry_run)
        if args.command == "manifest":
            from ansible_collections.linkdest.backup.plugins.module_utils import root_helper

            return root_helper.cmd_manifest(
                config, args.snapshot, args.all, quiet=args.quiet, show=args.show
            )
        if args.command == "verify":
            if args.sample is not None and not 0 < args.sample <= 100:
                raise gate_lib.GateRefused("verify: --sample must be a percentage above 0")
            if args.max_time is not None and args.max_time <= 0:
                raise gate_lib.GateRefused("verify: --max-time must be above 0 seconds")
            return cmd_verify(
                config,
                sample_percent=args.sample,
                max_time=args.max_time,
                restart=args.restart,
                repair=not args.no_repair,
                quiet=args.quiet,
            )
        return _print_list(config.area(args.client), usage=args.usage)
    except _reported_errors() as exc:
        sys.stderr.write("linkdest-server: %s\n" % exc)
        return 1


def _reported_errors() -> tuple[type[Exception], ...]:
    """The errors main reports in one line (evaluated only when one is raised:
    the manifest's error exists once its module has been imported)."""
    errors = (snap.SnapshotError, gate_lib.GateRefused, subvolumes.SubvolumeError, OSError)
    manifest = sys.modules.get(MANIFEST_MODULE)
    return errors + (manifest.ManifestError,) if manifest else errors
