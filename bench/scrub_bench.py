#!/usr/bin/env python3
# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""What manifests and verify cost (issue 12), against the tools a user would
compare them with, measured in the same run on the same files.

    scrub_bench.py [WORKDIR]      (make bench; env BENCH_FILES, BENCH_MB, BENCH_REPEAT)

On this machine's disk, as root (caches are dropped between cold runs):

1. first snapshot: the manifest of a snapshot of the whole data set (every
   file read and hashed) against ``sha256sum`` of the same files (xargs, one
   process per 1000 files), cold cache both; MB/s of each.
2. unchanged snapshot: ``rsync -a --link-dest`` of the unchanged tree (what
   the gate's receiver does, without ssh) and the syncfs finalize does after
   it, then the manifest of the new
   snapshot (every digest taken from the previous manifest); the share the
   manifest adds to the snapshot.
3. after a 1 % change: the same, where the changed files are read.
4. verify: ``scrub.verify_drive`` over the drive (both snapshots; each inode
   read once) against ``cat`` of the same files to /dev/null, cold cache both.

Prints a table and writes it to .cache/bench-scrub.txt. The median of
BENCH_REPEAT runs (default 3) is reported; the order of the two tools
alternates between repeats.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "collections"))

from ansible_collections.linkdest.backup.plugins.module_utils import (  # noqa: E402
    manifest as mf,
)
from ansible_collections.linkdest.backup.plugins.module_utils import scrub  # noqa: E402
from ansible_collections.linkdest.backup.plugins.module_utils import (  # noqa: E402
    snapshots as snap,
)

CLIENT = "laptop"
FILES = int(os.environ.get("BENCH_FILES", "20000"))
MIB = int(os.environ.get("BENCH_MB", "1024"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as handle:
        handle.write("3\n")


def seconds(function) -> float:
    began = time.perf_counter()
    function()
    return time.perf_counter() - began


def run(*argv: str, cwd: str | None = None) -> None:
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def files_of(top: Path) -> Path:
    """A NUL-separated list of the regular files under top, for xargs."""
    listing = top.parent / (top.name + ".files")
    with open(listing, "wb") as out:
        subprocess.run(["find", ".", "-type", "f", "-print0"], cwd=top, stdout=out, check=True)
    return listing


def xargs(top: Path, listing: Path, *command: str) -> None:
    with open(listing, "rb") as names:
        subprocess.run(
            ["xargs", "-0", "-n", "1000", *command],
            cwd=top,
            stdin=names,
            stdout=subprocess.DEVNULL,
            check=True,
        )


def snapshot(area: Path, laptop: Path, name: str, base: str | None) -> float:
    """rsync, then the flush to disk finalize does before it renames (syncfs):
    without it the manifest's own fsync would pay for writing rsync's work."""
    argv = ["rsync", "-a", "--fake-super"]
    if base:
        argv.append("--link-dest=../%s" % base)

    def make() -> None:
        run(*argv, "%s/" % laptop, name + "/", cwd=str(area))
        snap.sync_filesystem(str(area / name))

    return seconds(make)


def manifest_of(root: Path, name: str) -> float:
    path = mf.manifest_path(str(root), CLIENT, name)
    if os.path.exists(path):
        os.unlink(path)
    return seconds(lambda: scrub.make_manifest(str(root), CLIENT, name))


def main(argv: list[str]) -> int:
    work = Path(argv[1] if len(argv) > 1 else "/var/tmp/linkdest-scrub-bench")
    if work.exists():
        shutil.rmtree(work)
    laptop, root = work / "laptop", work / "drive"
    area = root / CLIENT
    area.mkdir(parents=True)
    laptop.mkdir()
    run(sys.executable, str(HERE / "gendata.py"), "create", str(laptop), str(FILES), str(MIB))
    first, second, third = ("back-2026-01-0%dT00_00_00" % n for n in (1, 2, 3))
    snapshot(area, laptop, first, None)
    data_bytes = sum(e.size for e in mf.build_manifest(str(area / first), CLIENT, first)[0].entries)
    listing = files_of(area / first)
    results: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)

    for repeat in range(REPEAT):
        order = ["manifest", "sha256sum"] if repeat % 2 == 0 else ["sha256sum", "manifest"]
        for tool in order:
            drop_caches()
            if tool == "manifest":
                note("first_manifest", manifest_of(root, first))
            else:
                note("first_sha256sum", seconds(lambda: xargs(area / first, listing, "sha256sum")))

        for name in (second, third):
            if (area / name).exists():
                shutil.rmtree(area / name)
        drop_caches()
        note("unchanged_snapshot", snapshot(area, laptop, second, first))
        note("unchanged_manifest", manifest_of(root, second))
        if repeat == 0:
            run(
                sys.executable,
                str(HERE / "gendata.py"),
                "change",
                str(laptop),
                str(FILES),
                str(MIB),
                "1",
            )
        drop_caches()
        note("change_snapshot", snapshot(area, laptop, third, second))
        note("change_manifest", manifest_of(root, third))

        unique, every = unique_inodes(root)
        order = ["verify", "cat", "cat_every"]
        order = order if repeat % 2 == 0 else order[::-1]
        for tool in order:
            drop_caches()
            if tool == "verify":
                began = time.perf_counter()
                report = scrub.verify_drive(str(root), [CLIENT])
                note("verify", time.perf_counter() - began)
                assert not report.findings, report.findings[:3]
                note("verify_bytes", report.bytes_read)
            elif tool == "cat":
                note("cat_all", seconds(lambda paths=unique: cat(paths)))
            else:
                note("cat_every", seconds(lambda paths=every: cat(paths)))

    med = {key: statistics.median(values) for key, values in results.items()}
    mb = data_bytes / 1e6
    verify_mb = med["verify_bytes"] / 1e6
    lines = [
        "scrub bench: %d files, %.0f MB, median of %d, this machine's disk, cold cache"
        % (FILES, mb, REPEAT),
        "",
        "| case | linkdest | reference | ratio | target |",
        "| --- | --- | --- | --- | --- |",
        "| first snapshot: manifest vs sha256sum (MB/s) | %.0f MB/s (%.2f s) | %.0f MB/s (%.2f s)"
        " | %.2fx | report |"
        % (
            mb / med["first_manifest"],
            med["first_manifest"],
            mb / med["first_sha256sum"],
            med["first_sha256sum"],
            med["first_sha256sum"] / med["first_manifest"],
        ),
        "| unchanged snapshot: manifest added to rsync --link-dest | %.3f s | %.3f s | +%.1f %% |"
        " <= 5 %% |"
        % (
            med["unchanged_manifest"],
            med["unchanged_snapshot"],
            100 * med["unchanged_manifest"] / med["unchanged_snapshot"],
        ),
        "| 1 %% change: manifest added to rsync --link-dest | %.3f s | %.3f s | +%.1f %% |"
        " report |"
        % (
            med["change_manifest"],
            med["change_snapshot"],
            100 * med["change_manifest"] / med["change_snapshot"],
        ),
        "| verify (3 snapshots, %.0f MB of distinct inodes) vs cat of each distinct inode"
        " once (MB/s) | %.0f MB/s (%.2f s) | %.0f MB/s (%.2f s) | %.2fx | >= 0.8x |"
        % (
            verify_mb,
            verify_mb / med["verify"],
            med["verify"],
            verify_mb / med["cat_all"],
            med["cat_all"],
            med["cat_all"] / med["verify"],
        ),
        "| verify vs cat of every file of every snapshot (%d names) | %.2f s | %.2f s |"
        " %.2fx | report |"
        % (3 * FILES, med["verify"], med["cat_every"], med["cat_every"] / med["verify"]),
    ]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    out = HERE.parent / ".cache" / "bench-scrub.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    shutil.rmtree(work)
    return 0


def unique_inodes(root: Path) -> tuple[bytes, bytes]:
    """For xargs -0: every distinct inode of the snapshots once (what verify
    reads), and every file of every snapshot (the names verify checks)."""
    seen, paths, every = set(), [], []
    for base, _dirs, names in os.walk(root / CLIENT):
        for name in sorted(names):
            path = os.path.join(base, name)
            st = os.lstat(path)
            every.append(path)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                paths.append(path)
    return (
        b"\0".join(os.fsencode(p) for p in paths),
        b"\0".join(os.fsencode(p) for p in every),
    )


def cat(paths: bytes) -> None:
    subprocess.run(
        ["xargs", "-0", "-n", "1000", "cat"], input=paths, stdout=subprocess.DEVNULL, check=True
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
