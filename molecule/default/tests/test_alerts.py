# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Never fail silently: failures, recoveries and staleness alert; a laptop away is skipped."""

import contextlib
import shlex
import time

import linkdest_testlib as lib
import pytest

ALERTS = "/tmp/linkdest-alerts"
PINGS = "/tmp/linkdest-pings"
LISTENER = (
    r"""
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open("%s", "a") as log:
            log.write(self.path + "\n")
        self.send_response(200)
        self.end_headers()
    do_HEAD = do_POST = do_GET
    def log_message(self, *args):
        pass
http.server.HTTPServer(("0.0.0.0", 8099), Handler).serve_forever()
"""
    % PINGS
)


@pytest.fixture(scope="module")
def listener(server):
    server.run("rm -f %s" % PINGS)
    server.run("cat > /tmp/listener.py << 'EOF'\n%s\nEOF" % LISTENER)
    server.run("setsid python3 /tmp/listener.py > /dev/null 2>&1 < /dev/null &")
    for _attempt in range(50):
        if (
            server.run(
                "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8099), 1)'"
            ).rc
            == 0
        ):
            break
        time.sleep(0.1)
    yield
    server.run("pkill -f /tmp/listener.py")


def alerts(laptop):
    return laptop.file(ALERTS).content_string.splitlines() if laptop.file(ALERTS).exists else []


def pings(server):
    return server.file(PINGS).content_string.splitlines() if server.file(PINGS).exists else []


@contextlib.contextmanager
def sshd_stopped(server):
    assert server.run("systemctl stop ssh").rc == 0
    try:
        yield
    finally:
        assert server.run("systemctl start ssh").rc == 0


@contextlib.contextmanager
def server_name_unresolvable(laptop):
    config = "/etc/linkdest/ssh_config"
    assert (
        laptop.run(
            "cp %s %s.keep && sed -i 's/HostName .*/HostName nowhere.invalid/' %s"
            % (config, config, config)
        ).rc
        == 0
    )
    try:
        yield
    finally:
        assert laptop.run("mv %s.keep %s" % (config, config)).rc == 0


def test_failure_alerts_once_and_recovery_alerts(laptop_a, server, listener):
    laptop_a.run("rm -f %s" % ALERTS)
    assert lib.backup(laptop_a).rc == 0
    with sshd_stopped(server):
        first = lib.backup(laptop_a)
        second = lib.backup(laptop_a)
    assert first.rc == 255
    assert second.rc == 255
    status = lib.read_status(laptop_a)
    assert status["last_result"] == "failed"
    assert "Connection refused" in status["last_error"]
    failures = [line for line in alerts(laptop_a) if line.startswith("failure|")]
    assert len(failures) == 1, alerts(laptop_a)  # the second failure does not alert again
    assert "Connection refused" in failures[0]

    assert lib.backup(laptop_a).rc == 0
    assert lib.read_status(laptop_a)["last_result"] == "success"
    assert [line for line in alerts(laptop_a) if line.startswith("recovery|")]
    # A further success alerts nothing.
    count = len(alerts(laptop_a))
    assert lib.backup(laptop_a).rc == 0
    assert len(alerts(laptop_a)) == count


def test_health_check_gets_start_success_and_fail(laptop_a, server, listener):
    server.run("rm -f %s" % PINGS)
    assert lib.backup(laptop_a).rc == 0
    with sshd_stopped(server):
        assert lib.backup(laptop_a).rc == 255
    assert lib.backup(laptop_a).rc == 0
    assert pings(server) == [
        "/ping/laptop-a/start",
        "/ping/laptop-a",
        "/ping/laptop-a/start",
        "/ping/laptop-a/fail",
        "/ping/laptop-a/start",
        "/ping/laptop-a",
    ]


def test_a_laptop_away_is_skipped_then_stale_alerts_once(laptop_a, server, listener):
    assert lib.backup(laptop_a).rc == 0
    laptop_a.run("rm -f %s" % ALERTS)
    with server_name_unresolvable(laptop_a):
        away = lib.backup(laptop_a)
        assert away.rc == 69, away.stderr
        assert "skipped: server unreachable" in away.stderr
        assert lib.read_status(laptop_a)["last_result"] == "skipped"
        assert alerts(laptop_a) == []
        assert lib.as_user(laptop_a, "linkdest status").rc == 0
        # Two days without a success: the next skipped run alerts "stale", once.
        status = lib.HOME + "/.local/state/linkdest/status"
        old = int(time.time()) - 2 * 86400
        assert (
            laptop_a.run(
                "sed -i 's/^last_success_epoch=.*/last_success_epoch=%d/' %s" % (old, status)
            ).rc
            == 0
        )
        assert lib.backup(laptop_a).rc == 69
        assert lib.backup(laptop_a).rc == 69
        stale = [line for line in alerts(laptop_a) if line.startswith("stale|")]
        assert len(stale) == 1, alerts(laptop_a)
        report = lib.as_user(laptop_a, "linkdest status")
        assert report.rc == 1
        assert "STALE" in report.stdout
    assert lib.backup(laptop_a).rc == 0
    assert [line for line in alerts(laptop_a) if line.startswith("recovery|")]
    report = lib.as_user(laptop_a, "linkdest status")
    assert report.rc == 0, report.stdout
    assert "snapshots" in report.stdout


def test_the_log_stays_bounded(laptop_a):
    log = lib.HOME + "/.local/state/linkdest/linkdest.log"
    assert lib.as_user(laptop_a, "head -c 1100000 /dev/zero | tr '\\0' x >> %s" % log).rc == 0
    assert lib.backup(laptop_a).rc == 0
    assert laptop_a.file(log + ".1").size > 1024 * 1024
    assert laptop_a.file(log).size < 64 * 1024


def _variant(laptop, name, *seds):
    """A copy of the rendered linkdest with settings changed, as the role would write them."""
    path = "/tmp/%s" % name
    script = "cp /usr/local/bin/linkdest %s && chmod 755 %s" % (path, path)
    for expression in seds:
        script += " && sed -i %s %s" % (shlex.quote(expression), path)
    assert laptop.run(script).rc == 0
    return path


def test_a_laptop_outside_the_allowed_networks_is_skipped(laptop_a):
    laptop_a.run("rm -f %s" % ALERTS)
    variant = _variant(
        laptop_a,
        "linkdest-away",
        's|^    "allowed_networks": .*|    "allowed_networks": ["203.0.113.0/24"],|',
    )
    result = laptop_a.run("runuser -u alice -- %s backup" % variant)
    assert result.rc == 69, result.stderr
    assert "skipped: not on an allowed network (203.0.113.0/24)" in result.stderr
    assert alerts(laptop_a) == []
    # The same copy on the laptop's own network runs.
    ours = laptop_a.run(
        "ip -o -4 addr show scope global | awk '{print $4}' | head -n 1"
    ).stdout.strip()
    home = _variant(
        laptop_a,
        "linkdest-home",
        's|^    "allowed_networks": .*|    "allowed_networks": ["%s"],|' % ours,
    )
    assert laptop_a.run("runuser -u alice -- %s backup" % home).rc == 0


def test_a_laptop_on_battery_is_skipped(laptop_a):
    supplies = "/tmp/fake-power"
    laptop_a.run(
        f"mkdir -p {supplies}/AC {supplies}/BAT0 && echo Mains > {supplies}/AC/type"
        f" && echo 0 > {supplies}/AC/online && echo Battery > {supplies}/BAT0/type"
    )
    variant = _variant(
        laptop_a,
        "linkdest-battery",
        's|^    "require_ac_power": .*|    "require_ac_power": True,|',
        's|^    "power_supplies": .*|    "power_supplies": "%s",|' % supplies,
    )
    result = laptop_a.run("runuser -u alice -- %s backup" % variant)
    assert result.rc == 69, result.stderr
    assert "skipped: on battery" in result.stderr
    laptop_a.run("echo 1 > %s/AC/online" % supplies)
    assert laptop_a.run("runuser -u alice -- %s backup" % variant).rc == 0
