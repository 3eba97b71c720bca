# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The server_addresses filter: the addresses a laptop dials, checked."""

from __future__ import annotations

DOCUMENTATION = r"""
name: server_addresses
author: linkdest.backup contributors
version_added: 0.1.0
short_description: The addresses a laptop tries for its server, checked
description:
  - Takes one address or a list of them, in the order the laptop tries them (the home address
    first, a dynamic-DNS name second). Each is C(host), C(host:port), C([IPv6]:port) or a bare
    IPv6 address.
  - Returns the list (empty for an empty string). Fails with a message naming the setting on
    anything else, a bad port, or an address listed twice.
  - With O(default_port) and several addresses, each address comes back as C(host:port).
options:
  _input:
    description: One address, or a list of them.
    type: raw
    required: true
  setting:
    description: The name of the setting, for the error message.
    type: str
    default: addresses
  default_port:
    description:
      - With several addresses, the port each address that names none gets, so that every one
        is returned as C(host:port) (a later bare host must not take the first one's port).
    type: int
"""

EXAMPLES = r"""
- name: Home first, then the dynamic-DNS name on the router's forwarded port
  ansible.builtin.debug:
    msg: "{{ ['192.168.1.10', 'myhome.dynv6.net:2222'] | linkdest.backup.server_addresses }}"
"""

RETURN = r"""
_value:
  description: The addresses, in order.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.linkdest.backup.plugins.module_utils.client import checked_addresses


def server_addresses(value, setting="addresses", default_port=None):
    try:
        return checked_addresses(value, None if default_port is None else int(default_port))
    except ValueError as exc:
        raise AnsibleFilterError("%s %s" % (setting, exc)) from exc


class FilterModule:
    def filters(self):
        return {"server_addresses": server_addresses}
