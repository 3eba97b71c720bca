# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""History cannot be changed: no overwrite or deletion of a finished snapshot,
no in-place write to a file all snapshots share, no mode or mtime change
reaching old snapshots through a shared inode. What a laptop may do (upload a
new snapshot, even an empty or encrypted one) leaves every older one as it was.
"""

import linkdest_testlib as lib
import pytest
from conftest import FIXED_MTIME, WORK, alice, reset_source

SSH = "ssh -F %s linkdest-server" % lib.SSH_CONFIG


def history(fingerprint: dict, snapshots, links: bool = True) -> dict:
    """The fingerprint of c1's ``snapshots``; without link counts when ``links`` is
    false (a new snapshot linking an unchanged file raises its count, rightly)."""
    files = fingerprint["areas"]["c1"]["files"]
    return {
        path: record if links else record[:1] + record[2:]
        for path, record in files.items()
        if path.split("/", 1)[0] in snapshots
    }


def changes(before: dict, after: dict) -> list[str]:
    return [
        path for path in sorted(set(before) | set(after)) if before.get(path) != after.get(path)
    ]


@pytest.fixture(scope="module", autouse=True)
def restore_source(c1, world):
    yield
    reset_source(c1, "c1")


def test_the_shared_file_is_one_inode_in_every_new_snapshot(server, world):
    fingerprint = lib.fingerprint(server)
    files = fingerprint["areas"]["c1"]["files"]
    inodes = {files["%s/shared.txt" % name][0] for name in world["c1"]["snapshots"][-2:]}
    assert len(inodes) == 1
    assert files["%s/shared.txt" % world["c1"]["latest"]][1] >= 2


IN_PLACE = [
    ("rsync --inplace onto the shared file of a finished snapshot", "--inplace"),
    ("rsync --append onto the shared file of a finished snapshot", "--append"),
    ("rsync --append-verify onto the shared file", "--append-verify"),
    ("rsync --inplace given as a remote option", "--remote-option=--inplace"),
]


@pytest.mark.parametrize(("what", "option"), IN_PLACE, ids=[i[1] for i in IN_PLACE])
def test_in_place_writes_to_the_shared_file_are_refused(attack, c1, world, what, option):
    latest = world["c1"]["latest"]
    lib.as_user(
        c1, "mkdir -p %s/inplace && printf 'RANSOM\\n' > %s/inplace/shared.txt" % (WORK, WORK)
    )
    attack.attempt(
        "history",
        "%s (%s/shared.txt)" % (what, latest),
        lambda: alice(
            c1,
            "rsync -a %s %s %s/inplace/shared.txt linkdest-server:%s/shared.txt </dev/null"
            % (option, lib.RSYNC_SSH, WORK, latest),
        ),
        expect="linkdest-server: refused",
    )


def test_a_changed_file_rsync_cannot_see_gets_a_new_inode(attack, c1, server, world):
    """Same size and mtime, new content: forced through with --checksum and
    finalized, it is a new file; the inode every older snapshot shares keeps
    its content."""
    old = world["c1"]["snapshots"]
    before = lib.fingerprint(server)
    shared = before["areas"]["c1"]["files"]["%s/shared.txt" % world["c1"]["latest"]]
    content = c1.file(lib.SOURCE + "/shared.txt").content_string
    lib.write_file(c1, "shared.txt", content.upper(), mtime=FIXED_MTIME)
    result = alice(
        c1,
        "rsync -a -c --delete --numeric-ids %s %s/ linkdest-server:snapshot/ </dev/null && %s"
        " finalize 0 </dev/null" % (lib.RSYNC_SSH, lib.SOURCE, SSH),
    )
    after = lib.fingerprint(server)
    new = result.output.split()[-1] if result.output.split() else ""
    changed = changes(history(before, old, links=False), history(after, old, links=False))
    record = after["areas"]["c1"]["files"].get("%s/shared.txt" % new)
    verdict = "contained: a new snapshot %s with a new inode; every older snapshot unchanged" % new
    if changed or record is None or record[0] == shared[0]:
        verdict = "FAIL: older snapshots changed %s, new shared.txt %s" % (changed[:3], record)
    attack.record_verdict(
        "history",
        "same size and mtime, new content, rsync -c + finalize",
        "exit %d: %s" % (result.rc, new),
        verdict,
    )
    assert result.rc == 0, result.output
    assert not changed
    assert record is not None
    assert record[0] != shared[0]
    assert record[6] != shared[6]


def test_mode_and_mtime_changes_do_not_reach_old_snapshots(attack, c1, server, world):
    """chmod and touch on the laptop, then a real backup: the old snapshots'
    shared inodes keep their mode (the --fake-super record) and mtime."""
    old = world["c1"]["snapshots"]
    latest = world["c1"]["latest"]
    before = lib.fingerprint(server)
    result = lib.as_user(
        c1,
        "chmod 0600 %s/mode.txt && touch -m -d '2026-03-04 05:06:07' %s/mtime.txt"
        % (lib.SOURCE, lib.SOURCE),
    )
    assert result.rc == 0, result.stderr
    name = lib.backup_ok(c1)
    after = lib.fingerprint(server)
    files = after["areas"]["c1"]["files"]
    changed = changes(history(before, old, links=False), history(after, old, links=False))
    problems = ["older snapshots changed: %s" % changed[:3]] if changed else []
    for path in ("mode.txt", "mtime.txt"):
        was = before["areas"]["c1"]["files"]["%s/%s" % (latest, path)]
        now = files["%s/%s" % (name, path)]
        if now[0] == was[0]:
            problems.append("%s still shares inode %d with the older snapshots" % (path, was[0]))
    if not files["%s/mode.txt" % name][7].startswith("100600 "):
        problems.append("the new mode.txt is %s" % files["%s/mode.txt" % name][7])
    attack.record_verdict(
        "history",
        "chmod 0600 / touch of a file every snapshot shares, then linkdest backup",
        "exit 0: %s" % name,
        "contained: new inodes in the new snapshot; old inodes keep mode and mtime"
        if not problems
        else "FAIL: " + "; ".join(problems),
    )
    assert not problems


def test_naming_a_finished_snapshot_as_destination_does_not_write_into_it(
    attack, c1, server, world
):
    """The gate ignores the destination a laptop names (DESIGN.md): the upload
    goes into a fresh incomplete snapshot of its own area."""
    latest = world["c1"]["latest"]
    before = lib.fingerprint(server)
    lib.as_user(c1, "mkdir -p %s/over && printf 'RANSOM\\n' > %s/over/shared.txt" % (WORK, WORK))
    result = alice(
        c1,
        "rsync -a --delete %s %s/over/ linkdest-server:%s/ </dev/null"
        % (lib.RSYNC_SSH, WORK, latest),
    )
    after = lib.fingerprint(server)
    new = sorted(
        name
        for name in set(after["areas"]["c1"]["names"]) - set(before["areas"]["c1"]["names"])
        if "back-" in name
    )
    try:
        finished = changes(
            history(before, before["areas"]["c1"]["names"]),
            history(after, before["areas"]["c1"]["names"]),
        )
        ok = not finished and all(n.startswith("incomplete_back-") for n in new)
        attack.record_verdict(
            "history",
            "rsync -a --delete SRC/ linkdest-server:%s/ (overwrite a finished snapshot)" % latest,
            "exit %d: received into %s" % (result.rc, ", ".join(new) or "nothing"),
            "contained: destination ignored, the finished snapshot unchanged"
            if ok
            else "FAIL: finished snapshots changed: %s" % finished[:3],
        )
        assert ok, (finished, new, result.output)
    finally:
        for name in new:
            if name.startswith("incomplete_back-"):
                server.run("rm -rf --one-file-system -- %s/c1/%s" % (lib.ROOT, name))


def test_deleting_everything_and_finalizing_keeps_history(attack, c1, server, world):
    """Ransomware's best try with the key: --delete from an empty folder into a
    finished snapshot's name, then finalize. The result is one more (empty)
    snapshot; every older one is exactly as it was."""
    latest = world["c1"]["latest"]
    before = lib.fingerprint(server)
    old = [n for n in before["areas"]["c1"]["names"] if n.startswith("back-")]
    result = alice(
        c1,
        "rsync -a --delete %s %s/empty/ linkdest-server:%s/ </dev/null && %s finalize 0"
        " </dev/null" % (lib.RSYNC_SSH, WORK, latest, SSH),
    )
    after = lib.fingerprint(server)
    name = result.output.split()[-1] if result.output.split() else ""
    changed = changes(history(before, old), history(after, old))
    current = after["areas"]["c1"]["current"]
    ok = result.rc == 0 and not changed and current == name and name not in old
    attack.record_verdict(
        "history",
        "rsync -a --delete EMPTY/ linkdest-server:%s/, then finalize 0" % latest,
        "exit %d: new empty snapshot %s, current -> %s" % (result.rc, name, current),
        "contained: every older snapshot unchanged (content, inode, links, mode, mtime)"
        if ok
        else "FAIL: older snapshots changed: %s" % changed[:3],
    )
    assert ok, (result.output, changed, current)


def test_ransomware_backed_up_by_cron_keeps_history(attack, c1, server, world):
    """Every file encrypted and some deleted, then the real `linkdest backup`."""
    before = lib.fingerprint(server)
    old = [n for n in before["areas"]["c1"]["names"] if n.startswith("back-")]
    result = lib.as_user(
        c1,
        "cd %s && for f in $(find . -type f); do base64 -w0 $f | rev > $f.locked && rm $f; done"
        " && rm -rf docs" % lib.SOURCE,
    )
    assert result.rc == 0, result.stderr
    name = lib.backup_ok(c1)
    after = lib.fingerprint(server)
    changed = changes(history(before, old, links=False), history(after, old, links=False))
    attack.record_verdict(
        "history",
        "ransomware encrypts and deletes the folder, then linkdest backup runs",
        "exit 0: new snapshot %s" % name,
        "contained: every older snapshot unchanged"
        if not changed
        else "FAIL: older snapshots changed: %s" % changed[:3],
    )
    assert not changed


@pytest.mark.parametrize("code", ["0", "24"])
def test_finalize_without_an_upload_changes_nothing(attack, c1, code):
    attack.attempt(
        "history",
        "ssh linkdest-server finalize %s with nothing received" % code,
        lambda: alice(c1, "%s finalize %s </dev/null" % (SSH, code)),
        expect="linkdest-server: ",
    )
