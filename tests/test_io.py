import errno
import multiprocessing
import os
import pathlib
import stat

import pytest

from ger_kernels._io import read_json_object, update_json_object, write_atomically, write_text_atomically


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


def _add_entries(path: str, prefix: str, count: int) -> None:
    for index in range(count):
        update_json_object(pathlib.Path(path), {f"{prefix}{index}": index})


def test_processes_updating_a_json_cache_at_once_keep_every_entry(tmp_path):
    """Read, merge and replace under a lock: without it, concurrent updates lose each other's entries."""
    path = tmp_path / "cache" / "table.json"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_entries, args=(str(path), prefix, 150)) for prefix in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0, 0]
    assert len(read_json_object(path)) == 300


@pytest.mark.parametrize("content", ["[]", "null", "3", "not json"])
def test_a_json_cache_that_is_not_an_object_reads_as_empty(tmp_path, content):
    path = tmp_path / "table.json"
    path.write_text(content)
    assert read_json_object(path) == {} and read_json_object(tmp_path / "missing.json") == {}
    update_json_object(path, {"k": 1})
    assert read_json_object(path) == {"k": 1}
