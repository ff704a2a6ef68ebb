"""The tokenizer registry: ``@register_tokenizer(name)``, ``create_tokenizer``, ``list_tokenizers``.

Built-ins register when their module is imported; third-party packages add tokenizers through
the ``anymodal.tokenizers`` entry-point group (value: a module, or ``module:Class``), loaded on
first use, so installing a package adds a sense with no edit to anymodal.
"""

from __future__ import annotations

import importlib
import logging
from typing import Callable

from anymodal.tokenizers.base import ModalityTokenizer

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "anymodal.tokenizers"
_BUILTIN_MODULES = (
    "anymodal.tokenizers.text_bytes",
    "anymodal.tokenizers.text_hf",
    "anymodal.tokenizers.image_patch",
    "anymodal.tokenizers.video_tubelet",
    "anymodal.tokenizers.audio_mel",
    "anymodal.tokenizers.image_fsq",
    "anymodal.tokenizers.audio_encodec",
    "anymodal.tokenizers.image_encoder",
)
_REGISTRY: dict[str, type[ModalityTokenizer]] = {}
_loaded = False


def register_tokenizer(name: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`ModalityTokenizer` subclass under ``name``.

    Raises ``ValueError`` if ``name`` is taken by another class (timm silently overwrites;
    a silent overwrite here would change a trained model's vocabulary).
    """
    if not isinstance(name, str) or not name:
        raise ValueError("tokenizer name must be a non-empty string")

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, ModalityTokenizer)):
            raise TypeError(f"@register_tokenizer({name!r}) needs a ModalityTokenizer subclass")
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(
                f"tokenizer name {name!r} is already registered by {old.__module__}.{old.__qualname__}"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - one broken plugin must not hide the others
            log.warning("anymodal: cannot load tokenizer plugin %r (%s): %s", ep.name, ep.value, e)
            continue
        if isinstance(obj, type) and issubclass(obj, ModalityTokenizer) and ep.name not in _REGISTRY:
            register_tokenizer(ep.name)(obj)


def list_tokenizers() -> list[str]:
    """Names of every registered tokenizer, built-in and from installed plugins, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get_tokenizer_class(name: str) -> type[ModalityTokenizer]:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown tokenizer {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_tokenizer(name: str, **options) -> ModalityTokenizer:
    """Build a registered tokenizer: ``create_tokenizer("image.patch", patch_size=8)``.

    The options are kept on the instance (``tok.options``) so a saved model can rebuild it.
    """
    cls = get_tokenizer_class(name)
    try:
        tok = cls(**options)
    except TypeError as e:
        raise TypeError(f"tokenizer {name!r}: bad options {sorted(options)}: {e}") from None
    tok.options = dict(options)
    tok.check()
    return tok
