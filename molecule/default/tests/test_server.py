# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""backup_server: key-only sshd, one locked-down account and area per laptop."""

import os
import pathlib
import shlex
import subprocess
import time

import linkdest_testlib as lib

ROOT = pathlib.Path(__file__).resolve().parents[3]

testinfra_hosts = ["backup-server"]


def test_sshd_is_running_and_effectively_key_only(host):
    assert host.service("ssh").is_running
    effective = host.run(
        "/usr/sbin/sshd -T -C user=nobody,host=x,addr=127.0.0.1"
    ).stdout.splitlines()
    assert "passwordauthentication no" in effective
    assert "kbdinteractiveauthentication no" in effective
    assert "permitrootlogin no" in effective


def test_each_laptop_has_an_account_and_a_private_area(host):
    for client in ("laptop-a", "laptop-b"):
        account = "bk-" + client
        user = host.user(account)
        assert user.exists
        assert user.home == "/var/lib/linkdest-server"
        area = host.file("%s/%s" % (lib.ROOT, client))
        assert area.is_directory
        assert area.user == account
        assert area.mode == 0o700
        keys = host.file("/etc/linkdest/authorized_keys/" + account)
        assert keys.user == "root"
        assert keys.mode == 0o644
        assert (
            'restrict,command="/usr/local/sbin/linkdest-server gate %s" ssh-ed25519 ' % client
            in keys.content_string
        )
    # The accounts' home is root's: no .ssh, no authorized_keys they could edit.
    home = host.file("/var/lib/linkdest-server")
    assert home.user == "root"
    assert home.mode == 0o755
    assert not host.file("/var/lib/linkdest-server/.ssh").exists


def test_one_laptop_account_cannot_read_the_other_area(host):
    result = host.run("runuser -u bk-laptop-b -- ls %s/laptop-a" % lib.ROOT)
    assert result.rc != 0
    assert "Permission denied" in result.stderr


def test_linkdest_server_finalize_is_idempotent_on_a_finished_snapshot(host, laptop_a):
    lib.write_file(laptop_a, "server-finalize.txt", "x")
    name = lib.backup_ok(laptop_a)
    result = host.run("/usr/local/sbin/linkdest-server finalize laptop-a %s" % name)
    assert result.rc == 0
    assert result.stdout.strip() == name + " already final"


def test_the_server_check_passes_when_all_is_fresh(host):
    result = host.run("/usr/local/sbin/linkdest-server check")
    assert result.rc == 0, result.stdout
    assert "ok (3 laptops)" in result.stdout
    metrics = host.file("/var/lib/node_exporter/textfile/linkdest.prom").content_string
    assert 'linkdest_snapshots{client="laptop-a"}' in metrics
    assert 'linkdest_last_success_timestamp_seconds{client="laptop-b"}' in metrics
    assert "linkdest_drive_free_bytes " in metrics


def test_the_server_check_alerts_on_a_stale_laptop(host):
    host.run("rm -f /tmp/linkdest-server-alerts")
    # A threshold of about a second makes every laptop stale.
    time.sleep(2)
    result = host.run("/usr/local/sbin/linkdest-server check --stale-after-hours 0.0003")
    assert result.rc == 1
    assert "laptop-a: newest snapshot is" in result.stdout
    alerts = host.file("/tmp/linkdest-server-alerts").content_string
    assert alerts.startswith("stale|")
    assert "laptop-b: newest snapshot is" in alerts


def test_cron_runs_the_prune_and_the_check(host):
    cron = host.file("/etc/cron.d/linkdest-server").content_string
    assert (
        "30 3 * * * root /usr/local/sbin/linkdest-server prune --all --quiet;"
        " /usr/local/sbin/linkdest-server manifest --all --quiet" in cron
    )
    assert "0 8 * * * root /usr/local/sbin/linkdest-server check --quiet" in cron
    assert (
        "30 4 * * 0 root nice -n 19 ionice -c 3 /usr/local/sbin/linkdest-server verify"
        " --quiet --sample 25 --max-time 21600" in cron
    )


def test_sshd_is_hardened_beyond_key_only(host):
    effective = host.run(
        "/usr/sbin/sshd -T -C user=nobody,host=x,addr=127.0.0.1"
    ).stdout.splitlines()
    for line in (
        "disableforwarding yes",
        "allowtcpforwarding no",
        "permittunnel no",
        "permituserenvironment no",
        "x11forwarding no",
        "maxauthtries 3",
        "clientaliveinterval 30",
        "clientalivecountmax 4",
        "loglevel VERBOSE",
        "port 22",
    ):
        assert line in effective, line
    kex = [line for line in effective if line.startswith("kexalgorithms ")][0]
    assert "diffie-hellman-group1-sha1" not in kex
    assert "curve25519-sha256" in kex


def test_a_laptop_key_can_be_limited_to_source_networks(host, laptop_b):
    keys = host.file("/etc/linkdest/authorized_keys/bk-laptop-b").content_string
    assert 'from="10.0.0.0/8,172.16.0.0/12,192.168.0.0/16",restrict,command=' in keys
    lib.write_file(laptop_b, "from.txt", "allowed network\n")
    lib.backup_ok(laptop_b)


def test_a_planted_drop_in_that_turns_passwords_on_fails_the_run(host):
    """sshd keeps the first value it reads; a drop-in sorting before ours wins, and
    the role must notice in the effective settings rather than trust its own file."""
    # "00-a" sorts before our "00-linkdest" (sshd reads drop-ins in glob order).
    evil = "/etc/ssh/sshd_config.d/00-a-planted.conf"
    host.run("printf 'PasswordAuthentication yes\\n' > %s" % evil)
    try:
        result = subprocess.run(
            [
                "ansible-playbook",
                "-i",
                os.environ["MOLECULE_INVENTORY_FILE"],
                "site.yml",
                "--limit",
                "backup-server",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
    finally:
        host.run("rm -f %s" % evil)
    assert result.returncode != 0
    assert "passwordauthentication no" in result.stdout + result.stderr
    assert "another file sets them first" in result.stdout + result.stderr


# --- manifests and verify (issue 12) ------------------------------------------------

MANIFEST_CHECK = r"""
import hashlib, json, os, sys
sys.path.insert(0, "/usr/local/lib/linkdest")
from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf
root, client = %r, %r
out = {}
for name in sorted(n for n in os.listdir(os.path.join(root, client)) if n.startswith("back-")):
    path = mf.manifest_path(root, client, name)
    st = os.stat(path)
    entries = mf.load(root, client, name).entries
    bad = [e.path for e in entries
           if hashlib.sha256(open(os.path.join(root, client, name, e.path), "rb").read())
           .hexdigest() != e.sha256]
    out[name] = {"owner": st.st_uid, "mode": st.st_mode & 0o777, "files": len(entries),
                 "bad": bad}
print(json.dumps(out))
"""


def test_every_snapshot_has_a_root_owned_manifest_that_matches_it(host):
    for client in ("laptop-a", "laptop-b"):
        found = lib.server_py(host, MANIFEST_CHECK % (lib.ROOT, client))
        assert sorted(found) == lib.snapshot_names(host, client)
        assert found, client
        for name, facts in found.items():
            assert (facts["owner"], facts["mode"], facts["bad"]) == (0, 0o600, []), name
        # Some snapshots hold only directories (a test empties the folder).
        assert sum(facts["files"] for facts in found.values()) > 0, client


def test_the_laptop_account_can_ask_root_for_its_manifest_and_nothing_else(host):
    listed = lib.run_ok(host, "sudo -l -U bk-laptop-a")
    assert "(root) NOPASSWD: /usr/local/sbin/linkdest-server manifest back-*" in listed
    assert "subvolume" not in listed
    manifests = "%s/.linkdest-manifests/laptop-a" % lib.ROOT
    attempt = host.run("su -s /bin/sh bk-laptop-a -c %s" % shlex.quote("touch %s/x" % manifests))
    assert attempt.rc != 0
    assert "Permission denied" in attempt.stderr


def test_verify_reads_both_laptops_snapshots_and_finds_nothing_wrong(host):
    result = host.run("/usr/local/sbin/linkdest-server verify --restart")
    assert result.rc == 0, result.stdout + result.stderr
    assert "only the backup drive: no drive mirror is set up" in result.stdout
    assert "end of the drive" in result.stdout
    assert "without a manifest" not in result.stdout
