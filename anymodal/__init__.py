"""anymodal: any-to-any, native early-fusion multimodal models.

>>> import anymodal as am
>>> sample = ["What shape?", am.Image("a.png"), am.Text("circle", role="target")]

Heavy pieces (Lightning, media decoders) load lazily, so ``import anymodal`` stays quick.
"""

from anymodal.errors import ManifestError, MediaError
from anymodal.segments import Audio, Image, Segment, Text, Video, to_segments
from anymodal.tokenizers import ModalityTokenizer, TokenBlock, create_tokenizer, list_tokenizers, register_tokenizer

__version__ = "0.1.0"

__all__ = [
    "AnyModal", "Audio", "GenerationOutput", "Image", "ManifestError", "MediaError", "ModalityTokenizer", "Segment",
    "Text", "TokenBlock", "Video", "create_tokenizer", "list_tokenizers", "register_tokenizer", "to_segments",
]


def __getattr__(name):
    if name in ("AnyModal", "GenerationOutput"):
        from anymodal import api

        return getattr(api, name)
    raise AttributeError(f"module 'anymodal' has no attribute {name!r}")
