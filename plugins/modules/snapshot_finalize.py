#!/usr/bin/python
# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: snapshot_finalize
short_description: Turn an incomplete linkdest.backup snapshot into a finished one
description:
  - Renames C(incomplete_back-T) to C(back-T) in one client's area under O(root), after
    flushing the file system to disk, and points C(current) at the newest finished snapshot.
  - This is what the server does after a laptop reports a good transfer; use the module to
    finalize a snapshot by hand, for example one kept incomplete after rsync exit code 23.
  - A snapshot that is already finished is left as it is, so running the module again
    changes nothing.
version_added: 1.0.0
author: linkdest.backup contributors (@linkdest)
extends_documentation_fragment:
  - linkdest.backup.snapshot
  - ansible.builtin.action_common_attributes
options:
  snapshot:
    description:
      - The snapshot to finalize, in any of its name forms C(incomplete_back-T), C(back-T) or
        the bare time stamp C(T), for example C(2026-11-26T11_40_37).
    type: str
    required: true
  update_current:
    description:
      - Point C(current) at the newest finished snapshot afterwards.
      - C(current) only ever moves forward; finalizing a snapshot older than the one
        C(current) names leaves C(current) alone.
    type: bool
    default: true
  lock_timeout:
    description:
      - Seconds to wait for the area's lock while a backup, finalize or prune of the same
        client runs; V(0) fails at once when the area is busy.
    type: int
    default: 120
attributes:
  check_mode:
    support: full
    details:
      - Computes the same plan and returns the same keys without renaming anything; it does
        not take the area's lock, so it never creates the lock file.
  diff_mode:
    support: full
    details:
      - Shows the area's incomplete snapshots, the finished snapshot concerned and C(current),
        before and after.
  platform:
    support: full
    platforms: posix
    details:
      - Linux is the tested platform. Elsewhere the no-replace rename falls back to a check
        and a rename made safe by the area's lock, and C(syncfs) to C(sync).
notes:
  - Never replaces an existing directory, not even an empty one; a name that is taken is
    an error, never an overwrite.
  - Flushes the file system to disk before the rename, so a finished snapshot is complete
    on disk.
  - Swaps C(current) atomically (a new symlink renamed over the old one); there is never a
    moment without C(current).
  - Never follows symlinks inside the area; a symlink named like a snapshot is refused, and
    a C(current) that is a real directory is left alone and reported as an error before
    anything changes.
  - Takes the area's kernel lock (C(flock)), shared with C(linkdest-server), so it never
    races a running backup.
seealso:
  - module: linkdest.backup.snapshot_info
"""

EXAMPLES = r"""
- name: Finalize a snapshot kept incomplete after rsync exit code 23
  linkdest.backup.snapshot_finalize:
    client: laptop-a
    snapshot: incomplete_back-2026-11-26T11_40_37

- name: Finalize without moving current, on a non-default drive
  linkdest.backup.snapshot_finalize:
    root: /srv/backup
    client: laptop-b
    snapshot: "2026-11-26T11_40_37"
    update_current: false
    lock_timeout: 0
"""

RETURN = r"""
snapshot:
  description: The finished snapshot's name.
  returned: success
  type: str
  sample: back-2026-11-26T11_40_37
current:
  description:
    - The snapshot C(current) names afterwards (in check mode, would name).
    - V(null) when C(current) is missing or invalid and O(update_current=false).
  returned: success
  type: str
  sample: back-2026-11-26T11_40_37
drive_mounted:
  description: V(false) when the module failed because O(root) is not mounted.
  returned: failure, when O(root) is not mounted
  type: bool
  sample: false
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.linkdest.backup.plugins.module_utils.module_area import area_or_fail
from ansible_collections.linkdest.backup.plugins.module_utils.snapshots import (
    SnapshotError,
    apply_finalize,
    area_lock,
    list_incomplete,
    plan_finalize,
    read_current,
)


def diff_of(plan, incomplete):
    before_finished = [] if plan.incomplete is not None else [plan.final]
    return {
        "before": {
            "current": plan.current_before,
            "finished": before_finished,
            "incomplete": incomplete,
        },
        "after": {
            "current": plan.current_after,
            "finished": [plan.final],
            "incomplete": [name for name in incomplete if name != plan.incomplete],
        },
    }


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", default="/media/backup_drive"),
            root_must_be_mount=dict(type="bool", default=True),
            client=dict(type="str", required=True),
            snapshot=dict(type="str", required=True),
            update_current=dict(type="bool", default=True),
            lock_timeout=dict(type="int", default=120),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["lock_timeout"] < 0:
        module.fail_json(msg="lock_timeout must be 0 or more seconds")
    area = area_or_fail(module)

    def plan_now():
        plan = plan_finalize(area, params["snapshot"], params["update_current"])
        return plan, [snap.name for snap in list_incomplete(area)]

    try:
        if module.check_mode:
            plan, incomplete = plan_now()
        else:
            with area_lock(area, wait=params["lock_timeout"]):
                plan, incomplete = plan_now()
                try:
                    apply_finalize(area, plan)
                except (SnapshotError, OSError) as exc:
                    renamed = plan.incomplete is not None and not os.path.lexists(
                        os.path.join(area, plan.incomplete)
                    )
                    # Report what did happen: the rename may be done, the swap not.
                    module.fail_json(
                        msg="finalizing %s in %s failed: %s" % (plan.final, area, exc),
                        changed=renamed,
                        snapshot=plan.final if renamed or not plan.incomplete else plan.incomplete,
                        current=read_current(area),
                    )
    except (SnapshotError, OSError) as exc:
        module.fail_json(msg="cannot finalize %s: %s" % (params["snapshot"], exc))

    result = dict(changed=plan.changed, snapshot=plan.final, current=plan.current_after)
    if module._diff:
        result["diff"] = diff_of(plan, incomplete)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
