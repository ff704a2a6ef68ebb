"""``text.bytes``: UTF-8 bytes as token ids (256 ids, no dependency, no unknown tokens)."""

from __future__ import annotations

import torch

from anymodal.segments import Segment
from anymodal.tokenizers.base import ModalityTokenizer, TokenBlock
from anymodal.tokenizers.registry import register_tokenizer


class ByteTextTokenizer(ModalityTokenizer):
    """Text as raw UTF-8 bytes (ByT5-style). Decoding replaces invalid byte runs with U+FFFD."""

    modality = "text"
    kind = "discrete"
    bidirectional = False

    def __init__(self):
        self.vocab_size = 256

    def encode_text(self, text: str) -> torch.Tensor:
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)

    def encode(self, segment: Segment | str) -> TokenBlock:
        text = segment if isinstance(segment, str) else segment.data
        if not isinstance(text, str):
            raise TypeError(f"text.bytes needs a str, got {type(text).__name__}")
        return TokenBlock(ids=self.encode_text(text))

    def num_tokens(self, segment: Segment | str) -> int:
        text = segment if isinstance(segment, str) else segment.data
        return len(text.encode("utf-8"))

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def make_segment(self, decoded):
        from anymodal.segments import Text

        return Text(decoded)


register_tokenizer("text.bytes")(ByteTextTokenizer)
