import os

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
