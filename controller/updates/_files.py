"""Crash-safe file writes (``shared.files``) and a cross-process lock for the repository and
key folders.

A reader (a TUF client through the mirror, another controller replica, the CLI) must
only ever see a complete old file or a complete new one: every write goes to a temp file in
the same folder, is fsynced, and is moved into place with ``os.replace``.
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.files import fsync_dir, write_atomic


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file``: one writer at a time across processes
    (CLI and controller) and threads (each call opens its own file description)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


__all__ = ["fsync_dir", "locked", "write_atomic"]
