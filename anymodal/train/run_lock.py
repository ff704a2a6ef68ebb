"""One training run per run folder: an exclusive lock file with stale-PID detection.

``anymodal fit`` takes ``<folder>/.anymodal.lock`` for ``trainer.default_root_dir`` (when the
recipe sets it) and for every ``ModelCheckpoint`` ``dirpath`` before training starts; a second
run into the same folder stops with one line naming the folder and the process holding it,
instead of overwriting ``last.ckpt``/``config.yaml`` and interleaving ``metrics.csv``. The lock
is a file created with ``O_EXCL`` holding the holder's PID, host and command; it is removed when
the run ends. A lock whose process is gone (``kill -9``, a crash, a reboot) is stale: it is
replaced with a warning. A lock from another host cannot be checked and is refused with the
file to delete.

    with RunLock("runs/demo"):
        ...  # train
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from anymodal.train.checkpoint_io import _pid_alive

log = logging.getLogger("anymodal")

LOCK_NAME = ".anymodal.lock"


class RunFolderLocked(RuntimeError):
    """Another live run holds the lock of this run folder."""


def _is_secondary_rank() -> bool:
    """True in the processes of ranks > 0 (they share rank 0's folder and its lock)."""
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class RunLock:
    """Exclusive lock of a run folder (see the module docstring).

    >>> lock = RunLock("runs/demo").acquire()  # doctest: +SKIP
    >>> lock.release()  # doctest: +SKIP
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(["anymodal", *sys.argv[1:]])[:300]}
        for _ in range(3):  # create; if taken by a dead process, remove it and try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                h = self._holder()
                pid, host = h.get("pid"), h.get("host")
                if not h:  # empty or half-written: its writer died between create and write
                    if time.time() - self.path.stat().st_mtime < 5:
                        time.sleep(0.2)
                        continue
                elif host != socket.gethostname():
                    raise RunFolderLocked(
                        f"run folder {self.folder} is locked by PID {pid} on host {host} (since {h.get('started')}); "
                        f"if that run is gone, delete {self.path}, or use another folder") from None
                elif isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
                    raise RunFolderLocked(
                        f"run folder {self.folder} is in use by PID {pid} (since {h.get('started')}: "
                        f"{h.get('command', '?')}); wait for it to end or set another trainer.default_root_dir "
                        "and checkpoint dirpath") from None
                log.warning("anymodal: removing the stale lock %s of PID %s (no such process)", self.path, pid)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(me))
            self.held = True
            return self
        raise RunFolderLocked(f"run folder {self.folder}: could not take {self.path}; delete it if no run uses it")

    def release(self) -> None:
        if self.held:
            if self._holder().get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
