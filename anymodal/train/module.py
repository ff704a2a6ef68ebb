"""The LightningModule: step = batch -> model -> loss -> log. Nothing important hides in hooks.

Logged: ``train/loss`` and ``train/loss_<tokenizer>`` (loss on the labels of each modality;
markers and ``<eos>`` under ``special``), ``train/tokens_per_s`` (non-padding tokens),
``train/skipped`` (samples the loader dropped, cumulative, all ranks), ``train/nonfinite_skipped``
(steps skipped for a NaN/inf loss), ``val/loss``, ``val/loss_<tokenizer>``, ``val/skipped`` and
``val/tokens_per_s`` and, when ``val_generate > 0``, ``val/acc`` and ``val/acc_<task>`` from
answering validation questions. Token rates and counts are over all ranks.

Distributed training (DDP, FSDP) keeps every rank in lock step: each step all-reduces one small
vector (summed token loss, token weight, non-finite flag, skipped samples), so that

- the loss is normalised by the *global* token count: rank r's loss is
  ``world_size * sum_r / sum_all``, and DDP's gradient average then equals the gradient of one
  process on all ranks' tokens, however unevenly packed rows split them;
- a rank whose batch holds no sample (all skipped) still runs a forward (on a dummy row) and a
  backward, so the gradient all-reduce (DDP) and the parameter all-gathers (FSDP) never wait for it;
- a NaN/inf loss on any rank is seen by all of them: ``nonfinite="stop"`` raises
  :class:`NonFiniteLossError` on every rank; ``"skip"`` drops that step's update on every rank.

Validation equals one process too: each rank sums loss numerators and denominators (per
modality, skipped samples, tokens) over its share of the validation set (each sample on one
rank: :class:`anymodal.train.data.EvenShardSampler`), the ranks all-reduce the sums once at the
end, and the logged means are ratios of global sums, not means of per-rank means. ``val/acc``
shares the questions out over the ranks and gathers the answers
(:class:`anymodal.evaluate.runner.Shard`).
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
from anymodal.pretrained.stages import TrainableGroups, load_weights
from anymodal.stream import IGNORE

log = logging.getLogger("anymodal")

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite (``model.nonfinite: stop``)."""


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
        init_from_hf: a Hugging Face Llama / Qwen2 / Mistral checkpoint folder to start from
            (:mod:`anymodal.pretrained.hf_llama`): it sets the decoder shape (``arch`` gives the
            rest), its ``tokenizer.json`` becomes the text tokenizer (``text.hf``, put first; list
            only the media tokenizers) and its weights are loaded.
        init_from: a previous stage's export folder or ``.ckpt`` to load the decoder weights from
            (weights only; the vocabulary and every shape must match), after ``init_from_hf``.
        trainable: parameter groups that train (:data:`anymodal.pretrained.stages.GROUPS`:
            embeddings, new_tokens, projectors, decoder, head); ``None``: all. Stage 1 (align):
            ``[projectors, new_tokens]``; stage 2 (instruct): ``[projectors, new_tokens, decoder]``.
        group_lr: peak learning rate per group (default ``lr``), e.g. ``{decoder: 2.0e-4}``.
        nonfinite: what a NaN/inf training loss does: ``"stop"`` the run with a clear error
            (the last checkpoint holds finite weights) or ``"skip"`` that step's update on all ranks.
    """

    def __init__(self, tokenizers: list[dict | str] = ("text.bytes",), arch: ModelConfig | None = None,
                 loss_weights: dict[str, float] | None = None, lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 val_generate: int = 0, init_from_hf: str | None = None, init_from: str | None = None,
                 trainable: list[str] | None = None, group_lr: dict[str, float] | None = None,
                 nonfinite: str = "stop"):
        super().__init__()
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"model.nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if isinstance(arch, dict):
            arch = ModelConfig(**arch)
        arch = arch or ModelConfig()
        if init_from_hf:  # the LM decides the decoder shape and the text tokenizer
            from anymodal.pretrained import hf_model_config, lm_tokenizer_specs

            tokenizers = lm_tokenizer_specs(init_from_hf, tokenizers)
            arch = hf_model_config(init_from_hf, arch)
        # hyper-parameters as plain data, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters({
            "tokenizers": [t if isinstance(t, str) else dict(t) for t in tokenizers], "arch": asdict(arch),
            "loss_weights": dict(loss_weights or {}), "lr": lr, "weight_decay": weight_decay,
            "betas": list(betas), "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio,
            "val_generate": val_generate, "init_from_hf": init_from_hf, "init_from": init_from,
            "trainable": None if trainable is None else list(trainable), "group_lr": dict(group_lr or {}),
            "nonfinite": nonfinite,
        })
        self.net = AnyModal(tokenizers, arch, loss_weights)
        if init_from_hf:
            from anymodal.pretrained import load_hf_weights

            load_hf_weights(self.net, init_from_hf)
        if init_from:
            load_weights(self.net, init_from)
        self.groups = TrainableGroups(self.net, trainable, group_lr)
        log.info("anymodal: trainable parameters per group: %s", self.groups.counts(self.net.model))
        names = [t.name for t in self.net.vocab.tokenizers] + ["special"]
        self._modality_names = names
        self.skipped_total = 0  # samples skipped by the loaders of all ranks
        self.nonfinite_total = 0  # steps whose update was dropped for a NaN/inf loss
        self._skip_update = False
        self._touched = False  # this step added `_touch` (DDP): drop the gradients no rank made
        self._t_last: float | None = None
        self._val_sums: torch.Tensor | None = None  # see _val_sums_of
        self._val_t0 = self._val_t1 = 0.0  # validation's first and last step (val/tokens_per_s)

    # ---- the step -------------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device)

    def _loss(self, batch):
        """The training loss; logs each modality's mean token loss on this rank's batch."""
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
                self.log(f"train/loss_{name}", per_tok[sel].sum() / n, batch_size=B, on_step=True, on_epoch=False)
        return loss

    def _trainable(self):
        return [p for p in self.net.parameters() if p.requires_grad]

    def _zero_step(self) -> torch.Tensor:
        """A zero loss through a real forward of one dummy row (<bos><eos>): the collectives of
        the step (FSDP all-gathers, DDP gradient all-reduce) run as on the other ranks."""
        dummy = self.net.batch([[]]).to(self.device)
        return self.net(dummy).float().sum() * 0.0

    def _touch(self) -> torch.Tensor:
        """0 * one element of every trainable parameter: each gets a (zero) gradient, so DDP
        (``find_unused_parameters=False``) sees every parameter used, e.g. the image projection
        in a text-only batch."""
        return sum(p.reshape(-1)[:1].sum() for p in self._trainable()) * 0.0

    def training_step(self, batch, batch_idx):
        B = batch.ids.shape[0]
        world = self.trainer.world_size
        if B == 0 and world == 1:  # every sample of this batch was bad: nothing to learn from
            self.skipped_total += batch.skipped
            self.log("train/skipped", float(self.skipped_total), on_step=True, batch_size=1)
            return None
        if B == 0:  # ... but the other ranks may have data: step with them
            loss, den = self._zero_step(), 0.0
        else:
            loss = self._loss(batch)
            den = float(((batch.labels != IGNORE).float() * batch.loss_weight).sum())
        finite = bool(torch.isfinite(loss.detach()))
        # what every rank must agree on, in one all-reduce (nothing to reduce on one device)
        stats = torch.tensor([float(loss.detach()) * max(den, 1.0) if finite else 0.0, den, float(not finite),
                              float(batch.skipped), float(batch.num_real_tokens if B else 0)], dtype=torch.float64)
        if world > 1:
            stats = self.trainer.strategy.reduce(stats.to(self.device), reduce_op="sum").cpu()
        g_sum, g_den, g_bad, g_skipped, g_tokens = stats.tolist()
        self.skipped_total += int(g_skipped)
        self.log("train/skipped", float(self.skipped_total), on_step=True, batch_size=1)
        self._skip_update = False
        if world > 1:
            from lightning.pytorch.strategies import DDPStrategy

            if isinstance(self.trainer.strategy, DDPStrategy):
                loss = loss + self._touch()
                self._touched = True
        if g_bad:
            step = self.global_step
            if self.hparams["nonfinite"] == "stop":
                raise NonFiniteLossError(
                    f"the training loss is not finite at step {step} (on {int(g_bad)} of {world} rank(s)); "
                    "stopping. The last checkpoint holds finite weights. Try a lower model.lr or more "
                    "model.warmup_steps, model.arch.z_loss (e.g. 1e-4), trainer.gradient_clip_val, or "
                    "model.nonfinite=skip to drop such steps.")
            self.nonfinite_total += 1
            self.log("train/nonfinite_skipped", float(self.nonfinite_total), on_step=True, batch_size=1)
            self.log("train/loss", float("nan"), prog_bar=True, batch_size=max(B, 1))  # not the last value again
            log.warning("anymodal: non-finite training loss at step %d: update skipped on every rank", step)
            self._skip_update = True  # the gradients may be NaN: on_before_optimizer_step drops them
            return loss * 0.0
        if g_den == 0:  # no labelled token on any rank: nothing to learn this step
            self._skip_update = True
            return loss * 0.0
        if world > 1:
            # global token normalisation (see the module docstring); z-loss is normalised by
            # label count, so with loss weights != 1 its share is rescaled approximately
            loss = loss * (max(den, 1.0) * world / g_den)
            shown = g_sum / g_den
        else:
            shown = loss
        if B == 0:
            return loss
        self.log("train/loss", shown, prog_bar=True, batch_size=B)
        now = time.perf_counter()
        if self._t_last is not None:
            # all ranks' tokens: the run's throughput, not one rank's share of it
            self.log("train/tokens_per_s", g_tokens / max(now - self._t_last, 1e-9), prog_bar=True, batch_size=B)
        self._t_last = now
        return loss

    # ---- validation: sums over the epoch, all-reduced once, then logged as global ratios ---------
    # layout of the float64 sums vector: weighted loss, weight, z-loss numerator, labels, skipped
    # samples, real tokens, then (loss sum, labels) per modality name
    _VAL_FIXED = 6

    def _val_sums_of(self, batch) -> torch.Tensor:
        sums = torch.zeros(self._VAL_FIXED + 2 * len(self._modality_names), dtype=torch.float64)
        sums[4] = batch.skipped
        if batch.ids.shape[0] == 0:
            if self.trainer.world_size > 1:  # FSDP: the other ranks' forward all-gathers wait for this one
                self._zero_step()
            return sums
        logits = self.net(batch)  # (B, T, V)
        _, per_tok = lm_loss(logits, batch.labels, batch.loss_weight)  # per_tok: (B, T), 0 where unlabelled
        has = batch.labels != IGNORE
        w = has.float() * batch.loss_weight.float()
        sums[0], sums[1] = (per_tok * w).sum().double(), w.sum().double()
        if self.net.config.z_loss:  # as lm_loss: mean of logsumexp^2 over the labelled tokens
            sums[2] = ((torch.logsumexp(logits.float(), -1) ** 2) * has).sum().double()
        sums[3], sums[5] = has.sum(), batch.num_real_tokens
        label_mod = torch.roll(batch.modality, -1, dims=1)  # a label's modality is that of the next position
        for k in range(len(self._modality_names)):
            sel = has & (label_mod == k)
            sums[self._VAL_FIXED + 2 * k] = per_tok[sel].sum().double()
            sums[self._VAL_FIXED + 2 * k + 1] = sel.sum()
        return sums

    def on_validation_epoch_start(self):
        self._val_sums = None
        self._val_t0 = self._val_t1 = time.perf_counter()

    def validation_step(self, batch, batch_idx):
        sums = self._val_sums_of(batch)
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums
        self._val_t1 = time.perf_counter()  # the loss passes only (the epoch-end hooks may generate)
        return None

    def _log_val_sums(self):
        sums = self._val_sums if self._val_sums is not None else torch.zeros(
            self._VAL_FIXED + 2 * len(self._modality_names), dtype=torch.float64)  # a rank without batches
        if self.trainer.world_size > 1:  # every rank gets here, batches or not: one all-reduce
            sums = self.trainer.strategy.reduce(sums.to(self.device), reduce_op="sum").cpu()
        self._val_sums = None
        seconds = self._val_t1 - self._val_t0
        # the values are equal on every rank now; sync_dist only tells Lightning so (it averages
        # equal numbers, and does not warn about an epoch metric left unsynchronised)
        kw = dict(sync_dist=True, batch_size=1)
        self.log("val/skipped", float(sums[4]), **kw)
        if sums[1] > 0:
            loss = sums[0] / sums[1] + (self.net.config.z_loss * sums[2] / sums[3].clamp(min=1.0))
            self.log("val/loss", float(loss), prog_bar=True, **kw)
            self.log("val/tokens_per_s", float(sums[5]) / max(seconds, 1e-9), **kw)
        for k, name in enumerate(self._modality_names):
            total, n = sums[self._VAL_FIXED + 2 * k], sums[self._VAL_FIXED + 2 * k + 1]
            if n > 0:
                self.log(f"val/loss_{name}", float(total / n), **kw)

    def on_validation_epoch_end(self):
        self._log_val_sums()
        n = self.hparams["val_generate"]
        dm = getattr(self.trainer, "datamodule", None)
        if not n or self.trainer.sanity_checking or dm is None or not hasattr(dm, "val_records"):
            return
        from anymodal.evaluate import evaluate_records
        from anymodal.evaluate.runner import Shard

        # each rank answers its share of the first n questions; the report is the same on every rank
        shard = Shard.of_trainer(self.trainer)
        report = evaluate_records(self.net, dm.val_records()[:n], shard=shard)
        self.log("val/acc", report["overall"]["accuracy"], prog_bar=True, sync_dist=True)
        for task, t in report["tasks"].items():
            if "accuracy" in t:  # a task whose examples all failed to decode has none
                self.log(f"val/acc_{task}", t["accuracy"], sync_dist=True)

    def on_before_optimizer_step(self, optimizer):
        if self._skip_update:  # params without a gradient are left alone by the optimizer (and its moments)
            for p in self.net.parameters():
                p.grad = None
        elif self._touched:
            # `_touch` gave every parameter a gradient; one that is exactly zero after the
            # all-reduce was used by no rank (e.g. the audio projection in an image-only step).
            # Drop it, as one process would have none: AdamW then skips it, weight decay and
            # moments included, and DDP matches one process on the same global batch.
            grads = [p for p in self._trainable() if p.grad is not None]
            if grads:
                used = torch.stack([p.grad.abs().amax() for p in grads]).ne(0).tolist()  # one sync
                for p, u in zip(grads, used):
                    if not u:
                        p.grad = None
        self._touched = False

    def on_train_end(self):
        if not self.trainer.is_global_zero:  # the counters are already summed over ranks and loader workers
            return
        if self.skipped_total:
            log.warning("anymodal: %d training samples were skipped (see the warnings above)", self.skipped_total)
        extra = f"; non-finite steps skipped: {self.nonfinite_total}" if self.nonfinite_total else ""
        print(f"anymodal: training done; skipped samples: {self.skipped_total}{extra}")

    # ---- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        # per trained group: matrices with decay, the rest without; each group at its own peak lr
        groups = self.groups.optimizer_groups(self.net.model, hp["lr"], hp["weight_decay"])
        opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=tuple(hp["betas"]), fused=False)
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
        checkpoint["anymodal_counters"] = {"skipped": self.skipped_total, "nonfinite": self.nonfinite_total}

    def on_load_checkpoint(self, checkpoint):
        counters = checkpoint.get("anymodal_counters", {})
        self.skipped_total = int(counters.get("skipped", 0))
        self.nonfinite_total = int(counters.get("nonfinite", 0))
