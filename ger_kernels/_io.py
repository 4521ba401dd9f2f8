"""Atomic file writes: a temporary file in the target's folder, synced to disk, then ``os.replace`` and a sync
of the folder (where the platform allows it), so a crash or power cut never leaves a half-written checkpoint,
log or report behind."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: cache updates are not locked
    fcntl = None

_UMASK = os.umask(0)
os.umask(_UMASK)


def _sync(path: str, flags: int) -> None:
    """``os.fsync`` of the file or folder ``path``, opened with ``flags``."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temporary_beside(path: str) -> Iterator[str]:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        _sync(tmp, os.O_RDWR)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # some platforms cannot open or sync a folder
            _sync(folder, os.O_RDONLY)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp_path)`` (which closes the file it writes), syncs it to disk, then moves it to ``path`` in
    one step."""
    with _temporary_beside(path) as tmp:
        write(tmp)


def write_text_atomically(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    write_atomically(path, write)


def read_json_object(path: pathlib.Path) -> dict:
    """The JSON object in the cache file ``path``; {} when it is missing, unreadable or not an object."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def update_json_object(path: pathlib.Path, entries: dict) -> None:
    """Merges ``entries`` into the JSON object of the cache file ``path`` and writes it atomically, under an
    exclusive lock on ``path.lock`` so that processes updating it at once keep each other's entries (where
    ``fcntl`` exists). A cache that cannot be written (a read-only folder) is left as it is: it only costs
    work again in the next process."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            merged = {**read_json_object(path), **entries}
            write_text_atomically(str(path), json.dumps(merged, indent=1, sort_keys=True))
    except OSError:
        pass


def read_table_entries(path: pathlib.Path, what: str, is_entry: Callable[[object], bool], expected: str) -> dict:
    """The ``entries`` object of the JSON table ``path`` (``what`` names it in errors): empty when the
    file does not exist; a clear error when it is not JSON, or when an entry fails ``is_entry``
    (``expected`` says what an entry maps to)."""
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as error:
        raise ValueError(f"the {what} {path} is not valid JSON: {error}") from error
    entries = table.get("entries") if isinstance(table, dict) else None
    if not isinstance(entries, dict) or not all(is_entry(e) for e in entries.values()):
        raise ValueError(f"the {what} {path} needs an object 'entries' mapping {expected}")
    return entries
