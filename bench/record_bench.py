#!/usr/bin/env python3
# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The laptop's record of what was sent: format 2 against format 1 (issue 23).

Makes a folder of BENCH_FILES empty files (default 100,000, 100 to a
directory, some names with spaces and accents) in a temporary directory,
walks it once with the library (``changelist.walk``), then writes and reads
its record BENCH_REPEAT times (default 5) with each format, order alternating:

- format 2, the library's ``save_record`` / ``load_record``: a JSON header
  with a SHA-256, then a marshal blob of path -> tuple;
- format 1, as the laptop wrote it before issue 23 (kept here as the
  reference): gzip level 1 of a text line per path, the fields as text and
  the name as JSON, read back line by line.

Both read results are compared with the walk, so a reader that dropped
entries cannot look fast. Prints the medians and the ratios.

    .venv/bin/python bench/record_bench.py     (make bench runs it)
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "collections"))

from ansible_collections.linkdest.backup.plugins.module_utils import changelist  # noqa: E402


def save_format_1(path: str, record: changelist.Record) -> None:
    header = {
        "format": 1,
        "snapshot": record.snapshot,
        "settings": record.settings,
        "full_epoch": record.full_epoch,
        "count": len(record.entries),
    }
    with gzip.open(path, "wt", encoding="utf-8", errors="surrogateescape", compresslevel=1) as out:
        out.write(json.dumps(header, sort_keys=True) + "\n")
        out.writelines(
            "%s %s\n" % (" ".join(str(value) for value in fields), json.dumps(name))
            for name, fields in record.entries.items()
        )


def load_format_1(path: str) -> dict[str, str]:
    """As format 1 was read: the fields stay text (the walk made text too)."""
    entries = {}
    with gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape") as handle:
        header = json.loads(handle.readline())
        for line in handle:
            fields, _sep, name = line[:-1].partition(' "')
            entries[name[:-1] if "\\" not in name else json.loads('"' + name)] = fields
    assert len(entries) == header["count"]
    return entries


def make_folder(top: str, files: int) -> None:
    for number in range(files):
        directory = os.path.join(
            top, "d%04d" % (number // 100), "sous-dossier é" if number % 3 else "x"
        )
        if number % 100 == 0 or not os.path.isdir(directory):
            os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "file %06d.txt" % number), "wb"):
            pass


def main() -> int:
    files = int(os.environ.get("BENCH_FILES", "100000"))
    repeat = int(os.environ.get("BENCH_REPEAT", "5"))
    with tempfile.TemporaryDirectory(prefix="linkdest-record-bench.") as folder:
        make_folder(folder, files)
        walked = changelist.walk(folder, changelist.Excludes([]), False, time.time_ns())
    record = changelist.Record("back-2026-01-01T00_00_00", "0" * 64, 0, walked.entries)
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        new, old = os.path.join(scratch, "sent.record"), os.path.join(scratch, "sent.gz")
        for round_ in range(repeat):
            order = ("2", "1") if round_ % 2 == 0 else ("1", "2")
            for fmt in order:
                save, load, path = (
                    (changelist.save_record, changelist.load_record, new)
                    if fmt == "2"
                    else (save_format_1, load_format_1, old)
                )
                began = time.monotonic()
                save(path, record)
                times.setdefault("write " + fmt, []).append(time.monotonic() - began)
                began = time.monotonic()
                loaded = load(path)
                times.setdefault("read " + fmt, []).append(time.monotonic() - began)
                entries = (
                    loaded.entries
                    if fmt == "2"
                    else {k: tuple(int(v) for v in f.split()) for k, f in loaded.items()}
                )
                if entries != walked.entries:
                    sys.exit("record bench: format %s read back other entries" % fmt)
        sizes = {"1": os.path.getsize(old), "2": os.path.getsize(new)}
    median = {key: statistics.median(values) for key, values in times.items()}
    print("record of %d paths, median of %d, order alternating" % (len(walked.entries), repeat))
    print("| step | format 1 (sent.gz) | format 2 (sent.record) | format 1 / format 2 |")
    print("| --- | --- | --- | --- |")
    for step in ("write", "read"):
        one, two = median[step + " 1"], median[step + " 2"]
        print("| %s | %.3f s | %.3f s | %.1fx |" % (step, one, two, one / two))
    print("| size | %d bytes | %d bytes | |" % (sizes["1"], sizes["2"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
