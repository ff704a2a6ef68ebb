"""A Lightning callback that runs evaluation tasks at the end of validation and logs their scores.

In a recipe::

    trainer:
      callbacks:
        - class_path: anymodal.evaluate.callback.EvalCallback
          init_args: {tasks: "image,pope", limit: 50}

logs ``eval/<task>`` (the task's headline score: accuracy, F1, CIDEr-D, ...) and
``eval/acc_<task>`` (its accuracy, where it has one) for every task that could be built, plus
``eval/acc`` (n-weighted over them). The suite is the datamodule's ``root`` unless
``data_root`` is given; tasks absent from it are skipped with one log line, not an error.
In a multi-process run every rank answers its share of the examples and the ranks gather the
answers (:class:`anymodal.evaluate.runner.Shard`), so the logged numbers equal a one-process
evaluation on every rank, and a checkpoint callback may monitor them.
"""

from __future__ import annotations

import logging
from typing import Sequence

import lightning as L

from anymodal.evaluate.runner import Shard, run_tasks
from anymodal.evaluate.tasks import TaskContext, resolve_tasks

log = logging.getLogger("anymodal")


class EvalCallback(L.Callback):
    """Run ``tasks`` on ``split`` every ``every_n`` validations (``limit`` examples per task).

    Args:
        tasks: task names, groups or globs (``"image,pope"``), as for ``anymodal eval --tasks``.
        data_root: the synthetic suite's folder; default: the datamodule's ``root``.
        split: which split's examples to use (``val`` keeps the test split unseen during training).
        limit: at most this many examples per task (evaluation runs inside the training loop).
        every_n: evaluate at every n-th validation (1: each).
        batch_size: prompts per generation call.
        model_attr: the LightningModule attribute holding the :class:`anymodal.AnyModal`.
    """

    def __init__(self, tasks: str | Sequence[str] = "synth", data_root: str | None = None, split: str = "val",
                 limit: int | None = 50, every_n: int = 1, batch_size: int = 64, model_attr: str = "net"):
        if every_n < 1:
            raise ValueError(f"EvalCallback: every_n must be >= 1, got {every_n}")
        self.tasks = resolve_tasks(tasks)  # unknown names fail here, before training starts
        self.data_root, self.split, self.limit = data_root, split, limit
        self.every_n, self.batch_size, self.model_attr = every_n, batch_size, model_attr
        self._validations = 0
        self.last_report: dict | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n:
            return
        model = getattr(pl_module, self.model_attr, None)
        if model is None:
            raise AttributeError(f"EvalCallback: the LightningModule has no attribute {self.model_attr!r} "
                                 f"holding the AnyModal model")
        root = self.data_root or getattr(getattr(trainer, "datamodule", None), "root", None)
        ctx = TaskContext(data_root=root, split=self.split, limit=self.limit)
        shard = Shard.of_trainer(trainer)
        report = run_tasks(model, self.tasks, ctx, batch_size=self.batch_size, shard=shard)
        self.last_report = report
        # the report is already the same on every rank; sync_dist only tells Lightning so
        # (it averages equal numbers and does not warn about unsynchronised epoch metrics)
        for name, r in report["tasks"].items():
            if r["status"] != "ok":
                if trainer.is_global_zero:
                    log.info("anymodal: eval task %s skipped (%s: %s)", name, r["status"], r["reason"])
                continue
            pl_module.log(f"eval/{name}", float(r["score"]), sync_dist=True)
            if "accuracy" in r:
                pl_module.log(f"eval/acc_{name}", float(r["accuracy"]), sync_dist=True)
        if report["overall"]["n"]:
            pl_module.log("eval/acc", float(report["overall"]["accuracy"]), prog_bar=True, sync_dist=True)
