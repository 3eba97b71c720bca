# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""``linkdest-server``: the server's command, shared by the forced SSH command
(``gate``) and the administrator (``finalize``, ``list``).

The role installs this file and snapshots.py/gate.py under
/usr/local/lib/linkdest/ and a three-line launcher that calls main(). The
configuration is /etc/linkdest/server.json, written by the backup_server role.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import subprocess
import sys
import syslog
from datetime import datetime, timezone

from ansible_collections.linkdest.backup.plugins.module_utils import gate as gate_lib
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

CONFIG_PATH = "/etc/linkdest/server.json"
RECEIVED_MARKER = ".linkdest-received"
JOURNAL = ".linkdest-journal"

EXIT_REFUSED = 77
EXIT_BUSY = 75
EXIT_NOT_FINALIZED = 65
EXIT_NOT_MOUNTED = 72


class Config:
    def __init__(self, data: dict):
        self.root = data["root"]
        self.rsync = data.get("rsync", "/usr/bin/rsync")
        self.timeout = int(data.get("rsync_timeout", 600))
        self.partial_policy = data.get("partial_policy", "finalize")
        self.root_must_be_mount = bool(data.get("root_must_be_mount", False))
        # client name -> the system account that client's key logs in as
        self.clients = data.get("clients", {})

    @classmethod
    def load(cls, path: str = CONFIG_PATH) -> Config:
        with open(path, encoding="utf-8") as handle:
            return cls(json.load(handle))

    def area(self, client: str) -> str:
        if client not in self.clients:
            raise gate_lib.GateRefused("unknown client %r" % client)
        return os.path.join(self.root, client)


def _log(client: str, message: str, priority: int = syslog.LOG_INFO) -> None:
    syslog.openlog("linkdest-server", syslog.LOG_PID, syslog.LOG_AUTH)
    syslog.syslog(priority, "client=%s %s" % (client, message))


def _journal(area: str, **fields) -> None:
    fields["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with open(os.path.join(area, JOURNAL), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(fields, sort_keys=True) + "\n")


def _read_marker(area: str) -> tuple[str, int] | None:
    try:
        with open(os.path.join(area, RECEIVED_MARKER), encoding="utf-8") as handle:
            name, code = handle.read().split()
        return name, int(code)
    except (FileNotFoundError, ValueError):
        return None


def _write_marker(area: str, name: str, code: int) -> None:
    tmp = os.path.join(area, RECEIVED_MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write("%s %d\n" % (name, code))
    os.replace(tmp, os.path.join(area, RECEIVED_MARKER))


RECEIVE_LOCK_WAIT = 60
# rsync accepts at most 20 --link-dest directories.
MAX_LINK_DESTS = 20


def receiver_argv(
    config: Config, request: gate_lib.ReceiveRequest, link_dests: list[str], dest: str
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
    argv += ["--link-dest=../%s" % name for name in link_dests[:MAX_LINK_DESTS]]
    return argv + [".", dest + "/"]


def link_dests_for(area: str) -> list[str]:
    """What a new transfer links against: ``current``, then interrupted runs.

    An interrupted transfer is resumed, not restarted: what it already
    received is linked from its incomplete directory instead of being sent
    again. The new run still writes only into its own fresh directory.
    """
    base = snap.current_snapshot(area)
    interrupted = [s.name for s in reversed(snap.list_incomplete(area))]
    return ([base.name] if base else []) + interrupted


def _gate_receive(config: Config, client: str, area: str, request) -> int:
    if config.root_must_be_mount and not os.path.ismount(config.root):
        # With the drive unplugged the upload would fill the system disk.
        _log(client, "refused: backup drive %s is not mounted" % config.root, syslog.LOG_ERR)
        sys.stderr.write("linkdest-server: backup drive %s is not mounted\n" % config.root)
        return EXIT_NOT_MOUNTED
    try:
        # Wait a little: the receiver of a run the laptop just lost may still
        # be winding down, and prune or the mirror may hold the area briefly.
        with snap.area_lock(area, wait=RECEIVE_LOCK_WAIT):
            snap.finish_deletions(area)
            link_dests = link_dests_for(area)
            incoming = snap.start_incomplete(area, datetime.now(timezone.utc))
            argv = receiver_argv(config, request, link_dests, incoming.name)
            _log(
                client,
                "receiving %s (link-dest %s)" % (incoming.name, ", ".join(link_dests) or "none"),
            )
            code = subprocess.call(argv, cwd=area)
            _write_marker(area, incoming.name, code)
            _log(client, "received %s, rsync receiver exit %d" % (incoming.name, code))
            return code
    except snap.LockBusyError as exc:
        sys.stderr.write("linkdest-server: busy: %s\n" % exc)
        return EXIT_BUSY


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
        plan = snap.finalize(area, name)
        os.unlink(os.path.join(area, RECEIVED_MARKER))
        # The interrupted runs this one resumed are superseded now.
        for stale in snap.list_incomplete(area):
            snap.delete_snapshot(area, stale.name)
            _log(client, "removed superseded %s" % stale.name)
        _journal(
            area,
            snapshot=plan.final,
            rsync_exit=request.rsync_exit,
            outcome=result.outcome,
            finalized=True,
        )
        _log(client, "finalized %s (%s)" % (plan.final, result.outcome))
        sys.stdout.write(plan.final + "\n")
        return 0


def _print_list(area: str) -> int:
    current = snap.read_current(area)
    for item in snap.list_snapshots(area):
        sys.stdout.write("%s%s\n" % (item.name, " current" if item.name == current else ""))
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
    if isinstance(request, gate_lib.ReceiveRequest):
        return _gate_receive(config, client, area, request)
    if isinstance(request, gate_lib.FinalizeRequest):
        return _gate_finalize(config, client, area, request)
    return _print_list(area)


def cmd_finalize(config: Config, client: str, snapshot: str) -> int:
    area = config.area(client)
    with snap.area_lock(area, wait=120):
        plan = snap.finalize(area, snapshot)
    sys.stdout.write("%s %s\n" % (plan.final, "finalized" if plan.changed else "already final"))
    return 0


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
        if args.command == "gate":
            return cmd_gate(config, args.client)
        if args.command == "finalize":
            return cmd_finalize(config, args.client, args.snapshot)
        return _print_list(config.area(args.client))
    except (snap.SnapshotError, gate_lib.GateRefused, OSError) as exc:
        sys.stderr.write("linkdest-server: %s\n" % exc)
        return 1
