# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """Options shared by the snapshot_* modules: where a client's area is."""

    DOCUMENTATION = r"""
options:
  root:
    description:
      - The backup root on the server, the directory that holds one area per client.
      - Keep it shallow; every path component costs rsync time per file.
    type: path
    default: /media/backup_drive
  root_must_be_mount:
    description:
      - Fail, before anything is read or written, when O(root) is not a mount point, with
        RV(drive_mounted=false) in the result.
      - An unplugged drive leaves an empty directory on the system disk, which would read as a
        drive with no snapshots and, written to, fill the system disk.
      - Set it to V(false) only where O(root) is a plain directory on purpose, as the role's
        C(backup_server_root_must_be_mount) does.
    type: bool
    default: true
  client:
    description:
      - The client's area name, a single directory directly under O(root).
      - This is the name the server gave the laptop, by default its C(inventory_hostname).
      - It must be a plain name; C(/), C(.) and C(..) are refused.
    type: str
    required: true
"""
