# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""What root does for a laptop's account: the verbs of the one sudo rule.

A laptop's account may not write manifests, nor create, seal or delete btrfs
subvolumes, so it asks root through ``sudo linkdest-server subvolume|manifest``.
Everything root does on such a request is here, in one place to read and
review:

- who asks comes from sudo (SUDO_UID, which the caller cannot set), never
  from the arguments, and the area is that account's own;
- on btrfs the area's directory is root's (group: the laptop's own group,
  mode 0750), so the account can create, rename or remove no name in it: a
  finished snapshot keeps the name and time root sealed it under;
- the runs root starts are recorded with their subvolume id in root's state
  (``started-CLIENT.json``); seal and discard act only on the subvolume with
  that id, checked on the very file descriptor they then use, and a mismatch
  is refused, logged and alerted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import sys
import syslog
from datetime import datetime, timedelta, timezone

from ansible_collections.linkdest.backup.plugins.module_utils import gate as gate_lib
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap
from ansible_collections.linkdest.backup.plugins.module_utils import subvolumes
from ansible_collections.linkdest.backup.plugins.module_utils.server_cli import (
    ACCOUNT_FILES,
    HELPER_EXIT_EXISTS,
    Config,
    _log,
    run_alert,
    show_manifest,
)

# How far from the server's clock a run's name may be when root starts it
# (the gate names runs from now, bumping by seconds on a collision).
START_SLACK = timedelta(minutes=10)


class StartedRuns:
    """The btrfs runs root started for one laptop, each with its subvolume id,
    in a root-only directory: only those are ever sealed into finished
    snapshots, and only while the subvolume under the name is still that one."""

    def __init__(self, state_dir: str, client: str):
        self.path = os.path.join(state_dir, "started-%s.json" % client)
        self.state_dir = state_dir

    def ids(self) -> dict[str, int | None]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        if isinstance(data, list):
            # Recorded before ids were: the name alone, trusted for nothing.
            return dict.fromkeys(data)
        return dict(data)

    def names(self) -> list[str]:
        return sorted(self.ids())

    def _write(self, ids: dict[str, int | None]) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(ids, handle, sort_keys=True)
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def _locked(self):
        """One change at a time (the account may run sudo calls in parallel)."""
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def add(self, name: str, subvolume_id: int | None, replaces: str | None = None) -> None:
        with self._locked():
            ids = {n: i for n, i in self.ids().items() if n != replaces}
            ids[name] = subvolume_id
            self._write(ids)

    def remove(self, name: str) -> None:
        with self._locked():
            ids = self.ids()
            if name in ids:
                del ids[name]
                self._write(ids)


def _sudo_account() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(int(os.environ["SUDO_UID"]))
    except (KeyError, ValueError):
        return None


def sudo_client(config: Config, verb: str) -> str | None:
    """The laptop whose account called this through sudo; None for anyone else."""
    account = _sudo_account()
    if account is None:
        return None
    clients = [c for c, a in config.clients.items() if a == account.pw_name]
    if len(clients) > 1:
        raise gate_lib.GateRefused(
            "%s: %s is the account of several laptops" % (verb, account.pw_name)
        )
    return clients[0] if clients else None


def area_is_roots(area: str) -> bool:
    """A btrfs area in the layout root keeps: its directory is root's."""
    return os.lstat(area).st_uid == 0


def cmd_subvolume(config: Config, operation: str, name: str) -> int:
    """Root's half of a btrfs step (start, seal, discard) for the account that ran sudo.

    The name must be an incomplete snapshot's; the work is done on file
    descriptors (snapshots.py), so nothing the account controls redirects it.
    """
    if os.geteuid() != 0:
        raise gate_lib.GateRefused("subvolume: only root runs this (through sudo)")
    account = _sudo_account()
    if account is None:
        raise gate_lib.GateRefused("subvolume: not called through sudo")
    clients = [c for c, a in config.clients.items() if a == account.pw_name]
    if len(clients) != 1:
        raise gate_lib.GateRefused("subvolume: %s is no laptop's account" % account.pw_name)
    client = clients[0]
    parsed = snap.parse_snapshot_name(name)
    if operation not in subvolumes.HELPER_OPERATIONS or parsed is None or parsed.complete:
        _log(client, "refused: subvolume %s %r" % (operation, name), syslog.LOG_WARNING)
        raise gate_lib.GateRefused("subvolume: refused %s %r" % (operation, name))
    if config.backend_of(client) != "btrfs":
        raise gate_lib.GateRefused(
            "subvolume: the backend of %s is %s" % (client, config.backend_of(client))
        )
    area = config.area(client)
    if not area_is_roots(area):
        # Seal and discard act by name after the id check: safe only where
        # the account can change no name (the next site.yml migrates it).
        raise gate_lib.GateRefused(
            "subvolume: the area of %s is not root's yet (rerun site.yml)" % client
        )
    owner = (account.pw_uid, account.pw_gid)
    runs = StartedRuns(config.state_dir, client)
    try:
        if operation == "start":
            # Named by the gate from the server's clock: an old or future name
            # would let the account date a snapshot as it likes.
            if abs(datetime.now(timezone.utc) - parsed.time) > START_SLACK:
                raise gate_lib.GateRefused("subvolume: %s is not named for now" % name)
            snap.ensure_account_files(area, ACCOUNT_FILES, *owner)
            started = snap.start_subvolume(area, name, owner)
            resumed = started[len("resumed ") :] if started.startswith("resumed ") else None
            runs.add(name, snap.subvolume_id_of(area, name), replaces=resumed)
            _log(client, "started %s (%s)" % (name, started))
        elif operation == "seal":
            ids = runs.ids()
            if name not in ids:
                raise gate_lib.GateRefused("subvolume: root did not start %s" % name)
            if ids[name] is None:
                raise gate_lib.GateRefused(
                    "subvolume: root recorded no subvolume id for %s (started by an older"
                    " version); the next run resumes it" % name
                )
            final = snap.seal_subvolume(area, name, ids[name])
            runs.remove(name)
            _log(client, "sealed %s as %s" % (name, final))
        else:
            snap.discard_subvolume(area, name, runs.ids().get(name), owner_uid=account.pw_uid)
            runs.remove(name)
    except snap.IdentityError as exc:
        message = "refused: subvolume %s: %s" % (operation, exc)
        _log(client, message, syslog.LOG_ERR)
        run_alert(config, "tamper", "%s: %s" % (client, message))
        raise gate_lib.GateRefused(message) from exc
    except (FileExistsError, snap.NameCollisionError):
        return HELPER_EXIT_EXISTS
    return 0


def cmd_manifest(
    config: Config, name: str | None, every: bool, quiet: bool = False, show: bool = False
) -> int:
    """Write missing manifests: one for a laptop's account (sudo), all for root.

    Through the sudo rule a laptop's account names one finished snapshot of
    its own area, whose manifest root writes (under the lock the account's
    finalize holds). A manifest that is already there and trusted is never
    rewritten, so the account cannot bless content changed after the fact.
    """
    from ansible_collections.linkdest.backup.plugins.module_utils import scrub

    if os.geteuid() != 0:
        raise gate_lib.GateRefused("manifest: only root runs this (laptops through sudo)")
    client = sudo_client(config, "manifest")
    if client is not None:
        parsed = snap.parse_snapshot_name(name or "")
        if every or parsed is None or not parsed.complete:
            _log(client, "refused: manifest %r" % name, syslog.LOG_WARNING)
            raise gate_lib.GateRefused("manifest: refused %r" % name)
        if show:
            return show_manifest(config, client, name)
        finished = snap.list_snapshots(config.area(client))
        if not finished or finished[-1].name != name:
            # Only the snapshot the account just finalized: older ones get
            # theirs from root's daily `manifest --all`.
            raise gate_lib.GateRefused("manifest: %s is not the newest snapshot" % name)
        stats = scrub.make_manifest(config.root, client, name)
        if stats is not None:
            priority = syslog.LOG_ERR if stats.skipped else syslog.LOG_INFO
            _log(client, "manifest of %s: %s" % (name, stats.describe()), priority)
        return 0
    if not every:
        raise gate_lib.GateRefused("manifest: give --all (a laptop's account names a snapshot)")

    def log(text: str) -> None:
        _log("-", text)
        if not quiet:
            sys.stdout.write(text + "\n")

    made = scrub.catch_up(config.root, sorted(config.clients), log=log)
    if not quiet:
        sys.stdout.write("%d manifest(s) made\n" % made)
    return 0
