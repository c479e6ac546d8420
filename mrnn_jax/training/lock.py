"""One trainer per work directory: a lock file naming its holder (host, pid, start time).

``W/lock`` holds a JSON record of the trainer that holds it, and that trainer keeps an
exclusive ``flock`` on the file for as long as it runs. The kernel drops the ``flock`` when the
process ends, however it ends (``kill -9`` included), so on one host a lock is never stale for
long: a second trainer that gets the ``flock`` but finds a record of a process that is gone
takes the lock over, with a warning naming the dead holder. A record written by another host
cannot be checked (its pid means nothing here, and some shared file systems do not pass
``flock`` between hosts), so it is honoured until that run releases it or the user deletes
the file. A released lock is an empty file (never deleted, so that two trainers can never hold
locks on two different files of the same name).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator

from mrnn_jax.errors import MrnnError
from mrnn_jax.run_dir import RunDir, process_alive

log = logging.getLogger("mrnn_jax")


def _holder_record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _describe(record: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
    return f"pid {record.get('pid')} on host {record.get('host')}, started {started}"


class WorkdirLock:
    """The lock of one work directory, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, workdir: str):
        self.path = RunDir.at(workdir).lock
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock, or raises :class:`MrnnError` naming the trainer that holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise MrnnError(f"{self.path}: cannot create the lock file ({e.strerror})") from e
        try:
            self._flock(fd)
            previous = self._read(fd)
            if previous is not None:
                self._take_over(previous)
            self._write(fd, _holder_record())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _flock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = self._read(fd) or {}
                raise MrnnError(
                    f"{os.path.dirname(self.path)} is in use by another trainer "
                    f"({_describe(holder)}); wait for it to finish, stop it, or use another "
                    "--workdir"
                ) from None
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise MrnnError(f"{self.path}: cannot lock ({e.strerror})") from e
            # A file system without flock: the record alone guards the folder.

    def _take_over(self, previous: dict) -> None:
        here = socket.gethostname()
        pid = int(previous.get("pid", -1))
        if previous.get("host") != here:
            raise MrnnError(
                f"{os.path.dirname(self.path)} is locked by {_describe(previous)}, which this "
                f"host cannot check; if that run is gone, delete {self.path}"
            )
        if pid != os.getpid() and process_alive(pid) and not self._flock_works():
            raise MrnnError(
                f"{os.path.dirname(self.path)} is in use by another trainer "
                f"({_describe(previous)}); wait for it to finish, stop it, or use another "
                "--workdir"
            )
        log.warning(
            "%s: taking over the lock left by %s, which %s",
            self.path,
            _describe(previous),
            "no longer holds it" if process_alive(pid) else "is no longer running",
        )

    def _flock_works(self) -> bool:
        """Whether the flock taken in :meth:`acquire` is a real one (then a live pid in the
        record is a reused pid, not a holder)."""
        with contextlib.suppress(OSError):
            probe = os.open(self.path, os.O_RDONLY)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
            finally:
                os.close(probe)
        return False

    @staticmethod
    def _read(fd: int) -> dict | None:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
        try:
            record = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            return None
        return record if isinstance(record, dict) else None

    def _write(self, fd: int, record: dict | None) -> None:
        data = b"" if record is None else (json.dumps(record) + "\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, data)
            os.fsync(fd)
        except OSError as e:
            raise MrnnError(f"{self.path}: cannot write the lock file ({e.strerror})") from e

    def release(self) -> None:
        """Empties the lock file and drops the lock (does nothing when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError, MrnnError):
            self._write(self._fd, None)
        os.close(self._fd)
        self._fd = None


@contextlib.contextmanager
def locked(workdir: str, enabled: bool = True) -> Iterator[WorkdirLock | None]:
    """Holds ``workdir``'s lock for the ``with`` block (nothing when not ``enabled``)."""
    if not enabled:
        yield None
        return
    lock = WorkdirLock(workdir)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
