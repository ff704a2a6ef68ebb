"""Media decoding: file, bytes or tensor in; tensor out; ``MediaError`` naming the input on failure.

One module per medium (``image.py``, ``video.py``, ``audio.py``). Every decoder enforces the
limits in :class:`MediaLimits` before it spends memory on the input; ``safe.py`` sniffs what a
file really is and can run crash-prone native decoders in a worker process (``isolate=True``).
Native libraries (PIL, decord, PyAV, soundfile, torchaudio) are imported on first use.
"""

from anymodal.media.limits import MediaLimits
from anymodal.media.image import image_size, load_image, save_image
from anymodal.media.audio import AudioInfo, audio_info, load_audio, save_audio
from anymodal.media.safe import safe_decode
from anymodal.media.video import VideoInfo, load_video, read_frames, sample_indices, save_video, video_info

__all__ = [
    "AudioInfo", "MediaLimits", "VideoInfo", "audio_info", "image_size", "load_audio", "load_image", "load_video",
    "read_frames", "safe_decode", "sample_indices", "save_audio", "save_image", "save_media", "save_video", "video_info",
]


def save_media(segment, path):
    """Write a decoded media segment to ``path``; the format follows the suffix."""
    if segment.modality == "image":
        return save_image(segment.data, path)
    if segment.modality == "audio":
        from anymodal.media.audio import save_audio

        return save_audio(segment.data, path, segment.options.get("sample_rate"))
    if segment.modality == "video":  # decoded clips (video.fsq) carry their rate as video_fps
        from pathlib import Path

        return Path(save_video(segment.data, path, fps=segment.options.get("video_fps") or 8.0))
    raise ValueError(f"cannot save a {segment.modality!r} segment to {path}")
