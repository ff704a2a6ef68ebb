"""The training progress bar: Lightning's, without the negative epoch total.

Lightning's rich bar titles each epoch ``Epoch {n}/{max_epochs - 1}``. A recipe that stops at
``trainer.max_steps`` leaves ``max_epochs`` at -1 (no epoch limit), and the demo's bar read
``Epoch 8/-2``. This bar gives the step budget instead: ``Epoch 8 (max_steps 2400)``.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """``RichProgressBar`` whose title gives the epoch total only when there is one, else the
    step budget. Added by ``anymodal fit`` unless a recipe sets its own progress bar or
    ``trainer.enable_progress_bar: false``."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            return super()._get_train_description(current_epoch)
        desc = f"Epoch {current_epoch}"
        if trainer.max_steps is not None and trainer.max_steps > 0:
            desc += f" (max_steps {trainer.max_steps})"
        if len(self.validation_description) > len(desc):
            desc = f"{desc:{len(self.validation_description)}}"  # as Lightning pads, against flicker
        return desc
