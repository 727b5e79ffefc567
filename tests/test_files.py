"""The shared file helpers: atomic writes and renames into place."""
import os

import pytest

from cyclegan.files import move_into_place, write_atomic


def test_write_atomic_replaces_whole_files_and_keeps_the_old_one_on_failure(tmp_path):
    path = tmp_path / "out.bin"
    write_atomic(path, b"first")
    write_atomic(path, lambda f: f.write(b"second"), previous=tmp_path / "out.prev.bin")
    assert path.read_bytes() == b"second" and (tmp_path / "out.prev.bin").read_bytes() == b"first"

    def fails_half_way(f):
        f.write(b"half of a file")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fails_half_way)
    assert path.read_bytes() == b"second"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "out.prev.bin"]  # no temp file left


def make_folder(path, files: dict[str, str]):
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def contents(path) -> dict[str, str]:
    return {p.name: p.read_text() for p in path.iterdir()}


def test_move_into_place_puts_a_folder_where_there_was_none_or_replaces_the_old_one(tmp_path):
    target = tmp_path / "site"
    assert move_into_place(make_folder(tmp_path / "build1", {"a.txt": "one"}), target) == target
    assert contents(target) == {"a.txt": "one"}
    make_folder(tmp_path / ".site.old", {"stale.txt": "left by a crash"})  # removed on the way
    move_into_place(make_folder(tmp_path / "build2", {"b.txt": "two"}), target)
    assert contents(target) == {"b.txt": "two"}  # the old folder's files are gone with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temp folder and no .site.old left


def test_move_into_place_keeps_the_old_folder_when_the_new_one_cannot_go_in(tmp_path, monkeypatch):
    target = make_folder(tmp_path / "site", {"index.html": "old page"})
    build = make_folder(tmp_path / "build", {"index.html": "new page"})
    calls = []

    def replace(src, dst):
        calls.append((os.path.basename(src), os.path.basename(dst)))
        if len(calls) == 2:  # the old folder is aside; the new one fails to go in
            raise OSError("disk on fire")
        os.rename(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk on fire"):
        move_into_place(build, target)
    assert calls == [("site", ".site.old"), ("build", "site"), (".site.old", "site")]
    assert contents(target) == {"index.html": "old page"}  # back, whole
    assert contents(build) == {"index.html": "new page"}  # the caller's temp folder, for it to remove
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "site"]


def test_move_into_place_replaces_a_file_in_one_rename(tmp_path):
    target, tmp = tmp_path / "clip.mp4", tmp_path / "clip.mp4.tmp.mp4"
    target.write_bytes(b"old")
    tmp.write_bytes(b"new")
    move_into_place(tmp, target)
    assert target.read_bytes() == b"new" and not tmp.exists()
    with pytest.raises(FileNotFoundError):  # nothing to move: the target stays
        move_into_place(tmp, target)
    assert target.read_bytes() == b"new"
