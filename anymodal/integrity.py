"""SHA-256 digests of the files anymodal writes (checkpoints, exports), checked when they are read.

Neither a ``.ckpt`` (a zip of pickled plain data) nor ``model.safetensors`` has a checksum of
its own: a flipped byte in a weight loads without complaint and gives a subtly different model.
Every writer therefore records a digest (``<file>.sha256`` beside a checkpoint, a ``sha256``
table in an export's ``config.json``) and every reader checks it unless told not to
(``verify=False``, ``--no-verify``: hashing reads the file once more, about 1 s per GB).

    >>> verify_file("runs/demo/export/model.safetensors", "9f2c...")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os


class IntegrityError(ValueError):
    """A file whose SHA-256 is not the one recorded when it was written."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, expected: list[str] | str | None, what: str = "file") -> None:
    """Raise :class:`IntegrityError` if ``path``'s SHA-256 is not one of ``expected`` (None: no check)."""
    if expected is None:
        return
    expected = [expected] if isinstance(expected, str) else list(expected)
    got = sha256_file(path)
    if got not in expected:
        raise IntegrityError(
            f"{path}: SHA-256 mismatch: the {what} changed or was damaged after it was written "
            f"(expected {expected[0][:12]}..., got {got[:12]}...); use an intact copy, or load it anyway "
            f"with --no-verify (verify=False)")
