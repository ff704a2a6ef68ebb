"""Modality tokenizers: the plugin contract, the registry and the built-ins (one file each)."""

from anymodal.tokenizers.base import ModalityTokenizer, TokenBlock
from anymodal.tokenizers.registry import (
    ENTRY_POINT_GROUP,
    create_tokenizer,
    get_tokenizer_class,
    list_tokenizers,
    register_tokenizer,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ModalityTokenizer",
    "TokenBlock",
    "create_tokenizer",
    "get_tokenizer_class",
    "list_tokenizers",
    "register_tokenizer",
]
