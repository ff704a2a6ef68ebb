"""Checkpoint files that are either complete or absent, and never unpickle code.

:class:`AtomicCheckpointIO` is the Lightning ``CheckpointIO`` plugin that ``anymodal fit`` uses by
default (the CLI adds it unless the recipe names another ``CheckpointIO``):

- **save**: serialise into memory, write to ``<name>.tmp-<pid>`` in the same folder, ``fsync`` the
  file, ``os.replace`` it over ``<name>`` (atomic on POSIX), then ``fsync`` the folder so the
  rename itself survives a power cut. A run killed mid-save (preemption, OOM killer, full disk)
  leaves the previous ``last.ckpt`` intact, never a truncated one that ``--ckpt_path last`` would
  choke on. Lightning's own writer renames through fsspec but does not fsync.
- **load**: ``torch.load(weights_only=True)``, always: a checkpoint holds tensors and plain data
  (anymodal's modules save their hyper-parameters and data-loader state as such), so a crafted
  pickle payload passed to ``--ckpt_path`` is refused instead of run.

Example (what the CLI does)::

    trainer = L.Trainer(plugins=[AtomicCheckpointIO()], ...)

Sharded FSDP checkpoints (``state_dict_type: sharded``) are written by
``torch.distributed.checkpoint``, not through this plugin; the FSDP recipe therefore uses
``state_dict_type: full``, see ``docs/scale-out.md``.

Integrity: every save also writes ``<name>.sha256`` (the SHA-256 of the file's bytes) and every
load checks it (``verify=False``, ``anymodal fit --no-verify``, skips the check), so a flipped
byte is one error naming the file instead of silently wrong weights. The sidecar is written
*before* the rename with the old and the new digest, and rewritten with the new one after, so
a kill at any moment leaves a checkpoint whose digest is in its sidecar. A damaged file gets one
line saying what is wrong (:func:`load_checkpoint_file`): empty, truncated, not a checkpoint,
or unsafe content. Temporary files of saves killed mid-way (``<name>.tmp-<pid>`` whose process
is gone) are removed when ``anymodal fit`` starts (after it has locked the run folder) and before
the first save into a folder.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO

from anymodal.integrity import sha256_file, verify_file


log = logging.getLogger("anymodal")

DIGEST_SUFFIX = ".sha256"
_TMP = re.compile(r"^(?P<name>.+)\.tmp-(?P<pid>\d+)$")


class UnsafeCheckpointError(ValueError):
    """A checkpoint that ``torch.load(weights_only=True)`` refuses (pickled objects or code)."""


class CheckpointError(ValueError):
    """A checkpoint file that is empty, truncated, not a checkpoint, or fails its SHA-256 check."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not let folders be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably (tmp file + fsync + rename + fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def read_digests(path: str | os.PathLike) -> list[str] | None:
    """The digests ``<path>.sha256`` accepts for ``path`` (None: no sidecar, nothing to check)."""
    side = _digest_path(Path(path))
    if not side.is_file():
        return None
    return [ln.split()[0] for ln in side.read_text().splitlines() if ln.strip()]


def atomic_write_verified(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write_bytes` plus a ``<path>.sha256`` sidecar that matches ``path`` at every
    moment: first the sidecar lists the new and the previous digest, then ``path`` is replaced,
    then the sidecar is cut to the new digest. A kill between any two steps leaves a file whose
    digest the sidecar accepts; a byte flipped later is caught by :func:`load_checkpoint_file`."""
    path = Path(path)
    new = hashlib.sha256(data).hexdigest()
    old = read_digests(path) if path.is_file() else None
    if old is None and path.is_file():  # a file saved before sidecars existed
        old = [sha256_file(path)]
    atomic_write_bytes(_digest_path(path), (f"{new}  {path.name}\n" + "".join(
        f"{d}  {path.name} (previous)\n" for d in (old or [])[:1])).encode())
    atomic_write_bytes(path, data)
    atomic_write_bytes(_digest_path(path), f"{new}  {path.name}\n".encode())
    return path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete ``<name>.tmp-<pid>`` files in ``folder`` (written by :func:`atomic_write_bytes`)
    whose process is gone: the leftovers of a save killed with ``kill -9``. Files of a live
    process and files not named this way are left alone. Returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for f in folder.iterdir():
        m = _TMP.match(f.name)
        if m and f.is_file() and not _pid_alive(int(m["pid"])):
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    if removed:
        log.warning("anymodal: removed %d temporary file(s) left by an interrupted save in %s: %s",
                    len(removed), folder, ", ".join(p.name for p in removed))
    return removed


def refusal_message(path, e: BaseException) -> str:
    """One line for a checkpoint ``torch.load(weights_only=True)`` refused (torch's own message
    spans a page and suggests ``weights_only=False``, which is the thing not to do)."""
    reason = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), "")
    return f"{path}: refused to load (only tensors and plain data are allowed in a checkpoint)" + (
        f": {reason}" if reason else "")


def _damage(p: Path) -> str | None:
    """Why ``p`` cannot be a ``torch.save`` file, judged from its bytes (None: it looks whole)."""
    size = p.stat().st_size
    if size == 0:
        return "empty file (0 bytes), not a checkpoint: a save was interrupted? use an earlier checkpoint"
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04":  # torch.save's zip format
        try:
            with zipfile.ZipFile(p) as z:
                z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return (f"truncated or damaged checkpoint ({size} bytes, the zip archive's directory is missing "
                    "or broken): the save was cut off or the file was damaged; use an earlier checkpoint")
        return None
    if head[:1] == b"\x80":  # the legacy (pre-zip) pickle format; torch.load reads it
        return None
    return f"not a checkpoint ({size} bytes, not a PyTorch zip archive)"


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu", *, verify: bool = True,
                         allow_pickle: bool = False) -> dict[str, Any]:
    """Load a ``.ckpt`` the way every anymodal entry point does: SHA-256 checked against its
    sidecar (when there is one and ``verify``), then ``torch.load(weights_only=True)`` unless
    ``allow_pickle``. Every failure is one line naming the file: :class:`CheckpointError` (empty,
    truncated, not a checkpoint, digest mismatch) or :class:`UnsafeCheckpointError` (pickled code).

    >>> ckpt = load_checkpoint_file("runs/demo/checkpoints/last.ckpt")  # doctest: +SKIP
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    damage = _damage(p)
    if damage:
        raise CheckpointError(f"{p}: {damage}")
    if verify:
        verify_file(p, read_digests(p), "checkpoint")
    try:
        return torch.load(p, map_location=map_location or "cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:  # what weights_only raises on anything but tensors and plain data
        if allow_pickle:
            raise CheckpointError(f"{p}: not a readable checkpoint ({str(e).strip().splitlines()[0]})") from None
        raise UnsafeCheckpointError(refusal_message(p, e)) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as e:  # damaged inside
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{p}: not a readable checkpoint ({first})") from None


class AtomicCheckpointIO(CheckpointIO):
    """Atomic, durable, checksummed checkpoint writes and pickle-free loads (see the module docstring).

    Args:
        allow_pickle: load with ``weights_only=False`` (only for checkpoints you made yourself
            with other modules that store arbitrary objects). Default False. The CLI sets it
            only from the command-line flag ``--allow-pickle``, never from a recipe.
        verify: check a checkpoint's SHA-256 sidecar before loading it (default True).
        inner: another ``CheckpointIO`` (a recipe's own plugin) that saves; loads still go
            through the checks above, so a recipe cannot turn pickle loading on.
    """

    def __init__(self, allow_pickle: bool = False, verify: bool = True, inner: CheckpointIO | None = None):
        self.allow_pickle, self.verify, self.inner = allow_pickle, verify, inner
        self._cleaned: set[Path] = set()

    def _clean_once(self, folder: Path) -> None:
        if folder not in self._cleaned:
            self._cleaned.add(folder)
            remove_stale_temporaries(folder)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if self.inner is not None:
            self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        self._clean_once(Path(path).parent)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_verified(path, buf.getbuffer())

    def load_checkpoint(self, path, map_location: Callable | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        p = Path(path)
        if weights_only is False and not self.allow_pickle:
            raise UnsafeCheckpointError(f"{p}: loading with weights_only=False is disabled "
                                        "(only the command-line flag --allow-pickle enables it)")
        return load_checkpoint_file(p, map_location, verify=self.verify, allow_pickle=self.allow_pickle)

    def remove_checkpoint(self, path) -> None:
        if self.inner is not None:
            self.inner.remove_checkpoint(path)
        p = Path(path)
        _digest_path(p).unlink(missing_ok=True)
        if self.inner is not None:
            return
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()

    def teardown(self) -> None:
        if self.inner is not None:
            self.inner.teardown()
