"""One run at a time per store: an advisory `flock` on `<store>.lock`, naming its holder.

Why flock: the kernel releases it when the holding process ends, however it ends (SIGKILL, a
crash, a power cut), so a lock can never be left behind by a dead run. The holder's pid, host,
start time and command are written into the file, so a refused run can say who holds the lock,
and a run that finds the details of a process that is gone knows it recovered a stale lock.
The same lock can be taken from a shell (`flock -n feedback.db.lock ...`) for backups and
maintenance (docs/scheduling.md). It needs a local file system; NFS locks are not reliable.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from feedback_nlp.errors import FeedbackError


def lock_path(store_path: str | Path) -> Path:
    p = Path(store_path)
    return p.with_name(p.name + ".lock")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive, non-blocking lock; `stale` holds the details of a dead holder it replaced."""

    def __init__(self, store_path: str | Path) -> None:
        self.path = lock_path(store_path)
        self.fd: int | None = None
        self.stale: dict[str, Any] | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            if holder and holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", 0))):
                holder = None  # details left by an earlier run that has ended: the holder wrote none
            raise FeedbackError("E801", f"{self.path}: another run holds the store lock ({describe(holder)}). "
                                "Only one run at a time may use a store; this run changed nothing. The lock is "
                                "freed as soon as that process ends, even if it crashes") from None
        previous = _read(fd)
        if previous and previous.get("pid") != os.getpid():
            self.stale = previous  # its process ended without clearing the file: killed or crashed
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # an empty file means the last holder finished cleanly
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw) if raw.strip() else None
    except (OSError, ValueError):
        return None


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "holder unknown: locked by a process that wrote no details, e.g. `flock` from a shell"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
            + (f", command: {holder['command']}" if holder.get("command") else ""))
