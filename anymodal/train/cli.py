"""``anymodal fit|validate --config recipes/X.yaml``: LightningCLI over the module and data module.

Overrides go on the command line (``--trainer.max_steps=50``, ``--model.lr=3e-3``);
``--print_config`` prints the full resolved recipe, defaults included.

A recipe trains an :class:`AnyModalModule` on an :class:`AnyModalDataModule` unless it names
other classes with ``model.class_path`` / ``data.class_path`` (any LightningModule /
LightningDataModule, e.g. ``anymodal.train.fsq.FSQModule`` in ``recipes/image-fsq.yaml``);
without a ``class_path`` the keys under ``model:`` and ``data:`` are those classes' arguments.

Safety defaults:

- **class_path allowlist**: a recipe is a program (``class_path`` imports and runs any module), so
  only classes under the module prefixes ``lightning.``, ``torch.`` and ``anymodal.`` are
  accepted. Add prefixes with ``--allow_class_path_prefix mypkg.`` (repeatable) or the environment
  variable ``ANYMODAL_ALLOW_CLASS_PATH=mypkg.,otherpkg.`` (``*`` allows everything). The recipe
  files and the command line are checked *before* parsing (parsing imports the classes), and the
  parsed configuration is checked again before anything is instantiated.
- **checkpoints**: :class:`anymodal.train.checkpoint_io.AtomicCheckpointIO` (atomic, fsynced
  writes; ``weights_only=True`` loads) unless the recipe names its own ``CheckpointIO`` plugin.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from anymodal.train.checkpoint_io import AtomicCheckpointIO, UnsafeCheckpointError, refusal_message

DEFAULT_MODEL = "anymodal.train.module.AnyModalModule"
DEFAULT_DATA = "anymodal.train.data.AnyModalDataModule"
DEFAULT_ALLOWED = ("lightning.", "torch.", "anymodal.")
ALLOW_ENV = "ANYMODAL_ALLOW_CLASS_PATH"
ALLOW_FLAG = "--allow_class_path_prefix"
#: arguments whose value may be a class path given directly (``--trainer.logger=pkg.Logger``)
_CLASS_ARGS = {"model", "data", "trainer.callbacks", "trainer.logger", "trainer.plugins", "trainer.strategy",
               "trainer.profiler", "trainer.accelerator", "optimizer", "lr_scheduler"}
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class ClassPathNotAllowed(ValueError):
    """A recipe or override names a class outside the allowed module prefixes."""


def _check(cp: str, allowed: tuple[str, ...], where: str) -> None:
    if "*" in allowed or cp.startswith(allowed):
        return
    raise ClassPathNotAllowed(
        f"class_path {cp!r} ({where}) is not allowed: accepted module prefixes are {', '.join(allowed)}; "
        f"add one with {ALLOW_FLAG} {cp.rsplit('.', 1)[0]}. or {ALLOW_ENV}={cp.split('.', 1)[0]}.")


def _walk(obj, allowed: tuple[str, ...], where: str, depth: int = 0) -> None:
    """Check every ``class_path`` in a parsed YAML/JSON value (and YAML files it names)."""
    if depth > 20:
        return
    if isinstance(obj, dict):
        cp = obj.get("class_path")
        if isinstance(cp, str):
            _check(cp, allowed, where)
        for v in obj.values():
            _walk(v, allowed, where, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, allowed, where, depth + 1)
    elif isinstance(obj, str) and obj.endswith((".yaml", ".yml")) and os.path.isfile(obj):
        _scan_file(obj, allowed, depth + 1)  # jsonargparse reads a nested config from a path


def _scan_file(path: str, allowed: tuple[str, ...], depth: int = 0) -> None:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return  # the parser reports unreadable recipes itself
    _walk(data, allowed, path, depth)


def split_allowlist(argv: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """Remove ``--allow_class_path_prefix`` arguments from ``argv``; return the allowed prefixes
    (defaults + environment + flags)."""
    extra: list[str] = [p for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]
    rest, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == ALLOW_FLAG:
            if i + 1 >= len(argv):
                raise ValueError(f"{ALLOW_FLAG} needs a module prefix, e.g. {ALLOW_FLAG} mypkg.")
            extra.append(argv[i + 1])
            i += 2
            continue
        if a.startswith(ALLOW_FLAG + "="):
            extra.append(a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    return rest, DEFAULT_ALLOWED + tuple(p.strip() for p in extra)


def check_argv(argv: list[str], allowed: tuple[str, ...]) -> None:
    """Check the class paths of the recipe files and overrides in ``argv`` before parsing."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            i += 1
            continue
        if "=" in a:
            key, value = a[2:].split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = a[2:], argv[i + 1]
            i += 1
        else:
            i += 1
            continue
        i += 1
        key = key.rstrip("+")
        if key == "config" or key.endswith(".config"):
            _scan_file(value, allowed)
            continue
        if value.endswith((".yaml", ".yml")):
            if os.path.isfile(value):
                _scan_file(value, allowed)
        elif key.endswith("class_path") or (key in _CLASS_ARGS and _DOTTED.match(value)):
            _check(value, allowed, f"--{key}")
        elif value[:1] in "{[":
            try:
                _walk(yaml.safe_load(value), allowed, f"--{key}")
            except yaml.YAMLError:
                pass


class AnyModalCLI(LightningCLI):
    allowed_prefixes: tuple[str, ...] = DEFAULT_ALLOWED

    def add_arguments_to_parser(self, parser):
        # subclass mode with these defaults: plain `model: {tokenizers: ...}` recipes keep working
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})

    def before_instantiate_classes(self) -> None:
        # the parsed configuration, defaults and short class names resolved: the final word
        cfg = self.config.get(self.subcommand) if self.subcommand else self.config
        _walk(cfg.as_dict() if hasattr(cfg, "as_dict") else cfg, self.allowed_prefixes, "parsed configuration")

    def _parse_ckpt_path(self) -> None:
        # Lightning reads --ckpt_path's hyper-parameters here already (weights_only=True): make
        # its refusal of a pickle payload one clear line, like AtomicCheckpointIO's
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError as e:
            ckpt = self.config[self.config.subcommand].get("ckpt_path")
            raise UnsafeCheckpointError(refusal_message(ckpt, e)) from None

    def instantiate_trainer(self, **kwargs):
        plugins = kwargs.get("plugins", self._get(self.config_init, "trainer", default={}).get("plugins"))
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)


# Lightning's own notices that say nothing about the user's run: the module moves batches
# itself (Batch is not a tensor collection), a deprecation inside Lightning's pytree helper, and
# LightningCLI's notice that `args` and `sys.argv` are both set. `sys.argv` must stay as it is:
# Lightning's DDP launcher starts the other ranks by re-running `sys.argv`.
_QUIET = (r"You have overridden `transfer_batch_to_device`", r"`isinstance\(treespec, LeafSpec\)` is deprecated",
          r"LightningCLI's args parameter is intended to run from within Python")


def run(argv: list[str]) -> None:
    for message in _QUIET:
        warnings.filterwarnings("ignore", message=message)
    argv, allowed = split_allowlist(list(argv))
    check_argv(argv, allowed)
    cli_cls = type("AnyModalCLI", (AnyModalCLI,), {"allowed_prefixes": allowed})
    cli_cls(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=argv,
        save_config_kwargs={"overwrite": True}, trainer_defaults={"precision": "32-true"},
        seed_everything_default=0, parser_kwargs={"default_env": False},
    )
