# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import health

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
ROOMY = health.DriveFacts(size_bytes=1000, free_bytes=500, files=100, free_files=90)


def _check(areas, drive=ROOMY, mirror=NOW, expected=True):
    return health.check(
        areas,
        drive,
        now=NOW,
        stale_after_hours=24,
        mirror_last_success=mirror,
        mirror_expected=expected,
        mirror_stale_after_hours=36,
        min_free_percent=10,
    )


@pytest.mark.parametrize(
    ("areas", "drive", "mirror", "expected", "findings"),
    [
        ([health.AreaFacts("a", NOW - timedelta(hours=2), 5)], ROOMY, NOW, True, []),
        (
            [health.AreaFacts("a", NOW - timedelta(hours=30), 5)],
            ROOMY,
            NOW,
            True,
            ["a: newest snapshot is 30.0 hours old (more than 24)"],
        ),
        ([health.AreaFacts("b", None, 0)], ROOMY, NOW, True, ["b has no finished snapshot"]),
        # A check that found nothing new is a sign of life: not stale.
        (
            [health.AreaFacts("a", NOW - timedelta(hours=30), 5, NOW - timedelta(hours=1))],
            ROOMY,
            NOW,
            True,
            [],
        ),
        (
            [health.AreaFacts("a", NOW - timedelta(hours=40), 5, NOW - timedelta(hours=25))],
            ROOMY,
            NOW,
            True,
            [
                "a: last backup (a check that found nothing new since the newest snapshot)"
                " is 25.0 hours old (more than 24)"
            ],
        ),
        ([], ROOMY, None, True, ["the drive mirror has never succeeded"]),
        ([], ROOMY, None, False, []),
        (
            [],
            ROOMY,
            NOW - timedelta(hours=40),
            True,
            ["the drive mirror last succeeded 40.0 hours ago (more than 36)"],
        ),
        (
            [],
            health.DriveFacts(size_bytes=1000, free_bytes=50, files=100, free_files=90),
            NOW,
            True,
            [
                "the backup drive is nearly full: 5.0% of its space and 90.0% of its inodes"
                " free (want 10%)"
            ],
        ),
        (
            [],
            health.DriveFacts(size_bytes=1000, free_bytes=500, files=100, free_files=5),
            NOW,
            True,
            [
                "the backup drive is nearly full: 50.0% of its space and 5.0% of its inodes"
                " free (want 10%)"
            ],
        ),
    ],
    ids=[
        "fresh",
        "stale-laptop",
        "never-backed-up",
        "checked-recently",
        "check-stale-too",
        "mirror-never",
        "no-mirror",
        "mirror-stale",
        "full",
        "no-inodes",
    ],
)
def test_check_findings(areas, drive, mirror, expected, findings):
    assert _check(areas, drive, mirror, expected).findings == findings


def test_metrics_text_has_one_sample_per_client_and_the_drive():
    areas = [health.AreaFacts('we"ird', NOW, 3), health.AreaFacts("b", None, 0)]
    text = health.metrics_text(areas, ROOMY, NOW)
    assert 'linkdest_last_success_timestamp_seconds{client="we\\"ird"} %d' % NOW.timestamp() in text
    assert 'linkdest_snapshots{client="b"} 0' in text
    assert "linkdest_drive_free_bytes 500" in text
    assert "linkdest_drive_used_bytes 500" in text
    assert "linkdest_mirror_last_success_timestamp_seconds %d" % NOW.timestamp() in text
    # Every sample has HELP and TYPE lines before it.
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    samples = {
        line.split("{")[0].split()[0] for line in text.splitlines() if not line.startswith("#")
    }
    assert samples <= names


def test_area_facts_of_a_missing_area(tmp_path):
    assert health.area_facts(str(tmp_path), "nobody") == health.AreaFacts("nobody", None, 0)


def test_write_atomically_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "linkdest.prom"
    health.write_atomically(str(path), "x 1\n")
    assert path.read_text() == "x 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["linkdest.prom"]


def test_the_metrics_count_a_check_as_the_last_success():
    snapshot_time = NOW - timedelta(hours=30)
    checked = NOW - timedelta(hours=1)
    text = health.metrics_text(
        [health.AreaFacts("a", snapshot_time, 5, checked)], ROOMY, mirror_last_success=None
    )
    assert 'linkdest_last_success_timestamp_seconds{client="a"} %d' % checked.timestamp() in text
    assert (
        'linkdest_newest_snapshot_timestamp_seconds{client="a"} %d' % snapshot_time.timestamp()
        in text
    )


def test_area_facts_read_the_check(tmp_path):
    from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

    (tmp_path / "a" / "back-2026-11-25T00_00_00").mkdir(parents=True)
    assert health.area_facts(str(tmp_path), "a").checked is None
    snap.record_check(str(tmp_path / "a"), "back-2026-11-25T00_00_00", NOW)
    facts = health.area_facts(str(tmp_path), "a")
    assert (facts.checked, facts.last_seen, facts.count) == (NOW, NOW, 1)
