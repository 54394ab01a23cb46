"""write_atomic: whole files only, the umask's mode for a new file, the old mode kept, no debris."""

from __future__ import annotations

import os
import stat

import pytest

from engine.atomic import write_atomic


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_new_file_gets_the_umask_mode_and_an_existing_one_keeps_its_mode(tmp_path, umask_022):
    target = tmp_path / "history.json"
    write_atomic(target, "one")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    target.chmod(0o660)
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o660


def test_a_writer_function_gets_a_binary_handle(tmp_path):
    target = tmp_path / "blob.bin"
    write_atomic(target, lambda handle: handle.write(bytes(range(4))))
    assert target.read_bytes() == bytes(range(4))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_atomic(target, fail)
    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["summary.json"]
