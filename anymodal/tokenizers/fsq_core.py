"""The finite-scalar-quantization core shared by ``image.fsq`` and ``video.fsq``.

FSQ (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple") projects each latent
vector to ``d = len(levels)`` numbers, bounds each one with a ``tanh`` and rounds it to one of
``levels[i]`` values (straight-through gradient). The code of a latent cell is the mixed-radix
number of its ``d`` digits, so the implicit codebook has ``prod(levels)`` entries, all used, with
no codebook loss, commitment loss or EMA updates.

One module for what both autoencoder tokenizers share: the quantizer (:class:`FSQ`),
:func:`psnr`, reading weights (:func:`read_fsq_state`: a Lightning ``.ckpt`` read with
``torch.load(weights_only=True)`` or an ``fsq.safetensors`` file) and the tokenizer plumbing
(:class:`FSQTokenizerBase`: ``checkpoint`` / ``path`` / ``random_init`` options, shape clashes,
``pretrained``, ``state_files`` for exports, checks of ids before decoding). Each tokenizer
module adds only its autoencoder, how media become pixels, and the segment it returns.

    from anymodal.tokenizers.fsq_core import FSQ
    q = FSQ([8, 5, 5])                       # 200 codes
    ids = q.codes_to_indices(q(torch.randn(4, 3)))
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn as nn

from anymodal.segments import Segment
from anymodal.tokenizers.base import ModalityTokenizer, TokenBlock

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


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images (or clips) in [0, 1], per item: (B, ...) -> (B,)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


# ---- loading weights --------------------------------------------------------------------------
def read_fsq_state(file: Path, name: str, hp_key: str, recipe: str) -> tuple[dict, dict]:
    """(config dict, autoencoder state dict) from a Lightning .ckpt or an fsq.safetensors file.

    ``name`` (the tokenizer, e.g. ``video.fsq``) and ``recipe`` (``recipes/video-fsq.yaml``) name
    things in errors; ``hp_key`` is where the recipe's module keeps its config in
    ``hyper_parameters`` (``fsq`` for images, ``video_fsq`` for clips), so one tokenizer refuses
    the other's checkpoint by name instead of failing on mismatched weights.
    """
    if not file.is_file():
        raise FileNotFoundError(f"{name}: checkpoint not found: {file} (train one: anymodal fit --config {recipe})")
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        if "config" not in meta or meta.get("tokenizer", name) != name:
            raise ValueError(f"{name}: {file} has no {name} 'config' metadata (not written by {name})")
        return json.loads(meta["config"]), state
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle payloads and foreign objects are refused
        raise ValueError(f"{name}: refused to load {file} (only plain tensors and data are allowed): {e}") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or hp_key not in hp:
        stem = Path(recipe).stem
        raise ValueError(f"{name}: {file} is not a checkpoint of the {stem} recipe "
                         f"(no hyper_parameters[{hp_key!r}])")
    prefix = "autoencoder."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return dict(hp[hp_key]), state


# ---- the tokenizer plumbing ---------------------------------------------------------------------
class FSQTokenizerBase(ModalityTokenizer):
    """What an FSQ autoencoder tokenizer does besides turning media into pixels and back.

    A subclass sets ``config_cls`` (a dataclass validated in ``__post_init__``),
    ``autoencoder_cls`` (built from it; has ``.quantizer``), ``hp_key`` and ``recipe``, calls
    :meth:`_load_autoencoder` from its ``__init__``, and sets ``fixed_grid`` / ``fixed_length``.
    """

    kind = "discrete"
    bidirectional = False
    config_cls: ClassVar[type]
    autoencoder_cls: ClassVar[type]
    hp_key: ClassVar[str] = "fsq"
    recipe: ClassVar[str] = ""

    def _load_autoencoder(self, name: str, checkpoint: str | None, path: str | None, given: dict,
                          random_init: bool, seed: int, cfg_dropout: float) -> None:
        """Build ``self.autoencoder`` (eval mode, frozen) from a checkpoint, an export folder or a
        seeded random init; sets ``config``, ``pretrained``, ``vocab_size`` and ``cfg_dropout``."""
        given = {k: v for k, v in given.items() if v is not None}
        if checkpoint and random_init and not path:
            raise ValueError(f"{name}: give checkpoint=<file> or random_init=True, not both")
        if not (checkpoint or path or random_init):
            raise ValueError(f"{name} needs trained weights: checkpoint=<runs/{Path(self.recipe).stem}/checkpoints/"
                             f"last.ckpt, written by `anymodal fit --config {self.recipe}`> or path=<export folder>; "
                             "random_init=True builds a seeded random autoencoder (tests; decodes to noise)")
        # path (an export's copy) wins over checkpoint: it travels with the model. An export of a
        # random init keeps random_init=True in its options, so it stays marked as not pretrained.
        file = Path(path) / STATE_FILE if path else (Path(checkpoint) if checkpoint else None)
        state = None
        if file is not None:
            saved, state = read_fsq_state(file, name, self.hp_key, self.recipe)
            clash = {k: (v, saved.get(k)) for k, v in given.items()
                     if saved.get(k) != (list(v) if isinstance(v, (list, tuple)) else v)}
            if clash:
                raise ValueError(f"{name}: options {clash} (given, checkpoint) disagree with {file}")
            cfg = self.config_cls(**saved)
        else:
            cfg = self.config_cls(**given)
        if not 0.0 <= cfg_dropout < 1.0:
            raise ValueError(f"{name}: cfg_dropout must be in [0, 1), got {cfg_dropout}")
        self.config = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.autoencoder = self.autoencoder_cls(cfg).eval()
        if state is not None:
            missing, unexpected = self.autoencoder.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"{name}: {file} does not fit the autoencoder (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]})")
        self.pretrained = state is not None and not random_init
        self.autoencoder.requires_grad_(False)
        self.vocab_size = self.autoencoder.quantizer.codebook_size
        self.cfg_dropout = float(cfg_dropout)

    def _pixels(self, segment: Segment) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _pixels()")

    @torch.no_grad()
    def encode(self, segment: Segment) -> TokenBlock:
        ids = self.autoencoder.to_indices(self._pixels(segment)[None])[0]  # (fixed_length,)
        return TokenBlock(ids=ids, grid=self.fixed_grid)

    def num_tokens(self, segment: Segment) -> int:
        return self.fixed_length

    @torch.no_grad()
    def decode(self, ids) -> torch.Tensor:
        """(fixed_length,) ids -> the decoded pixels in [0, 1] (an image (3, S, S), a clip (T, 3, S, S))."""
        return self.autoencoder.from_indices(self._check_ids(ids)[None])[0]

    def _check_ids(self, ids: Any) -> torch.Tensor:
        """``ids`` as a flat int64 tensor of exactly ``fixed_length`` ids in ``[0, vocab_size)``;
        else a ``ValueError`` naming the tokenizer, the expected count and the bad ids."""
        name = self.name or type(self).__name__
        ids = torch.as_tensor(ids).flatten()
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"{name}: decode needs integer ids, got {ids.dtype}")
        ids = ids.long()
        if ids.numel() != self.fixed_length:
            grid = "x".join(str(n) for n in self.fixed_grid if n) if self.fixed_grid else "?"
            raise ValueError(f"{name}: decode needs {self.fixed_length} ids ({grid}), got {ids.numel()}")
        bad = ((ids < 0) | (ids >= self.vocab_size)).nonzero().flatten()
        if bad.numel():
            shown = ", ".join(f"[{int(i)}]={int(ids[i])}" for i in bad[:5])
            more = f" and {bad.numel() - 5} more" if bad.numel() > 5 else ""
            raise ValueError(f"{name}: ids must lie in [0, {self.vocab_size}); bad ids at positions {shown}{more}")
        return ids

    def state_files(self) -> dict[str, bytes]:
        """The autoencoder weights and shape, so an exported model decodes without the recipe's
        checkpoint (safetensors: no pickle)."""
        from safetensors.torch import save

        state = {k: v.detach().contiguous() for k, v in self.autoencoder.state_dict().items()}
        meta = {"config": json.dumps(asdict(self.config)), "tokenizer": self.name}
        return {STATE_FILE: save(state, metadata=meta)}
