# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A laptop with several addresses for its server: home first, the
dynamic-DNS name second (issue 22).

The rig's real backups run through a script standing in for ssh: it notes
every call's HostName, Port and ConnectTimeout, answers for the addresses a
test marks unreachable with ssh's own words, and passes the rest to the rig's
stand-in for ssh and sshd (the real gate, real rsync). What the molecule
journey scenario proves across a real router and real sshd is in its tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from changelist_rig import Rig, no_racy_window, write

from ansible_collections.linkdest.backup.plugins.module_utils import client, codes

ROUTED_SSH = r"""#!%(python)s
# ssh [-F X] [-o X]... [-O CMD] [-N] [-f] HOST WORDS...: note the options,
# answer for a marked address, or pass on to the rig's stand-in.
import json, os, sys
options = {}
args = sys.argv[1:]
i = 0
while i < len(args) and args[i].startswith("-"):
    if args[i] in ("-N", "-f"):
        i += 1
        continue
    if args[i] == "-o":
        key, _eq, value = args[i + 1].partition("=")
        options.setdefault(key, value)  # ssh: the first value wins
    i += 2
with open(%(calls)r, "a") as calls:
    calls.write(json.dumps([options.get("HostName"), options.get("Port"),
                            options.get("ConnectTimeout"), args[i + 1:]]) + "\n")
said = json.load(open(%(answers)r)).get(options.get("HostName"))
if said:
    sys.stderr.write(said + "\n")
    sys.exit(255)
os.execv(%(rig_ssh)r, [%(rig_ssh)r] + sys.argv[1:])
"""

TIMED_OUT = "ssh: connect to host %s port 22: Connection timed out"


class Laptop:
    """The rig's laptop with two addresses and a routed ssh."""

    def __init__(self, tmp_path: Path):
        self.rig = Rig(tmp_path)
        self.calls = tmp_path / "calls"
        self.answers = tmp_path / "answers.json"
        self.answers.write_text("{}")
        ssh = tmp_path / "routed-ssh"
        ssh.write_text(
            ROUTED_SSH
            % {
                "python": sys.executable,
                "calls": str(self.calls),
                "answers": str(self.answers),
                "rig_ssh": self.rig.fake_ssh,
            }
        )
        ssh.chmod(0o755)
        self.rig.fake_ssh = str(ssh)
        self.rig.settings.server_addresses = ["192.168.1.10", "home.example.net:2222"]
        write(self.rig, "a", "a")

    def unreachable(self, **said: str) -> None:
        """ssh's words for each address given (by host, dots as underscores)."""
        self.answers.write_text(
            json.dumps({host.replace("_", "."): text for host, text in said.items()})
        )

    def dialled(self) -> list[list]:
        """(HostName, Port, ConnectTimeout, gate words) of every ssh call since the last look."""
        if not self.calls.exists():
            return []
        calls = [json.loads(line) for line in self.calls.read_text().splitlines()]
        self.calls.unlink()
        return calls

    def command(self) -> client.Linkdest:
        command = client.Linkdest(self.rig.settings, quiet=True)
        command.ssh_program = self.rig.fake_ssh
        return command


@pytest.fixture
def laptop(tmp_path):
    with no_racy_window():
        yield Laptop(tmp_path)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("backup.lan", ("backup.lan", "")),
        ("home.example.net:2222", ("home.example.net", "2222")),
        ("192.168.1.10", ("192.168.1.10", "")),
        ("[fd00::10]:2222", ("fd00::10", "2222")),
        ("[fd00::10]", ("fd00::10", "")),
        ("fd00::10", ("fd00::10", "")),
    ],
)
def test_split_address(address, expected):
    assert client.split_address(address) == expected


def test_at_home_the_first_address_answers_and_the_second_is_never_dialled(laptop):
    snapshot, kind = laptop.rig.backup()
    assert kind == "full"
    calls = laptop.dialled()
    assert {call[0] for call in calls} == {"192.168.1.10"}
    # The home address gets the short wait: it is not the last one.
    assert {timeout for _h, _p, timeout, _w in calls} == {"5"}
    assert laptop.command().status.read()["last_address"] == "192.168.1.10"
    assert laptop.rig.finished() == [snapshot]


@pytest.mark.parametrize(
    "home_said",
    [
        TIMED_OUT % "192.168.1.10",
        "ssh: connect to host 192.168.1.10 port 22: Connection refused",
        # Another machine holds the home address on this network.
        "Host key verification failed.",
    ],
    ids=["timed-out", "refused", "another-host-key"],
)
def test_away_the_run_goes_on_to_the_dynamic_dns_name(laptop, home_said):
    laptop.unreachable(**{"192_168_1_10": home_said})
    first, kind = laptop.rig.backup()
    assert kind == "full"
    calls = laptop.dialled()
    # The home address once, then everything through the name, on its port,
    # with ssh's own wait (the configuration's) for the last address.
    assert calls[0][:3] == ["192.168.1.10", None, "5"]
    assert len(calls) > 1
    assert all(call[:3] == ["home.example.net", "2222", None] for call in calls[1:])
    status = laptop.command().status.read()
    assert status["last_result"] == "success"
    assert status["last_address"] == "home.example.net:2222"
    # The next run, unchanged, the same way: a check, no new snapshot.
    _snapshot, kind = laptop.rig.backup()
    assert kind == "unchanged"
    assert laptop.rig.finished() == [first]
    assert laptop.dialled()[0][0] == "192.168.1.10"


def test_no_address_answering_is_a_skip_as_for_one_address(laptop):
    laptop.unreachable(
        **{
            "192_168_1_10": TIMED_OUT % "192.168.1.10",
            "home_example_net": "ssh: Could not resolve hostname home.example.net: "
            "Temporary failure in name resolution",
        }
    )
    command = laptop.command()
    assert command.backup() == codes.EXIT_SKIPPED
    status = command.status.read()
    assert status["last_result"] == "skipped"
    assert "home.example.net" in status["last_error"]
    assert laptop.rig.finished() == []
    log = Path(laptop.rig.settings.log_file).read_text()
    assert "server not reached at 192.168.1.10 (%s)" % (TIMED_OUT % "192.168.1.10") in log


def test_a_refused_key_at_home_fails_though_the_name_is_unreachable(laptop):
    # The pinned host key matched at home and the server refused the key
    # (revoked): not "away", whatever the name says.
    laptop.unreachable(
        **{
            "192_168_1_10": "backup@192.168.1.10: Permission denied (publickey).",
            "home_example_net": "ssh: connect to host home.example.net port 2222: "
            "Connection refused",
        }
    )
    command = laptop.command()
    assert command.backup() == 255
    status = command.status.read()
    assert status["last_result"] == "failed"
    assert "Permission denied" in status["last_error"]


def test_a_bad_host_key_at_the_last_address_fails(laptop):
    laptop.unreachable(
        **{
            "192_168_1_10": TIMED_OUT % "192.168.1.10",
            "home_example_net": "Host key verification failed.",
        }
    )
    command = laptop.command()
    assert command.backup() == 255
    assert command.status.read()["last_result"] == "failed"


def test_commands_other_than_backup_choose_the_address_first(laptop, capsys):
    snapshot, _kind = laptop.rig.backup()
    laptop.dialled()
    laptop.unreachable(**{"192_168_1_10": TIMED_OUT % "192.168.1.10"})
    command = laptop.command()
    assert command.list_snapshots() == 0
    assert snapshot in capsys.readouterr().out
    calls = laptop.dialled()
    assert calls[0][0] == "192.168.1.10"
    # The list itself went through the name.
    listed = [call for call in calls if call[3] and call[3][0] == codes.VERB_LIST]
    assert [call[0] for call in listed] == ["home.example.net"]


def test_status_says_where_the_last_run_reached_the_server(laptop, capsys):
    laptop.unreachable(**{"192_168_1_10": TIMED_OUT % "192.168.1.10"})
    laptop.rig.backup()
    laptop.command().status_report()
    assert "Reached at:    home.example.net:2222" in capsys.readouterr().out


def test_one_address_dials_as_before(laptop):
    laptop.rig.settings.server_addresses = ["backup.lan"]
    laptop.rig.backup()
    # The ssh configuration holds the address: no HostName on the command line.
    assert {call[0] for call in laptop.dialled()} == {None}
    assert laptop.command().status.read()["last_address"] == "backup.lan"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", []),
        ("backup.lan", ["backup.lan"]),
        (["192.168.1.10", "home.example.net:2222"], ["192.168.1.10", "home.example.net:2222"]),
        (["[fd00::10]:2222", "fd00::10"], ["[fd00::10]:2222", "fd00::10"]),
    ],
)
def test_checked_addresses_takes_a_string_or_a_list(value, expected):
    assert client.checked_addresses(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["home example"], "is not a host name or IP address"),
        (["home.example.net:0"], "the port must be a number from 1 to 65535"),
        (["home.example.net:22x"], "the port must be a number from 1 to 65535"),
        (["[home.example.net]:22"], "is not a host name or IP address"),
        (["a.example", "a.example"], "lists an address twice"),
        ([22], "must be an address or a list of addresses"),
        ({"host": "a"}, "must be an address or a list of addresses"),
    ],
)
def test_checked_addresses_says_what_is_wrong(value, message):
    with pytest.raises(ValueError, match=message):
        client.checked_addresses(value)


def test_a_new_laptops_first_command_away_needs_no_log_yet(laptop, capsys):
    """A new laptop restores before it ever backed up: no state directory,
    and the home address unreachable."""
    laptop.rig.backup()
    state = Path(laptop.rig.settings.state_dir)
    for path in state.iterdir():
        path.unlink()
    state.rmdir()
    laptop.unreachable(**{"192_168_1_10": TIMED_OUT % "192.168.1.10"})
    assert laptop.command().list_snapshots() == 0
    assert "back-" in capsys.readouterr().out


def test_a_command_meets_the_refused_key_not_the_names_time_out(laptop, capsys):
    """list with the key refused at home and the name unreachable: the
    command reports the refusal, where the server itself answered."""
    laptop.unreachable(
        **{
            "192_168_1_10": "backup@192.168.1.10: Permission denied (publickey).",
            "home_example_net": TIMED_OUT % "home.example.net",
        }
    )
    command = laptop.command()
    assert command.list_snapshots() == 255
    assert command.address == "192.168.1.10"
    listed = [call for call in laptop.dialled() if call[3][:1] == [codes.VERB_LIST]]
    assert [call[0] for call in listed] == ["192.168.1.10"]


def test_a_skip_says_what_every_address_said(laptop):
    """Another host key at home, the name timing out: a skip (it may be a
    café's machine at that address), with the host key's failure in the reason."""
    laptop.unreachable(
        **{
            "192_168_1_10": "Host key verification failed.",
            "home_example_net": TIMED_OUT % "home.example.net",
        }
    )
    command = laptop.command()
    assert command.backup() == codes.EXIT_SKIPPED
    error = command.status.read()["last_error"]
    assert "home.example.net" in error
    assert "192.168.1.10: Host key verification failed." in error


def test_with_several_addresses_each_gets_its_port_spelled_out():
    assert client.checked_addresses(["192.168.1.10", "home.example.net:2222"], 22) == [
        "192.168.1.10:22",
        "home.example.net:2222",
    ]
    assert client.checked_addresses(["fd00::10", "home.example.net"], 2200) == [
        "[fd00::10]:2200",
        "home.example.net:2200",
    ]
    # One address: the ssh configuration's Port holds it, as before.
    assert client.checked_addresses("backup.lan", 22) == ["backup.lan"]
    with pytest.raises(ValueError, match="lists an address twice"):
        client.checked_addresses(["backup.lan", "backup.lan:22"], 22)
