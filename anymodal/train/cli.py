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
  variable ``ANYMODAL_ALLOW_CLASS_PATH=mypkg.,otherpkg.`` (``*`` allows everything). The rule
  holds for every name the parser would import: ``class_path`` in recipe files, in nested files
  (resolved relative to the file that names them, as the parser does), in inline ``--config``
  values and overrides, and callables given as values (``on_fit_start: builtins.print``). The
  files and the command line are checked *before* parsing, the parser itself refuses to import
  any other name (jsonargparse's import-path policy), and the parsed configuration is checked
  again before anything is instantiated.
- **checkpoints are data**: ``--ckpt_path``'s hyper-parameters never name code: a
  ``_class_path`` other than the recipe's model class is refused, ``_instantiator`` is dropped.
- **no pickle unless asked on the command line**: checkpoints load with ``weights_only=True``
  through :class:`anymodal.train.checkpoint_io.AtomicCheckpointIO` (also around a recipe's own
  ``CheckpointIO``, which then only saves). ``weights_only: false`` in a recipe is refused; only
  the flag ``--allow-pickle`` (not a recipe key) turns pickle loading on, with a warning.
- **integrity**: checkpoints carry a SHA-256 sidecar checked on load; ``--no-verify`` skips it.
- **one run per folder**: ``fit`` locks ``trainer.default_root_dir`` and the checkpoint folders
  (:mod:`anymodal.train.run_lock`); temporaries of interrupted saves are removed at start.
- **history kept**: on resume (``--ckpt_path``) ``CSVLogger`` appends to ``metrics.csv``
  instead of deleting it.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from anymodal.train.checkpoint_io import (AtomicCheckpointIO, UnsafeCheckpointError, load_checkpoint_file,
                                          remove_stale_temporaries)
from anymodal.train.run_lock import RunLock, _is_secondary_rank

DEFAULT_MODEL = "anymodal.train.module.AnyModalModule"
DEFAULT_DATA = "anymodal.train.data.AnyModalDataModule"
DEFAULT_ALLOWED = ("lightning.", "torch.", "anymodal.")
ALLOW_ENV = "ANYMODAL_ALLOW_CLASS_PATH"
ALLOW_FLAG = "--allow_class_path_prefix"
#: command-line-only switches (not recipe keys, so a recipe file cannot set them)
PICKLE_FLAGS = ("--allow-pickle", "--allow_pickle")
NO_VERIFY_FLAGS = ("--no-verify", "--no_verify")
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


def _walk(obj, allowed: tuple[str, ...], where: str, depth: int = 0, base: Path | None = None) -> None:
    """Check every ``class_path`` in a parsed YAML/JSON value (and YAML files it names, relative
    to the working directory or to ``base``, the folder of the file being read)."""
    if depth > 20:
        return
    if isinstance(obj, dict):
        cp = obj.get("class_path")
        if isinstance(cp, str):
            _check(cp, allowed, where)
        for v in obj.values():
            _walk(v, allowed, where, depth + 1, base)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, allowed, where, depth + 1, base)
    elif isinstance(obj, str) and obj.endswith((".yaml", ".yml")):
        for cand in {Path(obj), *([base / obj] if base is not None else [])}:
            if cand.is_file():  # jsonargparse reads a nested config from a path
                _scan_file(str(cand), allowed, depth + 1)


def _scan_file(path: str, allowed: tuple[str, ...], depth: int = 0) -> None:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return  # the parser reports unreadable recipes itself
    _walk(data, allowed, path, depth, Path(path).parent)


def split_safety_flags(argv: list[str]) -> tuple[list[str], bool, bool]:
    """Remove ``--allow-pickle`` and ``--no-verify`` from ``argv``; return ``(rest, allow_pickle,
    verify)``. They exist only on the command line: a recipe file cannot turn them on."""
    rest = [a for a in argv if a not in PICKLE_FLAGS + NO_VERIFY_FLAGS]
    return rest, any(a in PICKLE_FLAGS for a in argv), not any(a in NO_VERIFY_FLAGS for a in argv)


#: jsonargparse's refusal, and ours once a nested parser has wrapped it into its own message
_DENIED = re.compile(r"Importing '([^']+)' is not allowed|class_path '([^']+)' \(.*?\) is not allowed")


def _import_policy(allowed: tuple[str, ...]) -> dict:
    """Make jsonargparse refuse to import any name outside ``allowed`` (class paths, callables,
    types, in every file and value it parses); returns the settings to restore afterwards."""
    from jsonargparse import _common

    saved = {k: _common.parsing_settings[k] for k in ("import_path_verdicts", "import_paths_enforced")}
    if "*" not in allowed:
        names = {p.strip().rstrip(".") for p in allowed}
        prefixes = sorted(q for q in names if all(x.isidentifier() for x in q.split(".")))  # others match nothing
        from jsonargparse import set_parsing_settings

        set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=prefixes)
    return saved


def _restore_import_policy(saved: dict) -> None:
    from jsonargparse import _common

    _common.parsing_settings.update(saved)


class _Parser(LightningArgumentParser):
    """Turns jsonargparse's refusal to import a name (buried in a union dump) into one line."""

    allowed_prefixes: tuple[str, ...] = DEFAULT_ALLOWED

    def error(self, message: str, ex: Exception | None = None):
        m = _DENIED.search(message)
        if m:
            _check(m.group(1) or m.group(2), self.allowed_prefixes, "a class or callable named in the configuration")
        return super().error(message, ex)


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
    allow_pickle: bool = False
    verify: bool = True
    locks: list = []  # RunLock objects taken by this run; run() releases them

    def init_parser(self, **kwargs):
        parser = super().init_parser(**kwargs)
        parser.__class__ = type("_Parser", (_Parser,), {"allowed_prefixes": self.allowed_prefixes})
        return parser

    def add_arguments_to_parser(self, parser):
        # subclass mode with these defaults: plain `model: {tokenizers: ...}` recipes keep working
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})

    def before_instantiate_classes(self) -> None:
        # the parsed configuration, defaults and short class names resolved: the final word
        cfg = self.config.get(self.subcommand) if self.subcommand else self.config
        cfg = cfg.as_dict() if hasattr(cfg, "as_dict") else cfg
        _walk(cfg, self.allowed_prefixes, "parsed configuration")
        # a tokenizer typo: one line now, not jsonargparse's Union dump when the model is built
        model = cfg.get("model") if isinstance(cfg, dict) else None
        if isinstance(model, dict) and isinstance(model.get("init_args"), dict):
            from anymodal.tokenizers.registry import check_tokenizer_specs

            check_tokenizer_specs(model["init_args"].get("tokenizers"))
        if isinstance(cfg, dict):
            self._refuse_recipe_pickle(cfg)

    def _refuse_recipe_pickle(self, cfg) -> None:
        if cfg.get("weights_only") is False and not self.allow_pickle:
            raise UnsafeCheckpointError(
                "weights_only: false would unpickle (run code from) the checkpoint; a recipe cannot ask for it: "
                "pass --allow-pickle on the command line, only for checkpoints you made yourself")

    def _parse_ckpt_path(self) -> None:
        # Lightning merges --ckpt_path's hyper-parameters into the configuration here, and would
        # import the class its `_class_path` names. A checkpoint is data: it may fill in the
        # recipe's arguments, never choose code. Loading goes through the same checks as resume.
        if not self.config.get("subcommand"):
            return
        sub = self.config[self.config.subcommand]
        self._refuse_recipe_pickle(sub)
        ckpt_path = sub.get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        ckpt = load_checkpoint_file(ckpt_path, verify=self.verify, allow_pickle=self.allow_pickle)
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        named = hparams.pop("_class_path", None)
        model = sub.get("model")
        ours = model.get("class_path") if hasattr(model, "get") else None
        if named is not None and named != ours:
            raise UnsafeCheckpointError(
                f"{ckpt_path}: its hyper-parameters name the class {named!r}, the recipe trains {ours!r}; "
                "a checkpoint never chooses the code that runs: set model.class_path in the recipe")
        _walk(hparams, self.allowed_prefixes, f"{ckpt_path} hyper-parameters")
        if not hparams:
            return
        hparams = {"class_path": ours, "dict_kwargs": hparams} if named is not None else hparams
        self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)

    def instantiate_trainer(self, **kwargs):
        plugins = kwargs.get("plugins", self._get(self.config_init, "trainer", default={}).get("plugins"))
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if self.allow_pickle:
            warnings.warn("anymodal: --allow-pickle: checkpoints are unpickled, which runs any code they hold; "
                          "use it only for checkpoints you made yourself", stacklevel=2)
        io_ = [p for p in plugins if isinstance(p, CheckpointIO)]
        safe = AtomicCheckpointIO(allow_pickle=self.allow_pickle, verify=self.verify)
        if not io_:
            kwargs["plugins"] = [*plugins, safe]
        elif not isinstance(io_[0], AtomicCheckpointIO):
            # the recipe's plugin saves; loading still goes through the checks (no pickle by default)
            safe.inner = io_[0]
            kwargs["plugins"] = [safe if p is io_[0] else p for p in plugins]
        else:
            io_[0].allow_pickle, io_[0].verify = self.allow_pickle, self.verify
        trainer = super().instantiate_trainer(**kwargs)
        _replace_progress_bar(trainer)
        if self.subcommand == "fit":
            self._guard_run_folder(trainer)
        return trainer

    def _guard_run_folder(self, trainer) -> None:
        """One run per folder, no stale temporaries, and metrics.csv kept on resume."""
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.loggers import CSVLogger

        # the folders the recipe names (Lightning's default, the working directory, is not a run folder)
        root = (self.config[self.subcommand].get("trainer") or {}).get("default_root_dir")
        folders = [Path(root)] if root else []
        ckpt_dirs = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks
                     if isinstance(cb, ModelCheckpoint) and cb.dirpath]
        for d in ckpt_dirs:
            if not any(d.resolve().is_relative_to(f.resolve()) for f in folders):
                folders.append(d)
        if not _is_secondary_rank():
            for f in folders:
                self.locks.append(RunLock(f).acquire())
            # the folder is ours now: a temporary file of a dead process is a save killed mid-way
            for d in ckpt_dirs:
                remove_stale_temporaries(d)
        if self.config[self.subcommand].get("ckpt_path"):
            for lg in trainer.loggers:
                if isinstance(lg, CSVLogger) and lg._experiment is None:
                    lg._experiment = _appending_writer_class()(log_dir=lg.log_dir)


def _replace_progress_bar(trainer: L.Trainer) -> None:
    """Swap Lightning's default rich bar (``Epoch 8/-2`` under ``max_steps``) for
    :class:`anymodal.train.progress.StepProgressBar`; a recipe's own bar is kept."""
    from lightning.pytorch.callbacks import RichProgressBar

    from anymodal.train.progress import StepProgressBar

    for i, cb in enumerate(trainer.callbacks):
        if type(cb) is RichProgressBar:  # exactly Lightning's default, not a recipe's subclass
            trainer.callbacks[i] = StepProgressBar(refresh_rate=cb.refresh_rate, leave=cb._leave, theme=cb.theme)


def _appending_writer_class():
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class AppendingCSVWriter(ExperimentWriter):
        """Lightning's CSV writer deletes an existing ``metrics.csv``; a resumed run appends to it
        (its columns kept, new ones added), so a run's history survives its crashes."""

        def _check_log_dir_exists(self) -> None:
            if self._fs.isfile(self.metrics_file_path):
                with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                    header = next(csv.reader(fh), [])
                self.metrics_keys = sorted(set(header))

    return AppendingCSVWriter


# Lightning's own notices that say nothing about the user's run: the module moves batches
# itself (Batch is not a tensor collection), a deprecation inside Lightning's pytree helper, and
# LightningCLI's notice that `args` and `sys.argv` are both set. `sys.argv` must stay as it is:
# Lightning's DDP launcher starts the other ranks by re-running `sys.argv`.
_QUIET = (r"You have overridden `transfer_batch_to_device`", r"`isinstance\(treespec, LeafSpec\)` is deprecated",
          r"LightningCLI's args parameter is intended to run from within Python")


def run(argv: list[str]) -> None:
    for message in _QUIET:
        warnings.filterwarnings("ignore", message=message)
    argv, allow_pickle, verify = split_safety_flags(list(argv))
    argv, allowed = split_allowlist(argv)
    check_argv(argv, allowed)
    cli_cls = type("AnyModalCLI", (AnyModalCLI,), {"allowed_prefixes": allowed, "allow_pickle": allow_pickle,
                                                   "verify": verify, "locks": []})
    saved = _import_policy(allowed)
    try:
        cli_cls(
            L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=argv,
            save_config_kwargs={"overwrite": True}, trainer_defaults={"precision": "32-true"},
            seed_everything_default=0, parser_kwargs={"default_env": False},
        )
    finally:
        _restore_import_policy(saved)
        for lock in cli_cls.locks:
            lock.release()
