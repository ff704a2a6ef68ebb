"""``text.hf``: a Hugging Face ``tokenizers`` JSON file (e.g. a Llama or Qwen2 tokenizer.json).

Needs the optional ``tokenizers`` package (``pip install anymodal[hf]``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from anymodal.segments import Segment
from anymodal.tokenizers.base import ModalityTokenizer, TokenBlock
from anymodal.tokenizers.registry import register_tokenizer


def train_bpe_tokenizer(texts, vocab_size: int = 512, special_tokens=("<s>", "</s>")):
    """A byte-level BPE ``tokenizers.Tokenizer`` (as GPT-2, Llama 3 and Qwen2 use: any string
    encodes, through bytes where no merge applies) trained on ``texts``; the special tokens take
    ids 0, 1, ... in order. Save it with ``.save("tokenizer.json")`` for ``text.hf``.

    >>> tok = train_bpe_tokenizer(["What shape is it?", "a red circle"], vocab_size=300)
    >>> tok.decode(tok.encode("a red circle").ids)
    'a red circle'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


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
