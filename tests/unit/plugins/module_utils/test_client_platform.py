# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of client_platform.py's macOS layer and its dispatch.

The pmset and ifconfig outputs below are written after the formats macOS
prints, for the shapes of Mac that back up: a Wi-Fi laptop, a docked laptop
with Ethernet, one on a VPN, a desktop Mac mini and one behind a UPS. The
Linux layer is tested in test_client.py.
"""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import sys

import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import client_platform

# --- pmset -g batt -----------------------------------------------------------

PMSET_MAC_MINI = "Now drawing from 'AC Power'\n"

PMSET_DISCHARGING = (
    "Now drawing from 'Battery Power'\n"
    " -InternalBattery-0 (id=4653155)\t87%; discharging; 5:12 remaining present: true\n"
)

PMSET_CHARGING = (
    "Now drawing from 'AC Power'\n"
    " -InternalBattery-0 (id=4653155)\t64%; charging; 1:05 remaining present: true\n"
)

PMSET_CHARGED_ON_AC = (
    "Now drawing from 'AC Power'\n"
    " -InternalBattery-0 (id=4653155)\t100%; charged; 0:00 remaining present: true\n"
)

PMSET_ON_UPS = (
    "Now drawing from 'UPS Power'\n"
    " -Back-UPS ES 700 (id=1234567)\t96%; discharging; 0:41 remaining present: true\n"
)

# --- ifconfig ------------------------------------------------------------------

LOOPBACK = (
    "lo0: flags=8049<UP,LOOPBACK,RUNNING,MULTICAST> mtu 16384\n"
    "\toptions=1203<RXCSUM,TXCSUM,TXSTATUS,SW_TIMESTAMP>\n"
    "\tinet 127.0.0.1 netmask 0xff000000\n"
    "\tinet6 ::1 prefixlen 128\n"
    "\tinet6 fe80::1%lo0 prefixlen 64 scopeid 0x1\n"
    "\tnd6 options=201<PERFORMNUD,DAD>\n"
    "gif0: flags=8010<POINTOPOINT,MULTICAST> mtu 1280\n"
    "stf0: flags=0<> mtu 1280\n"
)

# A MacBook Air at home: Wi-Fi only, AirDrop's awdl0 and an idle utun with
# link-local addresses only.
IFCONFIG_WIFI_ONLY = LOOPBACK + (
    "en0: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500\n"
    "\toptions=6463<RXCSUM,TXCSUM,TSO4,TSO6,CHANNEL_IO,PARTIAL_CSUM,ZEROINVERT_CSUM>\n"
    "\tether a4:83:e7:12:34:56\n"
    "\tinet6 fe80::1c2a:3bff:fe4d:5e6f%en0 prefixlen 64 secured scopeid 0x6\n"
    "\tinet 192.168.1.23 netmask 0xffffff00 broadcast 192.168.1.255\n"
    "\tinet6 2001:db8:1:2:1c2a:3bff:fe4d:5e6f prefixlen 64 autoconf secured\n"
    "\tinet6 2001:db8:1:2:8d1:2c3b:4a5e:6f70 prefixlen 64 autoconf temporary\n"
    "\tinet6 fd00::1 prefixlen 64 autoconf temporary\n"
    "\tnd6 options=201<PERFORMNUD,DAD>\n"
    "\tmedia: autoselect\n"
    "\tstatus: active\n"
    "awdl0: flags=8943<UP,BROADCAST,RUNNING,PROMISC,SIMPLEX,MULTICAST> mtu 1500\n"
    "\toptions=6463<RXCSUM,TXCSUM,TSO4,TSO6,CHANNEL_IO,PARTIAL_CSUM,ZEROINVERT_CSUM>\n"
    "\tether 7e:11:22:33:44:55\n"
    "\tinet6 fe80::7c11:22ff:fe33:4455%awdl0 prefixlen 64 scopeid 0x8\n"
    "\tnd6 options=201<PERFORMNUD,DAD>\n"
    "\tmedia: autoselect\n"
    "\tstatus: active\n"
    "utun0: flags=8051<UP,POINTOPOINT,RUNNING,MULTICAST> mtu 1380\n"
    "\tinet6 fe80::6f1a:2b3c:4d5e:6f70%utun0 prefixlen 64 scopeid 0xb\n"
    "\tnd6 options=201<PERFORMNUD,DAD>\n"
)

WIFI_ONLY_ADDRESSES = [
    "192.168.1.23/24",
    "2001:db8:1:2:1c2a:3bff:fe4d:5e6f/64",
    "2001:db8:1:2:8d1:2c3b:4a5e:6f70/64",
    "fd00::1/64",
]

# A docked MacBook Pro: Wi-Fi on en0, the dock's Ethernet on en1 in a /16,
# a second Ethernet port administratively down (no UP) that still holds an
# address, a USB adapter that got no DHCP answer (self-assigned 169.254) and
# the Thunderbolt bridge, whose member lines are indented like addresses.
IFCONFIG_ETHERNET_AND_WIFI = LOOPBACK + (
    "en0: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500\n"
    "\tether a4:83:e7:12:34:56\n"
    "\tinet6 fe80::1c2a:3bff:fe4d:5e6f%en0 prefixlen 64 secured scopeid 0x6\n"
    "\tinet 192.168.1.40 netmask 0xffffff00 broadcast 192.168.1.255\n"
    "\tnd6 options=201<PERFORMNUD,DAD>\n"
    "\tmedia: autoselect\n"
    "\tstatus: active\n"
    "en1: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500\n"
    "\toptions=50b<RXCSUM,TXCSUM,VLAN_HWTAGGING,AV,CHANNEL_IO>\n"
    "\tether 00:e0:4c:68:01:02\n"
    "\tinet6 fe80::10b1:c3ff:fe2e:9a01%en1 prefixlen 64 secured scopeid 0x7\n"
    "\tinet 10.20.0.15 netmask 0xffff0000 broadcast 10.20.255.255\n"
    "\tinet6 fd12:3456:789a:1::15 prefixlen 64 dynamic\n"
    "\tnd6 options=201<PERFORMNUD,DAD>\n"
    "\tmedia: autoselect (1000baseT <full-duplex>)\n"
    "\tstatus: active\n"
    "en2: flags=8822<BROADCAST,SMART,SIMPLEX,MULTICAST> mtu 1500\n"
    "\tether 00:e0:4c:68:03:04\n"
    "\tinet 172.16.5.9 netmask 0xfffffffc broadcast 172.16.5.11\n"
    "\tmedia: autoselect (none)\n"
    "\tstatus: inactive\n"
    "en3: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500\n"
    "\tether 00:e0:4c:68:05:06\n"
    "\tinet 169.254.12.34 netmask 0xffff0000 broadcast 169.254.255.255\n"
    "\tmedia: autoselect (100baseTX <full-duplex>)\n"
    "\tstatus: active\n"
    "bridge0: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500\n"
    "\toptions=63<RXCSUM,TXCSUM,TSO4,TSO6>\n"
    "\tether 36:1f:a2:00:c4:01\n"
    "\tConfiguration:\n"
    "\t\tid 0:0:0:0:0:0 priority 0 hellotime 0 fwddelay 0\n"
    "\t\tmaxage 0 holdcnt 0 proto stp maxaddr 100 timeout 1200\n"
    "\tmember: en4 flags=3<LEARNING,DISCOVER>\n"
    "\t        ifmaxaddr 0 port 11 priority 0 path cost 0\n"
    "\tnd6 options=201<PERFORMNUD,DAD>\n"
    "\tmedia: <unknown type>\n"
    "\tstatus: inactive\n"
)

ETHERNET_AND_WIFI_ADDRESSES = [
    "192.168.1.40/24",
    "10.20.0.15/16",
    "fd12:3456:789a:1::15/64",
]

# The Wi-Fi laptop away from home, on an OpenVPN tunnel: a point-to-point
# inet with the peer after "-->".
IFCONFIG_ON_VPN = LOOPBACK + (
    "en0: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500\n"
    "\tether a4:83:e7:12:34:56\n"
    "\tinet6 fe80::1c2a:3bff:fe4d:5e6f%en0 prefixlen 64 secured scopeid 0x6\n"
    "\tinet 172.20.10.3 netmask 0xfffffff0 broadcast 172.20.10.15\n"
    "\tnd6 options=201<PERFORMNUD,DAD>\n"
    "\tmedia: autoselect\n"
    "\tstatus: active\n"
    "utun3: flags=8051<UP,POINTOPOINT,RUNNING,MULTICAST> mtu 1380\n"
    "\tinet 10.8.0.6 --> 10.8.0.5 netmask 0xffffffff\n"
)

ON_VPN_ADDRESSES = ["172.20.10.3/28", "10.8.0.6/32"]


class FakeRunner:
    """Stands in for subprocess.run: answers per program path with
    (exit status, output) or raises the exception given; a program it does
    not know is not installed."""

    def __init__(self, answers: dict):
        self.answers = answers
        self.calls: list[list[str]] = []
        self.envs: list[dict | None] = []

    def __call__(self, argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
        self.calls.append(list(argv))
        self.envs.append(None if env is None else dict(env))
        answer = self.answers.get(argv[0], FileNotFoundError(2, "No such file", argv[0]))
        if isinstance(answer, BaseException):
            raise answer
        returncode, stdout = answer
        return subprocess.CompletedProcess(argv, returncode, stdout, "")


# --- power -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "on_ac"),
    [
        pytest.param(PMSET_MAC_MINI, True, id="mac-mini-no-battery"),
        pytest.param(PMSET_DISCHARGING, False, id="battery-discharging"),
        pytest.param(PMSET_CHARGING, True, id="charging-on-ac"),
        pytest.param(PMSET_CHARGED_ON_AC, True, id="charged-on-ac"),
        pytest.param(PMSET_ON_UPS, False, id="ups"),
        pytest.param("", True, id="empty"),
        pytest.param("Now drawing from 'Solar Power'\n", True, id="unknown-source"),
        pytest.param("pmset: unrecognized option\n", True, id="no-source-line"),
    ],
)
def test_power_source_is_ac(recorded, on_ac):
    assert client_platform.power_source_is_ac(recorded) is on_ac


def test_darwin_power_asks_pmset_at_its_path():
    run = FakeRunner({"/usr/bin/pmset": (0, PMSET_DISCHARGING)})
    assert client_platform.Darwin(run).on_ac_power() is False
    assert run.calls == [["/usr/bin/pmset", "-g", "batt"]]


def test_darwin_power_falls_back_to_pmset_on_path():
    run = FakeRunner({"pmset": (0, PMSET_ON_UPS)})
    assert client_platform.Darwin(run).on_ac_power() is False
    assert run.calls == [["/usr/bin/pmset", "-g", "batt"], ["pmset", "-g", "batt"]]


def test_darwin_power_is_unknown_when_pmset_fails_or_hangs():
    failing = FakeRunner({"/usr/bin/pmset": (1, PMSET_DISCHARGING)})
    assert client_platform.Darwin(failing).on_ac_power() is True
    # A failing pmset answered: the one on PATH is not asked as well.
    assert failing.calls == [["/usr/bin/pmset", "-g", "batt"]]
    hanging = FakeRunner({"/usr/bin/pmset": subprocess.TimeoutExpired("pmset", 30)})
    assert client_platform.Darwin(hanging).on_ac_power() is True


def test_missing_binaries_mean_mains_power_and_no_addresses():
    run = FakeRunner({})
    darwin = client_platform.Darwin(run)
    assert darwin.on_ac_power() is True
    assert darwin.addresses() == []
    assert darwin.on_networks([]) is True
    # With networks required and no address known, the laptop is on none.
    assert darwin.on_networks(["192.168.1.0/24"]) is False
    assert run.calls == [
        ["/usr/bin/pmset", "-g", "batt"],
        ["pmset", "-g", "batt"],
        ["/sbin/ifconfig"],
        ["ifconfig"],
        ["/sbin/ifconfig"],
        ["ifconfig"],
    ]


# --- addresses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "addresses"),
    [
        pytest.param(IFCONFIG_WIFI_ONLY, WIFI_ONLY_ADDRESSES, id="wifi-only"),
        pytest.param(IFCONFIG_ETHERNET_AND_WIFI, ETHERNET_AND_WIFI_ADDRESSES, id="docked"),
        pytest.param(IFCONFIG_ON_VPN, ON_VPN_ADDRESSES, id="vpn"),
        pytest.param(LOOPBACK, [], id="loopback-only"),
        pytest.param("", [], id="empty"),
    ],
)
def test_parse_ifconfig(recorded, addresses):
    assert client_platform.parse_ifconfig(recorded) == addresses


@pytest.mark.parametrize(
    ("netmask", "length"),
    [
        ("0xffffff00", 24),
        ("0xffff0000", 16),
        ("0xfffffffc", 30),
        ("0xffffffff", 32),
        ("0xff000000", 8),
        ("0x00000000", 0),
        ("0XFFFFFF00", 24),
        ("255.255.255.0", 24),
        ("255.255.240.0", 20),
        ("0xff00ff00", None),  # not contiguous
        ("0x1ffffffff", None),  # wider than IPv4
        ("255.0.255.0", None),
        ("0xnothex", None),
        ("", None),
    ],
)
def test_netmask_prefix_length(netmask, length):
    assert client_platform.netmask_prefix_length(netmask) == length


def test_inet_without_a_usable_netmask_is_a_host():
    recorded = (
        "en5: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500\n"
        "\tinet 192.168.7.7\n"
        "\tinet 192.168.7.8 netmask 0xff00ff00 broadcast 192.168.7.255\n"
    )
    assert client_platform.parse_ifconfig(recorded) == ["192.168.7.7/32", "192.168.7.8/32"]


def test_inet6_scope_ids_and_prefix_lengths():
    recorded = (
        "en0: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500\n"
        "\tinet6 fe80::aede:48ff:fe00:1122%en0 prefixlen 64 secured scopeid 0x4\n"
        "\tinet6 fd12:3456:789a::5%en0 prefixlen 48 secured scopeid 0x4\n"
        "\tinet6 2001:DB8:0:0:0:0:0:9 prefixlen 128 dynamic\n"
        "\tinet6 2001:db8:aa::1\n"
        "\tinet6 febf::1%en0 prefixlen 64 scopeid 0x4\n"
        "\tinet6 fec0::1 prefixlen 64\n"
    )
    assert client_platform.parse_ifconfig(recorded) == [
        "fd12:3456:789a::5/48",
        "2001:db8::9/128",
        "2001:db8:aa::1/128",
        # fec0::/10 (old site-local) lies outside fe80::/10: not link-local.
        "fec0::1/64",
    ]


def test_inet6_duplicated_or_detached_addresses_are_left_out():
    recorded = (
        "en0: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500\n"
        "\tinet6 2001:db8:1:2::10 prefixlen 64 duplicated\n"
        "\tinet6 2001:db8:9:9::10 prefixlen 64 autoconf secured detached\n"
        "\tinet6 2001:db8:1:2::11 prefixlen 64 autoconf secured deprecated\n"
        "\tinet6 2001:db8:1:2::12 prefixlen 64 autoconf temporary\n"
    )
    assert client_platform.parse_ifconfig(recorded) == [
        "2001:db8:1:2::11/64",
        "2001:db8:1:2::12/64",
    ]


def test_interfaces_without_up_are_skipped_whatever_else_they_say():
    recorded = (
        "en0: flags=8822<BROADCAST,SMART,SIMPLEX,MULTICAST> mtu 1500\n"
        "\tinet 192.168.1.23 netmask 0xffffff00 broadcast 192.168.1.255\n"
        "en1: flags=8863<SUP,BROADCAST,RUNNING> mtu 1500\n"
        "\tinet 192.168.1.24 netmask 0xffffff00 broadcast 192.168.1.255\n"
        "garbled header line\n"
        "\tinet 192.168.1.25 netmask 0xffffff00 broadcast 192.168.1.255\n"
        "en2: flags=8863<UP,BROADCAST,RUNNING> mtu 1500\n"
        "\tinet 192.168.1.26 netmask 0xffffff00 broadcast 192.168.1.255\n"
    )
    assert client_platform.parse_ifconfig(recorded) == ["192.168.1.26/24"]


def test_darwin_addresses_ask_ifconfig_and_fall_back_to_path():
    at_sbin = FakeRunner({"/sbin/ifconfig": (0, IFCONFIG_WIFI_ONLY)})
    assert client_platform.Darwin(at_sbin).addresses() == WIFI_ONLY_ADDRESSES
    assert at_sbin.calls == [["/sbin/ifconfig"]]
    on_path = FakeRunner({"ifconfig": (0, IFCONFIG_ON_VPN)})
    assert client_platform.Darwin(on_path).addresses() == ON_VPN_ADDRESSES
    assert on_path.calls == [["/sbin/ifconfig"], ["ifconfig"]]
    failing = FakeRunner({"/sbin/ifconfig": (1, IFCONFIG_WIFI_ONLY)})
    assert client_platform.Darwin(failing).addresses() == []


# --- networks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "networks", "on_them"),
    [
        (IFCONFIG_WIFI_ONLY, [], True),
        (IFCONFIG_WIFI_ONLY, ["192.168.1.0/24"], True),
        (IFCONFIG_WIFI_ONLY, ["10.0.0.0/8", "fd00::/8"], True),
        (IFCONFIG_WIFI_ONLY, ["2001:db8:1:2::/64"], True),
        (IFCONFIG_WIFI_ONLY, ["192.168.2.0/24", "10.0.0.0/8"], False),
        # Loopback and link-local addresses never satisfy allowed_networks.
        (IFCONFIG_WIFI_ONLY, ["127.0.0.0/8", "::1/128", "fe80::/10"], False),
        (IFCONFIG_ETHERNET_AND_WIFI, ["10.20.0.0/16"], True),
        (IFCONFIG_ETHERNET_AND_WIFI, ["172.16.5.8/30"], False),  # en2 is down
        (IFCONFIG_ETHERNET_AND_WIFI, ["169.254.0.0/16"], False),
        (IFCONFIG_ON_VPN, ["192.168.1.0/24"], False),
        (IFCONFIG_ON_VPN, ["10.8.0.0/24"], True),
    ],
)
def test_darwin_on_networks(recorded, networks, on_them):
    darwin = client_platform.Darwin(FakeRunner({"/sbin/ifconfig": (0, recorded)}))
    assert darwin.on_networks(networks) is on_them


# --- dispatch ------------------------------------------------------------------


def test_current_gives_darwin_on_a_mac(monkeypatch):
    monkeypatch.setattr(client_platform.platform, "system", lambda: "Darwin")
    layer = client_platform.current()
    assert isinstance(layer, client_platform.Darwin)
    assert layer.run is client_platform.run_command


def test_current_gives_linux_with_its_power_supplies(monkeypatch, tmp_path):
    monkeypatch.setattr(client_platform.platform, "system", lambda: "Linux")
    layer = client_platform.current(str(tmp_path))
    assert isinstance(layer, client_platform.Linux)
    assert layer.power_supplies == str(tmp_path)


@pytest.mark.parametrize("system", ["Windows", "FreeBSD", ""])
def test_current_refuses_other_systems(monkeypatch, system):
    monkeypatch.setattr(client_platform.platform, "system", lambda: system)
    with pytest.raises(client_platform.UnsupportedPlatform, match="does not support"):
        client_platform.current()


def test_the_layers_share_on_networks():
    assert client_platform.Darwin.on_networks is client_platform.Linux.on_networks


def test_the_module_parses_as_python_3_9():
    # macOS runs the client with the Command Line Tools' Python 3.9: no match
    # statements, no parenthesized context managers.
    with open(client_platform.__file__, encoding="utf-8") as handle:
        ast.parse(handle.read(), feature_version=(3, 9))


# --- rsync ---------------------------------------------------------------------

# `rsync --version`, first lines, as each prints them.
RSYNC_3_2_7 = (
    "rsync  version 3.2.7  protocol version 31\nCopyright (C) 1996-2022 by Andrew Tridgell\n"
)
RSYNC_3_4_1 = (
    "rsync  version v3.4.1  protocol version 32\nCopyright (C) 1996-2025 by Andrew Tridgell\n"
)
RSYNC_3_0_9 = "rsync  version 3.0.9  protocol version 30\n"
APPLE_RSYNC_2_6_9 = (
    "rsync  version 2.6.9  protocol version 29\n"
    "Copyright (C) 1996-2006 by Andrew Tridgell, Wayne Davison, and others.\n"
)
OPENRSYNC = "openrsync: protocol version 29\nrsync version 2.6.9 compatible\n"


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (RSYNC_3_2_7, (3, 2, 7)),
        (RSYNC_3_4_1, (3, 4, 1)),
        (RSYNC_3_0_9, (3, 0, 9)),
        (APPLE_RSYNC_2_6_9, (2, 6, 9)),
        (OPENRSYNC, None),
        ("", None),
        ("bash: rsync: command not found\n", None),
    ],
)
def test_rsync_version(text, version):
    assert client_platform.rsync_version(text) == version


def test_darwin_prefers_homebrew_rsync_on_apple_silicon_then_intel():
    both = FakeRunner(
        {
            "/opt/homebrew/bin/rsync": (0, RSYNC_3_4_1),
            "/usr/local/bin/rsync": (0, RSYNC_3_2_7),
            "/usr/bin/rsync": (0, OPENRSYNC),
        }
    )
    assert client_platform.Darwin(both).rsync() == "/opt/homebrew/bin/rsync"
    intel = FakeRunner({"/usr/local/bin/rsync": (0, RSYNC_3_2_7), "/usr/bin/rsync": (0, OPENRSYNC)})
    darwin = client_platform.Darwin(intel)
    assert darwin.rsync() == "/usr/local/bin/rsync"
    assert darwin.rsync() == "/usr/local/bin/rsync"
    assert intel.calls.count(["/usr/local/bin/rsync", "--version"]) == 1  # asked once per run


@pytest.mark.parametrize(
    ("system_rsync", "said"),
    [
        (OPENRSYNC, "/usr/bin/rsync (openrsync: protocol version 29)"),
        (APPLE_RSYNC_2_6_9, "/usr/bin/rsync (rsync  version 2.6.9  protocol version 29)"),
    ],
)
def test_darwin_refuses_the_system_rsync_naming_the_fix(system_rsync, said):
    darwin = client_platform.Darwin(FakeRunner({"/usr/bin/rsync": (0, system_rsync)}))
    with pytest.raises(client_platform.NoUsableRsync) as refused:
        darwin.rsync()
    message = str(refused.value)
    assert "linkdest needs rsync 3.1 or later" in message
    assert said in message
    assert "brew install rsync" in message


def test_an_old_or_silent_homebrew_rsync_is_passed_over_and_named():
    runner = FakeRunner(
        {
            "/opt/homebrew/bin/rsync": subprocess.TimeoutExpired(["rsync"], 30),
            "/usr/local/bin/rsync": (0, RSYNC_3_0_9),
            "/usr/bin/rsync": (1, ""),
        }
    )
    with pytest.raises(client_platform.NoUsableRsync) as refused:
        client_platform.Darwin(runner).rsync()
    message = str(refused.value)
    assert "/opt/homebrew/bin/rsync (did not answer --version)" in message
    assert "/usr/local/bin/rsync (rsync  version 3.0.9  protocol version 30)" in message
    assert "/usr/bin/rsync (no version)" in message


def test_no_rsync_at_all_is_named():
    with pytest.raises(client_platform.NoUsableRsync, match="found none; install Homebrew"):
        client_platform.Darwin(FakeRunner({})).rsync()


def _script(path, text):
    path.write_text("#!/bin/sh\nprintf '%s' '" + text + "'\n")
    path.chmod(0o755)
    return str(path)


def test_real_programs_are_asked(tmp_path):
    # Real processes, not a fake runner: this machine's rsync passes, and
    # scripts that answer as openrsync and Apple's rsync do are refused.
    linux = client_platform.Linux(str(tmp_path))
    assert linux.rsync() == "rsync"
    darwin = client_platform.Darwin()
    darwin.RSYNC = (
        _script(tmp_path / "openrsync", OPENRSYNC),
        _script(tmp_path / "old", APPLE_RSYNC_2_6_9),
    )
    with pytest.raises(client_platform.NoUsableRsync, match="openrsync: protocol version 29"):
        darwin.rsync()
    darwin = client_platform.Darwin()
    darwin.RSYNC = (str(tmp_path / "missing"), _script(tmp_path / "new", RSYNC_3_2_7))
    assert darwin.rsync() == str(tmp_path / "new")


# --- the agent that holds the key ---------------------------------------------


def test_linux_finds_keychains_agent(tmp_path, monkeypatch):
    monkeypatch.setattr(client_platform.socket, "gethostname", lambda: "lap")
    (tmp_path / ".keychain").mkdir()
    (tmp_path / ".keychain" / "lap-sh").write_text(
        "SSH_AUTH_SOCK=/tmp/ssh-x/agent.9; export SSH_AUTH_SOCK;\n"
        "SSH_AGENT_PID=10; export SSH_AGENT_PID;\n"
    )
    environ = {}
    client_platform.Linux().find_agent(environ, str(tmp_path))
    assert environ == {"SSH_AUTH_SOCK": "/tmp/ssh-x/agent.9", "SSH_AGENT_PID": "10"}
    environ = {}
    client_platform.Linux().find_agent(environ, str(tmp_path / "nobody"))
    assert environ == {}


def test_darwin_asks_launchd_for_the_agent_and_loads_the_keychains_passphrase():
    runner = FakeRunner(
        {
            "/bin/launchctl": (0, "/private/tmp/com.apple.launchd.x/Listeners\n"),
            "/usr/bin/ssh-add": (0, ""),
        }
    )
    environ = {"HOME": "/Users/alice"}
    client_platform.Darwin(runner).find_agent(environ, "/Users/alice")
    assert environ["SSH_AUTH_SOCK"] == "/private/tmp/com.apple.launchd.x/Listeners"
    assert runner.calls == [
        ["/bin/launchctl", "getenv", "SSH_AUTH_SOCK"],
        ["/usr/bin/ssh-add", "--apple-load-keychain", "-q"],
    ]
    assert runner.envs[1]["SSH_AUTH_SOCK"] == environ["SSH_AUTH_SOCK"]


def test_darwin_keeps_a_given_agent_and_survives_no_agent():
    runner = FakeRunner({"/usr/bin/ssh-add": subprocess.TimeoutExpired(["ssh-add"], 30)})
    environ = {"SSH_AUTH_SOCK": "/given"}
    client_platform.Darwin(runner).find_agent(environ, "/Users/alice")
    assert environ["SSH_AUTH_SOCK"] == "/given"
    assert runner.calls == [["/usr/bin/ssh-add", "--apple-load-keychain", "-q"]]
    runner = FakeRunner({})  # no launchctl answer: no agent, nothing asked of ssh-add
    environ = {}
    client_platform.Darwin(runner).find_agent(environ, "/Users/alice")
    assert environ["SSH_AUTH_SOCK"] == ""
    assert runner.calls == [
        ["/bin/launchctl", "getenv", "SSH_AUTH_SOCK"],
        ["launchctl", "getenv", "SSH_AUTH_SOCK"],
    ]


# --- privacy protection (Full Disk Access) ------------------------------------


def _scandir_refusing(refused: dict):
    """os.scandir, except that the paths in refused raise PermissionError
    with the errno given (macOS gives EPERM for a protected folder)."""

    def scandir(path):
        if str(path) in refused:
            raise PermissionError(refused[str(path)], "Operation not permitted", str(path))
        return os.scandir(path)

    return scandir


def _home(tmp_path):
    for folder in ("Desktop", "Documents", "Pictures", "Library/Mobile Documents"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("x")
    return tmp_path


@pytest.mark.parametrize(
    "protected", ["Documents", "Library/Mobile Documents", ""], ids=["in-it", "deeper", "source"]
)
def test_darwin_names_a_folder_macos_keeps_from_it(tmp_path, protected):
    home = _home(tmp_path)
    darwin = client_platform.Darwin(FakeRunner({}))
    darwin.interpreter = "/Library/Developer/CommandLineTools/usr/bin/python3"
    refused = str(home / protected) if protected else str(home)
    darwin.scandir = _scandir_refusing({refused: errno.EPERM})
    message = darwin.privacy_block(str(home))
    assert message.startswith("macOS keeps linkdest from reading %s (privacy protection)" % refused)
    assert "Full Disk Access, add /Library/Developer/CommandLineTools/usr/bin/python3" in message


def test_darwin_leaves_plain_permission_problems_to_rsync(tmp_path):
    home = _home(tmp_path)
    darwin = client_platform.Darwin(FakeRunner({}))
    darwin.scandir = _scandir_refusing({str(home / "Desktop"): errno.EACCES})
    assert darwin.privacy_block(str(home)) == ""
    assert darwin.privacy_block(str(home / "no such folder")) == ""
    assert client_platform.Darwin(FakeRunner({})).privacy_block(str(home)) == ""


def test_darwin_interpreter_is_the_real_program():
    assert client_platform.Darwin(FakeRunner({})).interpreter == os.path.realpath(sys.executable)


def test_linux_has_no_privacy_protection_to_name(tmp_path):
    assert client_platform.Linux().privacy_block(str(tmp_path)) == ""


def test_darwin_skips_what_the_run_leaves_out_and_follows_links_it_reads(tmp_path):
    home = _home(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (home / "Desktop link").symlink_to(tmp_path / "elsewhere")
    darwin = client_platform.Darwin(FakeRunner({}))
    darwin.scandir = _scandir_refusing(
        {str(home / "Documents"): errno.EPERM, str(home / "Desktop link"): errno.EPERM}
    )

    def documents_excluded(path, name, is_dir):
        return path == "Documents"

    assert darwin.privacy_block(str(home), documents_excluded) == ""
    # rsync --copy-links reads what a link points to: so does the check.
    assert "Desktop link" in darwin.privacy_block(str(home), documents_excluded, True)

    def library_excluded(path, name, is_dir):
        return path == "Library"

    darwin.scandir = _scandir_refusing({str(home / "Library/Mobile Documents"): errno.EPERM})
    assert darwin.privacy_block(str(home), library_excluded) == ""
    assert "Library/Mobile Documents" in darwin.privacy_block(str(home))


def test_the_agent_help_names_the_platforms_fix():
    assert "log in" in client_platform.Linux.AGENT_HELP
    assert "ssh-add --apple-use-keychain" in client_platform.Darwin.AGENT_HELP
