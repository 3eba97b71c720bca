# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The snapshot lifecycle end to end, in order: a tree made by the article's
script is adopted, explained by a dry run and by the module in check mode, and
linked by the next backup; then the small drive fills: backups only warn, the
daily prune's space guard removes what is older than the protected week (but
the snapshot before it), and the hard floor refuses a backup.

The tests run top to bottom on one world (molecule/lifecycle/prepare.yml made
the article's tree); each one leaves the state the next expects.
"""

import json
import shlex

import linkdest_testlib as lib
import pytest

CLIENT = "lifecycle-laptop"
ACCOUNT = "bk-" + CLIENT
AREA = "%s/%s" % (lib.ROOT, CLIENT)
SERVER_CMD = "/usr/local/sbin/linkdest-server"
MIB = 1024 * 1024


def finished(server) -> list[str]:
    return lib.snapshot_names(server, CLIENT)


@pytest.fixture(scope="module")
def article(server) -> list[str]:
    """The article's four snapshots, oldest first, read before any backup runs."""
    names = finished(server)
    assert len(names) == 4, names
    return names


def area_state(server) -> dict:
    """Every entry of the area with inode, owner and link target, to detect any change."""
    return lib.server_py(
        server,
        "import os, json; out = {}\n"
        "for base, dirs, files in os.walk(%r):\n"
        "    for name in dirs + files:\n"
        "        p = os.path.join(base, name); st = os.lstat(p)\n"
        "        out[p] = [st.st_ino, st.st_uid, st.st_nlink,"
        " os.readlink(p) if os.path.islink(p) else None]\n"
        "print(json.dumps(out))" % AREA,
    )


def inode(server, path: str) -> int:
    return int(lib.run_ok(server, "stat -c %%i %s" % path).strip())


def journal(server) -> list[dict]:
    content = server.file(AREA + "/.linkdest-journal").content_string
    return [json.loads(line) for line in content.splitlines()]


def lines_about(out: list[str], prefix: str) -> list[str]:
    return [line for line in out if line.startswith(prefix)]


# --- the drive and the adopted tree ----------------------------------------------------


def test_the_backup_drive_is_a_small_mount_of_its_own(server):
    assert server.mount_point(lib.ROOT).exists
    assert server.mount_point(lib.ROOT).filesystem == "tmpfs"
    total = int(lib.run_ok(server, "stat -f -c %%b %s" % lib.ROOT)) * int(
        lib.run_ok(server, "stat -f -c %%S %s" % lib.ROOT)
    )
    assert total == 64 * MIB


def test_the_article_tree_is_adopted_by_the_laptops_account(server, article):
    names = article
    area = server.file(AREA)
    assert area.user == ACCOUNT
    assert area.mode == 0o700
    # Nothing in the area belongs to the article's user any more ...
    leftover = lib.run_ok(server, "find %s ! -user %s -printf '%%p\\n'" % (AREA, ACCOUNT))
    assert leftover == ""
    # ... and each file keeps its old owner and mode the way rsync --fake-super does.
    xattr = lib.server_py(
        server,
        "import os, json; print(json.dumps(os.getxattr(%r, 'user.rsync.%%stat').decode()))"
        % ("%s/%s/notes/old.txt" % (AREA, names[-1])),
    )
    uid = lib.run_ok(server, "id -u alice").strip()
    gid = lib.run_ok(server, "id -g alice").strip()
    assert xattr == "100644 0,0 %s:%s" % (uid, gid)
    # The article's absolute `current` is read as it is.
    assert server.file(AREA + "/current").linked_to == "%s/%s" % (AREA, names[-1])
    assert lib.run_ok(server, "readlink %s/current" % AREA).startswith("/")
    listing = lib.run_ok(server, "%s list %s" % (SERVER_CMD, CLIENT)).splitlines()
    assert listing == names[:-1] + [names[-1] + " current"]


def test_a_second_adoption_changes_nothing(server):
    before = area_state(server)
    assert lib.run_ok(server, "%s adopt %s" % (SERVER_CMD, CLIENT)) == ""
    assert area_state(server) == before


# --- explaining before acting ------------------------------------------------------------


def test_prune_dry_run_explains_every_snapshot_and_changes_nothing(server, article):
    first, second, third, fourth = article
    day = second[len("back-") : len("back-") + 10]
    before = area_state(server)

    out = lib.run_ok(server, "%s prune --dry-run %s" % (SERVER_CMD, CLIENT)).splitlines()

    assert area_state(server) == before
    ours = lines_about(out, CLIENT + " back-")
    decisions = {line.split(" ", 2)[1]: line.split(" ", 2)[2] for line in ours}
    assert decisions[first].startswith("keep: weekly ")
    assert decisions[second] == "keep: daily %s" % day
    assert decisions[third] == "remove: thinned (daily %s kept by %s)" % (day, second)
    assert decisions[fourth] == "keep: newest"
    assert "%s: 3 kept, 1 to remove (dry run, nothing changed)" % CLIENT in out
    # --all reads the same decisions for every laptop.
    everyone = lib.run_ok(server, "%s prune --all --dry-run" % SERVER_CMD).splitlines()
    assert lines_about(everyone, CLIENT + " back-") == ours
    assert area_state(server) == before


def test_snapshot_prune_in_check_mode_reports_without_deleting(server, article):
    first, second, third, fourth = article
    before = area_state(server)
    result = lib.run_module(
        "lifecycle-server",
        "linkdest.backup.snapshot_prune",
        {"client": CLIENT, "space_guard": {"min_free_percent": 10}},
        check=True,
    )
    assert not result.get("failed"), result
    assert result["changed"] is True
    assert result["removed"] == [third]
    assert result["kept"] == [first, second, fourth]
    rules = {d["name"]: d["rule"] for d in result["decisions"]}
    assert rules[third].startswith("thinned (daily ")
    assert result["free"]["still_short"] is None
    assert area_state(server) == before


def test_snapshot_info_reports_what_each_snapshot_adds(server, article):
    result = lib.run_module(
        "lifecycle-server", "linkdest.backup.snapshot_info", {"client": CLIENT, "disk_usage": True}
    )
    assert not result.get("failed"), result
    assert result["changed"] is False
    by_name = {s["name"]: s for s in result["snapshots"]}
    fourth = article[-1]
    # The fourth adds late.txt and its directories; old.txt is shared by all four.
    assert by_name[fourth]["added_inodes"] == 3
    assert by_name[fourth]["current"] is True
    assert result["incomplete"] == [
        n for n in server.file(AREA).listdir() if n.startswith("incomplete_")
    ]


# --- the next backup links against the article's current ---------------------------------


def test_the_next_backup_links_against_the_articles_current_and_thins(laptop, server, article):
    first, second, third, fourth = article
    article_old = inode(server, "%s/%s/notes/old.txt" % (AREA, fourth))

    name = lib.backup_ok(laptop)

    new_old = "%s/%s/notes/old.txt" % (AREA, name)
    assert server.file(new_old).content_string == "written before linkdest\n"
    assert inode(server, new_old) == article_old
    assert server.file(AREA + "/current").linked_to == "%s/%s" % (AREA, name)
    # The article's failed run was resumed and is superseded now.
    assert not [n for n in server.file(AREA).listdir() if n.startswith("incomplete_")]
    # Thinning ran after the successful backup and said why.
    assert finished(server) == [first, second, fourth, name]
    pruned = {e["pruned"]: e["rule"] for e in journal(server) if "pruned" in e}
    assert pruned == {third: "thinned (daily %s kept by %s)" % (second[5:15], second)}


# --- a half hour with nothing new ------------------------------------------------------------


def test_a_half_hour_with_nothing_new_makes_no_snapshot_and_still_counts(laptop, server):
    """Nothing changed since the last snapshot: no snapshot, nothing written
    in the area but the check's record; status, list, a restore at the time of
    the check, the server's watchdog and its metrics, and retention all read
    it right."""
    before = finished(server)
    newest = before[-1]
    state = area_state(server)
    # Prune's decisions (its line about the drive's free room counts the check's file).
    prune_before = lines_about(
        lib.run_ok(server, "%s prune --dry-run %s" % (SERVER_CMD, CLIENT)).splitlines(), CLIENT
    )
    # A watchdog that calls a laptop stale after 36 s: wait until the
    # newest snapshot is older than that, so only the check can keep it fresh.
    config = json.loads(server.file("/etc/linkdest/server.json").content_string)
    config["check"] = dict(
        config.get("check", {}),
        stale_after_hours=0.01,
        alert_command="",
        alert_email="",
        metrics_dir="/tmp/quiet-metrics",
    )
    lib.run_ok(
        server,
        "mkdir -p /tmp/quiet-metrics && printf %%s %s > /tmp/quiet-check.json"
        % shlex.quote(json.dumps(config)),
    )
    check = "%s --config /tmp/quiet-check.json check" % SERVER_CMD
    snapshot_time = lib.server_py(
        server,
        "import json, datetime; print(json.dumps(datetime.datetime.strptime(%r,"
        " 'back-%%Y-%%m-%%dT%%H_%%M_%%S').replace(tzinfo=datetime.timezone.utc).timestamp()))"
        % newest,
    )
    lib.run_ok(
        server,
        "python3 -c 'import time; time.sleep(max(0, %f + 40 - time.time()))'" % snapshot_time,
    )
    stale = server.run(check)
    assert stale.rc == 1, stale.stdout + stale.stderr
    assert "%s: newest snapshot is" % CLIENT in stale.stdout

    assert lib.backup_ok(laptop) == newest
    # At once: the check is stale 36 s after it was made (docker calls on a
    # loaded machine take seconds each).
    fresh = server.run(check)
    assert fresh.rc == 0, fresh.stdout + fresh.stderr
    status = lib.read_status(laptop)
    assert status["last_kind"] == "unchanged", status
    assert finished(server) == before
    after = area_state(server)
    assert after.pop("%s/%s" % (AREA, ".linkdest-checked"), None) is not None
    state.pop("%s/%s" % (AREA, ".linkdest-checked"), None)
    assert after == state
    log = laptop.file(lib.HOME + "/.local/state/linkdest/linkdest.log").content_string
    assert "nothing changed since %s: no new snapshot" % newest in log

    shown = lib.as_user(laptop, "linkdest status").stdout
    assert (
        "Last backup:   up to date as of %s (snapshot %s)" % (status["last_checked"], newest)
        in shown
    ), shown
    listing = lib.as_user(laptop, "linkdest list").stdout
    assert "checked %s: nothing changed since %s" % (status["last_checked"], newest) in listing
    assert lib.as_user(laptop, "linkdest latest").stdout.strip() == newest

    metrics = server.file("/tmp/quiet-metrics/linkdest.prom").content_string
    checked_epoch = lib.server_py(
        server,
        "import json, datetime; print(json.dumps(datetime.datetime.fromisoformat(%r)"
        ".timestamp()))" % status["last_checked"],
    )
    assert (
        'linkdest_last_success_timestamp_seconds{client="%s"} %d' % (CLIENT, checked_epoch)
        in metrics
    )
    assert (
        'linkdest_newest_snapshot_timestamp_seconds{client="%s"} %d' % (CLIENT, snapshot_time)
        in metrics
    )

    restored = lib.as_user(
        laptop,
        "linkdest restore %s/notes/old.txt --at %s --to /tmp/quiet-restore"
        % (lib.SOURCE, status["last_checked"]),
    )
    assert restored.rc == 0, restored.stdout + restored.stderr
    assert "from %s" % newest in restored.stdout
    assert lib.run_ok(laptop, "cat /tmp/quiet-restore/old.txt") == "written before linkdest\n"
    # Retention decides as before: a check is not a snapshot.
    prune_after = lib.run_ok(server, "%s prune --dry-run %s" % (SERVER_CMD, CLIENT))
    assert lines_about(prune_after.splitlines(), CLIENT) == prune_before
    lib.run_ok(laptop, "rm -rf /tmp/quiet-restore")
    lib.run_ok(server, "rm -rf /tmp/quiet-check.json /tmp/quiet-metrics")


# --- the space guard ----------------------------------------------------------------------


def test_filling_the_drive_warns_and_the_daily_prune_spares_the_protected_week(
    laptop, server, article
):
    first, second, _third, fourth = article
    before = finished(server)
    assert before[:3] == [first, second, fourth]
    made = []
    for _round in range(4):
        # 12 MiB of new data a backup: the 64 MiB drive falls below 50% free at the third.
        assert (
            lib.as_user(laptop, "head -c %d /dev/urandom > %s/big.bin" % (12 * MIB, lib.SOURCE)).rc
            == 0
        )
        made.append(lib.backup_ok(laptop))

    # A backup never runs the space guard (a laptop could steer it with junk):
    # every snapshot is still there and the laptop's log says the drive is short.
    assert finished(server) == before + made
    log = laptop.file(lib.HOME + "/.local/state/linkdest/linkdest.log").content_string
    assert "warning: backup drive short of room: " in log
    assert "(the daily prune makes room)" in log

    # The daily prune (root, as cron runs it) takes only what is older than
    # the protected week, and keeps the newest of those: the article's second.
    result = server.run("%s prune --all" % SERVER_CMD)
    assert result.rc == 0, result.stderr
    assert finished(server) == [second, fourth] + before[3:] + made
    ours = lines_about(result.stdout.splitlines(), CLIENT + " " + first)
    assert len(ours) == 1
    assert ours[0].startswith(CLIENT + " %s remove: space guard (" % first)
    assert "is below 50%" in ours[0]
    assert (
        "still short of room after the space guard removed all it may (min_keep 3 per laptop,"
        " the last 7 days and the snapshot before them stay)" in result.stderr
    )
    assert server.file(AREA + "/current").linked_to == "%s/%s" % (AREA, made[-1])


# --- the hard floor -----------------------------------------------------------------------


def test_below_the_hard_floor_a_backup_is_refused_and_the_laptop_says_why(laptop, server):
    before = finished(server)
    # Leave about 6 MiB free: below the 15% (9.6 MiB) floor.
    filler = "%s/filler" % lib.ROOT
    lib.run_ok(
        server,
        "head -c $(( $(stat -f -c '%%a * %%S' %s) - 6 * %d )) /dev/zero > %s"
        % (lib.ROOT, MIB, filler),
    )
    try:
        lib.write_file(laptop, "after-the-floor.txt", "x")
        result = lib.backup(laptop)
        assert result.rc != 0
        log = laptop.file(lib.HOME + "/.local/state/linkdest/linkdest.log").content_string
        assert "linkdest-server: refused: backup drive %s is nearly full" % lib.ROOT in log
        assert "(the hard floor)" in log
        status = lib.read_status(laptop)
        assert status["last_exit"] != "0"
        assert finished(server) == before
        assert not [n for n in server.file(AREA).listdir() if n.startswith("incomplete_")]
        syslog = lib.run_ok(server, "journalctl -q -t linkdest-server --no-pager | tail -n 20")
        assert "is nearly full" in syslog
    finally:
        lib.run_ok(server, "rm -f %s" % filler)
    # With room again, the next backup goes through.
    assert lib.backup_ok(laptop) in finished(server)


# --- the daily prune ------------------------------------------------------------------------


def test_root_prunes_every_area_daily_from_cron(server):
    cron = server.file("/etc/cron.d/linkdest-server")
    assert cron.user == "root"
    assert cron.mode == 0o644
    line = "%s prune --all --quiet; %s manifest --all --quiet" % (SERVER_CMD, SERVER_CMD)
    assert "30 3 * * * root " + line in cron.content_string.splitlines()
    assert server.service("cron").is_running
    # What cron runs: quiet when there is nothing to say, and the area stays the laptop's.
    before = finished(server)
    result = server.run(line)
    assert result.rc == 0, result.stderr
    assert result.stdout == ""
    assert finished(server) == before
    # Afterwards every finished snapshot has a manifest, and no pruned one keeps its own.
    manifests = lib.server_py(
        server,
        "import os, json; print(json.dumps(sorted(os.listdir(%r))))"
        % ("%s/.linkdest-manifests/%s" % (lib.ROOT, CLIENT)),
    )
    assert manifests == before
    lock = server.file(AREA + "/.linkdest.lock")
    assert lock.user == ACCOUNT
