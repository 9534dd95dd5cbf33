"""Private files for what baton stores on disk (the SQLite journal, the result cache).

Stored content is for its owner only, whatever the umask: folders baton creates are 0700,
database files 0600, and SQLite's ``-wal``/``-shm`` files (which SQLite creates with the
database file's mode) are tightened too. A file or folder that already exists and is owned
by someone else is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from baton.errors import StoreError

FILE_MODE = 0o600
DIR_MODE = 0o700
SIDECARS = ("-wal", "-shm", "-journal")


def prepare_private_file(path: str, what: str) -> None:
    """Create ``path``'s missing folders (0700) and the file itself (0600) if absent; an
    existing file of ours readable by others is made private."""
    target = Path(path)
    missing = [p for p in reversed(target.parents) if not p.exists()]
    try:
        for folder in missing:
            folder.mkdir(mode=DIR_MODE, exist_ok=True)
            os.chmod(folder, DIR_MODE)  # mkdir's mode is masked by the umask
    except OSError as exc:
        raise StoreError(f"cannot create the directory for {what} {path!r}: {exc.strerror or exc}") from exc
    if target.is_dir():
        raise StoreError(f"cannot open {what} {path!r}: it is a directory")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except FileExistsError:
        tighten(path)
    except OSError as exc:
        raise StoreError(f"cannot create {what} {path!r}: {exc.strerror or exc}") from exc
    else:
        os.close(fd)


def tighten(path: str) -> None:
    """Make ``path`` and its SQLite sidecar files 0600 where they are ours and looser."""
    for candidate in (path, *(path + s for s in SIDECARS)):
        try:
            st = os.stat(candidate)
            if st.st_mode & 0o077 and st.st_uid == os.getuid():
                os.chmod(candidate, FILE_MODE)
        except OSError:  # absent, or not ours to change
            continue
