"""``video.fsq``: discrete space-time codes of short clips from a small 3D convolutional autoencoder
with finite scalar quantization (FSQ, Mentzer et al. 2023); decodable, so a model can *generate*
video.

A clip is sampled to ``frames`` frames (uniformly over its length, before decoding, see
:mod:`anymodal.media.video`), each resized to ``image_size`` x ``image_size``, and encoded into a
fixed ``(frames / 2**time_downsample, g, g)`` grid of codes with ``g = image_size /
2**downsample``: one code per *tubelet* of ``2**time_downsample`` frames x ``2**downsample``
pixels squared (ViViT's tubelets, Arnab et al. 2021; the space-time FSQ/LFQ tokenizers of
MAGVIT-v2, Yu et al. 2023, at toy size). Ids are laid out time-major, then rows, then columns,
on that grid, so the stream gives them (t, h, w) M-RoPE positions. The grid is fixed
(``fixed_length``/``fixed_grid``): generation knows when a clip ends, and decodes it as one unit.
Default: 8 frames of 32x32 -> (2, 8, 8) = 128 codes of ``prod(levels) = 1000``.

Causal in time or not? The *encoder* is tubelet-causal: its time kernels equal their strides
(non-overlapping), so the codes of time slice k depend only on the frames of tubelet k, never on
later ones. The *decoder* is not causal: 3x3x3 convolutions over the code grid let each tubelet
see its neighbours both ways, which smooths tubelet boundaries and lets motion be read from
both sides. MAGVIT-v2 makes both causal so that a clip's first frame is also an image and clips
may have any length; here every clip has the same fixed length and is decoded only once all its
codes exist (a fixed-length span), so a causal decoder would cost quality for nothing.

``decode(ids)`` returns a (T, 3, S, S) float clip in [0, 1]; :meth:`VideoFSQTokenizer.make_segment`
wraps it as a :class:`~anymodal.segments.Video` whose ``.save("x.mp4")`` writes an H.264 MP4 with
PyAV at the tokenizer's ``fps`` (:func:`anymodal.media.video.save_video`), which decord, PyAV and
TorchCodec read back.

Limits: ``max_frames``, ``max_pixels`` and ``max_seconds`` bound every clip read in (a clip over
them is refused with a :class:`~anymodal.MediaError`) *and* every clip decoded out: a tokenizer
whose own clips (``frames`` of ``image_size``\\ :sup:`2` pixels, ``frames / fps`` seconds) would
exceed them refuses to be built. ``decode`` refuses a wrong number of ids or ids outside
``[0, vocab_size)``, naming the tokenizer and the bad ids.

Weights: ``checkpoint`` names a Lightning ``.ckpt`` written by ``anymodal fit --config
recipes/video-fsq.yaml`` (read with ``torch.load(weights_only=True)``) or an ``fsq.safetensors``
file; ``path`` an export folder; ``random_init=True`` a ``seed``-ed random autoencoder (tests;
``pretrained`` is False, so the checks that judge decoded clips refuse to score it).

    tok = am.create_tokenizer("video.fsq", checkpoint="runs/video-fsq/checkpoints/last.ckpt")
    block = tok.encode(am.Video("clip.mp4"))    # 128 ids on a (2, 8, 8) grid
    tok.make_segment(tok.decode(block.ids)).save("recon.mp4")
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from anymodal.media.limits import MediaLimits
from anymodal.segments import Segment, Video
from anymodal.tokenizers.fsq_core import FSQ, FSQTokenizerBase
from anymodal.tokenizers.registry import register_tokenizer


# ---- the autoencoder --------------------------------------------------------------------------
@dataclass
class VideoFSQConfig:
    """Shape of the space-time FSQ autoencoder.

    ``downsample`` stride-2 stages in space, the first ``time_downsample`` of them stride 2 in time
    too: the code grid is ``(frames / 2**time_downsample, image_size / 2**downsample, ...)``.
    ``fps`` is the rate decoded clips play at (and are written to MP4 with).
    """

    frames: int = 8
    image_size: int = 32
    fps: float = 8.0
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    channels: int = 32  # 64 costs 5x the CPU time per step (3D convolutions) for a small gain here
    downsample: int = 2
    time_downsample: int = 2
    res_blocks: int = 1

    def __post_init__(self):
        self.levels = [int(n) for n in self.levels]
        if self.downsample < 1 or self.image_size % (2 ** self.downsample) or self.image_size % 2:
            raise ValueError(f"video.fsq: image_size={self.image_size} must be even and divisible by "
                             f"2**downsample={2 ** self.downsample}")
        if not 0 <= self.time_downsample <= self.downsample:
            raise ValueError(f"video.fsq: time_downsample={self.time_downsample} must lie in [0, downsample="
                             f"{self.downsample}] (each time stage is also a space stage)")
        if self.frames < 1 or self.frames % (2 ** self.time_downsample):
            raise ValueError(f"video.fsq: frames={self.frames} must be divisible by "
                             f"2**time_downsample={2 ** self.time_downsample}")
        if self.channels <= 0 or self.channels % 8 or self.res_blocks < 0:
            raise ValueError(f"video.fsq: channels={self.channels} must be a positive multiple of 8 (GroupNorm) "
                             f"and res_blocks={self.res_blocks} >= 0")
        if not self.levels or min(self.levels) < 2:
            raise ValueError(f"video.fsq: levels must be integers >= 2, got {self.levels}")
        if not self.fps > 0:
            raise ValueError(f"video.fsq: fps must be > 0, got {self.fps}")

    @property
    def grid(self) -> tuple[int, int, int]:
        g = self.image_size // (2 ** self.downsample)
        return self.frames // (2 ** self.time_downsample), g, g


class _FrameNorm(nn.GroupNorm):
    """GroupNorm with statistics per time step: (B, C, T, H, W) normalized as B*T images. A plain
    GroupNorm over (C, T, H, W) would mix tubelets, so the first codes would see later frames."""

    def forward(self, x):
        B, C, T, H, W = x.shape
        y = super().forward(x.transpose(1, 2).reshape(B * T, C, H, W))
        return y.reshape(B, T, C, H, W).transpose(1, 2)


class _Res3d(nn.Module):
    """Pre-norm residual block of two (kt, 3, 3) convolutions (kt = 1: per frame, no time mixing)."""

    def __init__(self, c: int, kt: int):
        super().__init__()
        k, p = (kt, 3, 3), (kt // 2, 1, 1)
        self.net = nn.Sequential(_FrameNorm(8, c), nn.SiLU(), nn.Conv3d(c, c, k, padding=p),
                                 _FrameNorm(8, c), nn.SiLU(), nn.Conv3d(c, c, k, padding=p))

    def forward(self, x):
        return x + self.net(x)


class VideoFSQAutoencoder(nn.Module):
    """3D conv encoder -> FSQ -> 3D conv decoder. Clips (B, T, 3, S, S) in [0, 1]; codes (B, d, t, g, g).

    Each stage is a (kt, 4, 4) conv of stride (kt, 2, 2) (kt = 2 for the time stages, else 1),
    so tubelets never overlap in time (see the module docstring); the encoder's residual blocks
    work per frame (no code sees a later tubelet), the decoder's at the code grid over 3x3x3
    neighbourhoods (each tubelet sees both neighbours), then per frame.
    Nothing runs at full resolution: the first stage reads RGB, the last writes it.
    """

    def __init__(self, cfg: VideoFSQConfig):
        super().__init__()
        self.cfg = cfg
        c, n = cfg.channels, cfg.downsample
        self.quantizer = FSQ(cfg.levels)
        kts = [2 if s < cfg.time_downsample else 1 for s in range(n)]
        enc: list[nn.Module] = []
        for s, kt in enumerate(kts):
            enc += [nn.Conv3d(3 if s == 0 else c, c, (kt, 4, 4), stride=(kt, 2, 2), padding=(0, 1, 1))]
            enc += [_Res3d(c, 1) for _ in range(cfg.res_blocks)]  # per frame: tubelets stay apart
        enc += [_FrameNorm(8, c), nn.SiLU(), nn.Conv3d(c, self.quantizer.dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv3d(self.quantizer.dim, c, 3, padding=1)]
        dec += [_Res3d(c, 3) for _ in range(cfg.res_blocks)]  # the code grid: non-causal in time
        for s in reversed(range(1, n)):
            kt = kts[s]
            dec += [nn.ConvTranspose3d(c, c, (kt, 4, 4), stride=(kt, 2, 2), padding=(0, 1, 1))]
            dec += [_Res3d(c, 1) for _ in range(cfg.res_blocks)]
        dec += [_FrameNorm(8, c), nn.SiLU(),
                nn.ConvTranspose3d(c, 3, (kts[0], 4, 4), stride=(kts[0], 2, 2), padding=(0, 1, 1))]
        self.decoder = nn.Sequential(*dec)

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) in [0, 1] -> (B, d, t, g, g) quantized codes in [-1, 1]."""
        z = self.encoder(clips.transpose(1, 2) * 2 - 1)  # (B, d, t, g, g)
        return self.quantizer(z.movedim(1, -1)).movedim(-1, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, d, t, g, g) codes -> (B, T, 3, S, S) clips (unclamped; [0, 1] is the valid range)."""
        return (self.decoder(codes) * 0.5 + 0.5).transpose(1, 2)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(clips))

    def to_indices(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) -> (B, t*g*g) ids, time-major then row-major."""
        codes = self.encode(clips)
        return self.quantizer.codes_to_indices(codes.movedim(1, -1)).flatten(1)

    def from_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, t*g*g) ids -> (B, T, 3, S, S) clips in [0, 1]."""
        codes = self.quantizer.indices_to_codes(idx.reshape(idx.shape[0], *self.cfg.grid))  # (B, t, g, g, d)
        return self.decode(codes.movedim(-1, 1)).clamp(0, 1)


# ---- the tokenizer ----------------------------------------------------------------------------
class VideoFSQTokenizer(FSQTokenizerBase):
    """Discrete clip codes (``vocab_size = prod(levels)``) on a fixed ``(t, g, g)`` grid.

    Options: ``checkpoint`` / ``path`` / ``random_init`` + ``seed`` (weights, as ``image.fsq``);
    ``frames``, ``image_size``, ``fps``, ``levels``, ``channels``, ``downsample``,
    ``time_downsample``, ``res_blocks`` (the shape; with weights, leave them out or make them
    agree); ``cfg_dropout`` (classifier-free guidance, see :class:`anymodal.stream.StreamBuilder`);
    ``backend`` (video decoder for inputs, :data:`anymodal.media.video.VIDEO_BACKENDS` or
    ``auto``); ``max_frames``, ``max_pixels``, ``max_seconds`` (limits of clips in and out).

    >>> tok = am.create_tokenizer("video.fsq", random_init=True)   # doctest: +SKIP
    >>> tok.fixed_grid, tok.fixed_length, tok.vocab_size             # doctest: +SKIP
    ((2, 8, 8), 128, 1000)
    """

    modality = "video"
    config_cls = VideoFSQConfig
    autoencoder_cls = VideoFSQAutoencoder
    hp_key = "video_fsq"
    recipe = "recipes/video-fsq.yaml"

    def __init__(self, checkpoint: str | None = None, path: str | None = None, frames: int | None = None,
                 image_size: int | None = None, fps: float | None = None, levels: list[int] | None = None,
                 channels: int | None = None, downsample: int | None = None, time_downsample: int | None = None,
                 res_blocks: int | None = None, random_init: bool = False, seed: int = 0, cfg_dropout: float = 0.0,
                 backend: str = "auto", max_frames: int = 256, max_pixels: int = 4096 * 4096,
                 max_seconds: float = 600.0):
        given = dict(frames=frames, image_size=image_size, fps=fps, levels=levels, channels=channels,
                     downsample=downsample, time_downsample=time_downsample, res_blocks=res_blocks)
        self._load_autoencoder("video.fsq", checkpoint, path, given, random_init, seed, cfg_dropout)
        cfg = self.config
        self.limits = MediaLimits(max_frames=max_frames, max_pixels=max_pixels, max_seconds=max_seconds)
        out = {"max_frames": (cfg.frames, max_frames), "max_pixels": (cfg.image_size ** 2, max_pixels),
               "max_seconds": (cfg.frames / cfg.fps, max_seconds)}
        over = {k: v for k, (v, limit) in out.items() if limit and v > limit}
        if over:
            raise ValueError(f"video.fsq: its clips ({cfg.frames} frames of {cfg.image_size}x{cfg.image_size} at "
                             f"{cfg.fps:g} fps) exceed the declared limits {over} (value per limit); raise the "
                             "limits or make the clips smaller")
        self.backend = backend
        self.fixed_grid = cfg.grid
        self.fixed_length = cfg.grid[0] * cfg.grid[1] * cfg.grid[2]

    @property
    def seconds(self) -> float:
        """Duration of a decoded clip: ``frames / fps``."""
        return self.config.frames / self.config.fps

    def _pixels(self, segment: Segment) -> torch.Tensor:
        """The segment's clip as (frames, 3, S, S) in [0, 1]: ``frames`` sampled uniformly (a shorter
        clip repeats its last frame, as Qwen2-VL pads odd frame counts), each resized to S x S."""
        from anymodal.media.video import load_video

        cfg = self.config
        x = load_video(segment.data, name=segment.source, num_frames=cfg.frames, limits=self.limits,
                       backend=self.backend, video_fps=segment.options.get("video_fps"))  # (T, 3, H, W)
        if x.shape[0] < cfg.frames:
            x = torch.cat([x, x[-1:].expand(cfg.frames - x.shape[0], -1, -1, -1)])
        s = cfg.image_size
        if x.shape[2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return x

    def make_segment(self, decoded: torch.Tensor) -> Segment:
        """A :class:`~anymodal.segments.Video` of the decoded clip that plays at ``fps``
        (``video_fps`` option; ``.save("x.mp4")`` writes it)."""
        return Video(decoded, tokenizer=self.name, video_fps=self.config.fps)


register_tokenizer("video.fsq")(VideoFSQTokenizer)
