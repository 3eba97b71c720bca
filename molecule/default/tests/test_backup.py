# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The backup path end to end: real laptops, real sshd and rsync, real snapshots."""

import datetime
import os
import shlex
import time

import linkdest_testlib as lib


def test_password_and_keyboard_interactive_logins_are_not_offered(laptop_a):
    result = laptop_a.run(
        "ssh -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        " -o BatchMode=yes -o PubkeyAuthentication=no"
        " -o PreferredAuthentications=password,keyboard-interactive"
        " root@backup-server true"
    )
    assert result.rc == 255
    assert "Permission denied (publickey)" in result.stderr


def test_laptop_key_gets_no_shell_and_no_command(laptop_a):
    for command in (
        "",
        "id",
        "/bin/sh -c id",
        "rsync --server --sender -logDtpre.iLsfxCIvu . /etc/passwd",
    ):
        result = lib.as_user(laptop_a, "%s %s" % (lib.SSH, shlex.quote(command) if command else ""))
        assert result.rc == 77, (command, result.stdout, result.stderr)
        assert "refused" in result.stderr
        assert "uid=" not in result.stdout
    forced_tty = lib.as_user(
        laptop_a, "%s -tt id" % lib.SSH.replace("ssh ", "ssh -o RequestTTY=force ", 1)
    )
    assert "uid=" not in forced_tty.stdout


def test_first_backup_makes_a_snapshot_and_current(laptop_a, server):
    lib.write_file(laptop_a, "notes/todo.txt", "buy milk\n")
    before = datetime.datetime.now(datetime.timezone.utc)
    name = lib.backup_ok(laptop_a)
    area = "%s/laptop-a" % lib.ROOT
    assert name in lib.snapshot_names(server, "laptop-a")
    assert server.file(area + "/current").linked_to == "%s/%s" % (area, name)
    assert server.file("%s/%s/notes/todo.txt" % (area, name)).content_string == "buy milk\n"
    # The server names snapshots in UTC, whatever the laptop's clock says.
    stamp = datetime.datetime.strptime(name, "back-%Y-%m-%dT%H_%M_%S").replace(
        tzinfo=datetime.timezone.utc
    )
    assert abs((stamp - before).total_seconds()) < 300
    assert not [n for n in server.file(area).listdir() if n.startswith("incomplete_")]


def test_unchanged_files_are_hard_links_and_the_changed_one_is_not(laptop_a, server):
    lib.write_file(laptop_a, "keep/same.txt", "same\n")
    lib.write_file(laptop_a, "keep/edit.txt", "version 1\n")
    first = lib.backup_ok(laptop_a)
    time.sleep(1)
    lib.write_file(laptop_a, "keep/edit.txt", "version 2, longer\n")
    second = lib.backup_ok(laptop_a)
    assert first != second
    old = lib.entries(server, "laptop-a", first)
    new = lib.entries(server, "laptop-a", second)
    assert new["keep/same.txt"]["ino"] == old["keep/same.txt"]["ino"]
    assert new["keep/same.txt"]["nlink"] >= 2
    assert new["keep/edit.txt"]["ino"] != old["keep/edit.txt"]["ino"]
    content = server.file("%s/laptop-a/%s/keep/edit.txt" % (lib.ROOT, second)).content_string
    assert content == "version 2, longer\n"
    assert (
        server.file("%s/laptop-a/%s/keep/edit.txt" % (lib.ROOT, first)).content_string
        == "version 1\n"
    )


def test_modes_mtimes_and_symlinks_survive(laptop_b, server):
    lib.write_file(
        laptop_b, "meta/private.txt", "secret\n", mode="0640", mtime="2020-01-02 03:04:05"
    )
    lib.write_file(
        laptop_b, "meta/script.sh", "#!/bin/sh\n", mode="0755", mtime="2019-05-06 07:08:09"
    )
    assert (
        lib.as_user(laptop_b, "cd %s/meta && ln -sfn private.txt link-to-private" % lib.SOURCE).rc
        == 0
    )
    name = lib.backup_ok(laptop_b)
    snap = lib.entries(server, "laptop-b", name)
    for rel in ("meta/private.txt", "meta/script.sh"):
        source = laptop_b.file("%s/%s" % (lib.SOURCE, rel))
        assert snap[rel]["mode"] == source.mode, rel
        assert snap[rel]["mtime"] == int(source.mtime.timestamp()), rel
    # laptop-b keeps symlinks as symlinks; on the server they are inert records
    # (rsync --fake-super), so nothing there can follow them.
    assert snap["meta/link-to-private"]["type"] == "link"
    assert snap["meta/link-to-private"]["link"] == "private.txt"
    assert snap["meta/link-to-private"]["server_type"] == "other"


def test_symlinks_are_followed_by_default_as_in_the_article(laptop_a, server):
    lib.write_file(laptop_a, "follow/target.txt", "pointed at\n")
    assert lib.as_user(laptop_a, "cd %s/follow && ln -sfn target.txt link" % lib.SOURCE).rc == 0
    name = lib.backup_ok(laptop_a)
    snap = lib.entries(server, "laptop-a", name)
    assert snap["follow/link"]["type"] == "file"
    assert (
        server.file("%s/laptop-a/%s/follow/link" % (lib.ROOT, name)).content_string
        == "pointed at\n"
    )


def test_names_with_spaces_and_non_ascii_survive(laptop_a, server):
    rel = "odd names/Grüße – été 日本 #1.txt"
    lib.write_file(laptop_a, rel, "unicode\n")
    name = lib.backup_ok(laptop_a)
    path = "%s/laptop-a/%s/%s" % (lib.ROOT, name, rel)
    assert server.file(path).content_string == "unicode\n"


def test_a_second_run_while_one_is_running_says_already_running(laptop_a, server):
    size = 12 * 1024 * 1024
    assert (
        lib.as_user(laptop_a, "head -c %d /dev/urandom > %s/big.bin" % (size, lib.SOURCE)).rc == 0
    )
    # A bandwidth limit keeps the first run busy for a few seconds.
    lib.start_backup_detached("laptop-a", 1200)
    lock = lib.HOME + "/.local/state/linkdest/lock"
    for _attempt in range(50):
        if laptop_a.run("flock --nonblock %s true" % lock).rc != 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the first run never took the lock")
    # The ssh master that outlives rsync must not hold the run's lock: a run
    # killed outright would leave it locked for as long as the master lives.
    for _attempt in range(50):
        if laptop_a.run("pgrep -u alice -x ssh").rc == 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the first run never started ssh")
    holders = laptop_a.run(
        "for p in $(pgrep -u alice -x ssh); do ls -l /proc/$p/fd; done | grep -c %s" % lock
    )
    assert holders.stdout.strip() == "0", holders.stdout
    second = lib.backup(laptop_a, retry_busy=False)
    assert second.rc == 75
    assert "already running" in second.stderr
    for _attempt in range(120):
        if laptop_a.run("pgrep -u alice -f 'linkdest backup'").rc != 0:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the first run did not finish")
    status = lib.read_status(laptop_a)
    assert status["last_exit"] == "0"
    snap = lib.entries(server, "laptop-a", status["last_snapshot"])
    assert server.file("%s/laptop-a/%s/big.bin" % (lib.ROOT, status["last_snapshot"])).size == size
    assert snap["big.bin"]["type"] == "file"
    assert lib.as_user(laptop_a, "rm %s/big.bin" % lib.SOURCE).rc == 0


def test_a_backup_logs_in_once_and_leaves_no_connection_behind(laptop_a, server):
    lib.write_file(laptop_a, "notes/once.txt", "one connection\n")
    cursor = lib.journal_cursor(server)
    name = lib.backup_ok(laptop_a)
    logins = [
        line
        for line in lib.journal_since(server, cursor).splitlines()
        if "Accepted publickey for bk-laptop-a " in line
    ]
    # rsync and finalize went over one connection (an ssh master).
    assert len(logins) == 1, logins
    assert name in lib.snapshot_names(server, "laptop-a")
    assert laptop_a.run("pgrep -u alice -x ssh").rc == 1  # the master is closed
    assert laptop_a.run("ls -d /tmp/linkdest-ssh.*").rc != 0


def test_cron_runs_backups_every_30_minutes(laptop_a):
    cron = laptop_a.file("/etc/cron.d/linkdest")
    assert cron.user == "root"
    assert cron.mode == 0o644
    assert (
        "*/30 * * * * alice /usr/local/bin/linkdest backup --quiet"
        in cron.content_string.splitlines()
    )
    assert laptop_a.service("cron").is_running


def test_a_backup_in_crons_bare_environment_succeeds(laptop_a, server):
    before = lib.snapshot_names(server, "laptop-a")
    lib.write_file(laptop_a, "cron.txt", "from cron\n")
    result = laptop_a.run(
        "runuser -u alice -- env -i PATH=/usr/bin:/bin SHELL=/bin/sh HOME=/home/alice LOGNAME=alice"
        " /usr/local/bin/linkdest backup --quiet"
    )
    assert result.rc == 0, result.stderr
    after = lib.snapshot_names(server, "laptop-a")
    assert len(after) == len(before) + 1


def test_rendered_linkdest_is_settings_and_a_call(laptop_a):
    launcher = laptop_a.file("/usr/local/bin/linkdest")
    assert launcher.mode == 0o755
    assert launcher.user == "root"
    script = launcher.content_string
    assert script.startswith("#!/usr/bin/python3 -IS\n")
    assert '"source": "%s",' % lib.SOURCE in script
    parse = "import ast, sys; ast.parse(open(sys.argv[1]).read())"
    assert laptop_a.run("python3 -c %s /usr/local/bin/linkdest" % shlex.quote(parse)).rc == 0
    # The program itself is root's, beside the files it shares with the server.
    program = laptop_a.file(lib.CLIENT_PROGRAM)
    assert program.user == "root"
    assert program.mode == 0o644
    assert laptop_a.file(os.path.dirname(lib.CLIENT_PROGRAM) + "/codes.py").exists
    usage = lib.as_user(laptop_a, "linkdest")
    assert usage.rc == 64
    assert "usage: linkdest backup" in usage.stderr
