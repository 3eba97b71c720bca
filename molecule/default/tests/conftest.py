# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later

import linkdest_testlib as lib
import pytest


@pytest.fixture(scope="module")
def server():
    return lib.get_host("backup-server")


@pytest.fixture(scope="module")
def laptop_a():
    return lib.get_host("laptop-a")


@pytest.fixture(scope="module")
def laptop_b():
    return lib.get_host("laptop-b")


@pytest.fixture(scope="module")
def laptop_k():
    return lib.get_host("laptop-k")
