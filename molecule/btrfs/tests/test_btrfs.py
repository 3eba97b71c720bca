# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The btrfs backend end to end, in order: each test leaves the state the next
expects (one laptop, one btrfs drive, real sshd, rsync, sudo and btrfs)."""

import re

import linkdest_testlib as lib
import pytest

CLIENT = "btrfs-laptop"
ACCOUNT = "bk-" + CLIENT
AREA = "%s/%s" % (lib.ROOT, CLIENT)
SERVER_CMD = "/usr/local/sbin/linkdest-server"
MIB = 1024 * 1024


def as_account(server, command: str):
    """Run a command as the laptop's account on the server: what an exploit of
    the rsync receiver (running as that account) could do."""
    return server.run("runuser -u %s -- %s" % (ACCOUNT, command))


def subvolume(server, name: str) -> dict:
    path = "%s/%s" % (AREA, name)
    return lib.server_py(
        server,
        "import json, os, subprocess; st = os.lstat(%r)\n"
        "ro = subprocess.run(['btrfs', 'property', 'get', '-ts', %r, 'ro'],"
        " capture_output=True, text=True).stdout.strip()\n"
        "print(json.dumps(dict(inode=st.st_ino, uid=st.st_uid, mode=oct(st.st_mode & 0o7777),"
        " ro=ro)))" % (path, path),
    )


def exclusive_bytes(server, name: str) -> int:
    # Sealing deletes the run's subvolume; until btrfs has cleaned it up it
    # still shares the blocks, so wait for that first.
    lib.run_ok(server, "btrfs subvolume sync %s" % lib.ROOT)
    out = lib.run_ok(server, "btrfs filesystem du -s --raw %s/%s" % (AREA, name))
    return int(out.splitlines()[-1].split()[1])


def incomplete(server) -> list[str]:
    return [n for n in server.file(AREA).listdir() if n.startswith("incomplete_back-")]


def sha256(host, path: str) -> str:
    return lib.run_ok(host, "sha256sum %s" % path).split()[0]


@pytest.fixture(scope="module")
def made():
    """Snapshot names the tests made, in order."""
    return []


# --- the drive and the rights --------------------------------------------------------------


def test_the_backup_drive_is_btrfs_and_the_server_uses_it(server):
    assert lib.run_ok(server, "stat -f -c %%T %s" % lib.ROOT).strip() == "btrfs"
    config = lib.server_py(server, "import json; print(open('/etc/linkdest/server.json').read())")
    assert config["backend"] == "btrfs"
    assert server.package("btrfs-progs").is_installed
    assert server.package("sudo").is_installed


def test_the_sudo_rule_allows_the_account_one_command_and_nothing_else(server):
    rule = server.file("/etc/sudoers.d/linkdest-server")
    assert (rule.user, rule.group, rule.mode) == ("root", "root", 0o440)
    assert server.run("visudo -cf /etc/sudoers.d/linkdest-server").rc == 0
    listed = lib.run_ok(server, "sudo -l -U %s" % ACCOUNT)
    allowed = listed.split("may run the following commands on", 1)[1].split(":", 1)[1]
    assert allowed.strip().startswith("(root) NOPASSWD: "), listed
    commands = allowed.strip()[len("(root) NOPASSWD: ") :].split(", ")
    assert sorted(commands) == ["%s manifest back-*" % SERVER_CMD] + [
        "%s subvolume %s incomplete_back-*" % (SERVER_CMD, operation)
        for operation in ("discard", "seal", "start")
    ], listed
    for forbidden in (
        "sudo -n /bin/sh -c id",
        "sudo -n %s prune --all" % SERVER_CMD,
        "sudo -n %s gate %s" % (SERVER_CMD, CLIENT),
        "sudo -n %s subvolume discard back-2026-01-01T00_00_00" % SERVER_CMD,
        "sudo -n %s manifest --all" % SERVER_CMD,
        "sudo -n %s verify" % SERVER_CMD,
    ):
        result = as_account(server, forbidden)
        assert result.rc != 0, forbidden
        assert "password is required" in result.stderr or "not allowed" in result.stderr, (
            forbidden,
            result.stderr,
        )


# --- backups -----------------------------------------------------------------------------


def test_a_backup_is_a_read_only_subvolume_that_root_owns(laptop, server, made):
    lib.write_file(laptop, "docs/letter.txt", "dear btrfs\n")
    lib.write_file(laptop, "docs/script.sh", "#!/bin/sh\necho hi\n", mode="0755")
    name = lib.backup_ok(laptop)
    made.append(name)

    info = subvolume(server, name)
    assert info["inode"] == 256, "not a subvolume: %s" % info
    assert info["ro"] == "ro=true"
    assert info["uid"] == 0
    assert server.file(AREA + "/current").linked_to == "%s/%s" % (AREA, name)
    assert incomplete(server) == []
    copy = "%s/%s/docs/letter.txt" % (AREA, name)
    assert server.file(copy).content_string == "dear btrfs\n"
    # The laptop's modes are kept the --fake-super way, as on hard links.
    entries = lib.entries(server, CLIENT, name)
    assert entries["docs/script.sh"]["mode"] == 0o755


def test_a_finished_snapshot_refuses_writes_even_from_root(server, made):
    target = "%s/%s/docs/letter.txt" % (AREA, made[0])
    for attempt in (
        "sh -c 'echo x >> %s'" % target,
        "touch %s/%s/new-file" % (AREA, made[0]),
        "chmod 0600 %s" % target,
        "rm %s" % target,
    ):
        result = server.run(attempt)
        assert result.rc != 0, attempt
        assert "Read-only file system" in result.stderr, (attempt, result.stderr)
    assert server.file(target).content_string == "dear btrfs\n"


def test_the_laptops_account_can_neither_unseal_nor_delete_it(server, made):
    path = "%s/%s" % (AREA, made[0])
    unseal = as_account(server, "btrfs property set -ts %s ro false" % path)
    assert unseal.rc != 0
    assert "Operation not permitted" in unseal.stderr, unseal.stderr
    delete = as_account(server, "btrfs subvolume delete %s" % path)
    assert delete.rc != 0
    # Through the helper, naming the finished snapshot as if it were incomplete.
    stamp = made[0][len("back-") :]
    helper = as_account(
        server, "sudo -n %s subvolume discard incomplete_back-%s" % (SERVER_CMD, stamp)
    )
    assert helper.rc != 0
    # Nor can it rename it to an interrupted run's name to trick root: the
    # area's directory is root's.
    renamed = as_account(server, "mv %s %s/incomplete_%s" % (path, AREA, made[0]))
    assert renamed.rc != 0
    assert "Permission denied" in renamed.stderr, renamed.stderr
    # Nor does root start a run dated in the past, or seal one it did not start.
    for operation, when in (("start", "2020-01-01T00_00_00"), ("seal", stamp)):
        asked = as_account(
            server, "sudo -n %s subvolume %s incomplete_back-%s" % (SERVER_CMD, operation, when)
        )
        assert asked.rc != 0, (operation, when)
        assert "not named for now" in asked.stderr or "did not start" in asked.stderr
    assert subvolume(server, made[0])["ro"] == "ro=true"
    assert server.file(path + "/docs/letter.txt").content_string == "dear btrfs\n"


def test_the_area_is_roots_and_readable_only_through_the_laptops_own_group(server):
    area = server.file(AREA)
    assert (area.user, area.group, area.mode) == ("root", ACCOUNT, 0o750)
    assert ACCOUNT in server.user(ACCOUNT).groups
    for name in (".linkdest-journal", ".linkdest-received", ".linkdest-changes"):
        assert server.file("%s/%s" % (AREA, name)).user == ACCOUNT, name
    assert server.file(AREA + "/.linkdest.lock").user == "root"
    assert server.file(AREA + "/current").user == "root"
    # Another laptop's account on the same drive reads nothing of it.
    peek = server.run("runuser -u bk-hardlink-laptop -- ls %s" % AREA)
    assert peek.rc != 0
    assert "Permission denied" in peek.stderr


def server_now(server) -> str:
    return lib.run_ok(server, "date -u +%Y-%m-%dT%H_%M_%S").strip()


def test_the_account_can_rename_move_or_replace_no_name_in_its_area(laptop, server, made):
    """Issue 20's routes, as the laptop's account with a shell on the server."""
    # Root's prune and verify make their own files (locks, the heal journal)
    # on a first run: made before the fingerprint, so only the attempts count.
    lib.run_ok(server, "%s prune --all --quiet" % SERVER_CMD)
    lib.run_ok(server, "%s verify --restart --quiet" % SERVER_CMD)
    before = lib.fingerprint(server)
    old = made[0]
    run = "incomplete_back-" + server_now(server)
    sudo = "sudo -n %s subvolume" % SERVER_CMD
    assert as_account(server, "%s start %s" % (sudo, run)).rc == 0
    refused = {
        "move the run aside": "mv %s/%s %s/aside" % (AREA, run, AREA),
        "seal a finished snapshot (route 1)": "mv %s/%s %s/%s" % (AREA, old, AREA, run),
        "redate newer (route 2)": "mv %s/%s %s/back-2099-01-01T00_00_00" % (AREA, old, AREA),
        "redate older": "mv %s/%s %s/back-2000-01-01T00_00_00" % (AREA, old, AREA),
        "to an incomplete name": "mv %s/%s %s/incomplete_%s" % (AREA, old, AREA, old),
        "to a trash name": "mv %s/%s %s/.deleting-%s" % (AREA, old, AREA, old),
        "plant a snapshot": "mkdir %s/back-2099-01-01T00_00_00" % AREA,
        "swap current": "ln -sfn %s %s/current" % (old, AREA),
        "remove current": "rm -f %s/current" % AREA,
        "remove the lock": "rm -f %s/.linkdest.lock" % AREA,
    }
    for what, command in refused.items():
        result = as_account(server, command)
        assert result.rc != 0, what
        assert "Permission denied" in result.stderr, (what, result.stderr)
    # Seal or discard of a finished snapshot under any name.
    for operation in ("seal", "discard"):
        for name in (old, "incomplete_" + old):
            assert as_account(server, "%s %s %s" % (sudo, operation, name)).rc != 0
    # The account may drop its own run.
    assert as_account(server, "%s discard %s" % (sudo, run)).rc == 0

    # Root's own readers of names then see the history as it was.
    lib.run_ok(server, "%s prune --all --quiet" % SERVER_CMD)
    lib.run_ok(server, "%s verify --restart --quiet" % SERVER_CMD)
    restored = lib.as_user(
        laptop,
        "cd %s && linkdest restore docs/letter.txt --at %s --to /tmp/as-of-old" % (lib.SOURCE, old),
    )
    assert restored.rc == 0, restored.stdout + restored.stderr
    assert laptop.file("/tmp/as-of-old/letter.txt").content_string == "dear btrfs\n"
    assert lib.fingerprint_diff(before, lib.fingerprint(server)) == []


def test_root_seals_only_the_subvolume_it_started_under_that_name(server, made):
    """Route 1 with the rename done as root works (the order a race would
    give, or an area of the old layout): the seal is refused and alerted."""
    before = lib.fingerprint(server)
    old = made[0]
    run = "incomplete_back-" + server_now(server)
    sudo = "sudo -n %s subvolume" % SERVER_CMD
    assert as_account(server, "%s start %s" % (sudo, run)).rc == 0
    lib.run_ok(
        server, "mv %s/%s %s/aside && mv %s/%s %s/%s" % (AREA, run, AREA, AREA, old, AREA, run)
    )
    try:
        sealed = as_account(server, "%s seal %s" % (sudo, run))
        dropped = as_account(server, "%s discard %s" % (sudo, run))
    finally:
        lib.run_ok(
            server, "mv %s/%s %s/%s && mv %s/aside %s/%s" % (AREA, run, AREA, old, AREA, AREA, run)
        )
    for result in (sealed, dropped):
        assert result.rc != 0
        assert "root started" in result.stderr, result.stderr
    log = lib.run_ok(server, "journalctl -q -t linkdest-server --no-pager | tail -n 20")
    assert "refused: subvolume seal: %s is subvolume" % run in log, log
    assert as_account(server, "%s discard %s" % (sudo, run)).rc == 0
    assert subvolume(server, old)["ro"] == "ro=true"
    assert lib.fingerprint_diff(before, lib.fingerprint(server)) == []


def test_an_unchanged_backup_costs_no_bytes(laptop, server, made):
    name = lib.backup_ok(laptop)
    made.append(name)
    assert subvolume(server, name)["ro"] == "ro=true"
    assert exclusive_bytes(server, name) == 0
    # snapshot_info reports the same through the shared library.
    result = lib.run_module(
        "btrfs-server", "linkdest.backup.snapshot_info", {"client": CLIENT, "disk_usage": True}
    )
    assert not result.get("failed"), result
    sizes = {s["name"]: s["added_bytes"] for s in result["snapshots"]}
    assert sizes[name] == 0


def test_a_4k_change_in_a_100mb_file_stores_only_the_changed_blocks(laptop, server, made):
    big = lib.SOURCE + "/big.bin"
    assert lib.as_user(laptop, "head -c %d /dev/urandom > %s" % (100 * MIB, big)).rc == 0
    first = lib.backup_ok(laptop)
    made.append(first)
    assert exclusive_bytes(server, first) >= 100 * MIB
    assert (
        lib.as_user(
            laptop,
            "head -c 4096 /dev/urandom | dd of=%s bs=4096 seek=12800 conv=notrunc status=none"
            % big,
        ).rc
        == 0
    )

    second = lib.backup_ok(laptop)
    made.append(second)

    added = exclusive_bytes(server, second)
    sent = int(lib.read_status(laptop)["last_bytes_sent"])
    print(
        "4 KiB change in 100 MiB: %d bytes exclusive to the new snapshot, %d sent" % (added, sent)
    )
    # About the changed block (rsync's block here is about 10 KiB), not 100 MB.
    assert 0 < added <= 256 * 1024, added
    assert sent < MIB, sent
    assert sha256(server, "%s/%s/big.bin" % (AREA, second)) == sha256(laptop, big)
    # The older snapshot still holds the old block, untouched.
    assert sha256(server, "%s/%s/big.bin" % (AREA, first)) != sha256(laptop, big)


def test_a_deleted_file_is_gone_from_the_next_snapshot(laptop, server, made):
    # The run starts as a copy of current: the server deletes what the laptop deleted.
    assert lib.as_user(laptop, "rm %s/docs/script.sh" % lib.SOURCE).rc == 0
    name = lib.backup_ok(laptop)
    made.append(name)
    assert not server.file("%s/%s/docs/script.sh" % (AREA, name)).exists
    assert server.file("%s/%s/docs/script.sh" % (AREA, made[0])).exists


def test_a_killed_backup_is_resumed_in_its_own_subvolume(laptop, server, made):
    files = ["resume/part%d.bin" % n for n in range(1, 5)]
    size = 6 * MIB
    arrived = lib.kill_a_backup_midway(laptop, server, CLIENT, files, size)
    interrupted = incomplete(server)
    assert len(interrupted) == 1, interrupted
    assert subvolume(server, interrupted[0])["inode"] == 256

    name = lib.backup_ok(laptop)
    made.append(name)

    sent = int(lib.read_status(laptop)["last_bytes_sent"])
    assert sent < size * (len(files) - len(arrived)) + MIB, (sent, arrived)
    for rel in files:
        assert sha256(server, "%s/%s/%s" % (AREA, name, rel)) == sha256(
            laptop, "%s/%s" % (lib.SOURCE, rel)
        )
    assert incomplete(server) == []
    log = lib.run_ok(server, "journalctl -q -t linkdest-server --no-pager | tail -n 40")
    assert "started %s (resumed %s)" % ("incomplete_" + name, interrupted[0]) in log, log
    assert lib.as_user(laptop, "rm -r %s/resume" % lib.SOURCE).rc == 0


# --- attacks with the laptop's own key ------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    ["--inplace", "--append", "--remote-option=--inplace", "--link-dest=../back-x", "-K"],
)
def test_forbidden_rsync_options_are_refused_and_change_nothing(laptop, server, options):
    before = lib.fingerprint(server)
    result = lib.as_user(
        laptop,
        "rsync -a %s %s %s/ linkdest-server:snapshot/" % (options, lib.RSYNC_SSH, lib.SOURCE),
    )
    assert result.rc != 0
    assert "refused" in result.stdout + result.stderr, result.stderr
    assert lib.fingerprint_diff(before, lib.fingerprint(server)) == []
    assert incomplete(server) == []


def test_a_file_excluded_later_leaves_the_next_snapshot(laptop, server, made):
    # A run starts as a copy of current: the receiver deletes what the laptop
    # now excludes only because linkdest sends --delete-excluded.
    assert "--delete-excluded" in laptop.file(lib.CLIENT_PROGRAM).content_string
    lib.write_file(laptop, "notes/draft.skip", "scratch\n")
    name = lib.backup_ok(laptop)
    made.append(name)
    assert server.file("%s/%s/notes/draft.skip" % (AREA, name)).exists

    rsync = "rsync -a --delete %%s --exclude=*.skip %s %s/ linkdest-server:snapshot/" % (
        lib.RSYNC_SSH,
        lib.SOURCE,
    )
    finalize = "ssh -F %s linkdest-server finalize 0" % lib.SSH_CONFIG
    kept = lib.as_user(laptop, "%s && %s" % (rsync % "", finalize))
    assert kept.rc == 0, kept.stderr
    without = kept.stdout.strip()
    gone = lib.as_user(laptop, "%s && %s" % (rsync % "--delete-excluded", finalize))
    assert gone.rc == 0, gone.stderr
    latest = gone.stdout.strip()
    made.extend([without, latest])
    assert server.file("%s/%s/notes/draft.skip" % (AREA, without)).exists
    assert not server.file("%s/%s/notes/draft.skip" % (AREA, latest)).exists
    assert lib.as_user(laptop, "rm %s/notes/draft.skip" % lib.SOURCE).rc == 0


def test_rewriting_every_file_in_place_leaves_older_snapshots_as_they_were(laptop, server, made):
    # --inplace on the server writes into files whose blocks older snapshots
    # share: copy-on-write must keep every older snapshot bit for bit.
    before = lib.fingerprint(server)
    script = (
        "find %s -type f -exec sh -c"
        " 'printf RANSOM | dd of=\"$1\" conv=notrunc status=none' _ {} ';'" % lib.SOURCE
    )
    assert lib.as_user(laptop, script).rc == 0
    name = lib.backup_ok(laptop)
    made.append(name)
    after = lib.fingerprint(server)
    old = before["areas"][CLIENT]["files"]
    kept = {k: v for k, v in after["areas"][CLIENT]["files"].items() if k.split("/")[0] != name}
    assert kept == old, [k for k in old if kept.get(k) != old[k]][:10]
    letter = "%s/%s/docs/letter.txt" % (AREA, name)
    assert server.file(letter).content_string.startswith("RANSOM")
    assert server.file("%s/%s/docs/letter.txt" % (AREA, made[0])).content_string == "dear btrfs\n"


def test_a_planted_current_symlink_is_stored_inert(laptop, server, made):
    assert lib.as_user(laptop, "ln -sfn /etc %s/current" % lib.SOURCE).rc == 0
    name = lib.backup_ok(laptop)
    made.append(name)
    entry = lib.entries(server, CLIENT, name)["current"]
    assert entry["type"] == "link"
    assert entry["link"] == "/etc"
    assert entry["server_type"] == "other"  # a plain file on the server: nothing follows it
    assert server.file(AREA + "/current").linked_to == "%s/%s" % (AREA, name)
    assert lib.as_user(laptop, "rm %s/current" % lib.SOURCE).rc == 0


# --- restore, prune, space ------------------------------------------------------------------


def test_restore_reads_from_a_btrfs_snapshot(laptop, made):
    assert lib.as_user(laptop, "rm %s/docs/letter.txt" % lib.SOURCE).rc == 0
    result = lib.as_user(
        laptop,
        # As it was in the first snapshot, before the ransomware test rewrote it.
        "cd %s/docs && linkdest restore letter.txt --at %s --to %s/docs"
        % (lib.SOURCE, made[0], lib.SOURCE),
    )
    assert result.rc == 0, result.stdout + result.stderr
    restored = laptop.file(lib.SOURCE + "/docs/letter.txt")
    assert restored.content_string == "dear btrfs\n"
    assert restored.user == "alice"


def mirror_summary(server) -> dict:
    lines = [
        line
        for line in server.file("/var/log/linkdest-mirror.log").content_string.splitlines()
        if ": areas=" in line
    ]
    return dict(re.findall(r"\b(\w+)=(\S+)", lines[-1]))


def test_the_mirror_sends_each_snapshot_with_btrfs_send(laptop, server, made):
    mirrored = "/media/mirror_drive/" + CLIENT
    result = server.run("%s mirror" % SERVER_CMD)
    assert result.rc == 0, result.stdout + result.stderr
    source_names = lib.snapshot_names(server, CLIENT)
    assert (
        lib.server_py(
            server,
            "import os, json; print(json.dumps(sorted(n for n in os.listdir(%r)"
            " if n.startswith('back-'))))" % mirrored,
        )
        == source_names
    )
    for name in (source_names[0], source_names[-1]):
        info = lib.server_py(
            server,
            "import os, json, subprocess; p = %r; st = os.lstat(p)\n"
            "ro = subprocess.run(['btrfs', 'property', 'get', '-ts', p, 'ro'],"
            " capture_output=True, text=True).stdout.strip()\n"
            "print(json.dumps([st.st_ino, ro]))" % ("%s/%s" % (mirrored, name)),
        )
        assert info == [256, "ro=true"], (name, info)
    newest = source_names[-1]
    assert sha256(server, "%s/%s/big.bin" % (mirrored, newest)) == sha256(
        server, "%s/%s/big.bin" % (AREA, newest)
    )
    assert server.file(mirrored + "/current").linked_to == "%s/%s" % (mirrored, newest)

    # One more snapshot with a 4 KiB change: the mirror sends the difference.
    assert (
        lib.as_user(
            laptop,
            "head -c 4096 /dev/urandom | dd of=%s/big.bin bs=4096 seek=100 conv=notrunc"
            " status=none" % lib.SOURCE,
        ).rc
        == 0
    )
    made.append(lib.backup_ok(laptop))
    again = server.run("%s mirror" % SERVER_CMD)
    assert again.rc == 0, again.stdout + again.stderr
    fields = mirror_summary(server)
    print("mirror of one new snapshot by btrfs send: %s bytes" % fields.get("bytes"))
    assert fields["copied"] == "1", fields
    assert int(fields["bytes"]) < MIB, fields
    assert sha256(server, "%s/%s/big.bin" % (mirrored, made[-1])) == sha256(
        laptop, lib.SOURCE + "/big.bin"
    )


def received_uuid(server, path: str) -> str:
    out = lib.run_ok(server, "btrfs subvolume show %s" % path)
    return re.search(r"Received UUID:\s*(\S+)", out).group(1)


def test_verify_repairs_damage_on_either_btrfs_drive_from_the_other(server, made):
    mirrored = "/media/mirror_drive/" + CLIENT
    newest, older = made[-1], made[-2]
    clean = server.run("%s verify --restart" % SERVER_CMD)
    assert clean.rc == 0, clean.stdout + clean.stderr
    received = {name: received_uuid(server, "%s/%s" % (mirrored, name)) for name in made}
    good = {
        (area, name): sha256(server, "%s/%s/big.bin" % (area, name))
        for area in (AREA, mirrored)
        for name in (newest, older)
    }
    lib.flip_in_sealed_on(server, "%s/%s" % (AREA, newest), "big.bin", 5 * MIB)
    lib.flip_in_sealed_on(server, "%s/%s" % (mirrored, older), "big.bin", 7 * MIB)
    assert sha256(server, "%s/%s/big.bin" % (AREA, newest)) != good[(AREA, newest)]

    result = server.run("%s verify --restart" % SERVER_CMD)

    assert result.rc == 0, result.stdout + result.stderr
    for drive, name, other in (
        (lib.ROOT, newest, "/media/mirror_drive"),
        ("/media/mirror_drive", older, lib.ROOT),
    ):
        assert (
            "%s: %s/%s/big.bin: content differs from the manifest (repaired from %s)"
            % (drive, CLIENT, name, other)
            in result.stdout
        ), result.stdout
    for (area, name), digest in good.items():
        assert sha256(server, "%s/%s/big.bin" % (area, name)) == digest
        ro = lib.run_ok(server, "btrfs property get -ts %s/%s ro" % (area, name))
        assert ro.strip() == "ro=true", (area, name)
    # Sealed again by ioctl: the mirror's snapshots keep their received UUID,
    # so later incremental sends still find their parent.
    assert {n: received_uuid(server, "%s/%s" % (mirrored, n)) for n in made} == received
    assert server.run("%s verify --restart" % SERVER_CMD).rc == 0


def test_prune_deletes_the_subvolumes_thinning_removes(server, made):
    before = lib.snapshot_names(server, CLIENT)
    assert before == sorted(made)
    # All made minutes apart: with no hourly or daily tier, one a week stays
    # (the first of the week), plus the newest.
    args = {"client": CLIENT, "keep_all_hours": 0, "daily_days": 0, "min_keep": 1}
    dry = lib.run_module("btrfs-server", "linkdest.backup.snapshot_prune", args, check=True)
    assert not dry.get("failed"), dry
    assert lib.snapshot_names(server, CLIENT) == before
    result = lib.run_module("btrfs-server", "linkdest.backup.snapshot_prune", args)
    assert not result.get("failed"), result
    assert result["removed"] == dry["removed"]
    assert len(result["removed"]) >= len(before) - 3, result["removed"]
    after = lib.snapshot_names(server, CLIENT)
    assert after == [n for n in before if n not in result["removed"]]
    assert before[-1] in after
    listed = lib.run_ok(server, "btrfs subvolume list %s" % lib.ROOT)
    for name in result["removed"]:
        assert name not in listed
    assert not [n for n in server.file(AREA).listdir() if n.startswith(".deleting-")]


def test_the_space_guard_measures_what_btrfs_says_is_free(server):
    code = (
        "import json, sys; sys.path.insert(0, '/usr/local/lib/linkdest')\n"
        "from ansible_collections.linkdest.backup.plugins.module_utils import retention\n"
        "print(json.dumps(retention.measure(%r).free_bytes))" % lib.ROOT
    )
    measured = lib.server_py(server, code)
    usage = lib.run_ok(server, "btrfs filesystem usage -b %s 2>/dev/null" % lib.ROOT)
    line = next(x for x in usage.splitlines() if x.strip().startswith("Free (estimated):"))
    estimated = min(int(n) for n in re.findall(r"\d+", line))
    # Within a few MiB: btrfs may have written metadata between the two reads.
    assert abs(measured - estimated) < 8 * MIB, (measured, estimated)


# --- a laptop on hard links beside them (per-laptop backend) --------------------------------


def test_a_laptop_may_keep_hard_links_on_the_same_drive(server):
    other = lib.get_host("hardlink-laptop")
    account = "bk-hardlink-laptop"
    config = lib.server_py(server, "import json; print(open('/etc/linkdest/server.json').read())")
    assert config["backends"] == {CLIENT: "btrfs", "hardlink-laptop": "hardlink"}
    # Its account may ask root for its manifest only: it has no btrfs step to ask for.
    rules = [
        line
        for line in server.file("/etc/sudoers.d/linkdest-server").content_string.splitlines()
        if line.startswith(account + " ")
    ]
    assert rules == ["%s ALL=(root) NOPASSWD: %s manifest back-*" % (account, SERVER_CMD)]
    asked = server.run(
        "runuser -u %s -- sudo -n %s subvolume start incomplete_back-2026-01-01T00_00_00"
        % (account, SERVER_CMD)
    )
    assert asked.rc != 0

    lib.write_file(other, "same.txt", "unchanged\n")
    first = lib.backup_ok(other)
    # Something new, so that the second run makes a snapshot (with nothing
    # new it records a check); same.txt is the file that stays the same.
    lib.write_file(other, "new.txt", "new\n")
    second = lib.backup_ok(other)
    assert second != first

    area = "%s/hardlink-laptop" % lib.ROOT
    stats = lib.server_py(
        server,
        "import json, os; print(json.dumps([[os.lstat(p).st_ino, os.lstat(p).st_nlink]"
        " for p in (%r, %r, %r)]))"
        % (
            "%s/%s" % (area, second),
            "%s/%s/same.txt" % (area, first),
            "%s/%s/same.txt" % (area, second),
        ),
    )
    assert stats[0][0] != 256, "a hard-link snapshot is a plain directory, not a subvolume"
    assert stats[1][0] == stats[2][0], "the unchanged file is one inode in both snapshots"
    assert stats[1][1] >= 2


def test_an_area_of_the_old_layout_migrates_on_the_next_site_run(laptop, server, made):
    # As the role left a btrfs area before: the account's own directory.
    lib.run_ok(
        server,
        "chown %s:linkdest %s && chmod 0700 %s && chown -h %s %s/current"
        % (ACCOUNT, AREA, AREA, ACCOUNT, AREA),
    )
    before = lib.fingerprint(server)["areas"][CLIENT]

    run = lib.site_playbook("--limit", "btrfs-server")

    assert run.returncode == 0, run.stdout[-3000:]
    area = server.file(AREA)
    assert (area.user, area.group, area.mode) == ("root", ACCOUNT, 0o750)
    after = lib.fingerprint(server)["areas"][CLIENT]
    # Every snapshot as it was: nothing copied, nothing lost.
    assert after["files"] == before["files"]
    assert after["current"] == before["current"]
    assert as_account(server, "mv %s/%s %s/x" % (AREA, made[0], AREA)).rc != 0
    name = lib.backup_ok(laptop)
    assert subvolume(server, name)["uid"] == 0
    assert server.file(AREA + "/current").linked_to == "%s/%s" % (AREA, name)
