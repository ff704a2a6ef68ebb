"""``anymodal fit|validate --config recipes/X.yaml``: LightningCLI over the module and data module.

Overrides go on the command line (``--trainer.max_steps=50``, ``--model.lr=3e-3``);
``--print_config`` prints the full resolved recipe, defaults included.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from anymodal.train.data import AnyModalDataModule
from anymodal.train.module import AnyModalModule


class AnyModalCLI(LightningCLI):
    pass


def run(argv: list[str]) -> None:
    AnyModalCLI(
        AnyModalModule, AnyModalDataModule, args=argv, save_config_kwargs={"overwrite": True},
        trainer_defaults={"precision": "32-true"}, seed_everything_default=0,
        parser_kwargs={"default_env": False},
    )
