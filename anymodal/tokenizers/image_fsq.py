"""``image.fsq``: discrete image codes from a small convolutional autoencoder with finite scalar
quantization (FSQ, Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

The quantizer, weight loading and the tokenizer plumbing live in
:mod:`anymodal.tokenizers.fsq_core`, shared with ``video.fsq``; this module holds the 2D
autoencoder and what images need.

Every image is resized to ``image_size`` x ``image_size`` (the aspect ratio is not kept: a
fixed grid is what lets generation stop after ``fixed_length`` codes) and encoded into an
``(image_size / 2**downsample)``-square grid of codes, row-major, on a ``(1, h, w)`` grid.
The tokens are causal (``bidirectional = False``): the model generates them one by one, so no
code of a span may see a later one during training either.

Weights: ``checkpoint`` names a Lightning ``.ckpt`` written by ``anymodal fit --config
recipes/image-fsq.yaml`` (read with ``torch.load(weights_only=True)``) or an
``fsq.safetensors`` file; ``path`` names a folder holding ``fsq.safetensors`` (what a model
export writes, see :meth:`FSQImageTokenizer.state_files`). Neither: refused, unless
``random_init=True`` asks for a ``seed``-ed random autoencoder (tests; its decoded images are
noise, so checks that judge decoded media refuse to score it: ``pretrained`` is False).

    tok = am.create_tokenizer("image.fsq", checkpoint="runs/image-fsq/checkpoints/last.ckpt")
    block = tok.encode(am.Image("a.png"))       # 64 ids on a (1, 8, 8) grid
    tok.make_segment(tok.decode(block.ids)).save("recon.png")
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from anymodal.media import MediaLimits, load_image
from anymodal.segments import Image, Segment
from anymodal.tokenizers.fsq_core import FSQ, STATE_FILE, FSQTokenizerBase, psnr
from anymodal.tokenizers.registry import register_tokenizer

__all__ = ["FSQ", "STATE_FILE", "FSQAutoencoder", "FSQConfig", "FSQImageTokenizer", "psnr"]


# ---- the autoencoder --------------------------------------------------------------------------
@dataclass
class FSQConfig:
    """Shape of the FSQ autoencoder. ``image_size`` must be divisible by ``2**downsample``."""

    image_size: int = 32
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    channels: int = 64
    downsample: int = 2  # stride-2 stages: 32 px -> 8 x 8 codes
    res_blocks: int = 1  # residual blocks per resolution

    def __post_init__(self):
        self.levels = [int(n) for n in self.levels]
        if self.downsample < 1 or self.image_size % (2 ** self.downsample):
            raise ValueError(f"image.fsq: image_size={self.image_size} must be divisible by "
                             f"2**downsample={2 ** self.downsample}")
        if self.channels <= 0 or self.res_blocks < 0:
            raise ValueError("image.fsq: channels must be > 0 and res_blocks >= 0")
        if not self.levels or min(self.levels) < 2:
            raise ValueError(f"image.fsq: levels must be integers >= 2, got {self.levels}")

    @property
    def grid(self) -> int:
        return self.image_size // (2 ** self.downsample)


class _Res(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                 nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.net(x)


class FSQAutoencoder(nn.Module):
    """Conv encoder -> FSQ -> conv decoder. Images (B, 3, S, S) in [0, 1]; codes (B, d, g, g).

    A stride-2 conv per downsampling stage (nearest upsampling + conv back up, pixel shuffle for
    the last stage) and residual blocks between them: the small VQGAN-style layout (Esser et al.
    2021) without attention, enough for the flat-coloured synthetic shapes.
    """

    def __init__(self, cfg: FSQConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.quantizer = FSQ(cfg.levels)
        # nothing runs at full resolution (it would cost most of the compute on CPU): the first
        # stage downsamples straight from RGB, the last one upsamples by pixel shuffle (Shi et al. 2016)
        enc: list[nn.Module] = []
        for stage in range(cfg.downsample):
            enc += [nn.Conv2d(3 if stage == 0 else c, c, 4, stride=2, padding=1)]
            enc += [_Res(c) for _ in range(cfg.res_blocks)]
        enc += [nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, self.quantizer.dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(self.quantizer.dim, c, 3, padding=1)]
        for stage in range(cfg.downsample - 1):
            dec += [_Res(c) for _ in range(cfg.res_blocks)]
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        dec += [_Res(c) for _ in range(cfg.res_blocks)]
        dec += [nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, 3 * 4, 3, padding=1), nn.PixelShuffle(2)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, d, g, g) quantized codes in [-1, 1]."""
        z = self.encoder(images * 2 - 1)  # (B, d, g, g)
        return self.quantizer(z.movedim(1, -1)).movedim(-1, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, d, g, g) codes -> (B, 3, S, S) images (unclamped; [0, 1] is the valid range)."""
        return self.decoder(codes) * 0.5 + 0.5

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def to_indices(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, g*g) ids, row-major."""
        codes = self.encode(images)
        return self.quantizer.codes_to_indices(codes.movedim(1, -1)).flatten(1)

    def from_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, g*g) ids -> (B, 3, S, S) images in [0, 1]."""
        g = self.cfg.grid
        codes = self.quantizer.indices_to_codes(idx.reshape(idx.shape[0], g, g))  # (B, g, g, d)
        return self.decode(codes.movedim(-1, 1)).clamp(0, 1)


# ---- the tokenizer ----------------------------------------------------------------------------
class FSQImageTokenizer(FSQTokenizerBase):
    """Discrete image codes (``vocab_size = prod(levels)``) on a fixed ``(1, g, g)`` grid.

    Options: ``checkpoint`` (file) or ``path`` (export folder) for trained weights, or
    ``random_init=True`` for a ``seed``-ed random init (nothing else is accepted); ``image_size``,
    ``levels``, ``channels``, ``downsample`` and ``res_blocks`` shape a fresh autoencoder and,
    when weights are given, must agree with them (leave them out to take the checkpoint's). ``cfg_dropout``: with this probability a
    training sample whose target is an image of this tokenizer loses its conditioning (see
    :class:`anymodal.stream.StreamBuilder`), so classifier-free guidance has an unconditional
    branch to use at generation.
    """

    modality = "image"
    config_cls = FSQConfig
    autoencoder_cls = FSQAutoencoder
    hp_key = "fsq"
    recipe = "recipes/image-fsq.yaml"

    def __init__(self, checkpoint: str | None = None, path: str | None = None, image_size: int | None = None,
                 levels: list[int] | None = None, channels: int | None = None, downsample: int | None = None,
                 res_blocks: int | None = None, random_init: bool = False, seed: int = 0, cfg_dropout: float = 0.0,
                 max_pixels: int = 4096 * 4096):
        given = dict(image_size=image_size, levels=levels, channels=channels, downsample=downsample,
                     res_blocks=res_blocks)
        self._load_autoencoder("image.fsq", checkpoint, path, given, random_init, seed, cfg_dropout)
        g = self.config.grid
        self.fixed_grid = (1, g, g)
        self.fixed_length = g * g
        self.limits = MediaLimits(max_pixels=max_pixels)

    def _pixels(self, segment: Segment) -> torch.Tensor:
        img = load_image(segment.data, name=segment.source, limits=self.limits)  # (3, H, W) in [0, 1]
        s = self.config.image_size
        if img.shape[1:] != (s, s):
            img = F.interpolate(img[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
        return img

    def make_segment(self, decoded: torch.Tensor) -> Segment:
        return Image(decoded, tokenizer=self.name)


register_tokenizer("image.fsq")(FSQImageTokenizer)
