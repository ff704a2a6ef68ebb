"""``image.patch``: native-resolution ViT patches projected linearly into the model (Fuyu).

The image keeps its aspect ratio; it is scaled down (never up) until its patch count fits the
``max_tokens`` budget, then resized to a whole number of patches. Tokens lie on a (1, h, w)
grid, which the stream turns into M-RoPE positions (Qwen2-VL), so no row-break token is needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from anymodal.media import MediaLimits, image_size, load_image
from anymodal.segments import Segment
from anymodal.tokenizers.base import ModalityTokenizer, TokenBlock
from anymodal.tokenizers.registry import register_tokenizer


def patch_grid(height: int, width: int, patch: int, max_tokens: int) -> tuple[int, int]:
    """Patch rows and columns for an image of (height, width) under a token budget.

    Scales by ``s = min(1, sqrt(budget * p^2 / (H * W)))``, rounds to whole patches (at least
    one each way), then trims the longer side until ``rows * cols <= max_tokens``.
    """
    s = min(1.0, math.sqrt(max_tokens * patch * patch / (height * width)))
    rows = max(1, round(height * s / patch))
    cols = max(1, round(width * s / patch))
    while rows * cols > max_tokens:
        if rows >= cols:
            rows -= 1
        else:
            cols -= 1
    return rows, cols


def patchify(image: torch.Tensor, patch: int) -> torch.Tensor:
    """(C, H, W) with H, W multiples of ``patch`` -> (H/p * W/p, C*p*p), row-major patches."""
    c, h, w = image.shape
    x = image.reshape(c, h // patch, patch, w // patch, patch)
    return x.permute(1, 3, 0, 2, 4).reshape((h // patch) * (w // patch), c * patch * patch)


class ImagePatchTokenizer(ModalityTokenizer):
    """Continuous image patches. ``input_dim = 3 * patch_size**2``; pixels normalised to [-1, 1]."""

    modality = "image"
    kind = "continuous"
    bidirectional = True

    def __init__(self, patch_size: int = 16, max_tokens: int = 256, max_pixels: int = 4096 * 4096):
        if patch_size <= 0 or max_tokens <= 0:
            raise ValueError("image.patch: patch_size and max_tokens must be > 0")
        self.patch_size = patch_size
        self.max_tokens = max_tokens
        self.limits = MediaLimits(max_pixels=max_pixels)
        self.input_dim = 3 * patch_size * patch_size

    def _grid(self, h: int, w: int) -> tuple[int, int]:
        return patch_grid(h, w, self.patch_size, self.max_tokens)

    def encode(self, segment: Segment) -> TokenBlock:
        img = load_image(segment.data, name=segment.source, limits=self.limits)  # (3, H, W) in [0, 1]
        rows, cols = self._grid(img.shape[1], img.shape[2])
        size = (rows * self.patch_size, cols * self.patch_size)
        if size != tuple(img.shape[1:]):
            img = F.interpolate(img[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        vectors = patchify(img.sub(0.5).div(0.5), self.patch_size)  # (rows*cols, 3*p*p)
        return TokenBlock(vectors=vectors.float(), grid=(1, rows, cols))

    def num_tokens(self, segment: Segment) -> int:
        h, w = image_size(segment.data, name=segment.source, limits=self.limits)
        rows, cols = self._grid(h, w)
        return rows * cols


register_tokenizer("image.patch")(ImagePatchTokenizer)
