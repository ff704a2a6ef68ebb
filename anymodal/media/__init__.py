"""Media decoding: file, bytes or tensor in; tensor out; ``MediaError`` naming the input on failure.

One module per medium (``image.py``; video and audio join them). Every decoder enforces the
limits in :class:`MediaLimits` before it spends memory on the input.
"""

from anymodal.media.limits import MediaLimits
from anymodal.media.image import image_size, load_image, save_image

__all__ = ["MediaLimits", "image_size", "load_image", "save_image", "save_media"]


def save_media(segment, path):
    """Write a decoded media segment to ``path``; the format follows the suffix."""
    if segment.modality == "image":
        return save_image(segment.data, path)
    if segment.modality == "audio":
        from anymodal.media.audio import save_audio

        return save_audio(segment.data, path, segment.options.get("sample_rate"))
    raise ValueError(f"cannot save a {segment.modality!r} segment to {path}")
