# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of manifest.py on real files (the tests run as root, as the server's do)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf

CLIENT = "laptop-a"
RSYNC = shutil.which("rsync")
ODD_NAMES = ["with space.txt", "new\nline.txt", "ünïcødé.txt", "-leading-dash", 'quote"d']


def make_tree(top: Path) -> None:
    (top / "docs").mkdir(parents=True)
    for index, name in enumerate(ODD_NAMES):
        (top / "docs" / name).write_text("content %d\n" % index)
    (top / "big.bin").write_bytes(os.urandom(3 * mf.READ_CHUNK + 17))
    (top / "empty").write_bytes(b"")
    os.symlink("/etc/passwd", top / "link-out")
    os.symlink("/etc", top / "dir-link-out")
    os.mkfifo(top / "fifo")
    os.link(top / "big.bin", top / "docs" / "big-again.bin")
    # A name that is not UTF-8 (the laptop's file system allows it).
    with open(os.path.join(os.fsencode(top), b"raw-\xff.bin"), "wb") as handle:
        handle.write(b"raw\n")


def sha(path: Path) -> str:
    # sha256sum on stdin: its output escapes names with a newline.
    with open(path, "rb") as handle:
        out = subprocess.run(["sha256sum"], stdin=handle, capture_output=True, check=True)
    return out.stdout.split()[0].decode()


def test_round_trip_lists_every_regular_file_with_its_digest(tmp_path):
    snapshot = tmp_path / "drive" / CLIENT / "back-2026-11-01T10_00_00"
    make_tree(snapshot)
    manifest, stats = mf.build_manifest(str(snapshot), CLIENT, snapshot.name)
    mf.write_manifest(str(tmp_path / "drive"), manifest)
    entries = manifest.entries
    loaded = mf.load(str(tmp_path / "drive"), CLIENT, snapshot.name)

    paths = [e.path for e in loaded.entries]
    expected = sorted(
        ["big.bin", "empty", "docs/big-again.bin", "raw-\udcff.bin"]
        + ["docs/" + n for n in ODD_NAMES]
    )
    assert sorted(paths) == expected  # no symlink, no fifo, nothing outside
    for entry in loaded.entries:
        assert entry.sha256 == sha(snapshot / entry.path), entry.path
    # The hard link inside the snapshot is read once.
    assert stats.read_files == len(expected) - 1
    assert stats.reused_files == 1
    assert loaded.entries == entries


def test_manifest_is_root_only_and_atomic(tmp_path):
    snapshot = tmp_path / CLIENT / "back-2026-11-01T10_00_00"
    make_tree(snapshot)
    path = mf.write_manifest(
        str(tmp_path), mf.build_manifest(str(snapshot), CLIENT, snapshot.name)[0]
    )
    st = os.stat(path)
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
    assert os.stat(tmp_path / mf.MANIFEST_DIR).st_mode & 0o777 == 0o700
    assert os.stat(tmp_path / mf.MANIFEST_DIR / CLIENT).st_mode & 0o777 == 0o700
    assert os.listdir(os.path.dirname(path)) == [snapshot.name]  # no temporary left


def test_a_build_that_fails_leaves_no_manifest_and_no_temporary(tmp_path):
    snapshot = tmp_path / CLIENT / "back-2026-11-01T10_00_00"
    make_tree(snapshot)
    lines = mf.build_manifest(str(snapshot), CLIENT, snapshot.name)[0].lines
    writer = mf.ManifestWriter(str(tmp_path), CLIENT, snapshot.name)
    with pytest.raises(RuntimeError, match="walk failed"), writer as out:  # noqa: PT012
        out.feed(lines)
        raise RuntimeError("walk failed")
    assert os.listdir(tmp_path / mf.MANIFEST_DIR / CLIENT) == []
    assert not mf.has_manifest(str(tmp_path), CLIENT, snapshot.name)


def test_lines_fed_in_chunks_make_the_same_manifest_as_at_once(tmp_path):
    snapshot = tmp_path / CLIENT / "back-2026-11-01T10_00_00"
    make_tree(snapshot)
    manifest, _stats = mf.build_manifest(str(snapshot), CLIENT, snapshot.name)
    with mf.ManifestWriter(str(tmp_path), CLIENT, snapshot.name) as out:
        for line in manifest.lines:
            out.feed([line])
    loaded = mf.load(str(tmp_path), CLIENT, snapshot.name)
    assert loaded.lines == manifest.lines
    assert mf.text_of(loaded).splitlines()[-1].startswith("end %d " % len(manifest.lines))


def snapshot_with_link_dest(area: Path, laptop: Path, name: str, base: str | None) -> Path:
    argv = [RSYNC, "-a", "--fake-super"]
    if base:
        argv.append("--link-dest=../%s" % base)
    subprocess.run(argv + ["%s/" % laptop, name + "/"], cwd=area, check=True)
    return area / name


def test_second_snapshot_reads_only_new_inodes(tmp_path):
    laptop, area = tmp_path / "laptop", tmp_path / "drive" / CLIENT
    area.mkdir(parents=True)
    for index in range(20):
        (laptop / "d").mkdir(parents=True, exist_ok=True)
        (laptop / "d" / ("f%02d" % index)).write_text("file %d\n" % index * 100)
    first = snapshot_with_link_dest(area, laptop, "back-2026-11-01T10_00_00", None)
    manifest, stats = mf.build_manifest(str(first), CLIENT, first.name)
    assert stats.read_files == 20
    mf.write_manifest(str(tmp_path / "drive"), manifest)

    # One file changed keeping size and mtime: rsync --checksum would see it;
    # -a alone would not, so the laptop's run must send it as a new inode.
    target = laptop / "d" / "f03"
    st = target.stat()
    target.write_text(target.read_text().replace("file", "FILE"))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    (laptop / "d" / "new").write_text("new\n")
    subprocess.run([RSYNC, "-a", "--checksum", "%s/" % laptop, str(laptop) + ".x/"], check=True)
    second = area / "back-2026-11-02T10_00_00"
    subprocess.run(
        [
            RSYNC,
            "-a",
            "--checksum",
            "--fake-super",
            "--link-dest=../%s" % first.name,
            "%s/" % laptop,
            second.name + "/",
        ],
        cwd=area,
        check=True,
    )
    previous = mf.load(str(tmp_path / "drive"), CLIENT, first.name)
    manifest, stats = mf.build_manifest(str(second), CLIENT, second.name, previous, str(first))
    entries = manifest.entries
    assert (stats.files, stats.read_files, stats.reused_files) == (21, 2, 19)
    by_path = {e.path: e for e in entries}
    assert by_path["d/f03"].sha256 == sha(second / "d/f03")
    assert by_path["d/f03"].sha256 != previous.by_path()["d/f03"].sha256


def two_linked_snapshots(tmp_path: Path):
    """A laptop folder, its first snapshot with a manifest, and an unchanged
    second one by --link-dest (every file the same inode as in the first)."""
    laptop, root = tmp_path / "laptop", tmp_path / "drive"
    area = root / CLIENT
    area.mkdir(parents=True)
    (laptop / "d").mkdir(parents=True)
    for index in range(5):
        (laptop / "d" / ("f%d" % index)).write_text("file %d\n" % index * 50)
    first = snapshot_with_link_dest(area, laptop, "back-2026-11-01T10_00_00", None)
    manifest, _stats = mf.build_manifest(str(first), CLIENT, first.name)
    mf.write_manifest(str(root), manifest)
    second = snapshot_with_link_dest(area, laptop, "back-2026-11-02T10_00_00", first.name)
    return root, first, second


def test_an_unchanged_snapshot_takes_every_line_from_the_previous_manifest(tmp_path):
    root, first, second = two_linked_snapshots(tmp_path)
    previous = mf.load(str(root), CLIENT, first.name)

    manifest, stats = mf.build_manifest(str(second), CLIENT, second.name, previous, str(first))

    assert (stats.files, stats.read_files, stats.reused_files) == (5, 0, 5)
    assert manifest.lines == previous.lines  # the same lines, as stored
    mf.write_manifest(str(root), manifest)
    assert mf.load(str(root), CLIENT, second.name).entries == previous.entries


def test_an_inode_written_in_place_keeps_its_first_digest_so_verify_sees_it(tmp_path):
    # Finished snapshots are never written in place; if one were (a bug, an
    # attack), the next manifest must not "bless" the new bytes.
    root, first, second = two_linked_snapshots(tmp_path)
    target = second / "d" / "f1"
    original = mf.load(str(root), CLIENT, first.name).by_path()["d/f1"]
    target.write_text("tampered\n")
    previous = mf.load(str(root), CLIENT, first.name)

    manifest, stats = mf.build_manifest(str(second), CLIENT, second.name, previous, str(first))

    assert stats.read_files == 0
    assert manifest.by_path()["d/f1"] == original


def test_after_a_repair_inode_numbers_are_not_trusted(tmp_path):
    # A repair frees the damaged inode; its number may come back for another
    # file at the same path. Play that: the first manifest names, for d/f2,
    # the inode the second snapshot now has, with other content's digest.
    root, first, second = two_linked_snapshots(tmp_path)
    os.unlink(second / "d" / "f2")
    (second / "d" / "f2").write_text("new content\n")
    reused = (second / "d" / "f2").stat().st_ino
    forged = [
        line if not line.endswith(' "d/f2"') else '%s 9 0 0 %d "d/f2"' % ("0" * 64, reused)
        for line in mf.load(str(root), CLIENT, first.name).lines
    ]
    os.unlink(mf.manifest_path(str(root), CLIENT, first.name))
    mf.write_manifest(str(root), mf.Manifest(CLIENT, first.name, forged, mf.filesystem_id(first)))
    previous = mf.load(str(root), CLIENT, first.name)
    trusted, _stats = mf.build_manifest(str(second), CLIENT, second.name, previous, str(first))
    assert trusted.by_path()["d/f2"].sha256 == "0" * 64  # what trusting the number gives

    assert not mf.repaired_since(str(root), CLIENT, first.name)
    mf.mark_repaired(str(root), CLIENT)
    assert mf.repaired_since(str(root), CLIENT, first.name)
    manifest, stats = mf.build_manifest(
        str(second), CLIENT, second.name, previous, str(first), trust_inodes=False
    )

    assert manifest.by_path()["d/f2"].sha256 == sha(second / "d" / "f2")
    assert (stats.read_files, stats.reused_files) == (1, 4)


def test_inode_numbers_from_another_file_system_are_not_trusted(tmp_path):
    # A drive replaced by a copy of the mirror keeps the manifests the mirror
    # was given, which name the old drive's inode numbers.
    root, first, second = two_linked_snapshots(tmp_path)
    previous = mf.load(str(root), CLIENT, first.name)
    assert previous.fsid == mf.filesystem_id(first)
    previous.fsid = "0123abcd"

    manifest, stats = mf.build_manifest(str(second), CLIENT, second.name, previous, str(first))

    assert (stats.files, stats.reused_files, stats.by_listing) == (5, 5, 0)
    assert manifest.fsid == mf.filesystem_id(second)


def write_one(tmp_path: Path) -> tuple[Path, str]:
    snapshot = tmp_path / CLIENT / "back-2026-11-01T10_00_00"
    make_tree(snapshot)
    manifest = mf.build_manifest(str(snapshot), CLIENT, snapshot.name)[0]
    return Path(mf.write_manifest(str(tmp_path), manifest)), snapshot.name


def test_truncated_manifest_is_not_trusted(tmp_path):
    path, name = write_one(tmp_path)
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: data.rfind(b"end ")]))
    with pytest.raises(mf.ManifestError, match="truncated"):
        mf.load(str(tmp_path), CLIENT, name)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(mf.ManifestError, match="truncated or damaged"):
        mf.load(str(tmp_path), CLIENT, name)


def test_edited_manifest_is_not_trusted(tmp_path):
    path, name = write_one(tmp_path)
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    lines[1] = b"0" * 64 + lines[1][64:]  # "bless" other content
    path.write_bytes(gzip.compress(b"\n".join(lines)))
    with pytest.raises(mf.ManifestError, match="edited or damaged"):
        mf.load(str(tmp_path), CLIENT, name)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda path: os.chown(path, 1000, 1000), "owned by uid 1000"),
        (lambda path: os.chmod(path, 0o620), "can be written by others"),
        (lambda path: os.chown(path.parent, 1000, 1000), "owned by uid 1000"),
        (lambda path: os.chmod(path.parent.parent, 0o777), "can be written by others"),
    ],
)
def test_manifest_a_laptop_account_could_write_is_not_trusted(tmp_path, tamper, message):
    path, name = write_one(tmp_path)
    mf.load(str(tmp_path), CLIENT, name)
    tamper(path)
    with pytest.raises(mf.ManifestError, match=message):
        mf.load(str(tmp_path), CLIENT, name)


def test_manifest_copied_to_another_snapshot_name_is_not_trusted(tmp_path):
    path, name = write_one(tmp_path)
    other = "back-2026-11-02T10_00_00"
    shutil.copy(path, path.parent / other)
    with pytest.raises(mf.ManifestError, match="not trusted"):
        mf.load(str(tmp_path), CLIENT, other)


def test_symlinked_manifest_is_not_followed(tmp_path):
    path, name = write_one(tmp_path)
    real = tmp_path / "elsewhere"
    os.rename(path, real)
    os.symlink(real, path)
    with pytest.raises(mf.ManifestError):
        mf.load(str(tmp_path), CLIENT, name)


def test_remove_orphans_keeps_manifests_of_existing_snapshots(tmp_path):
    path, name = write_one(tmp_path)
    shutil.copy(path, path.parent / "back-2026-10-01T10_00_00")
    assert mf.remove_orphans(str(tmp_path), CLIENT, {name}) == ["back-2026-10-01T10_00_00"]
    assert mf.listed(str(tmp_path), CLIENT) == [name]
