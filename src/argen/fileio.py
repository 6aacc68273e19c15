"""Writing files so that a kill never leaves a half file: one implementation for every writer.

Checkpoints, images, archives, statistics and downloads all go through `atomic_write`: the bytes
go to a hidden temporary beside the target (`.NAME.XXXXXXXX<suffix>`), are synced, get the
permissions the umask gives (not mkstemp's 0o600), and are renamed into place. Readers see the
old file or the whole new one.
"""
from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

_umask_lock = threading.Lock()


def umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:  # Linux reports it (os.umask can only be read by setting it, which races with threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode(bits: int = 0o666) -> int:
    """The permissions `open()` would give a new file (0o666 & ~umask); 0o777 for a directory."""
    return bits & ~umask()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename in `path` durable (a no-op on file systems that cannot sync a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes | Callable[[Path], None], *, suffix: str = ".tmp",
                 exclusive: bool = False, replace: Callable[[str, Path], None] | None = None) -> Path:
    """Write `data` (bytes, or a function that writes the file at the path it is given) to `path`.

    `exclusive=True` refuses an existing `path` (ValueError) without a window in which another
    writer's file could be replaced. `replace` is the final rename (tests substitute it to
    simulate a kill between writes). Returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        if callable(data):
            os.close(fd)
            data(Path(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        if exclusive:
            try:
                os.link(tmp, path)  # atomic "create unless it exists"
            except FileExistsError:
                raise ValueError(f"{path} already exists; pass --overwrite to replace it") from None
            except OSError:  # a file system without hard links: check, then rename
                if path.exists():
                    raise ValueError(f"{path} already exists; pass --overwrite to replace it") from None
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
        else:
            (replace or os.replace)(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
