"""File operations a run can trust: locked output folders, staging that is cleaned up after a
crash or SIGTERM, and OS errors turned into one line that names the file."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from easyetcon.errors import EasyEtconError


class FolderBusyError(EasyEtconError):
    """Another easyetcon command holds the folder's lock."""


def _try_lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive lock, or ``None`` if another process
    holds it. The lock goes with the process, so a killed run never leaves a stale one."""
    handle = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        return None
    return handle


@contextmanager
def locked_folder(path: str | Path) -> Iterator[Path]:
    """Hold ``path``'s lock (creating the folder if needed); a second holder gets a clear error."""
    path = Path(path)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle = _try_lock(path)
    except OSError as error:
        raise EasyEtconError(describe_os_error(error, f"lock {str(path)!r}")) from error
    if handle is None:
        raise FolderBusyError(f"another easyetcon command is writing to {str(path)!r}; wait for it to finish or choose another folder")
    try:
        yield path
    finally:
        os.close(handle)
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # a failed command leaves no empty folder of its own behind


STAGING_PREFIX = ".easyetcon-staging-"


def remove_abandoned_staging(folder: Path) -> list[Path]:
    """Remove staging folders in ``folder`` whose writer is gone (their lock is free)."""
    removed = []
    if not folder.is_dir():
        return removed
    for candidate in sorted(folder.glob(f"{STAGING_PREFIX}*")):
        if not candidate.is_dir():
            continue
        handle = _try_lock(candidate)
        if handle is None:
            continue  # its writer is still running
        try:
            shutil.rmtree(candidate)
            removed.append(candidate)
        finally:
            os.close(handle)
    return removed


@contextmanager
def staging_folder(parent: Path, label: str) -> Iterator[Path]:
    """A locked, hidden folder in ``parent`` to build output in; removed on any exit, and found
    and removed by :func:`remove_abandoned_staging` after a kill -9."""
    path = parent / f"{STAGING_PREFIX}{label}-{os.getpid()}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    handle = _try_lock(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if handle is not None:
            os.close(handle)


class Terminated(SystemExit):
    """Raised in the main thread when SIGTERM arrives, so ``finally`` blocks clean up."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(128 + signum)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into an exception (as Ctrl-C is), so staging folders and half-applied
    chains are cleaned up and rolled back instead of left behind."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def describe_os_error(error: OSError, action: str) -> str:
    """One line for a failed file operation, naming the file and what to do."""
    where = f" ({error.filename})" if error.filename else ""
    hints = {
        28: "free some space and run the command again",  # ENOSPC
        13: "check the folder's permissions or choose another folder",  # EACCES
        30: "the folder is read-only; choose a writable one",  # EROFS
        1: "check the folder's permissions or choose another folder",  # EPERM
    }
    hint = hints.get(error.errno or 0, "check the path and run the command again")
    return f"cannot {action}{where}: {error.strerror or error}; {hint}"
