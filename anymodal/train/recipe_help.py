"""``anymodal fit --help`` lists every recipe key: the trainer's (LightningCLI's own help), then
the default model's and data module's arguments, with the nested dataclasses (``model.arch``,
``data.synthetic``) expanded field by field.

LightningCLI runs the model and data in subclass mode (a recipe may name another class with
``class_path``), so its help shows only ``--model CONFIG | CLASS_PATH_OR_NAME``; this fills in what
the recipes tutorial promises. For another class: ``anymodal fit --model.help CLASS``.
"""

from __future__ import annotations

import dataclasses
import typing

from anymodal.train.cli import DEFAULT_DATA, DEFAULT_MODEL


def _dataclass_args(cls) -> dict[str, type]:
    """``{argument: dataclass}`` for the arguments of ``cls.__init__`` typed ``SomeDataclass | None``."""
    hints = typing.get_type_hints(cls.__init__)
    out = {}
    for name, hint in hints.items():
        options = typing.get_args(hint) or (hint,)
        found = [t for t in options if dataclasses.is_dataclass(t)]
        if len(found) == 1:
            out[name] = found[0]
    return out


def recipe_help(prog: str = "anymodal fit") -> str:
    """The help text of every ``model.*`` and ``data.*`` key of the default classes.

    >>> "--model.arch.max_grid" in recipe_help()
    True
    """
    import importlib

    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=prog, usage=f"{prog} --config RECIPE.yaml [--model.KEY VALUE] [--data.KEY VALUE]",
                            description=f"Recipe keys of the default model ({DEFAULT_MODEL}) and data module "
                                        f"({DEFAULT_DATA}). In YAML, nest them: model: {{arch: {{dim: 128}}}}.",
                            add_help=False)
    for key, path in (("model", DEFAULT_MODEL), ("data", DEFAULT_DATA)):
        module, name = path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        nested = _dataclass_args(cls)
        parser.add_class_arguments(cls, key, skip=set(nested))
        for arg, dc in nested.items():
            parser.add_class_arguments(dc, f"{key}.{arg}")
    return parser.format_help()
