# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of gate.py: what a laptop's forced command accepts and refuses."""

from __future__ import annotations

import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import gate

# What rsync 3.x sends for `rsync -a --delete SRC/ server:whatever`.
CLIENT = "rsync --server -logDtpre.iLsfxCIvu --delete . whatever"
FLAGS = "rsync --server -logDtpre.iLsfxCIvu"

ACCEPTED = [
    ("plain", CLIENT, ("-logDtpre.iLsfxCIvu", "--delete")),
    (
        "timeout-partial-numeric-ids",
        FLAGS + " --timeout=300 --delete --partial --numeric-ids . whatever",
        ("-logDtpre.iLsfxCIvu", "--timeout=300", "--delete", "--partial", "--numeric-ids"),
    ),
    (
        "compression-and-limits",
        FLAGS + "z --compress-level=6 --bwlimit=5M --max-delete=100 --fake-super . snapshot/",
        (
            "-logDtpre.iLsfxCIvuz",
            "--compress-level=6",
            "--bwlimit=5M",
            "--max-delete=100",
            "--fake-super",
        ),
    ),
    ("delete-variants", FLAGS + " --delete-after --delete-excluded . x", None),
    ("dry-run-hard-links-acls-xattrs", "rsync --server -nHAXlogDtpre.iLsfxCIvu . x", None),
    ("quoted-destination", FLAGS + " . 'a path with spaces'", None),
]


@pytest.mark.parametrize(
    ("command", "options"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_receiver_commands_accepted(command, options):
    request = gate.parse_request(command)
    assert isinstance(request, gate.ReceiveRequest)
    if options is not None:
        assert request.options == options
    # The destination the laptop named is never part of the request.
    assert "." not in request.options
    assert not any(word in request.options for word in ("whatever", "/abs/path", "x"))


REFUSED = [
    ("inplace", FLAGS + " --inplace . x"),
    ("append", FLAGS + " --append . x"),
    ("append-verify", FLAGS + " --append-verify . x"),
    ("secluded-args", "rsync --server -s -logDtpre.iLsfxCIvu . x"),
    ("secluded-in-bundle", "rsync --server -slogDtpre.iLsfxCIvu . x"),
    ("keep-dirlinks", "rsync --server -K -logDtpre.iLsfxCIvu . x"),
    ("copy-links", "rsync --server -L -logDtpre.iLsfxCIvu . x"),
    ("copy-dirlinks", "rsync --server -k -logDtpre.iLsfxCIvu . x"),
    ("copy-links-in-bundle", "rsync --server -logDtLpre.iLsfxCIvu . x"),
    ("backup-flag", "rsync --server -b -logDtpre.iLsfxCIvu . x"),
    ("link-dest", FLAGS + " --link-dest=x . x"),
    ("link-dest-separate-value", FLAGS + " --link-dest x . x"),
    ("compare-dest", FLAGS + " --compare-dest=x . x"),
    ("copy-dest", FLAGS + " --copy-dest=x . x"),
    ("partial-dir", FLAGS + " --partial-dir=x . x"),
    ("temp-dir", FLAGS + " --temp-dir=x . x"),
    ("backup-dir", FLAGS + " --backup-dir=x . x"),
    ("log-file", FLAGS + " --log-file=x . x"),
    ("remove-source-files", FLAGS + " --remove-source-files . x"),
    ("copy-devices", FLAGS + " --copy-devices . x"),
    ("write-devices", FLAGS + " --write-devices . x"),
    ("sender", "rsync --server --sender -logDtpre.iLsfxCIvu . x"),
    ("two-destinations", CLIENT + " another"),
    ("no-destination", FLAGS + " --delete ."),
    ("no-dot", FLAGS + " --delete whatever"),
    ("timeout-abc", FLAGS + " --timeout=abc . x"),
    ("timeout-empty", FLAGS + " --timeout= . x"),
    ("timeout-no-value", FLAGS + " --timeout . x"),
    ("timeout-trailing-newline", FLAGS + " '--timeout=300\n' . x"),
    ("value-on-flag-option", FLAGS + " --delete=yes . x"),
    ("capability-junk", "rsync --server -logDtpre.iL/sfx . x"),
    ("capability-trailing-newline", "rsync --server '-logDtpre.iLsfxCIvu\n' . x"),
    ("bare-dash", FLAGS + " - . x"),
    ("positional-before-dot", FLAGS + " extra . x"),
    ("not-server", "rsync -a / x"),
    ("rsync-alone", "rsync"),
    ("empty", ""),
    ("none", None),
    ("blank", "   "),
    ("bash", "bash"),
    ("bash-c", "bash -c 'rm -rf /'"),
    ("scp", "scp -t ."),
    ("sftp", "internal-sftp"),
    ("finalize-without-code", "finalize"),
    ("finalize-word", "finalize ok"),
    ("finalize-too-big", "finalize 1234"),
    ("finalize-negative", "finalize -1"),
    ("finalize-two-codes", "finalize 0 0"),
    ("finalize-trailing-newline", "finalize '0\n'"),
    ("list-with-argument", "list ../other"),
    ("over-long", CLIENT + " --delete" * 600),
    ("too-many-args", FLAGS + " --delete" * 70 + " . x"),
    ("unbalanced-quotes", FLAGS + " . 'x"),
    ("unbalanced-double-quotes", 'finalize "0'),
]


@pytest.mark.parametrize("command", [case[1] for case in REFUSED], ids=[c[0] for c in REFUSED])
def test_commands_refused(command):
    with pytest.raises(gate.GateRefused):
        gate.parse_request(command)


def test_limits_are_what_the_refusals_test():
    assert len((CLIENT + " --delete" * 600).encode()) > gate.MAX_COMMAND_BYTES
    too_many = (FLAGS + " --delete" * 70 + " . x").split()
    assert len(too_many) > gate.MAX_ARGS
    assert len(" ".join(too_many)) < gate.MAX_COMMAND_BYTES


@pytest.mark.parametrize(
    ("command", "code"),
    [("finalize 0", 0), ("finalize 23", 23), ("finalize 255", 255), ("  finalize   12 ", 12)],
    ids=["ok", "partial", "ssh", "spaces"],
)
def test_finalize_request(command, code):
    assert gate.parse_request(command) == gate.FinalizeRequest(rsync_exit=code)


def test_list_request():
    assert gate.parse_request("list") == gate.ListRequest()


def test_unchanged_request_names_a_finished_snapshot():
    assert gate.parse_request("unchanged back-2026-01-02T03_04_05") == gate.UnchangedRequest(
        base="back-2026-01-02T03_04_05"
    )
    for command in (
        "unchanged",
        "unchanged current",
        "unchanged ../back-2026-01-02T03_04_05",
        "unchanged incomplete_back-2026-01-02T03_04_05",
        "unchanged back-2026-01-02T03_04_05 extra",
    ):
        with pytest.raises(gate.GateRefused, match="usage: unchanged"):
            gate.parse_request(command)


@pytest.mark.parametrize(
    "command",
    [
        "rsync --server -logDtpre.iLsfxCIvu --stats . x",
        "rsync --server -logDtpre.iLsfxCIvu --log-format=%i . x",
    ],
    ids=["stats", "itemize"],
)
def test_output_only_options_are_accepted(command):
    assert isinstance(gate.parse_request(command), gate.ReceiveRequest)


@pytest.mark.parametrize(
    "command",
    [
        "rsync --server -logDtpre.iLsfxCIvu --log-format=%f%i . x",
        "rsync --server -logDtpre.iLsfxCIvu --stats=1 . x",
    ],
    ids=["log-format-other", "stats-with-value"],
)
def test_output_options_with_other_values_are_refused(command):
    with pytest.raises(gate.GateRefused):
        gate.parse_request(command)


# --- reading one's own finished snapshots -------------------------------------


@pytest.mark.parametrize(
    ("command", "snapshot", "relpath"),
    [
        (
            "rsync --server --sender -logDtpre.iLsfxCIvu --fake-super"
            " . back-2026-11-26T11_40_37/docs/a.txt",
            "back-2026-11-26T11_40_37",
            "docs/a.txt",
        ),
        (
            "rsync --server --sender -nlogDtpre.iLsfxCIvu --fake-super --delete --log-format=%i"
            " . back-2026-11-26T11_40_37/",
            "back-2026-11-26T11_40_37",
            "",
        ),
    ],
    ids=["restore-a-file", "compare-dry-run"],
)
def test_reading_a_finished_snapshot_is_accepted(command, snapshot, relpath):
    request = gate.parse_request(command)
    assert isinstance(request, gate.SendRequest)
    assert request.snapshot == snapshot
    assert request.relpath == relpath


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "incomplete_back-2026-11-26T11_40_37/a",
        "current/a",
        "back-2026-11-26T11_40_37/../other/a",
        "back-2026-11-26T11_40_37/./a",
        "back-2026-11-26T11_40_37//a",
        "../laptop-b/back-2026-11-26T11_40_37",
        "back-junk/a",
    ],
    ids=[
        "absolute",
        "incomplete",
        "current-link",
        "dotdot",
        "dot",
        "empty-part",
        "other-area",
        "bad-name",
    ],
)
def test_reading_anything_but_a_finished_snapshot_path_is_refused(path):
    with pytest.raises(gate.GateRefused):
        gate.parse_request("rsync --server --sender -logDtpre.iLsfxCIvu . %s" % path)


@pytest.mark.parametrize(
    "options",
    ["--remove-source-files", "-L", "--copy-links", "--inplace", "--sender", "--files-from=x"],
)
def test_sender_options_outside_the_allow_list_are_refused(options):
    with pytest.raises(gate.GateRefused):
        gate.parse_request(
            "rsync --server --sender -logDtpre.iLsfxCIvu %s . back-2026-11-26T11_40_37/a" % options
        )


def test_locate_and_versions_take_a_safe_path():
    assert gate.parse_request("locate docs/a.txt") == gate.LocateRequest("docs/a.txt", None)
    assert gate.parse_request("locate docs/a.txt 2026-11-26T12:00") == gate.LocateRequest(
        "docs/a.txt", "2026-11-26T12:00"
    )
    assert gate.parse_request("versions docs/a.txt") == gate.VersionsRequest("docs/a.txt")
    for bad in ("locate ../x", "versions /etc/passwd", "versions", "locate a b c"):
        with pytest.raises(gate.GateRefused):
            gate.parse_request(bad)


@pytest.mark.parametrize(
    "destination",
    ["/etc/", "../c10/", "/media/backup_drive/c10/back-2026-11-26T11_40_37/", "snapshot/../../x"],
    ids=["absolute", "other-area", "finished-snapshot", "dotdot-inside"],
)
def test_an_upload_naming_another_place_is_refused(destination):
    with pytest.raises(gate.GateRefused, match="chosen by the server"):
        gate.parse_request("rsync --server -logDtpre.iLsfxCIvu --delete . %s" % destination)
