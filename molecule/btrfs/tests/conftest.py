# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tests"))

import linkdest_testlib as lib  # noqa: E402


@pytest.fixture(scope="module")
def server():
    return lib.get_host("btrfs-server")


@pytest.fixture(scope="module")
def laptop():
    return lib.get_host("btrfs-laptop")
