# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a module's main() in-process with ansible-core 2.19's patch_module_args."""

from __future__ import annotations

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args


class ModuleExit(Exception):
    """exit_json was called; ``result`` is what it was given."""

    def __init__(self, result):
        super().__init__(result)
        self.result = result


class ModuleFail(ModuleExit):
    """fail_json was called."""


@pytest.fixture
def run_module(monkeypatch):
    """Return run(module, args, check=False, diff=False) -> (failed, result)."""

    def exit_json(self, **kwargs):
        raise ModuleExit(kwargs)

    def fail_json(self, msg, **kwargs):
        raise ModuleFail(dict(kwargs, msg=msg, failed=True))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)

    def run(module, args, check=False, diff=False):
        # The tests' drives are plain directories under tmp_path; the tests of
        # the mount check itself pass root_must_be_mount=True.
        args = dict(
            {"root_must_be_mount": False}, **args, _ansible_check_mode=check, _ansible_diff=diff
        )
        with patch_module_args(args), pytest.raises(ModuleExit) as caught:
            module.main()
        return isinstance(caught.value, ModuleFail), caught.value.result

    return run
