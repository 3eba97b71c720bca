# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""backup_mirror: real snapshots from a real laptop, mirrored by real rsync
between two Docker volumes, and every way the mirror must refuse to run.

The tests run in file order and build on each other's snapshots. Cron is
stopped on both hosts after the first test (which checks it runs), so no
scheduled backup or mirror changes the counts the tests assert on.
"""

import json
import re
import shlex
import time
import uuid

import linkdest_testlib as lib

SRC = "/media/backup_drive"
DST = "/media/backup_drive2"
CLIENT = "mirror-laptop"
AREA = "%s/%s" % (SRC, CLIENT)
MIRROR_AREA = "%s/%s" % (DST, CLIENT)
COMMAND = "/usr/local/sbin/linkdest-server mirror"
CONFIG = "/etc/linkdest/mirror.json"
LOG = "/var/log/linkdest-mirror.log"
ALERTS = "/var/log/linkdest-mirror-alerts"
STATE = "/var/lib/linkdest-mirror"
MARKER = ".linkdest-drive.json"
LIBRARY = "/usr/local/lib/linkdest"
HOLD_UNIT = "linkdest-test-hold-area"
HOLD_READY = "/run/linkdest-test-hold-ready"
DIRECTORY = 0o040000

testinfra_hosts = ["mirror-server"]


# --- helpers --------------------------------------------------------------------------


def mirror(server, args: str = ""):
    return server.run("%s %s" % (COMMAND, args))


def summary(server) -> dict:
    """The key=value fields of the newest summary line in the log."""
    lines = [line for line in server.file(LOG).content_string.splitlines() if ": areas=" in line]
    assert lines, "no summary line in %s" % LOG
    fields = dict(re.findall(r"\b(\w+)=(\S+)", lines[-1]))
    fields["line"] = lines[-1]
    return fields


def names(server, area: str) -> list:
    return lib.server_py(
        server,
        "import os, json; print(json.dumps(sorted(n for n in os.listdir(%r)"
        " if n.startswith('back-') and not os.path.islink(os.path.join(%r, n)))))" % (area, area),
    )


def current(server, area: str) -> str:
    return server.run("readlink %s/current" % area).stdout.strip()


def fingerprint(server, top: str) -> dict:
    """Every entry under top: type, inode, links, mode, size, mtime, xattrs."""
    code = r"""
import json, os, stat
top = %r
out = {}
for base, dirs, files in os.walk(top):
    for name in sorted(dirs + files):
        path = os.path.join(base, name)
        st = os.lstat(path)
        xattrs = {}
        if not stat.S_ISLNK(st.st_mode):
            xattrs = {k: os.getxattr(path, k).hex() for k in sorted(os.listxattr(path))}
        out[os.path.relpath(path, top)] = [
            stat.S_IFMT(st.st_mode), st.st_ino, st.st_nlink, stat.S_IMODE(st.st_mode),
            st.st_size, st.st_mtime_ns, xattrs,
        ]
print(json.dumps(out))
""" % (top,)
    return lib.server_py(server, code)


def contents(server, area: str) -> dict:
    """Per finished snapshot: path -> type, mode, size, mtime, xattrs (no inodes).

    A directory's mtime is left out: it says when rsync finished writing it.
    """
    out = {}
    for name in names(server, area):
        entries = fingerprint(server, "%s/%s" % (area, name))
        out[name] = {
            rel: [kind, mode, size, 0 if kind == DIRECTORY else mtime, xattrs]
            for rel, (kind, _ino, _nlink, mode, size, mtime, xattrs) in entries.items()
        }
        for value in out[name].values():
            if value[0] == DIRECTORY:
                value[2] = 0  # a directory's size depends on its history of entries
    return out


def inode_groups(server, area: str) -> list:
    """Which (snapshot, file) pairs share an inode, across every finished snapshot."""
    code = r"""
import json, os
area = %r
groups = {}
for name in sorted(n for n in os.listdir(area) if n.startswith("back-")):
    top = os.path.join(area, name)
    for base, _dirs, files in os.walk(top):
        for f in files:
            path = os.path.join(base, f)
            key = name + ":" + os.path.relpath(path, top)
            groups.setdefault(os.lstat(path).st_ino, []).append(key)
print(json.dumps(sorted(sorted(g) for g in groups.values())))
""" % (area,)
    return lib.server_py(server, code)


def listdir(server, path: str) -> list:
    """Every entry of a directory, hidden ones too (testinfra's listdir skips them)."""
    return lib.server_py(
        server, "import os, json; print(json.dumps(sorted(os.listdir(%r))))" % path
    )


def hidden_leftovers(server) -> list:
    return [
        n
        for n in listdir(server, MIRROR_AREA)
        if n.startswith((".mirroring-", ".mirror-resume-", ".deleting-"))
    ]


def delete_on_source(server, name: str) -> None:
    """Remove a snapshot from the backup drive as prune does: crash-safe, under the lock."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap\n"
        "with snap.area_lock(%r, wait=60):\n"
        "    snap.delete_snapshot(%r, %r)\n"
        "print('[]')\n" % (LIBRARY, AREA, AREA, name)
    )
    lib.server_py(server, code)


def config_with(server, path: str, **changes) -> str:
    """A copy of the role's mirror.json with some settings changed."""
    code = (
        "import json; data = json.load(open(%r)); data.update(json.loads(%r));"
        " open(%r, 'w').write(json.dumps(data)); print('[]')" % (CONFIG, json.dumps(changes), path)
    )
    lib.server_py(server, code)
    return path


def alerts(server) -> list:
    if not server.file(ALERTS).exists:
        return []
    return server.file(ALERTS).content_string.splitlines()


def new_snapshot(laptop, label: str) -> str:
    lib.write_file(laptop, "mirror/%s.txt" % label, "%s\n" % label)
    return lib.backup_ok(laptop)


# --- setup ------------------------------------------------------------------------------


def test_setup_marked_both_drives_and_recorded_the_mirror_drive(host):
    source = json.loads(host.file("%s/%s" % (SRC, MARKER)).content_string)
    dest = json.loads(host.file("%s/%s" % (DST, MARKER)).content_string)
    assert (source["role"], dest["role"]) == ("source", "destination")
    assert uuid.UUID(source["id"]) != uuid.UUID(dest["id"])
    state = json.loads(host.file(STATE + "/state.json").content_string)
    assert state["destination_id"] == dest["id"]
    assert state["source_id"] == source["id"]
    config = json.loads(host.file(CONFIG).content_string)
    assert (config["source"], config["destination"]) == (SRC, DST)
    assert config["source_must_be_mount"] is True
    assert config["destination_must_be_mount"] is True
    # Setup again (as every site.yml run does) keeps the identities.
    again = mirror(host, "setup")
    assert again.rc == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False
    assert json.loads(host.file("%s/%s" % (DST, MARKER)).content_string) == dest


def test_cron_runs_the_mirror_twice_a_day_niced(host):
    cron = host.file("/etc/cron.d/linkdest-mirror")
    assert cron.user == "root"
    assert cron.mode == 0o644
    assert (
        "0 10,23 * * * root nice -n 10 ionice -c 2 -n 7 %s --quiet" % COMMAND
        in cron.content_string.splitlines()
    )
    assert host.service("cron").is_enabled
    assert host.service("cron").is_running
    assert host.file("/etc/logrotate.d/linkdest-mirror").contains(LOG)


# --- copying ----------------------------------------------------------------------------


def test_first_run_copies_every_finished_snapshot_with_hard_links_intact(host, laptop, quiet):
    lib.write_file(laptop, "same.txt", "unchanged in every snapshot\n")
    lib.write_file(laptop, "edit.txt", "version 1\n", mode="0600")
    assert (
        lib.as_user(laptop, "ln -f %s/same.txt %s/same-hardlink.txt" % ((lib.SOURCE,) * 2)).rc == 0
    )
    first = new_snapshot(laptop, "one")
    lib.write_file(laptop, "edit.txt", "version 2, longer\n", mode="0600")
    new_snapshot(laptop, "two")
    last = new_snapshot(laptop, "three")
    # What a failed transfer leaves behind: never mirrored.
    host.run("install -d -o bk-%s -m 0700 %s/incomplete_back-2020-01-01T00_00_00" % (CLIENT, AREA))
    source_names = names(host, AREA)
    assert len(source_names) >= 3

    result = mirror(host)

    assert result.rc == 0, result.stderr
    fields = summary(host)
    assert fields["copied"] == str(len(source_names)), fields["line"]
    assert (fields["removed"], fields["failed"]) == ("0", "0")
    assert names(host, MIRROR_AREA) == source_names
    assert not host.file(MIRROR_AREA + "/incomplete_back-2020-01-01T00_00_00").exists
    assert current(host, MIRROR_AREA) == current(host, AREA) == source_names[-1]
    # Same files, modes, times and --fake-super xattrs; the same inode sharing.
    assert contents(host, MIRROR_AREA) == contents(host, AREA)
    assert inode_groups(host, MIRROR_AREA) == inode_groups(host, AREA)
    oldest = fingerprint(host, "%s/%s" % (MIRROR_AREA, first))
    newest = fingerprint(host, "%s/%s" % (MIRROR_AREA, last))
    assert newest["same.txt"][1] == oldest["same.txt"][1]
    assert newest["edit.txt"][1] != oldest["edit.txt"][1]
    assert "user.rsync.%stat" in newest["edit.txt"][6]
    assert hidden_leftovers(host) == []
    area = host.file(MIRROR_AREA)
    assert (area.user, area.mode) == ("bk-" + CLIENT, 0o700)
    assert host.file(STATE + "/last-success").exists


def test_the_cron_command_runs_in_crons_bare_environment(host):
    line = [
        entry
        for entry in host.file("/etc/cron.d/linkdest-mirror").content_string.splitlines()
        if entry.startswith("0 10,23 ")
    ][0]
    command = line.split(" root ", 1)[1]
    result = host.run(
        "env -i SHELL=/bin/sh PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -c %s",
        command,
    )
    assert result.rc == 0, result.stderr
    assert result.stdout == ""  # --quiet: cron mails nothing on success
    fields = summary(host)
    assert (fields["copied"], fields["removed"]) == ("0", "0"), fields["line"]


def test_a_run_after_one_new_snapshot_copies_only_that_one(host, laptop, quiet):
    before = {
        name: fingerprint(host, "%s/%s" % (MIRROR_AREA, name)) for name in names(host, MIRROR_AREA)
    }
    name = new_snapshot(laptop, "four")

    result = mirror(host)

    assert result.rc == 0, result.stderr
    fields = summary(host)
    assert (fields["copied"], fields["removed"]) == ("1", "0"), fields["line"]
    assert names(host, MIRROR_AREA) == names(host, AREA)
    assert current(host, MIRROR_AREA) == name
    # The snapshots already there were not rewritten, not even their inodes;
    # only their link counts grew with the new snapshot's hard links.
    for old, entries in before.items():
        after = fingerprint(host, "%s/%s" % (MIRROR_AREA, old))
        assert without_link_counts(after) == without_link_counts(entries), old
    assert inode_groups(host, MIRROR_AREA) == inode_groups(host, AREA)


def without_link_counts(entries: dict) -> dict:
    return {rel: value[:2] + value[3:] for rel, value in entries.items()}


def test_a_pruned_snapshot_disappears_from_the_mirror(host, quiet):
    oldest = names(host, AREA)[0]
    delete_on_source(host, oldest)

    result = mirror(host)

    assert result.rc == 0, result.stderr
    fields = summary(host)
    assert (fields["copied"], fields["removed"]) == ("0", "1"), fields["line"]
    assert oldest not in names(host, MIRROR_AREA)
    assert names(host, MIRROR_AREA) == names(host, AREA)
    assert hidden_leftovers(host) == []


def test_far_fewer_snapshots_on_the_source_removes_nothing_and_alerts(host, laptop, quiet):
    new_snapshot(laptop, "five")
    new_snapshot(laptop, "six")
    assert mirror(host).rc == 0
    kept = names(host, AREA)
    for name in kept[:-1]:
        delete_on_source(host, name)
    newest = new_snapshot(laptop, "seven")
    alerts_before = len(alerts(host))

    result = mirror(host)

    assert result.rc == 65, (result.stdout, result.stderr)
    fields = summary(host)
    assert (fields["copied"], fields["removed"]) == ("1", "0"), fields["line"]
    assert fields["withheld"] == str(len(kept) - 1)
    assert names(host, MIRROR_AREA) == sorted(kept + [newest])
    assert current(host, MIRROR_AREA) == newest
    new_alerts = alerts(host)[alerts_before:]
    assert len(new_alerts) == 1
    assert new_alerts[0].startswith("failure mirror removals-refused")
    assert "--allow-removals" in new_alerts[0]

    forced = mirror(host, "--allow-removals")
    assert forced.rc == 0, forced.stderr
    assert summary(host)["removed"] == str(len(kept) - 1)
    assert names(host, MIRROR_AREA) == names(host, AREA) == [kept[-1], newest]
    assert alerts(host)[-1].startswith("recovery the mirror works again")


# --- locks ------------------------------------------------------------------------------


def hold_area(host, seconds: int) -> None:
    """Hold the area's lock from another process, as a finalize or prune would."""
    host.run("rm -f %s" % HOLD_READY)
    code = (
        "import fcntl, os, time\n"
        "fd = os.open(%r, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "open(%r, 'w').close()\n"
        "time.sleep(%d)\n" % (AREA + "/.linkdest.lock", HOLD_READY, seconds)
    )
    started = host.run("systemd-run --quiet --collect --unit %s python3 -c %s", HOLD_UNIT, code)
    assert started.rc == 0, started.stderr
    for _ in range(100):
        if host.file(HOLD_READY).exists:
            return
        time.sleep(0.1)
    raise AssertionError("the lock holder did not start")


def test_a_run_during_a_finalize_waits_for_the_area(host, laptop, quiet):
    name = new_snapshot(laptop, "eight")
    hold_area(host, 6)
    started = time.monotonic()
    result = mirror(host)
    waited = time.monotonic() - started
    assert result.rc == 0, result.stderr
    assert waited >= 3, waited
    assert summary(host)["copied"] == "1"
    assert names(host, MIRROR_AREA) == names(host, AREA)
    assert current(host, MIRROR_AREA) == name


def test_a_run_that_cannot_get_the_area_exits_busy_without_copying(host, laptop, quiet):
    new_snapshot(laptop, "nine")
    before = fingerprint(host, DST)
    config = config_with(host, "/root/mirror-short-wait.json", lock_timeout=2)
    hold_area(host, 30)
    try:
        result = mirror(host, "--config %s" % config)
    finally:
        host.run("systemctl stop %s" % HOLD_UNIT)
    assert result.rc == 75, (result.stdout, result.stderr)
    fields = summary(host)
    assert (fields["copied"], fields["busy"]) == ("0", "1"), fields["line"]
    assert fingerprint(host, DST) == before
    assert alerts(host)[-1].startswith("failure mirror busy")
    assert mirror(host).rc == 0  # the next run catches up


# --- refusals ---------------------------------------------------------------------------


def test_an_unmounted_source_leaves_the_mirror_untouched(host, laptop, quiet):
    new_snapshot(laptop, "ten")  # something the refused run would otherwise copy
    # What an unplugged drive leaves: a directory on the system disk. Give it
    # the marker and a snapshot, so only the mount check can refuse it.
    host.run(
        "rm -rf /srv/unplugged-source && mkdir -p /srv/unplugged-source/%s/back-2020-01-01T00_00_00"
        " && cp %s/%s /srv/unplugged-source/" % (CLIENT, SRC, MARKER)
    )
    config = config_with(host, "/root/mirror-unplugged-source.json", source="/srv/unplugged-source")
    before = fingerprint(host, DST)

    result = mirror(host, "--config %s" % config)

    assert result.rc == 72, (result.stdout, result.stderr)
    assert "source drive /srv/unplugged-source is not a mount point" in result.stderr
    assert fingerprint(host, DST) == before
    assert "mirror refused: source drive /srv/unplugged-source" in alerts(host)[-1]


def test_a_mount_point_on_the_system_disk_is_not_a_drive(host, quiet):
    # A directory of the root file system bind-mounted under /run (a tmpfs):
    # a mount point, but on the root file system's device.
    host.run("rm -rf /srv/bound && mkdir -p /srv/bound /run/bound-drive")
    host.run("cp %s/%s /srv/bound/" % (DST, MARKER))
    assert host.run("mount --bind /srv/bound /run/bound-drive").rc == 0
    try:
        assert host.run("mountpoint -q /run/bound-drive").rc == 0
        config = config_with(host, "/root/mirror-bound.json", destination="/run/bound-drive")
        result = mirror(host, "--config %s" % config)
        listing = listdir(host, "/srv/bound")
    finally:
        host.run("umount /run/bound-drive")
    assert result.rc == 72, (result.stdout, result.stderr)
    assert "/run/bound-drive is on the root file system's device" in result.stderr
    assert listing == [MARKER]


def test_an_unmounted_destination_leaves_the_system_disk_untouched(host, quiet):
    host.run("rm -rf /srv/unplugged-mirror && mkdir -p /srv/unplugged-mirror")
    host.run("cp %s/%s /srv/unplugged-mirror/" % (DST, MARKER))
    config = config_with(
        host, "/root/mirror-unplugged-dest.json", destination="/srv/unplugged-mirror"
    )
    used_before = host.run("du -s --bytes /srv/unplugged-mirror").stdout.split()[0]

    result = mirror(host, "--config %s" % config)

    assert result.rc == 72, (result.stdout, result.stderr)
    assert "destination drive /srv/unplugged-mirror is not a mount point" in result.stderr
    assert listdir(host, "/srv/unplugged-mirror") == [MARKER]
    assert host.run("du -s --bytes /srv/unplugged-mirror").stdout.split()[0] == used_before


def test_a_swapped_mirror_drive_is_refused(host, quiet):
    marker = "%s/%s" % (DST, MARKER)
    saved = host.file(marker).content_string
    other = json.loads(saved)
    other["id"] = str(uuid.uuid4())
    before = fingerprint(host, DST)
    host.run("printf %%s %s > %s" % (shlex.quote(json.dumps(other)), marker))
    try:
        result = mirror(host)
        after = fingerprint(host, DST)
        setup = mirror(host, "setup")
    finally:
        host.run("printf %%s %s > %s" % (shlex.quote(saved), marker))
    assert result.rc == 77, (result.stdout, result.stderr)
    assert "a different disk is plugged in" in result.stderr
    # Only the marker this test rewrote differs.
    del before[MARKER], after[MARKER]
    assert after == before
    assert setup.rc == 77
    assert "--new-destination" in setup.stderr


def test_a_missing_marker_is_refused(host, quiet):
    marker = "%s/%s" % (SRC, MARKER)
    assert host.run("mv %s %s.away" % (marker, marker)).rc == 0
    before = fingerprint(host, DST)
    try:
        result = mirror(host)
    finally:
        host.run("mv %s.away %s" % (marker, marker))
    assert result.rc == 77, (result.stdout, result.stderr)
    assert "carries no source marker" in result.stderr
    assert fingerprint(host, DST) == before


def test_a_dry_run_changes_nothing_and_the_next_run_catches_up(host, quiet):
    before = fingerprint(host, DST)
    dry = mirror(host, "--dry-run")
    assert dry.rc == 0, dry.stderr
    assert "would copy %s/" % CLIENT in dry.stdout
    assert fingerprint(host, DST) == before

    result = mirror(host)
    assert result.rc == 0, result.stderr
    assert names(host, MIRROR_AREA) == names(host, AREA)
    assert contents(host, MIRROR_AREA) == contents(host, AREA)
    assert inode_groups(host, MIRROR_AREA) == inode_groups(host, AREA)
    state = json.loads(host.file(STATE + "/state.json").content_string)
    assert state["last_run"]["outcome"] == "ok"
    assert host.file(STATE + "/last-success").content_string.strip() == state["last_success"]
