"""The plugin contract every modality tokenizer follows.

A tokenizer turns one segment into a :class:`TokenBlock`: discrete ids (text, codec codes) or
continuous vectors (image patches, mel patches), plus the (t, h, w) grid the tokens lie on so
the stream can give them 3D positions (M-RoPE, Qwen2-VL). Behaviour is declared by fields, never
inferred from the name: ``kind``, ``vocab_size``/``input_dim``, ``bidirectional``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from anymodal.segments import Segment


@dataclass
class TokenBlock:
    """The tokens of one segment.

    Exactly one of ``ids`` ((N,) int64, local to the tokenizer's vocabulary, ``0 <= id <
    vocab_size``) or ``vectors`` ((N, input_dim) float32) is set. ``grid`` = (t, h, w) with
    ``t*h*w == N`` for media laid out in space/time; ``None`` for sequences (text), whose tokens
    advance all three position axes together.
    """

    ids: torch.Tensor | None = None
    vectors: torch.Tensor | None = None
    grid: tuple[int, int, int] | None = None

    def __post_init__(self):
        if (self.ids is None) == (self.vectors is None):
            raise ValueError("TokenBlock needs exactly one of ids or vectors")
        if self.ids is not None and self.ids.dim() != 1:
            raise ValueError(f"TokenBlock.ids must be 1-D, got {tuple(self.ids.shape)}")
        if self.vectors is not None and self.vectors.dim() != 2:
            raise ValueError(f"TokenBlock.vectors must be (N, D), got {tuple(self.vectors.shape)}")
        if self.grid is not None:
            t, h, w = self.grid
            if t * h * w != len(self):
                raise ValueError(f"TokenBlock grid {self.grid} does not hold {len(self)} tokens")

    def __len__(self) -> int:
        return int((self.ids if self.ids is not None else self.vectors).shape[0])

    @property
    def is_discrete(self) -> bool:
        return self.ids is not None


class ModalityTokenizer:
    """Base class of a modality tokenizer (subclass it and decorate with ``@register_tokenizer``).

    Example::

        @am.register_tokenizer("depth.patch")
        class DepthPatch(am.ModalityTokenizer):
            modality, kind, bidirectional = "depth", "continuous", True
            def __init__(self, patch_size: int = 8):
                self.patch_size = patch_size
                self.input_dim = patch_size * patch_size
            def encode(self, segment): ...
            def num_tokens(self, segment): ...
    """

    name: ClassVar[str] = ""  # set by the registry
    modality: ClassVar[str] = ""
    kind: ClassVar[str] = "continuous"  # "continuous" | "discrete"
    bidirectional: ClassVar[bool] = False
    vocab_size: int = 0  # discrete
    input_dim: int = 0  # continuous
    #: discrete media with a fixed token count per item (generation stops after it)
    fixed_length: int | None = None
    #: the (t, h, w) grid of a fixed-length span (``fixed_length == t*h*w``); generation gives
    #: the generated ids these coordinates and decodes them as one item. ``None``: no fixed grid.
    fixed_grid: tuple[int, int, int] | None = None
    #: classifier-free guidance: probability that training drops the conditioning before a span
    #: of this tokenizer (0 = never; a model trained with it can use ``guidance > 1``)
    cfg_dropout: float = 0.0
    #: learned tokenizers: True when real (trained or pretrained) weights were loaded, False for
    #: random weights (``random_init: true``). Checks that judge decoded media refuse random ones.
    pretrained: bool = True
    #: the options the tokenizer was created with (set by ``create_tokenizer``; saved with a model)
    options: dict[str, Any]

    def allowed_range(self, n: int) -> tuple[int, int] | None:
        """Local id range ``[lo, hi)`` allowed for the ``n``-th generated token of a span, or
        ``None`` for the whole vocabulary (codecs with several codebooks narrow it per slot)."""
        return None

    def encode(self, segment: Segment) -> TokenBlock:
        raise NotImplementedError(f"{type(self).__name__} must implement encode()")

    def num_tokens(self, segment: Segment) -> int:
        """Tokens ``encode`` will emit, computed cheaply (from headers) where possible."""
        return len(self.encode(segment))

    def decode(self, ids: torch.Tensor) -> Any:
        raise TypeError(f"tokenizer {self.name!r} ({self.kind}) cannot decode ids into media")

    def make_segment(self, decoded: Any) -> Segment:
        """Wrap what :meth:`decode` returns as an output segment (discrete tokenizers)."""
        return Segment(data=decoded, modality=self.modality, tokenizer=self.name)

    def check(self) -> None:
        """Validate the declared fields; called by the registry when the tokenizer is built."""
        if self.kind not in ("continuous", "discrete"):
            raise ValueError(f"tokenizer {self.name!r}: kind must be 'continuous' or 'discrete'")
        if self.kind == "discrete" and self.vocab_size <= 0:
            raise ValueError(f"tokenizer {self.name!r}: a discrete tokenizer needs vocab_size > 0")
        if self.kind == "continuous" and self.input_dim <= 0:
            raise ValueError(f"tokenizer {self.name!r}: a continuous tokenizer needs input_dim > 0")
        if not self.modality:
            raise ValueError(f"tokenizer {self.name!r}: modality is empty")

    def state_files(self) -> dict[str, bytes]:
        """Files the tokenizer needs beside its options to be rebuilt (e.g. a vocab JSON)."""
        return {}

    def __repr__(self) -> str:
        size = f"vocab_size={self.vocab_size}" if self.kind == "discrete" else f"input_dim={self.input_dim}"
        return f"{type(self).__name__}(name={self.name!r}, {size}, bidirectional={self.bidirectional})"
