"""One build at a time per store: ``OUT/.motiondata.lock`` holds ``{"pid", "host", "started"}``.

The lock file is created with ``os.open(O_CREAT | O_EXCL)``, so of two builds starting together exactly
one gets it; the other is refused with one line naming the holder. A lock left by a build that died
(its PID is gone on this host) is taken over with a warning. ``release`` removes the file only while it
still names this process.

    with OutLock(out):
        run_job(spec, out)
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from motiondata.errors import MotionDataError

log = logging.getLogger(__name__)
LOCK_NAME = ".motiondata.lock"
UNREADABLE_GRACE_S = 30.0  # an empty/unreadable lock younger than this may be mid-write by its holder


class StoreLockedError(MotionDataError):
    """Another build holds the store's lock, or the lock cannot be written (exit code 2)."""

    exit_code = 2


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class OutLock:
    """The lock of one ``--out`` folder (created, with its parents, on ``acquire``)."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self.held = False

    def _create(self) -> bool:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreLockedError(f"cannot create --out {self.out} ({exc.strerror}); pass a folder you can "
                                   "write to") from exc
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StoreLockedError(f"cannot write the lock {self.path} ({exc.strerror}); pass an --out folder "
                                   "you can write to") from exc
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.info, fh)
        return True

    def _stale(self, holder: dict[str, Any] | None) -> bool:
        if holder is None:  # empty or torn: stale once older than a write could take
            try:
                return time.time() - self.path.stat().st_mtime > UNREADABLE_GRACE_S
            except FileNotFoundError:
                return True
        return holder.get("host") == self.info["host"] and not _pid_alive(holder.get("pid"))

    def _refuse(self, holder: dict[str, Any] | None) -> StoreLockedError:
        if holder is None:
            return StoreLockedError(f"{self.out} is locked by another build ({self.path} is being written); wait "
                                    f"for it or use another --out")
        return StoreLockedError(
            f"{self.out} is being built by pid {holder.get('pid')} on {holder.get('host')} since "
            f"{holder.get('started')}; wait for it to finish or use another --out (if no build is running, "
            f"delete {self.path})")

    def _take_over(self, holder: dict[str, Any] | None) -> None:
        """Move the stale lock aside atomically; if another process replaced it meanwhile, put theirs back."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read(aside) != holder:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            raise self._refuse(_read(self.path))
        aside.unlink(missing_ok=True)
        log.warning("took over the lock of a build that is no longer running (%s); its shards are resumed",
                    json.dumps(holder) if holder else "unreadable lock")

    def acquire(self) -> "OutLock":
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            holder = _read(self.path)
            if not self._stale(holder):
                raise self._refuse(holder)
            self._take_over(holder)
        raise self._refuse(_read(self.path))

    def release(self) -> None:
        if self.held and _read(self.path) == self.info:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "OutLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
