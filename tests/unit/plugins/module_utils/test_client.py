# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of client.py and client_platform.py: the laptop's `linkdest`
without a server (molecule runs it against a real one)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess

import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import client, client_platform, codes
from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf

ROLE = os.path.join(os.path.dirname(__file__), "../../../../roles/backup_client")


def settings(tmp_path, **overrides) -> client.Settings:
    values = {
        "source": str(tmp_path / "src"),
        "ssh_config": "/nonexistent/ssh_config",
        "server": "linkdest-server",
        "log_file": str(tmp_path / "state" / "linkdest.log"),
        "key_file": str(tmp_path / "key"),
        "user_home": str(tmp_path),
    }
    values.update(overrides)
    return client.Settings.from_mapping(values, environ={})


def test_status_file_keeps_the_keys_it_does_not_set(tmp_path):
    status = client.StatusFile(str(tmp_path / "status"))
    assert status.read() == {}
    status.record(last_attempt="T1", failing="0")
    status.record(last_result="failed", last_error="two\nlines", failing="1")
    assert status.read() == {
        "last_attempt": "T1",
        "last_result": "failed",
        "last_error": "two lines",
        "failing": "1",
    }
    assert not os.path.exists(str(tmp_path / "status.tmp"))


def test_settings_take_a_bandwidth_limit_from_the_environment(tmp_path):
    base = {
        "source": "/home/alice/Dropbox/",
        "ssh_config": "c",
        "server": "s",
        "log_file": "/l/linkdest.log",
        "key_file": "k",
        "user_home": "/home/alice",
        "bwlimit": 100,
    }
    assert client.Settings.from_mapping(base, environ={}).bwlimit == 100
    chosen = client.Settings.from_mapping(base, environ={"LINKDEST_BWLIMIT": "7"})
    assert chosen.bwlimit == 7
    assert chosen.source == "/home/alice/Dropbox"
    assert chosen.status_file == "/l/status"
    with pytest.raises(TypeError):
        client.Settings.from_mapping(dict(base, unknown=1), environ={})


@pytest.mark.parametrize(
    ("path", "cwd", "expected"),
    [
        ("/home/a/src", "/", "."),
        ("/home/a/src/", "/", "."),
        ("docs/x.txt", "/home/a/src", "docs/x.txt"),
        ("../docs", "/home/a/src/notes", "docs"),
        ("-leading dash", "/home/a/src", "-leading dash"),
    ],
)
def test_relative_to_source(path, cwd, expected):
    assert client.relative_to_source(path, "/home/a/src", cwd) == expected


@pytest.mark.parametrize("path", ["/home/a/srcx", "/home/a", "/etc/passwd", "../other"])
def test_relative_to_source_refuses_paths_outside(path):
    with pytest.raises(ValueError, match="not inside the backed-up folder"):
        client.relative_to_source(path, "/home/a/src", "/home/a/src")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-01", "2026-05-01T00:00:00"),
        ("2026-05-01 14:30", "2026-05-01T14:30:00"),
        ("2026-05-01T14:30:05Z", "2026-05-01T14:30:05"),
        ("2026-05-01T16:30:05+02:00", "2026-05-01T14:30:05"),
        ("@0", "1970-01-01T00:00:00"),
    ],
)
def test_parse_time_gives_utc(text, expected):
    assert client.parse_time(text) == expected


def test_parse_time_refuses_words():
    with pytest.raises(ValueError, match="Invalid isoformat"):
        client.parse_time("yesterday")


def test_transfer_summary_reads_bytes_and_ssh_errors():
    output = "Number of files: 3\nTotal bytes sent: 1,234,567\nTotal bytes received: 35\n"
    assert client.transfer_summary(output) == (1234567, "")
    refused = (
        "ssh: connect to host x port 22: Connection refused\n"
        "rsync: connection unexpectedly closed\n"
    )
    assert client.transfer_summary(refused) == (
        0,
        "ssh: connect to host x port 22: Connection refused",
    )
    # rsync's own "Permission denied (13)" is a file problem, not ssh's.
    unreadable = 'rsync: [sender] send_files failed to open "a": Permission denied (13)\n'
    assert client.transfer_summary(unreadable) == (0, "")


def test_server_reason_prefers_the_servers_words():
    assert (
        client.server_reason("x\nlinkdest-server: backup drive /m is not mounted\n")
        == "linkdest-server: backup drive /m is not mounted"
    )
    assert "next run" in client.server_reason("rsync error\n")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("*deleting   new.txt", "new:     new.txt"),
        (">f+++++++++ gone.txt", "deleted: gone.txt"),
        ("cd+++++++++ gone-dir/", "deleted: gone-dir/"),
        (">f.st...... edited.txt", "changed: edited.txt"),
        (".d..t...... dir/", None),
    ],
)
def test_itemized_difference(line, expected):
    assert client.itemized_difference(line) == expected


def _manifest_lines(source, paths, snapshot="back-2026-01-01T00_00_00", **header):
    lines = [json.dumps(dict({"snapshot": snapshot, "verified": None, "damaged": []}, **header))]
    lines.append("%s c back-x fsid" % mf.MAGIC)
    for path in paths:
        full = os.path.join(source, path)
        with open(full, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        lines.append(mf._line(digest, os.lstat(full), json.dumps(path)))
    lines.append("end %d x" % len(paths))
    return [line + "\n" for line in lines]


def test_verify_finds_a_silent_difference(tmp_path):
    source = tmp_path / "src"
    (source / "docs").mkdir(parents=True)
    for name in ("same", "edited", "gone", "rotted"):
        (source / "docs" / name).write_text(name)
    lines = _manifest_lines(str(source), ["docs/same", "docs/edited", "docs/gone", "docs/rotted"])
    (source / "docs" / "edited").write_text("edited, longer now")
    (source / "docs" / "gone").unlink()
    stamp = os.stat(source / "docs" / "rotted")
    (source / "docs" / "rotted").write_text("ROTTED")
    os.utime(source / "docs" / "rotted", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    out = io.StringIO()
    assert client.compare_with_manifest(lines, str(source), ".", False, out) == 4
    report = out.getvalue()
    assert "changed: docs/edited" in report
    assert "deleted: docs/gone" in report
    assert "DIFFERS: docs/rotted" in report
    assert "1 same, 1 changed since, 1 deleted since, 1 differ without a trace" in report

    out = io.StringIO()
    assert client.compare_with_manifest(lines, str(source), "docs/same", False, out) == 0
    assert "1 same, 0 changed since, 0 deleted since, 0 differ" in out.getvalue()


def test_verify_reports_the_servers_damage_and_a_missing_manifest(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("a")
    lines = _manifest_lines(str(source), ["a"], damaged=["a"])
    out = io.StringIO()
    assert client.compare_with_manifest(lines, str(source), ".", False, out) == codes.EXIT_DAMAGED
    assert "server: DAMAGED in back-2026-01-01T00_00_00: a" in out.getvalue()
    out = io.StringIO()
    assert client.compare_with_manifest(["{}\n"], str(source), ".", False, out) == 67
    assert "no manifest" in out.getvalue()


def test_restore_takes_no_path_for_the_whole_folder():
    assert client._restore_arguments([]) == (None, None, None, False)
    assert client._restore_arguments(["--to", "/home/a", "--at", "back-x"]) == (
        None,
        "back-x",
        "/home/a",
        False,
    )
    assert client._restore_arguments(["docs", "--overwrite"]) == ("docs", None, None, True)


def _restored(tmp_path):
    """A snapshot's files and a restored copy of them, with the manifest."""
    snapshot = tmp_path / "snapshot"
    (snapshot / "docs" / "sub dir").mkdir(parents=True)
    names = ["top.txt", "docs/a.txt", "docs/sub dir/b \u00e9t\u00e9.txt"]
    for name in names:
        (snapshot / name).write_text("content of " + name)
        os.utime(snapshot / name, (1_600_000_000, 1_600_000_000))
    lines = _manifest_lines(str(snapshot), names)
    restored = tmp_path / "restored"
    subprocess.run(["cp", "-a", str(snapshot), str(restored)], check=True)
    return restored, lines, names


def test_a_whole_restore_checks_every_file_of_the_manifest(tmp_path):
    restored, lines, names = _restored(tmp_path)
    out = io.StringIO()
    assert client.check_restored_tree(lines, str(restored), ".", out) == (True, set(names))
    assert "check: 3 file(s) the same as in back-2026-01-01T00_00_00, 0 not" in out.getvalue()

    # A part restored on its own lands under its last name.
    out = io.StringIO()
    ok, paths = client.check_restored_tree(lines, str(restored / "docs"), "docs", out)
    assert ok
    assert paths == {"docs/a.txt", "docs/sub dir/b \u00e9t\u00e9.txt"}


def test_a_restore_that_lost_or_changed_a_file_is_reported(tmp_path):
    restored, lines, _names = _restored(tmp_path)
    (restored / "docs" / "a.txt").unlink()
    stamp = os.stat(restored / "top.txt")
    (restored / "top.txt").write_text("CONTENT OF TOP.TXT")  # same size, other bytes
    os.utime(restored / "top.txt", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    out = io.StringIO()
    ok, _paths = client.check_restored_tree(lines, str(restored), ".", out)
    assert not ok
    report = out.getvalue()
    assert "MISSING: docs/a.txt" in report
    assert "DIFFERS: top.txt (other bytes)" in report
    assert "1 file(s) the same" in report
    assert "2 not" in report
    assert client.check_restored_tree(["{}\n"], str(restored), ".", io.StringIO())[0] is False


def test_power_on_mains_battery_and_desktop(tmp_path):
    supplies = tmp_path / "power"
    linux = client_platform.Linux(str(supplies))
    assert linux.on_ac_power()  # no such directory: a desktop
    (supplies / "BAT0").mkdir(parents=True)
    (supplies / "BAT0" / "type").write_text("Battery\n")
    assert linux.on_ac_power()  # no mains adapter known
    (supplies / "AC").mkdir()
    (supplies / "AC" / "type").write_text("Mains\n")
    (supplies / "AC" / "online").write_text("0\n")
    assert not linux.on_ac_power()
    (supplies / "AC" / "online").write_text("1\n")
    assert linux.on_ac_power()


def test_networks(monkeypatch):
    linux = client_platform.Linux()
    monkeypatch.setattr(linux, "addresses", lambda: ["192.168.1.5/24", "fd00::5/64"])
    assert linux.on_networks([])
    assert linux.on_networks(["192.168.1.0/24"])
    assert linux.on_networks(["10.0.0.0/8", "fd00::/8"])
    assert not linux.on_networks(["203.0.113.0/24"])


def test_backup_is_skipped_on_battery_without_touching_the_server(tmp_path):
    class OnBattery:
        def on_ac_power(self):
            return False

    command = client.Linkdest(settings(tmp_path, require_ac_power=True), platform=OnBattery())
    assert command.backup() == codes.EXIT_SKIPPED
    status = command.status.read()
    assert status["last_result"] == "skipped"
    assert status["last_error"] == "on battery"
    log = (tmp_path / "state" / "linkdest.log").read_text()
    assert "skipped: on battery" in log
    assert "alert (stale)" in log  # never a success: stale at once, said once


def test_a_second_backup_waits_for_nobody(tmp_path):
    command = client.Linkdest(settings(tmp_path), platform=client_platform.Linux())
    os.makedirs(command.settings.state_dir)
    holder = subprocess.Popen(
        ["flock", command.settings.lock_file, "sleep", "30"], stdout=subprocess.DEVNULL
    )
    try:
        for _attempt in range(50):
            if os.path.exists(command.settings.lock_file):
                break
            subprocess.run(["sleep", "0.1"], check=True)
        subprocess.run(["sleep", "0.3"], check=True)
        assert command.backup() == codes.EXIT_BUSY
    finally:
        holder.kill()
        holder.wait()


def test_a_missing_source_fails_and_alerts_once(tmp_path):
    command = client.Linkdest(
        settings(tmp_path, alert_command='printf "%s|%s\\n" "$1" "$2" >> ' + str(tmp_path / "a")),
        platform=client_platform.Linux(),
    )
    assert command.backup() == codes.EXIT_NO_SOURCE
    assert command.backup() == codes.EXIT_NO_SOURCE
    alerts = (tmp_path / "a").read_text().splitlines()
    assert alerts == ["failure|source folder %s/src is missing" % tmp_path]
    assert command.status.get("last_exit") == str(codes.EXIT_NO_SOURCE)


def test_no_usable_rsync_fails_the_backup_naming_the_fix_and_alerts_once(tmp_path):
    (tmp_path / "src").mkdir()
    old_rsync = tmp_path / "rsync"
    old_rsync.write_text("#!/bin/sh\necho 'rsync  version 2.6.9  protocol version 29'\n")
    old_rsync.chmod(0o755)
    darwin = client_platform.Darwin()
    darwin.RSYNC = (str(tmp_path / "no-such-rsync"), str(old_rsync))
    darwin.on_ac_power = lambda: True
    command = client.Linkdest(
        settings(tmp_path, alert_command='printf "%s|%s\\n" "$1" "$2" >> ' + str(tmp_path / "a")),
        platform=darwin,
    )
    assert command.backup() == codes.EXIT_NO_RSYNC
    assert command.backup() == codes.EXIT_NO_RSYNC
    (alert,) = (tmp_path / "a").read_text().splitlines()
    assert alert.startswith("failure|no usable rsync: linkdest needs rsync 3.1 or later")
    assert "%s (rsync  version 2.6.9  protocol version 29)" % old_rsync in alert
    assert "brew install rsync" in alert
    status = command.status.read()
    assert status["last_result"] == "failed"
    assert status["last_exit"] == str(codes.EXIT_NO_RSYNC)


def _mac_without_full_disk_access(tmp_path):
    """A Darwin layer on mains power whose ~/src/Documents opens with EPERM,
    as macOS answers a process without Full Disk Access; and that path."""
    (tmp_path / "src" / "Documents").mkdir(parents=True)
    darwin = client_platform.Darwin()
    darwin.on_ac_power = lambda: True
    protected = str(tmp_path / "src" / "Documents")

    def scandir(path):
        if str(path) == protected:
            raise PermissionError(errno.EPERM, "Operation not permitted", protected)
        return os.scandir(path)

    darwin.scandir = scandir
    return darwin, protected


def test_a_folder_macos_protects_fails_the_backup_before_anything_is_sent(tmp_path):
    darwin, protected = _mac_without_full_disk_access(tmp_path)
    darwin.rsync = lambda: pytest.fail("no rsync may run without Full Disk Access")
    command = client.Linkdest(
        settings(tmp_path, alert_command='printf "%s|%s\\n" "$1" "$2" >> ' + str(tmp_path / "a")),
        platform=darwin,
    )
    assert command.backup() == codes.EXIT_PRIVACY
    (alert,) = (tmp_path / "a").read_text().splitlines()
    assert alert.startswith("failure|macOS keeps linkdest from reading %s" % protected)
    assert "Full Disk Access" in alert
    assert command.status.read()["last_exit"] == str(codes.EXIT_PRIVACY)


def test_an_excluded_protected_folder_does_not_stop_the_backup(tmp_path):
    darwin, protected = _mac_without_full_disk_access(tmp_path)
    command = client.Linkdest(settings(tmp_path, excludes=["/Documents/"]), platform=darwin)
    # It goes on to rsync and the (missing) server; the privacy check let it.
    assert command.backup() != codes.EXIT_PRIVACY
    assert "macOS keeps" not in command.status.read().get("last_error", "")


def test_no_usable_rsync_stops_restore_with_its_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(client_platform.Linux, "RSYNC", (str(tmp_path / "no-such-rsync"),))
    values = {
        "source": str(tmp_path / "src"),
        "ssh_config": "c",
        "server": "s",
        "log_file": str(tmp_path / "log"),
        "key_file": "k",
        "user_home": str(tmp_path),
    }
    assert client.main(values, ["restore", "--to", str(tmp_path / "out")]) == codes.EXIT_NO_RSYNC
    assert "linkdest: no usable rsync" in capsys.readouterr().err


def test_usage_errors(tmp_path, capsys):
    values = {
        "source": str(tmp_path),
        "ssh_config": "c",
        "server": "s",
        "log_file": str(tmp_path / "log"),
        "key_file": "k",
        "user_home": str(tmp_path),
    }
    usage_errors = (
        [],
        ["nonsense"],
        ["backup", "--loud"],
        ["restore", "a", "b"],
        ["restore", "--at"],
    )
    for argv in usage_errors:
        assert client.main(values, argv) == codes.EXIT_USAGE
    assert "usage: linkdest backup" in capsys.readouterr().err
    assert client.main(values, ["versions", "/etc/passwd"]) == codes.EXIT_USAGE
    assert "not inside the backed-up folder" in capsys.readouterr().err


def test_the_role_template_is_settings_and_a_call():
    with open(
        os.path.join(ROLE, "templates/usr/local/bin/linkdest.j2"), encoding="utf-8"
    ) as handle:
        template = handle.read()
    body = [line for line in template.splitlines()[1:] if line.strip()]
    assert body[0] == "#!/usr/bin/python3 -IS"
    # No logic: imports, one settings dictionary, one call.
    code = [line for line in body if not line.lstrip().startswith(("#", '"')) and line.strip()]
    assert code[-1] == "sys.exit(main(SETTINGS))"
    assert not [
        line for line in code if line.lstrip().startswith(("if ", "for ", "def ", "while "))
    ]
    # Every setting the template writes is one client.Settings takes.
    keys = [line.split('"')[1] for line in body if line.startswith('    "')]
    assert set(keys) == set(client.Settings.__dataclass_fields__)
