"""Shared by the picture scripts: deterministic SVG/PNG output, written only when it changed
(so ``mkdocs serve``, which watches docs/, does not rebuild forever)."""

from __future__ import annotations

import io
from pathlib import Path


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    fmt = path.suffix.lstrip(".")
    buf = io.BytesIO()
    with plt.rc_context({"svg.hashsalt": "anymodal-docs"}):  # stable element ids
        fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else {"Software": None})
    plt.close(fig)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)
    return path
