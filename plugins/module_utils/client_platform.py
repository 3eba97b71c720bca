# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""What ``linkdest`` asks of the laptop's operating system, in one place:
is it on mains power, which addresses does it have, and which rsync to run.

Linux reads sysfs and iproute2; macOS (Darwin) reads ``pmset -g batt`` and
``ifconfig``. Any other system gets a clear error, not a guess.

Standard library only, and runnable on Python 3.9: macOS's /usr/bin/python3
is the Command Line Tools' 3.9.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import platform
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence

POWER_SUPPLIES = "/sys/class/power_supply"

# A command that hangs (pmset waiting on a wedged powerd) must not hold the
# backup's lock for ever: after this long the answer counts as unknown.
COMMAND_TIMEOUT_SECONDS = 30


# rsync 3.1 (2013, protocol 31) or later: what every test here runs on both
# ends. A Mac's /usr/bin/rsync is openrsync (macOS 15 and later: a subset of
# rsync's options) or rsync 2.6.9 (2006, protocol 29); README, macOS laptops.
MIN_RSYNC = (3, 1, 0)
_RSYNC_VERSION_RE = re.compile(r"^rsync\s+version\s+v?(\d+)\.(\d+)\.(\d+)", re.MULTILINE)


class UnsupportedPlatform(Exception):
    """linkdest has no platform layer for this system yet."""


class NoUsableRsync(Exception):
    """No rsync linkdest can use is installed (the message names the fix)."""


def rsync_version(version_text: str) -> tuple[int, int, int] | None:
    """rsync's version from ``rsync --version``; None for openrsync, whose
    "rsync version 2.6.9 compatible" line is a claim, not a version."""
    if "openrsync" in version_text:
        return None
    found = _RSYNC_VERSION_RE.search(version_text)
    return tuple(int(part) for part in found.groups()) if found else None


def run_command(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command for its output; the default runner of the platform layers."""
    return subprocess.run(
        argv,
        env=env,
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


def nothing_excluded(path: str, name: str, is_dir: bool) -> bool:
    """The default of what a run leaves out (see changelist.Excludes.excluded)."""
    return False


def _prefixes(relative: str) -> list[str]:
    """ "a/b/c" -> ["a", "a/b", "a/b/c"]: each folder on the way to a path."""
    parts = relative.split("/")
    return ["/".join(parts[: index + 1]) for index in range(len(parts))]


class Platform:
    """What every platform layer shares; subclasses provide on_ac_power()
    and addresses(), and name where rsync may be."""

    # Tried in order; the first usable one is run.
    RSYNC: Sequence[str] = ("rsync",)
    RSYNC_FIX = "install it (apt install rsync)"
    run: Callable[[list[str]], subprocess.CompletedProcess] = staticmethod(run_command)
    _rsync: str | None = None

    def rsync(self) -> str:
        """The rsync to run: the first of RSYNC that is rsync 3.1 or later.
        Raises NoUsableRsync, saying what was found and what to do."""
        if self._rsync is None:
            found = []
            for program in self.RSYNC:
                try:
                    answer = self.run([program, "--version"])
                except OSError:
                    continue
                except subprocess.SubprocessError:
                    found.append("%s (did not answer --version)" % program)
                    continue
                text = answer.stdout or ""
                version = rsync_version(text)
                if answer.returncode == 0 and version is not None and version >= MIN_RSYNC:
                    self._rsync = program
                    break
                first_line = text.strip().splitlines()[0] if text.strip() else "no version"
                found.append("%s (%s)" % (program, first_line))
            else:
                raise NoUsableRsync(
                    "no usable rsync: linkdest needs rsync %d.%d or later, found %s; %s"
                    % (MIN_RSYNC[0], MIN_RSYNC[1], ", ".join(found) or "none", self.RSYNC_FIX)
                )
        return self._rsync

    def on_ac_power(self) -> bool:
        raise NotImplementedError

    def addresses(self) -> list[str]:
        raise NotImplementedError

    def find_agent(self, environ: dict, user_home: str) -> None:
        """Put the ssh agent that holds the user's unlocked key into environ
        (SSH_AUTH_SOCK), where this platform keeps it."""
        raise NotImplementedError

    # What to do when no agent holds the key (keychain mode), for the message.
    AGENT_HELP = "keychain unlocks it when the user logs in (after a reboot, log in once)"

    def privacy_block(self, source: str, excluded=nothing_excluded, follow_links=False) -> str:
        """What the system's privacy protection keeps this run from reading
        in the source, as a message that names the fix; "" when nothing.
        excluded(path, name, is_dir) says which folders the run leaves out;
        follow_links: symlinked folders are read too (rsync --copy-links)."""
        return ""

    def on_networks(self, networks: list[str]) -> bool:
        """True when no networks are required or an address lies in one."""
        if not networks:
            return True
        allowed = [ipaddress.ip_network(network, strict=False) for network in networks]
        mine = [ipaddress.ip_interface(address).ip for address in self.addresses()]
        return any(address in network for address in mine for network in allowed)


class Linux(Platform):
    """sysfs for power, iproute2 for addresses, keychain's agent."""

    def __init__(self, power_supplies: str = POWER_SUPPLIES):
        self.power_supplies = power_supplies

    def find_agent(self, environ: dict, user_home: str) -> None:
        """keychain, started at login (~/.profile), writes its agent's
        address to ~/.keychain/HOST-sh."""
        env_file = os.path.join(user_home, ".keychain", "%s-sh" % socket.gethostname())
        with contextlib.suppress(OSError), open(env_file, encoding="utf-8") as handle:
            for match in re.finditer(r"\b(SSH_AUTH_SOCK|SSH_AGENT_PID)=([^;\s]+)", handle.read()):
                environ[match.group(1)] = match.group(2)

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
    """pmset for power, ifconfig for addresses, Homebrew's rsync."""

    PMSET = ("/usr/bin/pmset", "pmset")
    IFCONFIG = ("/sbin/ifconfig", "ifconfig")
    # Homebrew on Apple silicon, then on Intel; /usr/bin/rsync last, so that
    # the error can say what it is.
    RSYNC = ("/opt/homebrew/bin/rsync", "/usr/local/bin/rsync", "/usr/bin/rsync")
    RSYNC_FIX = "install Homebrew's (brew install rsync, or rerun site.yml)"

    def __init__(self, run: Callable[[list[str]], subprocess.CompletedProcess] = run_command):
        self.run = run
        self.scandir = os.scandir
        # Full Disk Access is granted to a program: the interpreter itself,
        # not /usr/bin/python3 (a shim that starts the Command Line Tools').
        self.interpreter = os.path.realpath(sys.executable)

    def on_ac_power(self) -> bool:
        """True on mains power; also when pmset cannot tell (a desktop Mac
        lists no battery, and a missing pmset must not skip every backup)."""
        return power_source_is_ac(output_of(self.run, self.PMSET, ["-g", "batt"]))

    def addresses(self) -> list[str]:
        """The global addresses of this machine, with their prefix length."""
        return parse_ifconfig(output_of(self.run, self.IFCONFIG, []))

    AGENT_HELP = (
        "store its passphrase in the login keychain once (ssh-add --apple-use-keychain KEY)"
        " and stay logged in: runs load it from there"
    )
    # Folders macOS protects that lie deeper than the source's own folders
    # when the source is the home folder (iCloud Drive, cloud providers).
    PROTECTED_DEEPER = ("Library/Mobile Documents", "Library/CloudStorage")

    def privacy_block(self, source: str, excluded=nothing_excluded, follow_links=False) -> str:
        """A process without Full Disk Access gets EPERM opening Desktop,
        Documents, Downloads, iCloud Drive and other protected folders (a
        plain permission problem is EACCES). The source, each folder in it
        the run reads and PROTECTED_DEEPER are opened, so that no run makes a
        snapshot with such a folder silently missing."""
        candidates = [source]
        try:
            with self.scandir(source) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=follow_links) and not excluded(
                        entry.name, entry.name, True
                    ):
                        candidates.append(entry.path)
        except OSError:
            pass  # the source itself is tried below, and refused there
        for deeper in self.PROTECTED_DEEPER:
            if not any(excluded(part, part.rsplit("/", 1)[-1], True) for part in _prefixes(deeper)):
                candidates.append(os.path.join(source, deeper))
        for path in candidates:
            try:
                with self.scandir(path):
                    pass
            except PermissionError as exc:
                if exc.errno == errno.EPERM:
                    return (
                        "macOS keeps linkdest from reading %s (privacy protection): in System"
                        " Settings, Privacy & Security, Full Disk Access, add %s (the Python"
                        " that runs linkdest) and switch it on" % (path, self.interpreter)
                    )
            except OSError:
                continue  # gone, or not a folder: rsync says what it could not read
        return ""

    def find_agent(self, environ: dict, user_home: str) -> None:
        """launchd starts an ssh-agent for each login session and gives its
        address to the session's jobs; the key's passphrase is in the login
        keychain (ssh-add --apple-use-keychain, once), and Apple's ssh-add
        loads it from there without a prompt."""
        if not environ.get("SSH_AUTH_SOCK"):
            environ["SSH_AUTH_SOCK"] = output_of(
                self.run, ("/bin/launchctl", "launchctl"), ["getenv", "SSH_AUTH_SOCK"]
            ).strip()
        if environ["SSH_AUTH_SOCK"]:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.run(["/usr/bin/ssh-add", "--apple-load-keychain", "-q"], env=environ)


def current(power_supplies: str = POWER_SUPPLIES) -> Platform:
    """The platform layer of this system."""
    system = platform.system()
    if system == "Linux":
        return Linux(power_supplies)
    if system == "Darwin":
        return Darwin()
    raise UnsupportedPlatform("linkdest does not support %s laptops yet" % system)
