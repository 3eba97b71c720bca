# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""What an upload carries stays data: planted symlinks are stored, never
followed, and files named like the account's dot-files land only inside the
snapshot."""

import shlex

import linkdest_testlib as lib
import pytest
from conftest import C10_SECRET, WORK, alice, reset_source, server_address

SSH = "ssh -F %s linkdest-server" % lib.SSH_CONFIG
ETC_MARKER = "/tmp/linkdest-security-etc-marker"

# Symlinks a malicious upload plants; {c10_latest} is c10's newest snapshot.
LINKS = {
    "current": "/etc",
    "back-2000-01-01T00_00_00": "/etc",
    "incomplete_back-2000-01-01T00_00_00": "/media/backup_drive/c10",
    "c10-area": "/media/backup_drive/c10",
    "c10-relative": "../../c10",
    "c10-secret": "../../c10/{c10_latest}/c10-secret.txt",
    "passwd": "/etc/passwd",
    "deep/up": "../../../..",
    "deep/shadow": "/etc/shadow",
}


def etc_changes(server) -> list[str]:
    """Paths under the server's /etc changed since ETC_MARKER was made."""
    result = server.run("find /etc -newer %s -o -cnewer %s" % (ETC_MARKER, ETC_MARKER))
    return result.stdout.split()


@pytest.fixture(scope="module")
def links_snapshot(c1, server, world):
    """The snapshot made from an upload of LINKS, plus the state before it."""
    links = {
        path: target.format(c10_latest=world["c10"]["latest"]) for path, target in LINKS.items()
    }
    script = ["rm -rf %s/links && mkdir -p %s/links/deep" % (WORK, WORK)]
    script += [
        "ln -s %s %s/links/%s" % (shlex.quote(target), WORK, path) for path, target in links.items()
    ]
    result = lib.as_user(c1, " && ".join(script))
    assert result.rc == 0, result.stderr
    assert server.run("touch %s && sleep 1" % ETC_MARKER).rc == 0
    before = lib.fingerprint(server)
    # The attacker's own rsync: linkdest's options, but symlinks kept as links.
    result = alice(
        c1,
        "rsync -a --delete --numeric-ids %s %s/links/ linkdest-server:snapshot/ </dev/null && %s"
        " finalize 0 </dev/null" % (lib.RSYNC_SSH, WORK, SSH),
    )
    assert result.rc == 0, result.output
    name = result.output.split()[-1]
    return {"name": name, "links": links, "before": before, "output": result.output}


def test_planted_symlinks_are_stored_and_never_followed(attack, server, world, links_snapshot):
    name, links, before = links_snapshot["name"], links_snapshot["links"], links_snapshot["before"]
    after = lib.fingerprint(server)
    entries = lib.entries(server, "c1", name)
    problems = []
    if after["areas"]["c10"] != before["areas"]["c10"]:
        problems.append("c10's area changed: %s" % lib.fingerprint_diff(before, after)[:3])
    old = {path: record[:1] + record[2:] for path, record in before["areas"]["c1"]["files"].items()}
    now = {
        path: record[:1] + record[2:]
        for path, record in after["areas"]["c1"]["files"].items()
        if path in old
    }
    if old != now:
        problems.append("older snapshots of c1 changed")
    if after["areas"]["c1"]["current"] != name or not name.startswith("back-"):
        problems.append("the area's current is %s" % after["areas"]["c1"]["current"])
    if after["areas"]["c1"]["top"]["current"][6] != "-> " + name:
        problems.append("the area's current is %s" % after["areas"]["c1"]["top"]["current"])
    for path, target in links.items():
        entry = entries.get(path)
        if entry is None or entry["type"] != "link" or entry["link"] != target:
            problems.append("%s stored as %s" % (path, entry))
        followed = [p for p in entries if p.startswith(path + "/")]
        if followed:
            problems.append("%s was followed: %s" % (path, followed[:3]))
    changed_etc = etc_changes(server)
    if changed_etc:
        problems.append("/etc changed: %s" % changed_etc[:5])
    attack.record_verdict(
        "symlinks",
        "upload of links (%s) with rsync -a, then finalize 0"
        % ", ".join("%s -> %s" % item for item in sorted(links.items())),
        "exit 0: snapshot %s; each link stored as a link; area's current -> %s"
        % (name, after["areas"]["c1"]["current"]),
        "contained: nothing followed; /etc, c10's area and older snapshots unchanged"
        if not problems
        else "FAIL: " + "; ".join(problems),
    )
    assert not problems


THROUGH = [
    ("a file of /etc through the planted current", "{name}/current/passwd", "linkdest-server: "),
    ("c10's area through a planted link", "{name}/c10-area/", ""),
    ("c10's file through a planted relative link", "{name}/c10-secret", ""),
    ("the area's parent through deep/up", "{name}/deep/up/", ""),
    ("a planted link named like a snapshot", "back-2000-01-01T00_00_00/", "linkdest-server: "),
    ("c1's current, with a planted current inside", "current/current/", "linkdest-server: "),
]


@pytest.mark.parametrize(("what", "source", "expect"), THROUGH, ids=[t[0] for t in THROUGH])
def test_reading_through_planted_links_reaches_nothing(
    attack, c1, server, links_snapshot, what, source, expect
):
    source = source.format(name=links_snapshot["name"])
    got = WORK + "/got"
    command = (
        "rm -rf %s && mkdir %s && rsync -a %s linkdest-server:%s %s/ </dev/null; rc=$?;"
        " ls -lR %s; grep -r -e %s -e root:x:0 %s; exit $rc"
        % (got, got, lib.RSYNC_SSH, shlex.quote(source), got, got, shlex.quote(C10_SECRET), got)
    )
    before = lib.fingerprint(server)
    result = alice(c1, command)
    after = lib.fingerprint(server)
    leaked = [text for text in (C10_SECRET, "root:x:0") if text in result.output]
    problems = ["leaked %s" % leaked] if leaked else []
    if expect and (result.rc == 0 or expect not in result.output):
        problems.append("not refused (exit %d)" % result.rc)
    if lib.fingerprint_diff(before, after):
        problems.append("server changed: %s" % lib.fingerprint_diff(before, after)[0])
    if etc_changes(server):
        problems.append("/etc changed")
    lines = [line.strip() for line in result.output.splitlines() if line.strip()]
    shown = [
        line
        for line in lines
        if any(key in line for key in ("linkdest-server: ", "rsync: ", " -> "))
    ] or lines
    attack.record_verdict(
        "symlinks",
        "rsync -a linkdest-server:%s DIR/ (%s)" % (source, what),
        "exit %d: %s" % (result.rc, shown[0][:110] if shown else "(no output)"),
        "nothing followed, nothing of c10 or /etc read"
        if not problems
        else "FAIL: " + "; ".join(problems),
    )
    assert not problems, result.output


def test_server_tools_run_by_root_do_not_follow_planted_links(attack, server, links_snapshot):
    """The daily prune and the administrator's usage listing walk the area as root."""
    before = lib.fingerprint(server)
    results = [
        server.run("/usr/local/sbin/linkdest-server prune --all --quiet"),
        server.run("/usr/local/sbin/linkdest-server list c1 --usage"),
    ]
    after = lib.fingerprint(server)
    problems = ["exit %d: %s" % (r.rc, r.stderr) for r in results if r.rc != 0]
    if lib.fingerprint_diff(before, after):
        problems.append("server changed: %s" % lib.fingerprint_diff(before, after)[:3])
    if etc_changes(server):
        problems.append("/etc changed: %s" % etc_changes(server)[:5])
    attack.record_verdict(
        "symlinks",
        "root runs linkdest-server prune --all and list c1 --usage over the planted links",
        "exit %s" % ", ".join(str(r.rc) for r in results),
        "nothing followed; /etc and every snapshot unchanged"
        if not problems
        else "FAIL: " + "; ".join(problems),
    )
    assert not problems


def test_the_next_backup_still_works_and_moves_current(server, c1, links_snapshot):
    # Something new to send: a run with nothing new makes no snapshot.
    lib.write_file(c1, "after-the-links.txt", "next\n")
    name = lib.backup_ok(c1)
    assert name > links_snapshot["name"]
    area = "%s/c1" % lib.ROOT
    assert server.file(area + "/current").is_symlink
    assert server.file(area + "/current").linked_to == "%s/%s" % (area, name)


def test_a_real_backup_of_planted_links_follows_nothing_on_the_server(attack, c1, server, world):
    """The same links in the backed-up folder, sent by the real `linkdest
    backup`: it follows links on the laptop (backup_client_copy_links, as the
    article does), so `current` brings a copy of the laptop's own /etc/default
    (all of it readable: an unreadable file would make the run partial); nothing
    on the server follows anything."""
    links = {
        "current": "/etc/default",
        "c10-area": "/media/backup_drive/c10",
        "c10-secret": "../../c10/%s/c10-secret.txt" % world["c10"]["latest"],
    }
    laptop_copy = c1.file("/etc/default/useradd").content_string
    script = ["ln -s %s %s/%s" % (shlex.quote(t), lib.SOURCE, p) for p, t in links.items()]
    assert lib.as_user(c1, " && ".join(script)).rc == 0
    assert server.run("touch %s && sleep 1" % ETC_MARKER).rc == 0
    before = lib.fingerprint(server)
    try:
        result = alice(c1, "linkdest backup")
        status = lib.read_status(c1)
    finally:
        reset_source(c1, "c1")
    after = lib.fingerprint(server)
    name = status.get("last_snapshot", "")
    entries = lib.entries(server, "c1", name) if name.startswith("back-") else {}
    copied = server.file("%s/c1/%s/current/useradd" % (lib.ROOT, name))
    problems = []
    if result.rc != 0 or status.get("last_result") != "success":
        problems.append("the backup failed: %s" % status.get("last_error"))
    if after["areas"]["c10"] != before["areas"]["c10"]:
        problems.append("c10's area changed")
    if after["areas"]["c1"]["current"] != name:
        problems.append("the area's current is %s" % after["areas"]["c1"]["current"])
    if not copied.is_file or copied.content_string != laptop_copy:
        problems.append("current/useradd is not the laptop's /etc/default/useradd")
    if any(path.startswith(("c10-area", "c10-secret")) for path in entries):
        problems.append("the dangling links to c10 were stored: %s" % sorted(entries)[:5])
    if etc_changes(server):
        problems.append("/etc changed: %s" % etc_changes(server)[:5])
    attack.record_verdict(
        "symlinks",
        "linkdest backup of a folder holding current -> /etc/default, c10-area -> %s/c10 and a"
        " relative link to c10's file" % lib.ROOT,
        "exit %d: snapshot %s; current/ is a copy of the laptop's /etc/default (copy_links);"
        " the links to c10 dangle on the laptop and are skipped" % (result.rc, name),
        "contained: nothing followed on the server; /etc, c10's area unchanged"
        if not problems
        else "FAIL: " + "; ".join(problems),
    )
    assert not problems, result.output


# Files an upload carries that are named like the server account's own files.
DOT_FILES = {
    ".ssh/rc": "#!/bin/sh\ntouch /tmp/linkdest-pwned-rc\n",
    ".ssh/environment": "LD_PRELOAD=/tmp/linkdest-pwned.so\n",
    ".profile": "touch /tmp/linkdest-pwned-profile\n",
    ".bashrc": "touch /tmp/linkdest-pwned-bashrc\n",
    ".bash_logout": "touch /tmp/linkdest-pwned-logout\n",
    ".pam_environment": "LD_PRELOAD DEFAULT=/tmp/linkdest-pwned.so\n",
    ".hushlogin": "",
    ".rsync-filter": "- *\n",
    ".linkdest-received": "back-2000-01-01T00_00_00 0\n",
    ".linkdest-journal": '{"snapshot": "back-2000-01-01T00_00_00"}\n',
    ".linkdest.lock": "",
}
PLANTED_KEY = WORK + "/planted_ed25519"


@pytest.fixture(scope="module")
def dot_files_snapshot(c1, server, world):
    """A real `linkdest backup` of a folder holding the account's dot-files,
    among them an unrestricted authorized key the attacker holds."""
    result = lib.as_user(
        c1, "rm -f %s %s.pub && ssh-keygen -q -t ed25519 -N '' -f %s" % ((PLANTED_KEY,) * 3)
    )
    assert result.rc == 0, result.stderr
    files = dict(DOT_FILES)
    files[".ssh/authorized_keys"] = c1.file(PLANTED_KEY + ".pub").content_string
    for path, content in files.items():
        lib.write_file(c1, path, content, mode="0600")
    home = server.run("stat -c '%U %a %Y' /var/lib/linkdest-server; ls -A /var/lib/linkdest-server")
    name = lib.backup_ok(c1)
    yield {"name": name, "files": files, "home": home.stdout}
    reset_source(c1, "c1")


def test_dot_files_land_only_inside_the_snapshot(attack, server, dot_files_snapshot):
    name, files = dot_files_snapshot["name"], dot_files_snapshot["files"]
    area = "%s/c1" % lib.ROOT
    problems = []
    for path, content in files.items():
        stored = server.file("%s/%s/%s" % (area, name, path))
        if not stored.is_file or stored.content_string != content:
            problems.append("%s not stored as sent" % path)
    home = server.run("stat -c '%U %a %Y' /var/lib/linkdest-server; ls -A /var/lib/linkdest-server")
    if home.stdout != dot_files_snapshot["home"] or home.stdout.split()[:2] != ["root", "755"]:
        problems.append("the accounts' home changed: %r" % home.stdout)
    top = set(server.file(area).listdir())
    strays = sorted(
        top & {path.split("/")[0] for path in files} - {".linkdest-journal", ".linkdest.lock"}
    )
    if strays:
        problems.append("in the area itself: %s" % strays)
    journal = server.file(area + "/.linkdest-journal").content_string.splitlines()
    if '"snapshot": "%s"' % name not in journal[-1] or "back-2000" in journal[-1]:
        problems.append("the area's journal ends with %r" % journal[-1])
    if (
        not server.file(area + "/.linkdest.lock").is_file
        or server.file(area + "/.linkdest.lock").size
    ):
        problems.append("the area's lock file changed")
    pwned = server.run("ls /tmp | grep linkdest-pwned").stdout.split()
    if pwned:
        problems.append("ran on the server: %s" % pwned)
    attack.record_verdict(
        "dot-files",
        "linkdest backup of %s in the folder" % ", ".join(sorted(files)),
        "exit 0: snapshot %s holds them all" % name,
        "contained: only inside the snapshot; the home, the area's journal, marker and lock"
        " untouched"
        if not problems
        else "FAIL: " + "; ".join(problems),
    )
    assert not problems


@pytest.mark.parametrize("account", ["bk-c1", "bk-c10", "root"])
def test_the_key_planted_in_the_upload_opens_nothing(attack, c1, dot_files_snapshot, account):
    server_name = server_address(c1)
    attack.attempt(
        "dot-files",
        "log in as %s with the key planted in the upload's .ssh/authorized_keys" % account,
        lambda: alice(
            c1,
            "ssh -F /dev/null -i %s -o IdentitiesOnly=yes -o BatchMode=yes"
            " -o UserKnownHostsFile=/etc/linkdest/known_hosts -o HostKeyAlias=linkdest-server"
            " -o StrictHostKeyChecking=yes %s@%s id </dev/null"
            % (PLANTED_KEY, account, server_name),
        ),
        expect="Permission denied (publickey)",
        forbidden_output=("uid=",),
    )
