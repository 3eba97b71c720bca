#!/usr/bin/python
# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: snapshot_verify
short_description: Check linkdest.backup snapshots against their manifests and repair them
description:
  - Re-reads the finished snapshots under O(root) (and under O(other_root), the mirror drive,
    when given) and compares every file with the manifest made when its snapshot was
    finalized. Each inode is read once however many snapshots share it.
  - A damaged file whose copy on the other drive matches the manifest is repaired (a new inode
    with the good bytes under every name that shared the damaged one; the good copy is only
    read). A file damaged on both drives is reported with every snapshot it affects.
  - The same run as C(linkdest-server verify), sharing its records (O(state_dir)), so
    C(linkdest-server check) and its metrics show damage this module found.
  - Each drive goes on where the last run stopped; O(sample_percent) and O(max_time) make a
    slice, O(restart) starts from the beginning.
version_added: 1.1.0
author: linkdest.backup contributors (@linkdest)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  root:
    description:
      - The backup drive, the directory that holds one area per client.
    type: path
    default: /media/backup_drive
  root_must_be_mount:
    description:
      - Fail, before anything is read or written, when O(root) or O(other_root) is not a mount
        point, with RV(drive_mounted=false) in the result.
      - An unplugged drive leaves an empty directory on the system disk, which would verify as a
        drive with no snapshots.
      - Set it to V(false) only where the drives are plain directories on purpose.
    type: bool
    default: true
  other_root:
    description:
      - The mirror drive (C(backup_mirror_dest)); verified too, and the source of repairs for
        the backup drive (and the other way round).
      - Without it, damage is reported and never repaired.
    type: path
  clients:
    description:
      - The clients to verify; default every area under O(root).
    type: list
    elements: str
  sample_percent:
    description:
      - Stop each drive after reading this share of its used space (above 0, at most 100).
    type: float
  max_time:
    description:
      - Stop after this many seconds (shared between the drives).
    type: int
  restart:
    description:
      - Start from the beginning of each drive instead of where the last run stopped.
    type: bool
    default: false
  repair:
    description:
      - Repair damaged files from the other drive; V(false) only reports.
    type: bool
    default: true
  fail_on_damage:
    description:
      - Fail when damage is left unrepaired or a manifest cannot be trusted.
    type: bool
    default: true
  state_dir:
    description:
      - Where verify keeps its cursor and findings (the server's C(state_dir)).
    type: path
    default: /var/lib/linkdest-server/state
attributes:
  check_mode:
    support: full
    details:
      - Check mode reads and compares but writes nothing; no repair, no missing manifest made,
        no record kept (the cursor does not move).
  diff_mode:
    support: full
    details:
      - The diff lists the damaged files before and what is left after.
  platform:
    support: full
    platforms: posix
notes:
  - Run it as root on the backup server.
  - Never follows symlinks; a repair never writes into an existing file.
seealso:
  - module: linkdest.backup.snapshot_info
"""

EXAMPLES = r"""
- name: Verify a tenth of both drives, repair what the other drive has good, fail on the rest
  linkdest.backup.snapshot_verify:
    other_root: /media/backup_drive2
    sample_percent: 10

- name: Report only, whole drive, in check mode
  linkdest.backup.snapshot_verify:
    restart: true
    repair: false
  check_mode: true
"""

RETURN = r"""
drives:
  description: One entry per drive verified, the backup drive first.
  returned: success
  type: list
  elements: dict
  contains:
    drive:
      description: The drive's root.
      type: str
      sample: /media/backup_drive
    files:
      description: Manifest entries checked.
      type: int
      sample: 20412
    inodes_read:
      description: Distinct inodes read (shared hard links are read once).
      type: int
      sample: 1204
    bytes_read:
      description: Bytes read.
      type: int
      sample: 104857600
    complete:
      description: Whether the run reached the end of the drive (else the next goes on).
      type: bool
      sample: true
    snapshots:
      description: Snapshots (C(CLIENT/back-T)) checked whole.
      type: list
      elements: str
      sample: [laptop-a/back-2026-11-26T11_40_37]
repaired:
  description: Files repaired from the other drive by this run.
  returned: success
  type: list
  elements: str
  sample: ["/media/backup_drive: laptop-a/back-2026-11-26T11_40_37/docs/a.txt: content differs"]
damaged:
  description: Damage left unrepaired (this run's and earlier runs' not yet seen fixed).
  returned: success
  type: list
  elements: dict
  sample: [{drive: /media/backup_drive, client: laptop-a, snapshot: back-2026-11-26T11_40_37,
            path: docs/a.txt, problem: content differs from the manifest}]
manifest_problems:
  description: Manifests that cannot be trusted, and what a btrfs scrub found.
  returned: success
  type: list
  elements: str
  sample: []
manifests_made:
  description: Manifests made first for snapshots that lacked one.
  returned: success
  type: int
  sample: 0
drive_mounted:
  description: V(false) when the module failed because a drive is not mounted.
  returned: failure, when O(root) or O(other_root) is not mounted
  type: bool
  sample: false
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.linkdest.backup.plugins.module_utils.manifest import ManifestError
from ansible_collections.linkdest.backup.plugins.module_utils.mirror import list_areas
from ansible_collections.linkdest.backup.plugins.module_utils.module_area import drive_or_fail
from ansible_collections.linkdest.backup.plugins.module_utils.scrub import run_verify
from ansible_collections.linkdest.backup.plugins.module_utils.snapshots import SnapshotError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", default="/media/backup_drive"),
            root_must_be_mount=dict(type="bool", default=True),
            other_root=dict(type="path"),
            clients=dict(type="list", elements="str"),
            sample_percent=dict(type="float"),
            max_time=dict(type="int"),
            restart=dict(type="bool", default=False),
            repair=dict(type="bool", default=True),
            fail_on_damage=dict(type="bool", default=True),
            state_dir=dict(type="path", default="/var/lib/linkdest-server/state"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["sample_percent"] is not None and not 0 < params["sample_percent"] <= 100:
        module.fail_json(msg="sample_percent must be above 0 and at most 100")
    if params["max_time"] is not None and params["max_time"] <= 0:
        module.fail_json(msg="max_time must be above 0 seconds")
    for root in (params["root"], params["other_root"]):
        if root is not None:
            drive_or_fail(module, root)
    clients = params["clients"] if params["clients"] is not None else list_areas(params["root"])
    for client in clients:
        if client in ("", ".", "..") or "/" in client or "\0" in client:
            module.fail_json(msg="clients must be plain directory names, got %r" % client)
    try:
        run = run_verify(
            params["root"],
            clients,
            params["other_root"],
            params["state_dir"],
            sample_percent=params["sample_percent"],
            max_time=params["max_time"],
            restart=params["restart"],
            repair=params["repair"],
            save=not module.check_mode,
        )
    except (SnapshotError, ManifestError, OSError) as exc:
        module.fail_json(msg="verify failed: %s" % exc)
    repaired = [f.describe() for f in run.repaired]
    found = [f.describe() for r in run.reports for f in r.findings]
    result = dict(
        changed=bool(repaired or run.manifests_made),
        drives=[
            dict(
                drive=r.drive,
                files=r.files,
                inodes_read=r.inodes_read,
                bytes_read=r.bytes_read,
                complete=r.complete,
                snapshots=r.snapshots,
            )
            for r in run.reports
        ],
        repaired=repaired,
        damaged=run.damaged
        if not module.check_mode
        else [f.record() for r in run.reports for f in r.findings],
        manifest_problems=run.problems,
        manifests_made=run.manifests_made,
    )
    if module._diff:
        left = [f.describe() for r in run.reports for f in r.findings if not f.repaired_from]
        result["diff"] = dict(
            before="".join(line + "\n" for line in found),
            after="".join(line + "\n" for line in left),
        )
    if params["fail_on_damage"] and (result["damaged"] or run.problems):
        module.fail_json(
            msg="%d damaged file(s) not repaired, %d manifest problem(s)"
            % (len(result["damaged"]), len(run.problems)),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
