# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""What ``linkdest`` asks of the laptop's operating system, in one place:
is it on mains power, and which addresses does it have.

Linux reads sysfs and iproute2; macOS (Darwin) reads ``pmset -g batt`` and
``ifconfig``. Any other system gets a clear error, not a guess.

Standard library only, and runnable on Python 3.9: macOS's /usr/bin/python3
is the Command Line Tools' 3.9.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import re
import subprocess
from collections.abc import Callable, Sequence

POWER_SUPPLIES = "/sys/class/power_supply"

# A command that hangs (pmset waiting on a wedged powerd) must not hold the
# backup's lock for ever: after this long the answer counts as unknown.
COMMAND_TIMEOUT_SECONDS = 30


class UnsupportedPlatform(Exception):
    """linkdest has no platform layer for this system yet."""


def run_command(argv: list[str]) -> subprocess.CompletedProcess:
    """Run a command for its output; the default runner of the platform layers."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        # A stray byte in a device name must not turn into a traceback.
        errors="replace",
        check=False,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )


def output_of(
    run: Callable[[list[str]], subprocess.CompletedProcess],
    programs: Sequence[str],
    arguments: Sequence[str],
) -> str:
    """The standard output of the first of ``programs`` that exists, run with
    ``arguments``; "" when none exists, it fails or it hangs. Callers read ""
    as "unknown", so a missing tool never stops a backup with a traceback."""
    for program in programs:
        try:
            finished = run([program, *arguments])
        except OSError:
            # Not installed at this path (FileNotFoundError) or not runnable:
            # try the next place.
            continue
        except subprocess.SubprocessError:
            return ""
        if finished.returncode != 0:
            return ""
        return finished.stdout or ""
    return ""


class Platform:
    """What every platform layer shares; subclasses provide on_ac_power()
    and addresses()."""

    def on_ac_power(self) -> bool:
        raise NotImplementedError

    def addresses(self) -> list[str]:
        raise NotImplementedError

    def on_networks(self, networks: list[str]) -> bool:
        """True when no networks are required or an address lies in one."""
        if not networks:
            return True
        allowed = [ipaddress.ip_network(network, strict=False) for network in networks]
        mine = [ipaddress.ip_interface(address).ip for address in self.addresses()]
        return any(address in network for address in mine for network in allowed)


class Linux(Platform):
    """sysfs for power, iproute2 for addresses."""

    def __init__(self, power_supplies: str = POWER_SUPPLIES):
        self.power_supplies = power_supplies

    def _read(self, *parts: str) -> str:
        try:
            with open(os.path.join(self.power_supplies, *parts), encoding="ascii") as handle:
                return handle.read().strip()
        except (OSError, UnicodeDecodeError):
            return ""

    def on_ac_power(self) -> bool:
        """True on mains power; also when no mains adapter is known (a
        desktop, a VM)."""
        try:
            supplies = sorted(os.listdir(self.power_supplies))
        except OSError:
            return True
        mains = [name for name in supplies if self._read(name, "type") == "Mains"]
        return not mains or any(self._read(name, "online") == "1" for name in mains)

    def addresses(self) -> list[str]:
        """The global addresses of this machine, with their prefix length."""
        listed = subprocess.run(
            ["ip", "-o", "addr", "show", "scope", "global"],
            capture_output=True,
            text=True,
            check=False,
        )
        # "2: eth0    inet 192.168.1.5/24 brd ..." : the fourth field.
        return [line.split()[3] for line in listed.stdout.splitlines() if len(line.split()) > 3]


# pmset's first line names the source: "Now drawing from 'AC Power'".
POWER_SOURCE = re.compile(r"drawing from '([^']*)'")

# Power sources that mean the mains is gone: the battery, or a UPS that took
# over (a desktop on a UPS should not start an hour-long backup either).
OFF_MAINS_SOURCES = ("battery power", "ups power")


def power_source_is_ac(pmset_batt: str) -> bool:
    """Whether ``pmset -g batt`` output says the Mac runs on mains power.
    Output without a known source counts as mains, as on Linux a machine
    without a known mains adapter does: a desktop is never "on battery"."""
    found = POWER_SOURCE.search(pmset_batt)
    if not found:
        return True
    return found.group(1).strip().lower() not in OFF_MAINS_SOURCES


# "en0: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500"
INTERFACE_HEADER = re.compile(r"^(?P<name>[^\s:]+): flags=[0-9a-fA-F]+<(?P<flags>[^>]*)>")

# inet6 flags of an address the Mac cannot use: another host holds it, or its
# prefix's router is gone (the laptop left that network).
UNUSABLE_INET6_FLAGS = frozenset(("duplicated", "detached"))


def netmask_prefix_length(netmask: str) -> int | None:
    """The prefix length of an IPv4 netmask as ifconfig prints it, hex
    ("0xffffff00") or dotted ("255.255.255.0"); None unless it is one."""
    try:
        if netmask.lower().startswith("0x"):
            mask = int(netmask, 16)
        else:
            mask = int(ipaddress.IPv4Address(netmask))
    except ValueError:
        return None
    if not 0 <= mask <= 0xFFFFFFFF:
        return None
    length = bin(mask).count("1")
    # Only contiguous masks have a prefix length: the ones must all lead.
    if mask != (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF:
        return None
    return length


def _value_after(words: list[str], keyword: str) -> str | None:
    """The word that follows ``keyword`` on an ifconfig line, if any."""
    try:
        return words[words.index(keyword) + 1]
    except (ValueError, IndexError):
        return None


def _inet_address(words: list[str]) -> str | None:
    # "inet 192.168.1.23 netmask 0xffffff00 broadcast 192.168.1.255", or on a
    # point-to-point link "inet 10.8.0.6 --> 10.8.0.5 netmask 0xffffffff".
    netmask = _value_after(words, "netmask")
    length = netmask_prefix_length(netmask) if netmask else None
    try:
        address = ipaddress.IPv4Address(words[1])
    except (IndexError, ValueError):
        return None
    if length is None:
        # Only the address matters for allowed_networks: keep it as a host.
        length = 32
    return "%s/%d" % (address, length)


def _inet6_address(words: list[str]) -> str | None:
    # "inet6 fe80::1c2a:3bff:fe4d:5e6f%en0 prefixlen 64 secured scopeid 0x6"
    if UNUSABLE_INET6_FLAGS.intersection(words):
        return None
    prefixlen = _value_after(words, "prefixlen")
    try:
        # The scope ("%en0") names the interface; ipaddress of 3.9 rejects it.
        address = ipaddress.IPv6Address(words[1].split("%", 1)[0])
        length = int(prefixlen) if prefixlen else 128
    except (IndexError, ValueError):
        return None
    if not 0 <= length <= 128:
        length = 128
    return "%s/%d" % (address, length)


def parse_ifconfig(ifconfig: str) -> list[str]:
    """The addresses with prefix length ("192.168.1.23/24") that ifconfig
    lists on interfaces that are up, leaving out loopback and link-local ones,
    which ``ip addr show scope global`` leaves out on Linux too. Private
    (RFC 1918, ULA) addresses stay: allowed_networks are mostly home LANs."""
    found = []
    interface_up = False
    for line in ifconfig.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            header = INTERFACE_HEADER.match(line)
            flags = header.group("flags").split(",") if header else []
            interface_up = "UP" in flags
            continue
        if not interface_up:
            continue
        words = line.split()
        if words[0] == "inet":
            listed = _inet_address(words)
        elif words[0] == "inet6":
            listed = _inet6_address(words)
        else:
            continue
        if listed is None:
            continue
        address = ipaddress.ip_interface(listed).ip
        if (
            address.is_loopback
            or address.is_link_local
            or address.is_unspecified
            or address.is_multicast
        ):
            continue
        found.append(listed)
    return found


class Darwin(Platform):
    """pmset for power, ifconfig for addresses."""

    PMSET = ("/usr/bin/pmset", "pmset")
    IFCONFIG = ("/sbin/ifconfig", "ifconfig")

    def __init__(self, run: Callable[[list[str]], subprocess.CompletedProcess] = run_command):
        self.run = run

    def on_ac_power(self) -> bool:
        """True on mains power; also when pmset cannot tell (a desktop Mac
        lists no battery, and a missing pmset must not skip every backup)."""
        return power_source_is_ac(output_of(self.run, self.PMSET, ["-g", "batt"]))

    def addresses(self) -> list[str]:
        """The global addresses of this machine, with their prefix length."""
        return parse_ifconfig(output_of(self.run, self.IFCONFIG, []))


def current(power_supplies: str = POWER_SUPPLIES) -> Platform:
    """The platform layer of this system."""
    system = platform.system()
    if system == "Linux":
        return Linux(power_supplies)
    if system == "Darwin":
        return Darwin()
    raise UnsupportedPlatform("linkdest does not support %s laptops yet" % system)
