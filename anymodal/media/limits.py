"""Hard limits on decoded media, checked before the decoder allocates anything big."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MediaLimits:
    """Upper bounds for one media input. A value of 0 disables that bound."""

    max_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_frames: int = 1024
    max_seconds: float = 600.0

    def __post_init__(self):
        for name in ("max_bytes", "max_pixels", "max_frames", "max_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"MediaLimits.{name} must be >= 0")


DEFAULT_LIMITS = MediaLimits()
