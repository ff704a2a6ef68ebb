"""The tokenizer registry: ``@register_tokenizer(name)``, ``create_tokenizer``, ``list_tokenizers``.

Built-ins register when their module is imported; third-party packages add tokenizers through
the ``anymodal.tokenizers`` entry-point group (value: a module, or ``module:Class``), loaded on
first use, so installing a package adds a sense with no edit to anymodal.

Every name remembers who provides it (:func:`tokenizer_provider`: the built-ins, an installed
distribution and its version, or code that called the decorator), so a clash names both sides,
``anymodal tokenizers`` shows the provider of each name, and an export records the plugin it needs.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
from dataclasses import dataclass
from typing import Callable

from anymodal.constants import RESAMPLE_KEY
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
    "anymodal.tokenizers.video_fsq",
    "anymodal.tokenizers.audio_encodec",
    "anymodal.tokenizers.image_encoder",
)
_REGISTRY: dict[str, type[ModalityTokenizer]] = {}
_loaded = False


@dataclass(frozen=True)
class TokenizerProvider:
    """Who registered a tokenizer name: a distribution (``anymodal`` for the built-ins, a plugin
    package for an entry point) with its version, or ``None`` for code that called
    ``@register_tokenizer`` itself (then ``module`` names that code).

    >>> str(TokenizerProvider("anymodal-depth", "0.1.0", "anymodal_depth"))
    'anymodal-depth 0.1.0'
    """

    distribution: str | None
    version: str | None
    module: str

    def __str__(self) -> str:
        if self.distribution is None:
            return f"code in {self.module}"
        if self.distribution == "anymodal":
            return "built-in"
        return f"{self.distribution} {self.version}" if self.version else self.distribution

    @property
    def is_plugin(self) -> bool:
        return self.distribution not in (None, "anymodal")


class TokenizerNameClash(ValueError):
    """Two providers claim one tokenizer name; using the name is refused until one is removed."""


class UnknownTokenizer(KeyError):
    """A tokenizer name that no built-in and no installed plugin provides."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


_PROVIDERS: dict[str, TokenizerProvider] = {}
#: name -> every provider that claims it, when more than one does (the name is then refused)
_CLASHES: dict[str, list[TokenizerProvider]] = {}
_loading: TokenizerProvider | None = None  # the entry point being loaded, if any


def _builtin_provider(module: str) -> TokenizerProvider:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("anymodal")
    except PackageNotFoundError:  # a source checkout that is not installed
        v = None
    return TokenizerProvider("anymodal", v, module)


def _provider_for(cls: type) -> TokenizerProvider:
    if _loading is not None:
        return _loading
    if cls.__module__ in _BUILTIN_MODULES:
        return _builtin_provider(cls.__module__)
    return TokenizerProvider(None, None, cls.__module__)


def _clash_message(name: str, providers: list[TokenizerProvider]) -> str:
    who = " and ".join(str(p) for p in providers)
    fixes = [f"pip uninstall {p.distribution}" for p in providers if p.is_plugin]
    fix = f"uninstall one ({' or '.join(fixes)})" if fixes else "remove one of the registrations"
    return (f"tokenizer name {name!r} is provided by both {who}; {fix}, or have the plugin pick another "
            f"name in its [project.entry-points.\"{ENTRY_POINT_GROUP}\"] table")


def _record_clash(name: str, new: TokenizerProvider) -> None:
    claimants = _CLASHES.setdefault(name, [_PROVIDERS[name]])
    if new not in claimants:
        claimants.append(new)
    log.warning("anymodal: %s", _clash_message(name, claimants))


def register_tokenizer(name: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`ModalityTokenizer` subclass under ``name``.

    Raises ``ValueError`` if ``name`` is taken by another class (timm silently overwrites;
    a silent overwrite here would change a trained model's vocabulary). Example::

        @am.register_tokenizer("sensor.levels")
        class SensorLevels(am.ModalityTokenizer): ...
    """
    if not isinstance(name, str) or not name:
        raise ValueError("tokenizer name must be a non-empty string")

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, ModalityTokenizer)):
            raise TypeError(f"@register_tokenizer({name!r}) needs a ModalityTokenizer subclass")
        old = _REGISTRY.get(name)
        provider = _provider_for(cls)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            if _loading is not None:  # an entry point's module: refuse the name, name both sides
                _record_clash(name, provider)
            raise TokenizerNameClash(
                f"tokenizer name {name!r} is already registered by {old.__module__}.{old.__qualname__} "
                f"(from {_PROVIDERS[name]}); pick another name for {cls.__module__}.{cls.__qualname__}")
        cls.name = name
        if old is None:
            _PROVIDERS[name] = provider
        _REGISTRY[name] = cls
        return cls

    return deco


def unregister_tokenizer(name: str) -> None:
    """Remove a name registered in code (a notebook's or a test's tokenizer); unknown names are
    ignored. Example: ``unregister_tokenizer("sensor.levels")``."""
    _REGISTRY.pop(name, None)
    _PROVIDERS.pop(name, None)
    _CLASHES.pop(name, None)


def _ep_provider(ep) -> TokenizerProvider:
    dist = getattr(ep, "dist", None)
    module = ep.value.split(":", 1)[0].strip()
    if dist is None:
        return TokenizerProvider(f"<unknown distribution of {ep.value}>", None, module)
    return TokenizerProvider(dist.metadata["Name"] or dist.name, dist.version, module)


def _load_entry_point(ep) -> None:
    global _loading
    provider = _ep_provider(ep)
    taken = _REGISTRY.get(ep.name)
    if taken is not None and _PROVIDERS.get(ep.name) != provider:
        _record_clash(ep.name, provider)  # do not even import it: the name is refused anyway
        return
    _loading = provider
    try:
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, ModalityTokenizer) and ep.name not in _REGISTRY:
            register_tokenizer(ep.name)(obj)
    except TokenizerNameClash:
        pass  # recorded and warned about by the decorator
    except Exception as e:  # noqa: BLE001 - one broken plugin must not hide the others
        log.warning("anymodal: cannot load tokenizer plugin %r (%s, from %s): %s", ep.name, ep.value, provider, e)
    finally:
        _loading = None


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _load_entry_point(ep)


def list_tokenizers() -> list[str]:
    """Names of every registered tokenizer, built-in and from installed plugins, sorted.

    >>> "image.patch" in list_tokenizers()
    True
    """
    _load_all()
    return sorted(_REGISTRY)


def tokenizer_provider(name: str) -> TokenizerProvider:
    """Who provides ``name``: ``tokenizer_provider("image.patch").distribution == "anymodal"``."""
    get_tokenizer_class(name)
    return _PROVIDERS[name]


def tokenizer_clashes() -> dict[str, list[TokenizerProvider]]:
    """Names claimed by more than one provider (each refused by :func:`create_tokenizer`)."""
    _load_all()
    return {k: list(v) for k, v in _CLASHES.items()}


def plugin_distributions() -> list[str]:
    """``"name version"`` of every installed distribution with an ``anymodal.tokenizers`` entry point."""
    from importlib.metadata import entry_points

    return sorted({str(_ep_provider(ep)) for ep in entry_points(group=ENTRY_POINT_GROUP)})


def closest_name(name: str, candidates) -> str | None:
    """The candidate most like ``name`` (a typo's likely meaning), or ``None``."""
    found = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_tokenizer_message(name: str) -> str:
    """One line for a name nobody provides: the closest registered name and the installed plugin
    distributions."""
    guess = closest_name(name, _REGISTRY)
    plugins = plugin_distributions()
    return (f"unknown tokenizer {name!r}" + (f" (did you mean {guess!r}?)" if guess else "")
            + f"; installed tokenizer plugins: {', '.join(plugins) if plugins else 'none'}"
            + f"; registered: {', '.join(sorted(_REGISTRY))}")


def get_tokenizer_class(name: str) -> type[ModalityTokenizer]:
    """The class registered under ``name``; raises :class:`UnknownTokenizer` (a ``KeyError``)
    naming the closest registered name, or :class:`TokenizerNameClash` if two providers claim it."""
    _load_all()
    if name in _CLASHES:
        raise TokenizerNameClash(_clash_message(name, _CLASHES[name]))
    if name not in _REGISTRY:
        raise UnknownTokenizer(unknown_tokenizer_message(name))
    return _REGISTRY[name]


def check_tokenizer_specs(specs) -> None:
    """Fail fast, in one line, on the first spec (``"text.bytes"`` or ``{"name": ...}``) whose name
    is unknown or clashes, or that names an option the tokenizer does not take; a recipe is checked with
    this before anything is built.

    >>> check_tokenizer_specs(["text.bytes", {"name": "image.patch", "patch_size": 8}])
    """
    for spec in specs or ():
        options = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = options.pop("name", None)
        options.pop(RESAMPLE_KEY, None)  # the model's resampler of this tokenizer, not a tokenizer option
        if isinstance(name, str) and name:
            # required options may still be filled in later (init_from_hf gives text.hf its path)
            problem = _option_error(name, get_tokenizer_class(name), options, require=False)
            if problem:
                raise TypeError(problem)


def plugin_record(names) -> dict[str, dict[str, str | None]]:
    """``{name: {"distribution", "version"}}`` for the tokenizers among ``names`` that come from
    plugins: saved with a model, so loading it where the plugin is missing says what to install."""
    out = {}
    for name in names:
        p = tokenizer_provider(name)
        if p.is_plugin:
            out[name] = {"distribution": p.distribution, "version": p.version}
    return out


def check_model_tokenizers(names, record: dict | None = None) -> None:
    """Before rebuilding a saved model: fail in one line on a tokenizer no installed package
    provides, naming the plugin distribution and version the model recorded (:func:`plugin_record`)."""
    _load_all()
    for name in names:
        if name in _REGISTRY or name in _CLASHES:
            continue
        rec = (record or {}).get(name) or {}
        dist, ver = rec.get("distribution"), rec.get("version")
        if dist:
            pin = f"{dist}=={ver}" if ver else dist
            raise UnknownTokenizer(f"this model needs tokenizer {name!r} from the plugin {dist}"
                                   f"{' ' + ver if ver else ''}, which is not installed: pip install {pin}")
        raise UnknownTokenizer(f"this model needs tokenizer {name!r}, which no installed package provides (it "
                               f"comes from a plugin the model did not record; install it and check with "
                               f"`anymodal tokenizers`); {unknown_tokenizer_message(name)}")


def _option_error(name: str, cls: type, options: dict, require: bool = True) -> str | None:
    """The one-line complaint about ``options`` that ``cls.__init__`` cannot take (and, with
    ``require``, about required ones left out), or ``None``."""
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        parts = []
        for u in unknown:
            guess = closest_name(u, [a for a in accepted if a not in options])
            parts.append(f"{u!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
        return (f"tokenizer {name!r}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(parts)}; "
                f"accepted options: {', '.join(accepted) if accepted else 'none'}")
    missing = [p.name for p in params if require and p.default is p.empty and p.name not in options
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        return (f"tokenizer {name!r}: needs option{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(e.g. {{name: {name}, {missing[0]}: ...}})")
    return None


def create_tokenizer(name: str, **options) -> ModalityTokenizer:
    """Build a registered tokenizer: ``create_tokenizer("image.patch", patch_size=8)``.

    An option the class does not take is refused by name, with the accepted ones and the
    closest match. The options are kept on the instance (``tok.options``, declared on
    :class:`ModalityTokenizer`) so a saved model can rebuild it.
    """
    cls = get_tokenizer_class(name)
    problem = _option_error(name, cls, options)
    if problem:
        raise TypeError(problem)
    tok = cls(**options)
    tok.options = dict(options)
    tok.check()
    return tok
