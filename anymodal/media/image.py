"""Image decoding with Pillow: a format allowlist, a pixel limit read from the header, and
errors that name the file."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anymodal.errors import MediaError
from anymodal.media.limits import DEFAULT_LIMITS, MediaLimits

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"}


def _open(source: Any, name: str, limits: MediaLimits):
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise MediaError(name, "empty image (0 bytes)")
        fh = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise MediaError(name, "file not found")
        size = path.stat().st_size
        if size == 0:
            raise MediaError(name, "empty file (0 bytes)")
        if limits.max_bytes and size > limits.max_bytes:
            raise MediaError(name, f"file has {size} bytes, over the limit of {limits.max_bytes}")
        fh = open(path, "rb")
    else:
        raise MediaError(name, f"cannot read an image from {type(source).__name__}")
    try:
        img = PILImage.open(fh)
    except UnidentifiedImageError:
        fh.close()
        raise MediaError(name, "not an image Pillow can identify (corrupt or wrong format)") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes a MediaError
        fh.close()
        raise MediaError(name, f"cannot open image ({e})") from None
    if img.format not in ALLOWED_FORMATS:
        img.close()
        raise MediaError(name, f"image format {img.format} is not allowed ({sorted(ALLOWED_FORMATS)})")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise MediaError(name, f"image has size {w}x{h}")
    if limits.max_pixels and w * h > limits.max_pixels:
        img.close()
        raise MediaError(name, f"image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}")
    return img


def _source_name(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"


def image_size(source: Any, name: str | None = None, limits: MediaLimits = DEFAULT_LIMITS) -> tuple[int, int]:
    """(height, width) read from the header only: no pixel is decoded."""
    if isinstance(source, torch.Tensor):
        return int(source.shape[-2]), int(source.shape[-1])
    if hasattr(source, "size") and hasattr(source, "mode"):  # PIL image
        return source.size[1], source.size[0]
    img = _open(source, name or _source_name(source), limits)
    w, h = img.size
    img.close()
    return h, w


def load_image(source: Any, name: str | None = None, limits: MediaLimits = DEFAULT_LIMITS) -> torch.Tensor:
    """Decode an image into a (3, H, W) float32 tensor in [0, 1].

    ``source``: a path, bytes, a PIL image or a tensor ((3|1, H, W) float in [0, 1] or uint8).
    Raises :class:`MediaError` naming ``name`` (default: the path) on any failure.
    """
    name = name or _source_name(source)
    if isinstance(source, torch.Tensor):
        t = source
        if t.dim() != 3 or t.shape[0] not in (1, 3, 4):
            raise MediaError(name, f"image tensor must be (C, H, W) with C in 1/3/4, got {tuple(t.shape)}")
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        t = t.float()
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        if t.shape[0] == 4:
            t = t[:3]
        if limits.max_pixels and t.shape[1] * t.shape[2] > limits.max_pixels:
            raise MediaError(name, "image tensor over the pixel limit")
        return t.contiguous()
    if hasattr(source, "mode") and hasattr(source, "size"):
        img = source
    else:
        img = _open(source, name, limits)
    try:
        img = img.convert("RGB")  # forces the full decode: truncation surfaces here
        arr = np.asarray(img, dtype=np.uint8).copy()
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001
        raise MediaError(name, f"cannot decode image ({e})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def save_image(image: Any, path: str | os.PathLike) -> Path:
    """Write a (3, H, W) tensor in [0, 1] (or a PIL image) as PNG/JPEG by the path's suffix."""
    from PIL import Image as PILImage

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, torch.Tensor):
        arr = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        image = PILImage.fromarray(arr)
    image.save(path)
    return path
