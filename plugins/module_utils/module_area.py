# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the snapshot_* modules share: one client's area, or a clear failure
before anything is read or written (an unplugged drive above all)."""

from __future__ import annotations

from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap


def area_or_fail(module, root: str | None = None, client: str | None = None) -> str:
    """The area of ``client`` under ``root`` (the module's own options by
    default); on a missing drive, fail with ``drive_mounted: false`` so a
    playbook can tell an unplugged drive from any other failure."""
    params = module.params
    root = params["root"] if root is None else root
    client = params["client"] if client is None else client
    try:
        return snap.client_area(root, client, params["root_must_be_mount"])
    except snap.DriveMissingError as exc:
        module.fail_json(msg=str(exc), drive_mounted=False)
    except snap.SnapshotError as exc:
        module.fail_json(msg=str(exc))
    raise AssertionError("fail_json returned")  # pragma: no cover


def drive_or_fail(module, root: str) -> None:
    """Fail with ``drive_mounted: false`` when the drive at ``root`` is missing."""
    missing = snap.drive_missing(root, module.params["root_must_be_mount"])
    if missing is not None:
        module.fail_json(msg=missing, drive_mounted=False)
