"""``text.hf``: a Hugging Face ``tokenizers`` JSON file (e.g. a Llama or Qwen2 tokenizer.json).

Needs the optional ``tokenizers`` package (``pip install anymodal[hf]``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from anymodal.segments import Segment
from anymodal.tokenizers.base import ModalityTokenizer, TokenBlock
from anymodal.tokenizers.registry import register_tokenizer


class HFTextTokenizer(ModalityTokenizer):
    """Text through a ``tokenizer.json``. ``path`` may be the file or the folder holding it."""

    modality = "text"
    kind = "discrete"
    bidirectional = False

    def __init__(self, path: str):
        try:
            from tokenizers import Tokenizer
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError("text.hf needs the 'tokenizers' package: pip install 'anymodal[hf]'") from None
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise FileNotFoundError(f"text.hf: no tokenizer file at {p}")
        self.path = str(p)
        self._tok = Tokenizer.from_file(self.path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, segment: Segment | str) -> TokenBlock:
        text = segment if isinstance(segment, str) else segment.data
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return TokenBlock(ids=torch.tensor(ids, dtype=torch.long))

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self._tok.decode([int(i) for i in ids])

    def make_segment(self, decoded):
        from anymodal.segments import Text

        return Text(decoded)

    def state_files(self) -> dict[str, bytes]:
        return {"tokenizer.json": Path(self.path).read_bytes()}


register_tokenizer("text.hf")(HFTextTokenizer)
