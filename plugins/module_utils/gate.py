# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Parse what a laptop asks of its forced command (SSH_ORIGINAL_COMMAND).

The laptop's key runs ``linkdest-server gate CLIENT`` whatever the laptop
sends. This module turns the sent command into one of a few typed requests,
or refuses it with a reason. It never builds a path from the laptop's words:
the server picks every path itself (see server_cli.py).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from ansible_collections.linkdest.backup.plugins.module_utils import codes

MAX_COMMAND_BYTES = 4096
MAX_ARGS = 64

# Single-letter rsync server flags a receiver may get. Deliberately absent:
# -K/-L/-k (follow or rewrite symlinks on the server), -s (secluded args hide
# options from this check), -W is fine but unneeded, -b (backups), -u.
_RECEIVE_SHORT_FLAGS = set("logDtprvzcHAXxnSOJ")
# The protocol capability string that follows -e. Patterns here end in \Z,
# not $: "$" would also accept a trailing newline.
_CAPABILITIES_RE = re.compile(r"^\.?[A-Za-z]*\Z")
# Long options a sender (restore, compare) may get. The server adds
# --fake-super itself, so the laptop gets back the modes and links it sent.
_SEND_LONG_OPTIONS = {
    "--fake-super": None,
    "--numeric-ids": None,
    "--stats": None,
    "--delete": None,
    "--timeout": re.compile(r"^\d{1,6}\Z"),
    "--bwlimit": re.compile(r"^\d{1,9}[KkMm]?\Z"),
    "--log-format": re.compile(r"^%i\Z"),
}
# A receive that applies a change list (the destination is
# codes.CHANGES_DESTINATION) writes into a clone of current, where every file
# is an inode finished snapshots share. Only what cannot rewrite such an inode
# passes: no -c (a checksum match would set attributes on the old inode
# instead of writing a new one), no -l or -D (a symlink or device that matches
# gets its attributes set in place), no -H, -A, -X, -r or -d. The server adds
# --ignore-times, so every listed file is written anew.
_CHANGES_SHORT_FLAGS = set("ogtpRvzSOIx")
# Long options a receiver may get: each maps to a regex its value must match
# (None: takes no value). Everything else is refused, among others --inplace,
# --append, --link-dest, --partial-dir, --temp-dir, --backup-dir, --log-file.
_RECEIVE_LONG_OPTIONS = {
    "--delete": None,
    "--delete-during": None,
    "--delete-delay": None,
    "--delete-after": None,
    "--delete-excluded": None,
    "--numeric-ids": None,
    "--fake-super": None,
    "--partial": None,
    # Output only: statistics, and what --itemize-changes sends.
    "--stats": None,
    "--log-format": re.compile(r"^%i\Z"),
    "--timeout": re.compile(r"^\d{1,6}\Z"),
    "--compress-level": re.compile(r"^\d\Z"),
    "--bwlimit": re.compile(r"^\d{1,9}[KkMm]?\Z"),
    "--max-delete": re.compile(r"^-?\d{1,9}\Z"),
}


# The same, less everything that deletes: the server removes what the list says.
_CHANGES_LONG_OPTIONS = {
    name: value
    for name, value in _RECEIVE_LONG_OPTIONS.items()
    if not name.startswith(("--delete", "--max-delete"))
}


class GateRefused(Exception):
    """The laptop asked for something the gate does not allow."""


@dataclass(frozen=True)
class ReceiveRequest:
    """Upload a new snapshot: the vetted rsync server options.

    ``changes``: only the paths of the change list prepared just before
    (ChangesRequest), into the clone of current made for it.
    """

    options: tuple[str, ...]
    changes: bool = False


@dataclass(frozen=True)
class ChangesRequest:
    """Prepare a snapshot from current and a change list (read from stdin),
    made by the laptop against the finished snapshot ``base``."""

    base: str


@dataclass(frozen=True)
class UnchangedRequest:
    """Nothing changed since the finished snapshot ``base``: record a check,
    make no snapshot."""

    base: str


@dataclass(frozen=True)
class FinalizeRequest:
    """Finalize the snapshot just received; ``rsync_exit`` is the laptop's view."""

    rsync_exit: int


@dataclass(frozen=True)
class ListRequest:
    """List this client's finished snapshots."""


@dataclass(frozen=True)
class SendRequest:
    """Read from one of this client's finished snapshots (restore, compare)."""

    options: tuple[str, ...]
    snapshot: str
    relpath: str


@dataclass(frozen=True)
class LocateRequest:
    """Which snapshot holds a path (the newest, or the newest at or before ``when``)."""

    relpath: str
    when: str | None


@dataclass(frozen=True)
class VersionsRequest:
    """The snapshots in which a path differs from the one before."""

    relpath: str


@dataclass(frozen=True)
class ManifestRequest:
    """The manifest of a finished snapshot (default the newest), for ``linkdest verify``."""

    snapshot: str | None


def _check_short_flags(token: str, allowed: set | None = None) -> None:
    allowed = _RECEIVE_SHORT_FLAGS if allowed is None else allowed
    flags = token[1:]
    for index, flag in enumerate(flags):
        if flag == "e":
            if not _CAPABILITIES_RE.match(flags[index + 1 :]):
                raise GateRefused("malformed rsync capability string in %r" % token)
            return
        if flag not in allowed:
            raise GateRefused("rsync option -%s is not allowed" % flag)


def _check_long_option(token: str, allowed: dict | None = None) -> None:
    allowed = _RECEIVE_LONG_OPTIONS if allowed is None else allowed
    name, sep, value = token.partition("=")
    if name not in allowed:
        raise GateRefused("rsync option %s is not allowed" % name)
    pattern = allowed[name]
    if pattern is None and sep:
        raise GateRefused("rsync option %s takes no value" % name)
    if pattern is not None and not (sep and pattern.match(value)):
        raise GateRefused("rsync option %s has a bad value" % name)


def _split_options(args: list[str]) -> tuple[list[str], list[str]]:
    # rsync ends its options with "." and then names the path(s).
    try:
        dot = args.index(".")
    except ValueError:
        raise GateRefused("not an rsync server command line") from None
    return args[:dot], args[dot + 1 :]


def _check_options(options: list[str], long_options: dict, short_flags: set | None = None) -> None:
    for token in options:
        if token.startswith("--"):
            _check_long_option(token, long_options)
        elif token.startswith("-") and len(token) > 1:
            _check_short_flags(token, short_flags)
        else:
            raise GateRefused("unexpected rsync argument %r" % token)


def _check_relpath(relpath: str) -> str:
    """A path inside a snapshot: relative, no '.', '..' or empty parts."""
    if relpath in ("", "."):
        return ""
    if relpath.startswith("/") or "\0" in relpath:
        raise GateRefused("only paths inside a snapshot may be read")
    parts = relpath.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise GateRefused("only paths inside a snapshot may be read")
    return relpath


def _parse_rsync(words: list[str]):
    if words[1:2] != ["--server"]:
        raise GateRefused("only 'rsync --server' may run")
    args = words[2:]
    if args[:1] == ["--sender"]:
        options, paths = _split_options(args[1:])
        if "--sender" in options:
            raise GateRefused("--sender given twice")
        _check_options(options, _SEND_LONG_OPTIONS)
        if len(paths) != 1:
            raise GateRefused("rsync may read exactly one path")
        snapshot, _sep, relpath = paths[0].partition("/")
        if not codes.is_snapshot_name(snapshot):
            raise GateRefused("only finished snapshots (back-...) may be read")
        return SendRequest(
            options=tuple(options), snapshot=snapshot, relpath=_check_relpath(relpath)
        )
    if "--sender" in args:
        raise GateRefused("--sender must come first")
    # The receiver's destination is ignored: the server chooses where a
    # snapshot goes.
    options, paths = _split_options(args)
    if len(paths) != 1:
        raise GateRefused("rsync must name exactly one destination")
    # The destination is ignored, but a laptop that names another place on
    # the server (an absolute path, '..') is refused and logged, not humoured.
    if paths[0].startswith("/") or ".." in paths[0].split("/"):
        raise GateRefused("the destination is chosen by the server; %r is refused" % paths[0][:200])
    if paths[0] == codes.CHANGES_DESTINATION:
        _check_options(options, _CHANGES_LONG_OPTIONS, _CHANGES_SHORT_FLAGS)
        return ReceiveRequest(options=tuple(options), changes=True)
    _check_options(options, _RECEIVE_LONG_OPTIONS)
    return ReceiveRequest(options=tuple(options))


def parse_request(command: str | None):
    """Turn SSH_ORIGINAL_COMMAND into a request, or raise GateRefused."""
    if not command:
        raise GateRefused("no command given (interactive logins are not allowed)")
    if len(command.encode("utf-8", "surrogateescape")) > MAX_COMMAND_BYTES:
        raise GateRefused("command too long")
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise GateRefused("unparsable command: %s" % exc) from None
    if not words or len(words) > MAX_ARGS:
        raise GateRefused("bad number of arguments")
    verb = words[0]
    if verb == "rsync":
        return _parse_rsync(words)
    if verb == codes.VERB_FINALIZE:
        if len(words) != 2 or not re.match(r"^\d{1,3}\Z", words[1]):
            raise GateRefused("usage: finalize RSYNC_EXIT_CODE")
        return FinalizeRequest(rsync_exit=int(words[1]))
    if verb == codes.VERB_CHANGES:
        if len(words) != 2 or not codes.is_snapshot_name(words[1]):
            raise GateRefused("usage: changes BASE_SNAPSHOT (a change list on stdin)")
        return ChangesRequest(base=words[1])
    if verb == codes.VERB_UNCHANGED:
        if len(words) != 2 or not codes.is_snapshot_name(words[1]):
            raise GateRefused("usage: unchanged BASE_SNAPSHOT")
        return UnchangedRequest(base=words[1])
    if verb == codes.VERB_LIST and len(words) == 1:
        return ListRequest()
    if verb == codes.VERB_LOCATE and len(words) in (2, 3):
        return LocateRequest(
            relpath=_check_relpath(words[1]) or ".", when=words[2] if len(words) == 3 else None
        )
    if verb == codes.VERB_VERSIONS and len(words) == 2 and _check_relpath(words[1]):
        return VersionsRequest(relpath=words[1])
    if verb == codes.VERB_MANIFEST and len(words) in (1, 2):
        if len(words) == 2 and not codes.is_snapshot_name(words[1]):
            raise GateRefused("manifest: name a finished snapshot (back-...)")
        return ManifestRequest(snapshot=words[1] if len(words) == 2 else None)
    raise GateRefused("command %r is not allowed" % verb)
