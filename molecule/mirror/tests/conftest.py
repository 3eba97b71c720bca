# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later

import linkdest_testlib as lib
import pytest


@pytest.fixture(scope="module")
def server():
    return lib.get_host("mirror-server")


@pytest.fixture(scope="module")
def laptop():
    return lib.get_host("mirror-laptop")


@pytest.fixture(scope="module")
def quiet(server, laptop):
    """No scheduled backup or mirror while the tests count snapshots."""
    for machine in (server, laptop):
        assert machine.run("systemctl stop cron").rc == 0
    yield
    for machine in (server, laptop):
        machine.run("systemctl start cron")
