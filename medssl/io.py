"""File writes that readers never see half done, and the writability check of output folders
(used by data, engine, studies, report, the CLI and the API alike)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from medssl.errors import MedsslError


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename, so a crash cannot leave it empty
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_writable_dir(path: Path, what: str) -> None:
    """``path`` is, or can be created as, a directory we may write in; else a one-line error.

    Writability is tried (a temporary folder, removed at once), not guessed from permission bits,
    which root ignores and read-only file systems do not show."""
    path = Path(path)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise MedsslError(f"{what} {path}: {existing} is a file, not a directory")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".medssl-write-test-").cleanup()
    except OSError as err:
        raise MedsslError(f"{what} {path}: {existing} is not writable ({err.strerror})") from err
