"""``video.tubelet``: space-time patches of t frames x p x p pixels, projected linearly (Qwen2-VL).

A clip of T sampled frames, each resized to a whole number of p x p patches, is cut into
tubelets of ``tubelet`` consecutive frames x p x p pixels (ViViT's "tubelet embedding", Arnab
et al. 2021; Qwen2-VL uses t = 2 and p = 14). Each tubelet is one continuous token of
``input_dim = 3 * t * p * p`` values, laid out (channel, frame, row, column) like Qwen2-VL's
patch flattening. Tokens lie on a (T/t, rows, cols) grid, which the stream turns into M-RoPE
positions, so time and space keep their geometry without extra marker tokens.

Frames are sampled before decoding (:mod:`anymodal.media.video`): ``num_frames`` (uniform,
or ``sampling="random"``: one random frame per equal segment, for training) or ``fps``.
When T is not a multiple of t the last frame is repeated, as in Qwen2-VL. The spatial size keeps
the aspect ratio under a total budget: each of the T/t time steps gets ``max_tokens // (T/t)``
patches, laid out by ``image.patch``'s :func:`patch_grid` (never upscaled).

Per-segment options override the tokenizer's sampling: ``am.Video("a.mp4", num_frames=4)``,
``am.Video("a.mp4", fps=2.0)``, ``sampling=``, ``max_tokens=``; a tensor clip gives its rate
with ``video_fps=`` for fps sampling. ``num_tokens`` reads only the container header.

>>> tok = am.create_tokenizer("video.tubelet", patch_size=8, tubelet=2, num_frames=8)  # doctest: +SKIP
>>> tok.encode(am.Video("clip.mp4")).grid                                               # doctest: +SKIP
(4, 4, 4)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from anymodal.errors import MediaError
from anymodal.media.limits import MediaLimits
from anymodal.media.video import SAMPLING, VIDEO_BACKENDS, VideoInfo, load_video, sample_indices, video_info
from anymodal.segments import Segment
from anymodal.tokenizers.base import ModalityTokenizer, TokenBlock
from anymodal.tokenizers.image_patch import patch_grid
from anymodal.tokenizers.registry import register_tokenizer

DEFAULT_NUM_FRAMES = 8
_SEGMENT_OPTIONS = ("num_frames", "fps", "sampling", "max_tokens", "video_fps")


def tubeletify(frames: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """(T, C, H, W) with T % t == 0 and H, W multiples of p -> (T/t * H/p * W/p, C*t*p*p).

    Token order is time-major, then rows, then columns (the grid's (t, h, w) order); each
    vector is laid out (C, t, p, p).
    """
    T, C, H, W = frames.shape
    x = frames.reshape(T // tubelet, tubelet, C, H // patch, patch, W // patch, patch)
    x = x.permute(0, 3, 5, 2, 1, 4, 6)  # (T/t, H/p, W/p, C, t, p, p)
    return x.reshape((T // tubelet) * (H // patch) * (W // patch), C * tubelet * patch * patch)


def untubeletify(tokens: torch.Tensor, grid: tuple[int, int, int], tubelet: int, patch: int,
                 channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`tubeletify`: (N, C*t*p*p) on ``grid`` -> (T, C, H, W)."""
    gt, gh, gw = grid
    x = tokens.reshape(gt, gh, gw, channels, tubelet, patch, patch)
    x = x.permute(0, 4, 3, 1, 5, 2, 6)  # (T/t, t, C, H/p, p, W/p, p)
    return x.reshape(gt * tubelet, channels, gh * patch, gw * patch)


class VideoTubeletTokenizer(ModalityTokenizer):
    """Continuous space-time patches. ``input_dim = 3 * tubelet * patch_size**2``; pixels in [-1, 1].

    Options: ``patch_size`` (p), ``tubelet`` (t, frames per token), ``num_frames`` or ``fps``
    (default: 8 frames), ``max_tokens`` (budget for the whole clip), ``sampling``
    ("uniform" | "random"), ``backend`` ("auto" | "decord" | "pyav" | "torchcodec"), limits
    (``max_pixels`` per frame, ``max_frames`` decoded, ``max_seconds``, ``max_bytes``), and
    ``isolate`` (decode in a worker process so a decoder crash becomes a MediaError; see
    :mod:`anymodal.media.safe`) with its ``timeout`` in seconds, and ``threads`` (decoder
    threads; 0 = the backend's default, 1 suits many DataLoader workers on few cores).
    """

    modality = "video"
    kind = "continuous"
    bidirectional = True

    def __init__(
        self,
        patch_size: int = 16,
        tubelet: int = 2,
        num_frames: int | None = None,
        fps: float | None = None,
        max_tokens: int = 1024,
        sampling: str = "uniform",
        backend: str = "auto",
        max_pixels: int = 4096 * 4096,
        max_frames: int = 1024,
        max_seconds: float = 3600.0,
        max_bytes: int = 1024 * 1024 * 1024,
        isolate: bool = False,
        timeout: float = 60.0,
        threads: int = 0,
    ):
        if patch_size <= 0 or tubelet <= 0 or max_tokens <= 0:
            raise ValueError("video.tubelet: patch_size, tubelet and max_tokens must be > 0")
        if num_frames is not None and fps is not None:
            raise ValueError("video.tubelet: give num_frames or fps, not both")
        if num_frames is not None and num_frames <= 0 or fps is not None and fps <= 0:
            raise ValueError("video.tubelet: num_frames and fps must be > 0")
        if sampling not in SAMPLING:
            raise ValueError(f"video.tubelet: sampling must be one of {SAMPLING}, got {sampling!r}")
        if backend != "auto" and backend not in VIDEO_BACKENDS:
            raise ValueError(f"video.tubelet: backend must be 'auto' or one of {VIDEO_BACKENDS}, got {backend!r}")
        self.patch_size, self.tubelet, self.max_tokens = patch_size, tubelet, max_tokens
        self.num_frames = DEFAULT_NUM_FRAMES if num_frames is None and fps is None else num_frames
        self.fps = fps
        self.sampling, self.backend = sampling, backend
        self.limits = MediaLimits(max_bytes=max_bytes, max_pixels=max_pixels, max_frames=max_frames,
                                  max_seconds=max_seconds)
        self.isolate, self.timeout, self.threads = isolate, timeout, threads
        self.input_dim = 3 * tubelet * patch_size * patch_size

    # -- layout, from header numbers only ------------------------------------------------------

    def _options(self, segment: Segment) -> dict:
        opts = {k: v for k, v in segment.options.items() if k in _SEGMENT_OPTIONS}
        unknown = set(segment.options) - set(_SEGMENT_OPTIONS)
        if unknown:
            raise ValueError(f"video.tubelet: unknown segment options {sorted(unknown)} for {segment.source}; "
                             f"known: {_SEGMENT_OPTIONS}")
        if "num_frames" in opts and "fps" in opts:
            raise ValueError(f"video.tubelet: {segment.source} gives both num_frames and fps")
        if "fps" in opts:  # a segment's choice of mode replaces the tokenizer's
            return {"num_frames": None, "fps": opts["fps"], "sampling": opts.get("sampling", self.sampling),
                    "max_tokens": opts.get("max_tokens", self.max_tokens), "video_fps": opts.get("video_fps")}
        return {"num_frames": opts.get("num_frames", self.num_frames),
                "fps": None if "num_frames" in opts else self.fps,
                "sampling": opts.get("sampling", self.sampling),
                "max_tokens": opts.get("max_tokens", self.max_tokens), "video_fps": opts.get("video_fps")}

    def _info(self, segment: Segment, opts: dict) -> VideoInfo:
        return video_info(segment.data, segment.source, limits=self.limits, video_fps=opts["video_fps"],
                          isolate=self.isolate, timeout=self.timeout)

    def _layout(self, info: VideoInfo, opts: dict, name: str) -> tuple[int, int, int, int]:
        """(frames sampled, time steps, rows, cols) for a video described by ``info``."""
        try:
            n = len(sample_indices(info.num_frames, num_frames=opts["num_frames"], fps=opts["fps"],
                                   video_fps=info.fps, sampling="uniform"))
        except ValueError as e:
            raise MediaError(name, str(e)) from None
        steps = math.ceil(n / self.tubelet)
        if steps > opts["max_tokens"]:
            raise MediaError(name, f"{n} frames make {steps} time steps, over max_tokens={opts['max_tokens']} "
                                   "(sample fewer frames)")
        rows, cols = patch_grid(info.height, info.width, self.patch_size, opts["max_tokens"] // steps)
        return n, steps, rows, cols

    def num_tokens(self, segment: Segment) -> int:
        opts = self._options(segment)
        _, steps, rows, cols = self._layout(self._info(segment, opts), opts, segment.source)
        return steps * rows * cols

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, segment: Segment) -> TokenBlock:
        opts = self._options(segment)
        info = self._info(segment, opts)
        n, steps, rows, cols = self._layout(info, opts, segment.source)
        frames = load_video(segment.data, segment.source, num_frames=opts["num_frames"], fps=opts["fps"],
                            sampling=opts["sampling"], backend=self.backend, limits=self.limits,
                            video_fps=opts["video_fps"], isolate=self.isolate, timeout=self.timeout, info=info,
                            threads=self.threads)
        if frames.shape[0] != n:  # sample_indices is deterministic in its count; this guards the contract
            raise MediaError(segment.source, f"decoded {frames.shape[0]} frames, expected {n}")
        pad = steps * self.tubelet - n
        if pad:  # repeat the last frame to fill the last tubelet (Qwen2-VL)
            frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
        size = (rows * self.patch_size, cols * self.patch_size)
        if tuple(frames.shape[-2:]) != size:
            frames = F.interpolate(frames, size=size, mode="bilinear", antialias=True, align_corners=False)
        vectors = tubeletify(frames.sub(0.5).div(0.5), self.tubelet, self.patch_size)  # (steps*rows*cols, 3*t*p*p)
        return TokenBlock(vectors=vectors.float().contiguous(), grid=(steps, rows, cols))


register_tokenizer("video.tubelet")(VideoTubeletTokenizer)
