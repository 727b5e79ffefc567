"""The shared file helpers: atomic writes."""
import pytest

from cyclegan.files import write_atomic


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
