#!/usr/bin/python
# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: snapshot_prune
short_description: Thin a client's linkdest.backup snapshots and make room on the drive
description:
  - Decides, for each finished snapshot in one client's area under O(root), keep or remove,
    and the rule that decided, with a Time Machine-style policy. Every snapshot of the last
    O(keep_all_hours) stays, then the first snapshot of each UTC day for O(daily_days) days,
    then the first of each ISO week for O(weekly_weeks) weeks; nothing older than
    O(max_age_days) stays.
  - With O(space_guard), then removes the oldest kept snapshots, one at a time, measuring the
    drive again after each, while it has less free room than asked, down to O(min_keep). It
    never removes a snapshot of the last O(space_guard.protect_days) days nor the newest one
    before them, so uploads that flood the drive cannot push out the history before them.
  - C(linkdest-server prune) thins after each successful backup, and thins and runs the space
    guard daily from root's cron; use the module to preview a policy in check mode or to prune
    by hand.
version_added: 1.0.0
author: linkdest.backup contributors (@linkdest)
extends_documentation_fragment:
  - linkdest.backup.snapshot
  - ansible.builtin.action_common_attributes
options:
  keep_all_hours:
    description:
      - Hours during which every snapshot is kept.
    type: int
    default: 24
  daily_days:
    description:
      - Days (UTC dates, today included) during which the first snapshot of each day is kept.
    type: int
    default: 30
  weekly_weeks:
    description:
      - Weeks (ISO weeks, this one included) during which the first snapshot of each week is
        kept, for snapshots older than the daily tier.
      - V(0) keeps one snapshot a week without limit.
    type: int
    default: 0
  max_age_days:
    description:
      - Remove snapshots older than this many days; O(min_keep) still applies.
      - V(0) sets no maximum age. Otherwise it must cover O(keep_all_hours).
    type: int
    default: 0
  min_keep:
    description:
      - Finished snapshots always kept, whatever their age, by thinning and the space guard
        alike; at least V(1).
    type: int
    default: 3
  space_guard:
    description:
      - Free room the drive holding O(root) must keep. Omit it to thin only.
      - While the drive is below any of these after thinning, the oldest kept snapshot goes
        first. V(0) turns a check off.
    type: dict
    suboptions:
      min_free_percent:
        description:
          - Percentage of the drive's size that must be free.
        type: float
        default: 10
      min_free_mib:
        description:
          - MiB that must be free.
        type: int
        default: 0
      min_free_inodes_percent:
        description:
          - Percentage of the drive's inodes that must be free; ignored on file systems that
            report no inode count.
        type: float
        default: 5
      protect_days:
        description:
          - Days of history the space guard never removes, counted back from now, plus the
            newest snapshot before them (the state those days start from).
          - V(0) lets it remove any snapshot down to O(min_keep), which lets one client that
            floods the drive push out the history of every client.
        type: int
        default: 30
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
      - Computes the same decisions and returns the same keys without removing anything and
        without taking the area's lock. The space guard's removals are then estimated from
        the snapshots' inodes instead of measured.
  diff_mode:
    support: full
    details:
      - Shows the area's finished snapshots before and after.
  platform:
    support: full
    platforms: posix
notes:
  - Never removes the newest finished snapshot or the one C(current) names, and always keeps
    O(min_keep) finished snapshots.
  - Never counts or removes incomplete snapshots (C(incomplete_back-*)).
  - Removes crash-safely, renaming a snapshot out of the C(back-*) names before deleting it,
    and first finishes removals a crash interrupted.
  - Never follows symlinks inside the area.
  - Takes the area's kernel lock (C(flock)), shared with C(linkdest-server), so it never races
    a running backup.
  - Time stamps are read as UTC; the local-time names of the article's script are taken as
    they are.
seealso:
  - module: linkdest.backup.snapshot_info
  - module: linkdest.backup.snapshot_finalize
"""

EXAMPLES = r"""
- name: Preview what the default policy would remove from laptop-a
  linkdest.backup.snapshot_prune:
    client: laptop-a
  check_mode: true
  register: laptop_a_prune

- name: Show what would be removed, and why
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ item.rule }}"
  loop: "{{ laptop_a_prune.decisions | selectattr('action', 'equalto', 'remove') }}"

- name: Keep a year of weekly snapshots, and 20 % of the drive free
  linkdest.backup.snapshot_prune:
    root: /media/backup_drive
    client: laptop-b
    weekly_weeks: 52
    min_keep: 5
    space_guard:
      min_free_percent: 20
"""

RETURN = r"""
removed:
  description: The snapshots removed (in check mode, that would be removed), oldest first.
  returned: success
  type: list
  elements: str
  sample: [back-2026-11-20T10_00_00]
kept:
  description: The finished snapshots kept, oldest first.
  returned: success
  type: list
  elements: str
  sample: [back-2026-11-19T08_00_00, back-2026-11-26T11_40_37]
decisions:
  description: Every finished snapshot with keep or remove and the rule that decided, oldest first.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: The snapshot's directory name.
      type: str
      sample: back-2026-11-20T10_00_00
    time:
      description: The time in the name, in ISO 8601 with a UTC offset.
      type: str
      sample: "2026-11-20T10:00:00+00:00"
    action:
      description: V(keep) or V(remove).
      type: str
      sample: remove
    rule:
      description:
        - Why. To keep, V(newest), V(current), V(within 24 h), V(dated in the future),
          V(daily 2026-11-20), V(weekly 2026-W47) or V(min_keep).
        - To remove, V(thinned (daily 2026-11-20 kept by back-...)),
          V(older than max_age_days (90)), V(older than weekly_weeks (52)) or
          V(space guard (...)) with the free room measured.
      type: str
      sample: thinned (daily 2026-11-20 kept by back-2026-11-20T08_00_00)
finished_deletions:
  description: Snapshots whose interrupted removal was finished (in check mode, would be).
  returned: success
  type: list
  elements: str
  sample: []
free:
  description:
    - The drive after pruning (in check mode, estimated) in bytes and inodes.
    - V(still_short) says why it is still short of room when O(min_keep) or
      O(space_guard.protect_days) stopped the space guard, else V(null).
  returned: when O(space_guard) is set
  type: dict
  sample:
    total_bytes: 1000204886016
    free_bytes: 120024586240
    total_inodes: 61054976
    free_inodes: 60000000
    still_short: null
drive_mounted:
  description: V(false) when the module failed because O(root) is not mounted.
  returned: failure, when O(root) is not mounted
  type: bool
  sample: false
"""

from datetime import datetime, timezone

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.linkdest.backup.plugins.module_utils.module_area import area_or_fail
from ansible_collections.linkdest.backup.plugins.module_utils.retention import (
    Policy,
    PruneError,
    RetentionError,
    SpaceGuard,
    prune,
)
from ansible_collections.linkdest.backup.plugins.module_utils.snapshots import (
    SnapshotError,
    area_lock,
)

POLICY_OPTIONS = ("keep_all_hours", "daily_days", "weekly_weeks", "max_age_days", "min_keep")


def result_of(report, client, diff):
    part = report.areas[client]
    result = dict(
        changed=report.changed,
        removed=part.removed,
        kept=part.kept,
        decisions=[d.as_dict() for d in part.decisions],
        finished_deletions=part.finished_deletions,
    )
    if report.usage_after is not None:
        result["free"] = dict(report.usage_after.as_dict(), still_short=report.still_short)
    if diff:
        result["diff"] = {
            "before": {"snapshots": [d.name for d in part.decisions]},
            "after": {"snapshots": part.kept},
        }
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", default="/media/backup_drive"),
            root_must_be_mount=dict(type="bool", default=True),
            client=dict(type="str", required=True),
            keep_all_hours=dict(type="int", default=24),
            daily_days=dict(type="int", default=30),
            weekly_weeks=dict(type="int", default=0),
            max_age_days=dict(type="int", default=0),
            min_keep=dict(type="int", default=3),
            space_guard=dict(
                type="dict",
                options=dict(
                    min_free_percent=dict(type="float", default=10),
                    min_free_mib=dict(type="int", default=0),
                    min_free_inodes_percent=dict(type="float", default=5),
                    protect_days=dict(type="int", default=30),
                ),
            ),
            lock_timeout=dict(type="int", default=120),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["lock_timeout"] < 0:
        module.fail_json(msg="lock_timeout must be 0 or more seconds")
    try:
        policy = Policy.from_mapping({key: params[key] for key in POLICY_OPTIONS})
        guard = None
        if params["space_guard"] is not None:
            # The hard floor is the gate's business; here it only has to fit.
            wanted = params["space_guard"]
            guard = SpaceGuard.from_mapping(
                dict(
                    wanted,
                    floor_free_percent=0,
                    floor_free_mib=0,
                    floor_free_inodes_percent=0,
                )
            )
    except RetentionError as exc:
        module.fail_json(msg=str(exc))
    area = area_or_fail(module)
    client = params["client"]

    def run(dry_run):
        return prune(
            {client: area},
            policy,
            datetime.now(timezone.utc),
            guard=guard,
            root=params["root"],
            dry_run=dry_run,
        )

    try:
        if module.check_mode:
            report = run(dry_run=True)
        else:
            with area_lock(area, wait=params["lock_timeout"]):
                report = run(dry_run=False)
    except PruneError as exc:
        # Report what did happen: some snapshots may be gone already.
        partial = result_of(exc.report, client, module._diff)
        module.fail_json(msg="pruning %s failed: %s" % (area, exc), **partial)
    except (SnapshotError, OSError) as exc:
        module.fail_json(msg="cannot prune %s: %s" % (area, exc))
    module.exit_json(**result_of(report, client, module._diff))


if __name__ == "__main__":
    main()
