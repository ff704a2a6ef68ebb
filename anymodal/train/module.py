"""The LightningModule: step = batch -> model -> loss -> log. Nothing important hides in hooks.

Logged: ``train/loss`` and ``train/loss_<tokenizer>`` (loss on the labels of each modality;
markers and ``<eos>`` under ``special``), ``train/tokens_per_s`` (non-padding tokens),
``train/skipped`` (samples the loader dropped, cumulative), ``val/loss`` and, when
``val_generate > 0``, ``val/acc`` and ``val/acc_<task>`` from answering validation questions.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict

import lightning as L
import torch

from anymodal.api import AnyModal
from anymodal.model import ModelConfig, lm_loss
from anymodal.stream import IGNORE

log = logging.getLogger("anymodal")


class AnyModalModule(L.LightningModule):
    """Trains an :class:`anymodal.AnyModal`.

    Args:
        tokenizers: tokenizer specs in order (they fix the unified vocabulary), e.g.
            ``["text.bytes", {"name": "image.patch", "patch_size": 8}]``.
        arch: decoder shape (``vocab_size`` and ``continuous_inputs`` are derived).
        loss_weights: loss weight per tokenizer name (``special`` for markers), default 1.
        lr: peak AdamW learning rate, reached after ``warmup_steps``, then cosine to
            ``min_lr_ratio * lr`` at ``trainer.max_steps``.
        weight_decay: AdamW decay on matrices (not on norms, biases or embeddings).
        val_generate: validation questions to answer by generation at each validation (0: off).
    """

    def __init__(self, tokenizers: list[dict | str] = ("text.bytes",), arch: ModelConfig | None = None,
                 loss_weights: dict[str, float] | None = None, lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 val_generate: int = 0):
        super().__init__()
        if isinstance(arch, dict):
            arch = ModelConfig(**arch)
        arch = arch or ModelConfig()
        # hyper-parameters as plain data, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters({
            "tokenizers": [t if isinstance(t, str) else dict(t) for t in tokenizers], "arch": asdict(arch),
            "loss_weights": dict(loss_weights or {}), "lr": lr, "weight_decay": weight_decay,
            "betas": list(betas), "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio,
            "val_generate": val_generate,
        })
        self.net = AnyModal(tokenizers, arch, loss_weights)
        names = [t.name for t in self.net.vocab.tokenizers] + ["special"]
        self._modality_names = names
        self.skipped_total = 0
        self._t_last: float | None = None

    # ---- the step -------------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device)

    def _loss(self, batch, stage: str):
        logits = self.net(batch)  # (B, T, V)
        loss, per_tok = lm_loss(logits, batch.labels, batch.loss_weight, self.net.config.z_loss)
        # per-modality loss: the modality of the label token is that of the next position
        label_mod = torch.roll(batch.modality, -1, dims=1)
        has = batch.labels != IGNORE
        B = batch.ids.shape[0]
        for k, name in enumerate(self._modality_names):
            sel = has & (label_mod == k)
            n = int(sel.sum())
            if n:
                self.log(f"{stage}/loss_{name}", per_tok[sel].sum() / n, batch_size=B,
                         on_step=stage == "train", on_epoch=stage != "train")
        return loss

    def training_step(self, batch, batch_idx):
        self.skipped_total += batch.skipped
        self.log("train/skipped", float(self.skipped_total), on_step=True, batch_size=1)
        if batch.ids.shape[0] == 0:
            return None  # every sample of this batch was bad: nothing to learn from
        loss = self._loss(batch, "train")
        B = batch.ids.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        now = time.perf_counter()
        if self._t_last is not None:
            self.log("train/tokens_per_s", batch.num_real_tokens / max(now - self._t_last, 1e-9), prog_bar=True,
                     batch_size=B)
        self._t_last = now
        return loss

    def validation_step(self, batch, batch_idx):
        if batch.ids.shape[0] == 0:
            return None
        loss = self._loss(batch, "val")
        self.log("val/loss", loss, prog_bar=True, batch_size=batch.ids.shape[0])
        return loss

    def on_validation_epoch_end(self):
        n = self.hparams["val_generate"]
        dm = getattr(self.trainer, "datamodule", None)
        if not n or self.trainer.sanity_checking or dm is None or not hasattr(dm, "val_records"):
            return
        from anymodal.evaluate import evaluate_records

        report = evaluate_records(self.net, dm.val_records()[:n])
        self.log("val/acc", report["overall"]["accuracy"], prog_bar=True, rank_zero_only=True)
        for task, t in report["tasks"].items():
            self.log(f"val/acc_{task}", t["accuracy"], rank_zero_only=True)

    def on_train_end(self):
        if self.skipped_total:
            log.warning("anymodal: %d training samples were skipped (see the warnings above)", self.skipped_total)
        if self.trainer.is_global_zero:
            print(f"anymodal: training done; skipped samples: {self.skipped_total}")

    # ---- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() == 2 and "embed" not in name else no_decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=hp["lr"], betas=tuple(hp["betas"]),
                                fused=False)
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else 10_000
        warm, floor = hp["warmup_steps"], hp["min_lr_ratio"]

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            frac = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        checkpoint["anymodal"] = self.net.meta()
