# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Each role's interface is defined three times: defaults/main.yml, meta/argument_specs.yml
and the README tables. These tests keep them the same."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import yaml

from ansible_collections.linkdest.backup.plugins.module_utils import changelist

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLES = sorted(
    p.name for p in (ROOT / "roles").iterdir() if (p / "meta" / "argument_specs.yml").exists()
)


def _load(path: pathlib.Path):
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_and_defaults_agree(role):
    defaults = _load(ROOT / "roles" / role / "defaults" / "main.yml")
    options = _load(ROOT / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"][
        "main"
    ]["options"]
    optional = {name for name, spec in options.items() if not spec.get("required")}
    assert set(defaults) == optional
    for name in optional:
        assert options[name].get("default") == defaults[name], name
        assert name.startswith(role + "_"), name
        assert options[name].get("description"), name


@pytest.mark.parametrize("role", ROLES)
def test_required_variables_are_listed_commented_in_defaults(role):
    text = (ROOT / "roles" / role / "defaults" / "main.yml").read_text()
    options = _load(ROOT / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"][
        "main"
    ]["options"]
    for name, spec in options.items():
        if spec.get("required"):
            assert "# %s:" % name in text, name


def test_readme_variable_tables_are_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "role-docs"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_lint_checks_python_39_on_every_file_a_laptop_runs():
    """`make lint` runs vermin (Python 3.9, macOS's /usr/bin/python3) over the
    files the backup_client role installs: the two lists must stay the same."""
    installed = _load(ROOT / "roles" / "backup_client" / "vars" / "main.yml")[
        "__backup_client_library"
    ]
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("vermin --target=3.9-") :].split("\n\n")[0]
    checked = [word for word in recipe.split() if word.endswith(".py")]
    assert sorted(checked) == sorted(installed)


@pytest.mark.parametrize("system", ["Linux", "Darwin"])
def test_system_excludes_keep_change_lists(system):
    # A pattern the laptop's walk cannot apply would make every run a full
    # one; the defaults of each platform must not.
    constants = _load(ROOT / "roles" / "backup_client" / "vars" / ("%s.yml" % system))
    excludes = changelist.Excludes(constants["__backup_client_system_excludes"])
    if system == "Darwin":
        assert excludes.excluded("Photos/.DS_Store", ".DS_Store", False)
        assert excludes.excluded("Photos/._IMG_1.jpg", "._IMG_1.jpg", False)
        assert excludes.excluded("stick/.Trashes", ".Trashes", True)
        assert not excludes.excluded("Photos/IMG_1.jpg", "IMG_1.jpg", False)
        assert not excludes.excluded("notes/.Trashes", ".Trashes", False)  # a file, not the folder
