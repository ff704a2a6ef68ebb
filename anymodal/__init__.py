"""anymodal: any-to-any, native early-fusion multimodal models.

>>> import anymodal as am
>>> sample = ["What shape?", am.Image("a.png"), am.Text("circle", role="target")]

Heavy pieces (torch, Lightning, media decoders) load on first use: ``import anymodal`` and
``anymodal --help`` import no torch; ``am.register_tokenizer`` or ``am.AnyModal`` bring it in.
"""

from anymodal.errors import ManifestError, MediaError
from anymodal.segments import Audio, Image, Segment, Text, Turn, Video, segment_from_dict, to_segments

__version__ = "0.1.0"

__all__ = [
    "AnyModal", "Audio", "Conversation", "GenerationOutput", "Image", "ManifestError", "MediaError",
    "ModalityTokenizer", "Segment", "Text", "TokenBlock", "Turn", "Video", "create_tokenizer", "list_tokenizers",
    "register_tokenizer", "segment_from_dict", "to_segments",
]


# name -> the module that defines it, imported on first access (PEP 562)
_LAZY = {"AnyModal": "anymodal.api", "GenerationOutput": "anymodal.api", "Conversation": "anymodal.chat",
         **dict.fromkeys(("ModalityTokenizer", "TokenBlock", "create_tokenizer", "list_tokenizers",
                          "register_tokenizer"), "anymodal.tokenizers")}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'anymodal' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
