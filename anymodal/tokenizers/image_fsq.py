"""``image.fsq``: discrete image codes from a small convolutional autoencoder with finite scalar
quantization (FSQ, Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

FSQ projects each latent vector to ``d = len(levels)`` numbers, bounds each one with a
``tanh`` and rounds it to one of ``levels[i]`` values (straight-through gradient). The code of
a latent cell is the mixed-radix number of its ``d`` digits, so the implicit codebook has
``prod(levels)`` entries, all used, with no codebook loss, commitment loss or EMA updates.

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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from anymodal.media import MediaLimits, load_image
from anymodal.segments import Image, Segment
from anymodal.tokenizers.base import ModalityTokenizer, TokenBlock
from anymodal.tokenizers.registry import register_tokenizer

STATE_FILE = "fsq.safetensors"


# ---- finite scalar quantization ---------------------------------------------------------------
class FSQ(nn.Module):
    """Finite scalar quantization of the last dimension: (..., d) reals -> (..., d) in [-1, 1].

    ``levels`` = number of values per dimension (Mentzer et al. recommend e.g. (8, 5, 5, 5) for
    a 1000-entry codebook). ``codes_to_indices`` / ``indices_to_codes`` map between the rounded
    vectors and single integer ids in ``[0, prod(levels))``.
    """

    def __init__(self, levels: Sequence[int], eps: float = 1e-3):
        super().__init__()
        if not levels or any(int(n) < 2 for n in levels):
            raise ValueError(f"FSQ levels must be integers >= 2, got {list(levels)}")
        lv = torch.tensor([int(n) for n in levels], dtype=torch.long)
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.cat([lv.new_ones(1), lv[:-1]]), 0), persistent=False)
        self.eps = eps
        self.dim = len(levels)
        self.codebook_size = int(torch.prod(lv))

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash each dimension into (-L/2, L/2) so that rounding gives exactly L values; even L
        are shifted by a half so their L values are symmetric around 0 after the offset."""
        lv = self.levels.to(z.dtype)
        half_l = (lv - 1) * (1 - self.eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        bounded = self.bound(z)
        q = bounded + (torch.round(bounded) - bounded).detach()  # straight-through estimator
        return q / (self.levels // 2).to(z.dtype)  # (..., d) in [-1, 1]

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., d) quantized codes -> (...,) int64 ids."""
        half = (self.levels // 2).to(codes.dtype)
        digits = torch.round(codes * half + half).long()  # (..., d) in [0, L)
        return (digits * self.basis).sum(-1)

    def indices_to_codes(self, idx: torch.Tensor) -> torch.Tensor:
        """(...,) ids -> (..., d) codes in [-1, 1]."""
        digits = (idx.long()[..., None] // self.basis) % self.levels
        half = (self.levels // 2).float()
        return (digits.float() - half) / half


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


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [0, 1], per image: (B, ...) -> (B,)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


# ---- loading weights --------------------------------------------------------------------------
def _read_state(file: Path) -> tuple[dict, dict]:
    """(config dict, autoencoder state dict) from a Lightning .ckpt or an fsq.safetensors file."""
    if not file.is_file():
        raise FileNotFoundError(f"image.fsq: checkpoint not found: {file} (train one: anymodal fit --config "
                                "recipes/image-fsq.yaml)")
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        if "config" not in meta:
            raise ValueError(f"image.fsq: {file} has no 'config' metadata (not written by image.fsq)")
        return json.loads(meta["config"]), state
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle payloads and foreign objects are refused
        raise ValueError(f"image.fsq: refused to load {file} (only plain tensors and data are allowed): {e}") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "fsq" not in hp:
        raise ValueError(f"image.fsq: {file} is not a checkpoint of the image-fsq recipe "
                         "(no hyper_parameters['fsq'])")
    prefix = "autoencoder."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return dict(hp["fsq"]), state


# ---- the tokenizer ----------------------------------------------------------------------------
class FSQImageTokenizer(ModalityTokenizer):
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
    kind = "discrete"
    bidirectional = False

    def __init__(self, checkpoint: str | None = None, path: str | None = None, image_size: int | None = None,
                 levels: list[int] | None = None, channels: int | None = None, downsample: int | None = None,
                 res_blocks: int | None = None, random_init: bool = False, seed: int = 0, cfg_dropout: float = 0.0,
                 max_pixels: int = 4096 * 4096):
        given = {k: v for k, v in dict(image_size=image_size, levels=levels, channels=channels,
                                       downsample=downsample, res_blocks=res_blocks).items() if v is not None}
        if checkpoint and random_init and not path:
            raise ValueError("image.fsq: give checkpoint=<file> or random_init=True, not both")
        if not (checkpoint or path or random_init):
            raise ValueError("image.fsq needs trained weights: checkpoint=<runs/image-fsq/checkpoints/last.ckpt, "
                             "written by `anymodal fit --config recipes/image-fsq.yaml`> or path=<export folder>; "
                             "random_init=True builds a seeded random autoencoder (tests; decodes to noise)")
        # path (an export's copy) wins over checkpoint: it travels with the model. An export of a
        # random init keeps random_init=True in its options, so it stays marked as not pretrained.
        file = Path(path) / STATE_FILE if path else (Path(checkpoint) if checkpoint else None)
        state = None
        if file is not None:  # an export folder's copy wins: it travels with the model
            saved, state = _read_state(file)
            clash = {k: (v, saved.get(k)) for k, v in given.items()
                     if saved.get(k) != (list(v) if k == "levels" else v)}
            if clash:
                raise ValueError(f"image.fsq: options {clash} (given, checkpoint) disagree with {file}")
            cfg = FSQConfig(**saved)
        else:
            cfg = FSQConfig(**given)
        if not 0.0 <= cfg_dropout < 1.0:
            raise ValueError(f"image.fsq: cfg_dropout must be in [0, 1), got {cfg_dropout}")
        self.config = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.autoencoder = FSQAutoencoder(cfg).eval()
        if state is not None:
            missing, unexpected = self.autoencoder.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"image.fsq: {file} does not fit the autoencoder (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]})")
        self.pretrained = state is not None and not random_init
        self.autoencoder.requires_grad_(False)
        self.vocab_size = self.autoencoder.quantizer.codebook_size
        g = cfg.grid
        self.fixed_grid = (1, g, g)
        self.fixed_length = g * g
        self.cfg_dropout = float(cfg_dropout)
        self.limits = MediaLimits(max_pixels=max_pixels)

    def _pixels(self, segment: Segment) -> torch.Tensor:
        img = load_image(segment.data, name=segment.source, limits=self.limits)  # (3, H, W) in [0, 1]
        s = self.config.image_size
        if img.shape[1:] != (s, s):
            img = F.interpolate(img[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
        return img

    @torch.no_grad()
    def encode(self, segment: Segment) -> TokenBlock:
        ids = self.autoencoder.to_indices(self._pixels(segment)[None])[0]  # (g*g,)
        return TokenBlock(ids=ids, grid=self.fixed_grid)

    def num_tokens(self, segment: Segment) -> int:
        return self.fixed_length

    @torch.no_grad()
    def decode(self, ids) -> torch.Tensor:
        """(g*g,) ids -> (3, S, S) float image in [0, 1]."""
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        if ids.numel() != self.fixed_length:
            raise ValueError(f"image.fsq: decode needs {self.fixed_length} ids "
                             f"({self.fixed_grid[1]}x{self.fixed_grid[2]}), got {ids.numel()}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"image.fsq: ids must lie in [0, {self.vocab_size})")
        return self.autoencoder.from_indices(ids[None])[0]

    def make_segment(self, decoded: torch.Tensor) -> Segment:
        return Image(decoded, tokenizer=self.name)

    def state_files(self) -> dict[str, bytes]:
        """The autoencoder weights and shape, so an exported model decodes without the recipe's
        checkpoint (safetensors: no pickle)."""
        from safetensors.torch import save

        state = {k: v.detach().contiguous() for k, v in self.autoencoder.state_dict().items()}
        return {STATE_FILE: save(state, metadata={"config": json.dumps(asdict(self.config))})}


register_tokenizer("image.fsq")(FSQImageTokenizer)
