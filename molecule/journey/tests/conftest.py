# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later

import linkdest_testlib as lib
import pytest


@pytest.fixture(scope="module")
def server():
    return lib.get_host("journey-server")


@pytest.fixture(scope="module")
def old():
    return lib.get_host("journey-old")


@pytest.fixture(scope="module")
def new():
    return lib.get_host("journey-new")


@pytest.fixture(scope="module")
def router():
    return lib.get_host("journey-router")


@pytest.fixture(scope="module")
def internet():
    return lib.get_host("journey-internet")
