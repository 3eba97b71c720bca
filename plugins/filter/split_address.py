# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The split_address filter: one server address as host and port."""

from __future__ import annotations

DOCUMENTATION = r"""
name: split_address
author: linkdest.backup contributors
version_added: 0.1.0
short_description: One server address as its host and its port
description:
  - Splits C(host), C(host:port), C([IPv6]:port) or a bare IPv6 address into the host and the
    port (an empty string when the address names none).
options:
  _input:
    description: One address, as the server_addresses filter checked it.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: The host and port of the address a laptop tries first
  ansible.builtin.debug:
    msg: "{{ 'myhome.dynv6.net:2222' | linkdest.backup.split_address }}"
  # ["myhome.dynv6.net", "2222"]
"""

RETURN = r"""
_value:
  description: The host and the port (empty when none is given).
  type: list
  elements: str
"""

from ansible_collections.linkdest.backup.plugins.module_utils.client import split_address


class FilterModule:
    def filters(self):
        return {"split_address": lambda address: list(split_address(address))}
