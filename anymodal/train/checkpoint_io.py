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
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO


class UnsafeCheckpointError(ValueError):
    """A checkpoint that ``torch.load(weights_only=True)`` refuses (pickled objects or code)."""


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


def refusal_message(path, e: BaseException) -> str:
    """One line for a checkpoint ``torch.load(weights_only=True)`` refused (torch's own message
    spans a page and suggests ``weights_only=False``, which is the thing not to do)."""
    reason = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), "")
    return f"{path}: refused to load (only tensors and plain data are allowed in a checkpoint)" + (
        f": {reason}" if reason else "")


class AtomicCheckpointIO(CheckpointIO):
    """Atomic, durable checkpoint writes and pickle-free loads (see the module docstring).

    Args:
        allow_pickle: load with ``weights_only=False`` (only for checkpoints you made yourself
            with other modules that store arbitrary objects). Default False.
    """

    def __init__(self, allow_pickle: bool = False):
        self.allow_pickle = allow_pickle

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getbuffer())

    def load_checkpoint(self, path, map_location: Callable | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint not found: {p}")
        safe = not self.allow_pickle
        if weights_only is False and safe:
            raise UnsafeCheckpointError(f"{p}: loading with weights_only=False is disabled "
                                        "(AtomicCheckpointIO(allow_pickle=True) allows it)")
        try:
            return torch.load(p, map_location=map_location or "cpu", weights_only=safe)
        except pickle.UnpicklingError as e:  # what weights_only raises on anything but tensors and plain data
            if not safe:
                raise
            raise UnsafeCheckpointError(refusal_message(p, e)) from None
        except (RuntimeError, EOFError, OSError) as e:  # truncated or not a checkpoint at all
            raise ValueError(f"{p}: not a readable checkpoint ({str(e).strip().splitlines()[0]})") from None

    def remove_checkpoint(self, path) -> None:
        p = Path(path)
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
