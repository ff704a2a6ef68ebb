"""``depth.patch``: depth maps as continuous patch tokens, registered through an entry point.

A depth map is a (H, W) array of metres: a ``.npy`` file, a 16-bit PNG in millimetres, or an
array/tensor. Depth is log-scaled (near range matters most), normalised by ``max_depth`` and cut
into p×p patches on a (1, h, w) grid, so the stream gives them 2D M-RoPE positions like images.

Manifest segment: ``{"type": "depth", "path": "scene.npy"}``; Python: ``am.Segment(data=...,
modality="depth")``. Nothing in anymodal knows this module: the entry point in pyproject.toml
(group ``anymodal.tokenizers``) is the whole integration.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anymodal import MediaError, ModalityTokenizer, TokenBlock


def _load_npy(path: Path, name: str) -> np.ndarray:
    # np.load reads a file without the .npy magic as a pickle and, with allow_pickle=False, says
    # "pickled data": check the header first, so a garbage file is called what it is
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise MediaError(name, "not a NumPy .npy file (no \\x93NUMPY header); save depth maps with np.save")
    arr = np.load(path, allow_pickle=False)
    if arr.dtype.kind not in "fiu":
        raise MediaError(name, f"depth map must hold numbers (metres), got dtype {arr.dtype}")
    return arr


def load_depth(source, name: str) -> torch.Tensor:
    """(H, W) float32 metres from a .npy / 16-bit PNG path, an array or a tensor."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.is_file():
            raise MediaError(name, "file not found")
        if p.stat().st_size == 0:
            raise MediaError(name, "empty file (0 bytes)")
        try:
            if p.suffix == ".npy":
                arr = _load_npy(p, name)
            else:
                from PIL import Image

                with Image.open(p) as im:
                    arr = np.asarray(im, dtype=np.float32) / 1000.0  # millimetres -> metres
        except MediaError:
            raise
        except Exception as e:  # noqa: BLE001 - any reader failure names the file
            raise MediaError(name, f"cannot read depth map ({e})") from None
    else:
        arr = source
    t = torch.as_tensor(np.asarray(arr, dtype=np.float32))
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise MediaError(name, f"depth map must be (H, W), got {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise MediaError(name, "depth map has negative or non-finite values")
    return t


class DepthPatchTokenizer(ModalityTokenizer):
    """Continuous, bidirectional depth patches. ``input_dim = patch_size ** 2``."""

    modality = "depth"
    kind = "continuous"
    bidirectional = True

    def __init__(self, patch_size: int = 8, max_tokens: int = 64, max_depth: float = 20.0):
        if patch_size <= 0 or max_tokens <= 0 or max_depth <= 0:
            raise ValueError("depth.patch: patch_size, max_tokens and max_depth must be > 0")
        self.patch_size, self.max_tokens, self.max_depth = patch_size, max_tokens, max_depth
        self.input_dim = patch_size * patch_size

    def _grid(self, h: int, w: int) -> tuple[int, int]:
        p = self.patch_size
        s = min(1.0, math.sqrt(self.max_tokens * p * p / (h * w)))
        rows, cols = max(1, round(h * s / p)), max(1, round(w * s / p))
        while rows * cols > self.max_tokens:
            rows, cols = (rows - 1, cols) if rows >= cols else (rows, cols - 1)
        return rows, cols

    def encode(self, segment) -> TokenBlock:
        d = load_depth(segment.data, segment.source)
        rows, cols = self._grid(*d.shape)
        p = self.patch_size
        d = F.interpolate(d[None, None], size=(rows * p, cols * p), mode="bilinear", align_corners=False)[0, 0]
        x = torch.log1p(d.clamp(max=self.max_depth)) / math.log1p(self.max_depth) * 2 - 1  # [-1, 1]
        v = x.reshape(rows, p, cols, p).permute(0, 2, 1, 3).reshape(rows * cols, p * p)
        return TokenBlock(vectors=v.contiguous(), grid=(1, rows, cols))
