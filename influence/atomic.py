"""Atomic writes: a file or folder is written under a temporary name in its target's folder, then renamed over
the target, so a reader (or a run killed halfway) sees the old version or the new one, never a part.

The result gets the permissions an ordinary ``open()`` or ``mkdir()`` would give under the process's umask
(``tempfile`` alone would leave it owner-only, mode 0600 / 0700).

A temporary name, ``.NAME.PID-HOST.RANDOM.tmp``, names its writer (process id, hash of the host name): the next
write into the folder (the first in a process) removes the temporaries of writers on this host that are no longer
running (killed mid-write), so a command killed and run again leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import zlib
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _prefix(name: str) -> str:
    """``.NAME.PID-HOST.``: how the temporary names for ``name`` written by this process begin."""
    return f".{name}.{os.getpid()}-{_HOST}."


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


_CLEANED: set[Path] = set()


def _remove_leftovers(folder: Path) -> None:
    """Remove the temporaries in ``folder`` left by writers on this host that no longer run; once per folder and
    process (a folder of many files is not listed again at every write)."""
    if os.name != "posix" or folder in _CLEANED:  # os.kill(pid, 0) probes a process only on POSIX
        return
    _CLEANED.add(folder)
    pattern = re.compile(rf"\..+\.(\d+)-{_HOST}\.\w+\.(tmp|old)")
    for entry in folder.iterdir():
        found = pattern.fullmatch(entry.name)
        if found and not _running(int(found.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` (creating its folder) for a writer that wants a path (FAISS,
    ``savefig``); on success the file replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path.parent.resolve())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path.name), suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` (creating its folder) atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented JSON (ASCII-escaped, a final newline), written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; fill it; on success it replaces ``dest``, its files and
    folders with the umask's permissions.

    ``dest``, when it exists, must be a folder the caller may replace (checked by the caller): it is renamed
    aside and deleted only once the new folder is in place. On failure the temporary folder is removed and
    ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(dest.parent.resolve())
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=_prefix(dest.name), suffix=".tmp"))
    try:
        yield tmp
        mask = _umask()
        for entry in [tmp, *tmp.rglob("*")]:  # what writers made owner-only (safetensors, mkstemp) too
            if not entry.is_symlink():
                os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=_prefix(dest.name), suffix=".old"))
            os.replace(dest, old / "d")
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
