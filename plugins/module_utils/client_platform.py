# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""What ``linkdest`` asks of the laptop's operating system, in one place:
is it on mains power, and which addresses does it have.

Linux only today. The next laptops are Macs: a Darwin class with the same two
methods (pmset, ifconfig) is all a port needs; until then a Mac gets a clear
error, not a guess.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import subprocess

POWER_SUPPLIES = "/sys/class/power_supply"


class UnsupportedPlatform(Exception):
    """linkdest has no platform layer for this system yet."""


class Linux:
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

    def on_networks(self, networks: list[str]) -> bool:
        """True when no networks are required or an address lies in one."""
        if not networks:
            return True
        allowed = [ipaddress.ip_network(network, strict=False) for network in networks]
        mine = [ipaddress.ip_interface(address).ip for address in self.addresses()]
        return any(address in network for address in mine for network in allowed)


def current(power_supplies: str = POWER_SUPPLIES):
    """The platform layer of this system."""
    system = platform.system()
    if system == "Linux":
        return Linux(power_supplies)
    raise UnsupportedPlatform("linkdest does not support %s laptops yet" % system)
