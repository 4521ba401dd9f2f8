import errno
import os
import stat

import pytest

from ger_kernels._io import write_atomically, write_text_atomically


def test_writes_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "report.md"
    write_text_atomically(str(path), "hello")
    assert path.read_text() == "hello"
    assert os.listdir(path.parent) == ["report.md"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    path.write_text("old")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(str(path), fail)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["last.pt"]


def test_the_file_is_synced_before_the_replace_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        is_folder = stat.S_ISDIR(os.fstat(fd).st_mode)
        events.append(("fsync folder",) if is_folder else ("fsync file", os.pread(fd, 100, 0)))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", lambda source, target: events.append(("replace",)) or replace(source, target))
    write_text_atomically(str(tmp_path / "log.json"), "{}")
    assert events == [("fsync file", b"{}"), ("replace",), ("fsync folder",)]


def test_a_folder_that_cannot_be_synced_is_no_error(tmp_path, monkeypatch):
    fsync = os.fsync

    def refuse_folders(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", refuse_folders)
    write_text_atomically(str(tmp_path / "log.json"), "{}")
    assert (tmp_path / "log.json").read_text() == "{}" and os.listdir(tmp_path) == ["log.json"]
