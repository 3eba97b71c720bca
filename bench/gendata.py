#!/usr/bin/env python3
# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The benchmark's data set: the same tree, bytes and mtimes on every run.

    gendata.py create ROOT FILES MIB      write the data set into ROOT (empty)
    gendata.py change ROOT FILES MIB N    rewrite every 100th file (1 %) with
                                          round N's content and a new mtime

Runs inside the laptop container with the system python3 (stdlib only).
Everything (directory tree, names, sizes, content) comes from string seeds,
which Python hashes with SHA-512, so it does not depend on PYTHONHASHSEED,
the machine or the run. Prints one JSON line describing what it did.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys

SEED = "linkdest-bench-v1"
CHUNK = 1 << 20
BASE_MTIME = 1767225600  # 2026-01-01T00:00:00Z
LARGE_SHARE = 0.6  # share of the bytes held by the few large files
LARGE_EVERY = 200  # one file in 200 is large
CHANGE_EVERY = 100  # the 1 % change rewrites every 100th file
# How many directories sit at each depth (1 = directly under ROOT), relatively.
DEPTH_WEIGHTS = [8, 14, 18, 16, 12, 8, 5, 3, 2]

WORDS = [
    "archive",
    "assets",
    "backup",
    "budget",
    "client",
    "code",
    "data",
    "design",
    "docs",
    "draft",
    "export",
    "family",
    "finance",
    "holiday",
    "invoices",
    "letters",
    "music",
    "notes",
    "old",
    "paper",
    "photos",
    "project",
    "receipts",
    "reports",
    "scans",
    "school",
    "slides",
    "src",
    "taxes",
    "thesis",
    "travel",
    "videos",
    "work",
    "2019",
    "2020",
    "2021",
    "2022",
    "2023",
    "2024",
    "2025",
    "misc",
    "shared",
]
SMALL_EXT = [
    ".txt",
    ".md",
    ".py",
    ".json",
    ".csv",
    ".jpg",
    ".png",
    ".pdf",
    ".docx",
    ".xlsx",
    ".html",
    ".c",
    ".h",
    ".yml",
]
LARGE_EXT = [".mp4", ".mov", ".zip", ".iso", ".tar", ".mkv"]


def plan(files: int, total: int) -> list[tuple[str, int]]:
    """[(relative path, size)] in a fixed, shuffled order."""
    rng = random.Random("%s:plan:%d:%d" % (SEED, files, total))
    # Directories: about one per 12 files, depths drawn from DEPTH_WEIGHTS.
    dirs: list[str] = [""]
    by_depth: dict[int, list[str]] = {0: [""]}
    for index in range(max(0, files // 12 - 1)):
        want = rng.choices(range(1, len(DEPTH_WEIGHTS) + 1), DEPTH_WEIGHTS)[0]
        depth = max(d for d in by_depth if d < want)
        parent = rng.choice(by_depth[depth])
        name = "%s-%04d" % (rng.choice(WORDS), index)
        path = os.path.join(parent, name) if parent else name
        dirs.append(path)
        by_depth.setdefault(depth + 1, []).append(path)
    # Some directories hold many files, most a few (Pareto weights).
    weights = [rng.paretovariate(1.2) for _ in dirs]
    homes = rng.choices(dirs, weights, k=files)

    large = max(1, files // LARGE_EVERY) if files > 1 else 0
    small = files - large
    large_budget = int(total * LARGE_SHARE) if small else total
    small_budget = total - large_budget
    small_raw = [
        0.0 if rng.random() < 0.01 else min(rng.lognormvariate(math.log(6000), 1.3), 4 << 20)
        for _ in range(small)
    ]
    large_raw = [rng.lognormvariate(math.log(4 << 20), 0.9) for _ in range(large)]
    sizes = _scale(small_raw, small_budget) + _scale(large_raw, large_budget)
    kinds = [False] * small + [True] * large
    order = list(range(files))
    rng.shuffle(order)  # large files anywhere in the list, not all at the end

    result = []
    for position, item in enumerate(order):
        ext = rng.choice(LARGE_EXT if kinds[item] else SMALL_EXT)
        name = "%s_%05d%s" % (rng.choice(WORDS), position, ext)
        home = homes[position]
        result.append((os.path.join(home, name) if home else name, sizes[item]))
    return result


def _scale(raw: list[float], budget: int) -> list[int]:
    """Integer sizes proportional to ``raw`` that add up to ``budget`` exactly."""
    if not raw:
        return []
    factor = budget / (sum(raw) or 1.0)
    sizes = [int(value * factor) for value in raw]
    sizes[raw.index(max(raw))] += budget - sum(sizes)
    return sizes


def write_file(root: str, rel: str, size: int, round_: int, mtime: int) -> None:
    rng = random.Random("%s:content:%d:%s" % (SEED, round_, rel))
    path = os.path.join(root, rel)
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            step = min(CHUNK, left)
            handle.write(rng.randbytes(step))
            left -= step
    os.utime(path, (mtime, mtime))


def create(root: str, files: int, total: int) -> dict:
    if os.listdir(root):
        raise SystemExit("gendata: %s is not empty" % root)
    items = plan(files, total)
    dirs = set()
    for index, (rel, size) in enumerate(items):
        parent = os.path.dirname(rel)
        if parent and parent not in dirs:
            os.makedirs(os.path.join(root, parent), exist_ok=True)
            dirs.update(_ancestors(parent))
        write_file(root, rel, size, 0, BASE_MTIME + 37 * index)
    # Fixed directory mtimes too, deepest first (writing a child touches its parent).
    for parent in sorted(dirs, key=lambda d: d.count(os.sep), reverse=True):
        os.utime(os.path.join(root, parent), (BASE_MTIME, BASE_MTIME))
    os.utime(root, (BASE_MTIME, BASE_MTIME))
    return {
        "files": len(items),
        "bytes": sum(size for _, size in items),
        "dirs": len(dirs),
        "max_depth": max((d.count(os.sep) + 1 for d in dirs), default=0),
        "largest": max((size for _, size in items), default=0),
        "median": sorted(size for _, size in items)[len(items) // 2] if items else 0,
    }


def _ancestors(rel: str) -> list[str]:
    parts = rel.split(os.sep)
    return [os.sep.join(parts[: i + 1]) for i in range(len(parts))]


def change(root: str, files: int, total: int, round_: int) -> dict:
    if round_ < 1:
        raise SystemExit("gendata: change rounds start at 1")
    items = plan(files, total)
    changed = 0
    changed_bytes = 0
    for index in range(0, len(items), CHANGE_EVERY):
        rel, size = items[index]
        write_file(root, rel, size, round_, BASE_MTIME + 86400 * round_ + index)
        changed += 1
        changed_bytes += size
    return {"changed_files": changed, "changed_bytes": changed_bytes, "round": round_}


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[1] not in ("create", "change"):
        sys.stderr.write(__doc__)
        return 64
    root, files, total = argv[2], int(argv[3]), int(argv[4]) << 20
    if files < 1 or total < 0:
        raise SystemExit("gendata: FILES must be >= 1 and MIB >= 0")
    if argv[1] == "create":
        result = create(root, files, total)
    else:
        result = change(root, files, total, int(argv[5]) if len(argv) > 5 else 1)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
