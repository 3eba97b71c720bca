#!/usr/bin/python
# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: snapshot_info
short_description: List a client's linkdest.backup snapshots
description:
  - Lists the finished and the incomplete snapshots in one client's area under O(root), and
    the snapshot C(current) names.
  - Reads only; it never changes anything and takes no lock.
  - With O(disk_usage), also tells the disk each finished snapshot alone holds, which is what
    removing it would free.
version_added: 1.0.0
author: linkdest.backup contributors (@linkdest)
extends_documentation_fragment:
  - linkdest.backup.snapshot
  - ansible.builtin.action_common_attributes
options:
  disk_usage:
    description:
      - Also return RV(snapshots[].added_bytes) and RV(snapshots[].added_inodes) for each
        finished snapshot.
      - Walks every file of every finished snapshot of the area (without following symlinks),
        so it takes time on a large area.
    type: bool
    default: false
  verification:
    description:
      - Also return each finished snapshot's manifest state and what C(linkdest-server verify)
        last found (RV(snapshots[].manifest), RV(snapshots[].verified),
        RV(snapshots[].damaged)).
      - Reads every manifest whole, so it takes a moment on a large area.
    type: bool
    default: false
  state_dir:
    description:
      - Where C(linkdest-server verify) keeps its records (the server's C(state_dir)).
    type: path
    default: /var/lib/linkdest-server/state
attributes:
  check_mode:
    support: full
    details:
      - The module only reads, so check mode runs it as usual.
  diff_mode:
    support: N/A
    details:
      - The module never changes anything, so there is nothing to diff.
  platform:
    support: full
    platforms: posix
notes:
  - Never follows symlinks inside the area; a symlink named like a snapshot is not listed.
  - Time stamps are read as UTC. Snapshots made by the article's script carry local time in
    their names; they are listed as they are, in their own order.
seealso:
  - module: linkdest.backup.snapshot_finalize
"""

EXAMPLES = r"""
- name: Read laptop-a's snapshots
  linkdest.backup.snapshot_info:
    client: laptop-a
  register: laptop_a_snapshots

- name: Show the newest finished snapshot
  ansible.builtin.debug:
    msg: "{{ laptop_a_snapshots.snapshots | map(attribute='name') | last | default('none') }}"

- name: Read what each snapshot of laptop-a adds on disk
  linkdest.backup.snapshot_info:
    client: laptop-a
    disk_usage: true
  register: laptop_a_usage
"""

RETURN = r"""
snapshots:
  description: The finished snapshots, oldest first.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: The snapshot's directory name.
      type: str
      sample: back-2026-11-26T11_40_37
    time:
      description: The time in the name, in ISO 8601 with a UTC offset.
      type: str
      sample: "2026-11-26T11:40:37+00:00"
    current:
      description: Whether C(current) names this snapshot.
      type: bool
      sample: true
    added_bytes:
      description:
        - Disk space (allocated blocks) of the files and directories only this snapshot holds,
          that is whose every hard link is inside it; what removing it alone would free.
        - Files unchanged since another snapshot are hard links shared with it and do not count.
      type: int
      returned: when O(disk_usage=true)
      sample: 5767168
    added_inodes:
      description:
        - How many inodes only this snapshot holds, counted as for RV(snapshots[].added_bytes).
      type: int
      returned: when O(disk_usage=true)
      sample: 1204
    manifest:
      description:
        - V(trusted), V(missing), or V(not trusted) with the reason (root does not own it, it
          is truncated, it does not match its own digest).
      type: str
      returned: when O(verification=true)
      sample: trusted
    verified:
      description:
        - When C(linkdest-server verify) last checked the whole snapshot on this drive against
          its manifest; V(null) when it never has.
      type: str
      returned: when O(verification=true)
      sample: "2026-11-29T04:30:12+00:00"
    damaged:
      description:
        - Paths verify found damaged in this snapshot and could not repair, until a later
          verify finds them intact.
      type: list
      elements: str
      returned: when O(verification=true)
      sample: []
incomplete:
  description: The incomplete snapshots (transfers running or kept after a failure), oldest first.
  returned: success
  type: list
  elements: str
  sample: [incomplete_back-2026-11-26T12_10_02]
current:
  description:
    - The finished snapshot C(current) names.
    - V(null) when C(current) is missing, dangling or does not name a finished snapshot of
      this area; new backups then link against the newest finished snapshot.
  returned: success
  type: str
  sample: back-2026-11-26T11_40_37
last_check:
  description:
    - The last time a run of the laptop found nothing changed since the newest snapshot and
      made no new one (the server recorded a check instead), with that snapshot's name.
    - V(null) when there is none, or it does not vouch for the newest snapshot.
  returned: success
  type: dict
  contains:
    snapshot:
      description: The newest snapshot, which the check found the laptop unchanged since.
      type: str
      sample: back-2026-11-26T11_40_37
    time:
      description: When the server recorded the check, in ISO 8601 with a UTC offset.
      type: str
      sample: "2026-11-26T14:10:02+00:00"
drive_mounted:
  description: V(false) when the module failed because O(root) is not mounted.
  returned: failure, when O(root) is not mounted
  type: bool
  sample: false
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.linkdest.backup.plugins.module_utils.module_area import area_or_fail
from ansible_collections.linkdest.backup.plugins.module_utils.retention import added_usage
from ansible_collections.linkdest.backup.plugins.module_utils.scrub import (
    read_state,
    verification_of,
)
from ansible_collections.linkdest.backup.plugins.module_utils.snapshots import (
    SnapshotError,
    last_check,
    list_incomplete,
    list_snapshots,
    read_current,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", default="/media/backup_drive"),
            root_must_be_mount=dict(type="bool", default=True),
            client=dict(type="str", required=True),
            disk_usage=dict(type="bool", default=False),
            verification=dict(type="bool", default=False),
            state_dir=dict(type="path", default="/var/lib/linkdest-server/state"),
        ),
        supports_check_mode=True,
    )
    area = area_or_fail(module)
    try:
        current = read_current(area)
        finished = list_snapshots(area)
        incomplete = list_incomplete(area)
        names = [s.name for s in finished]
        checked_since = last_check(area)
        added = added_usage(area, names) if module.params["disk_usage"] else {}
        checked = {}
        if module.params["verification"]:
            state = read_state(module.params["state_dir"])
            checked = verification_of(module.params["root"], module.params["client"], names, state)
    except (SnapshotError, OSError) as exc:
        module.fail_json(msg="cannot read snapshots of %s: %s" % (area, exc))
    snapshots = []
    for snap in finished:
        item = dict(name=snap.name, time=snap.time.isoformat(), current=snap.name == current)
        if snap.name in added:
            item["added_bytes"], item["added_inodes"] = added[snap.name]
        item.update(checked.get(snap.name, {}))
        snapshots.append(item)
    module.exit_json(
        changed=False,
        snapshots=snapshots,
        incomplete=[snap.name for snap in incomplete],
        current=current,
        last_check=(
            dict(snapshot=checked_since[0], time=checked_since[1].isoformat())
            if checked_since
            else None
        ),
    )


if __name__ == "__main__":
    main()
