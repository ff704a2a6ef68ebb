"""Training the FSQ autoencoders: ``anymodal fit --config recipes/image-fsq.yaml`` (``image.fsq``)
and ``anymodal fit --config recipes/video-fsq.yaml`` (``video.fsq``).

A LightningModule (step = media -> autoencoder -> MSE -> log) and a LightningDataModule over
the images (or clips) of JSONL manifests (by default the synthetic generation suite, which it
writes first). The checkpoint it saves (``hyper_parameters["fsq"]`` or ``["video_fsq"]`` +
``state_dict``, plain data) is what the tokenizer's ``checkpoint`` option reads with
``torch.load(weights_only=True)``. The video classes only swap the autoencoder and the loader.

Logged: ``train/loss``, ``train/psnr``, ``val/loss``, ``val/psnr`` (dB, on held-out media)
and ``val/codes_used`` (fraction of the codebook the validation media use).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from anymodal.data.manifest import read_manifest
from anymodal.data.synthetic import GenConfig, synthesize_gen
from anymodal.media import load_image, load_video
from anymodal.tokenizers.fsq_core import psnr
from anymodal.tokenizers.image_fsq import FSQAutoencoder, FSQConfig
from anymodal.tokenizers.video_fsq import VideoFSQAutoencoder, VideoFSQConfig


class FSQModule(L.LightningModule):
    """Trains an :class:`~anymodal.tokenizers.image_fsq.FSQAutoencoder` by pixel MSE.

    Args:
        fsq: the autoencoder's shape (image size, FSQ levels, width, downsampling stages).
        lr: peak AdamW learning rate, after ``warmup_steps``, then cosine to a tenth.
        weight_decay: AdamW decay on conv weights.
    """

    def __init__(self, fsq: FSQConfig | None = None, lr: float = 2e-3, weight_decay: float = 0.0,
                 warmup_steps: int = 50):
        super().__init__()
        if isinstance(fsq, dict):
            fsq = FSQConfig(**fsq)
        self.config = fsq or FSQConfig()
        # plain data only, so the checkpoint loads with torch.load(weights_only=True)
        self.save_hyperparameters({"fsq": asdict(self.config), "lr": lr, "weight_decay": weight_decay,
                                   "warmup_steps": warmup_steps})
        self.autoencoder = FSQAutoencoder(self.config)

    def _step(self, batch, stage: str):
        (x,) = batch  # (B, 3, S, S) in [0, 1]
        y = self.autoencoder(x)
        loss = F.mse_loss(y, x)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=x.shape[0])
        self.log(f"{stage}/psnr", psnr(y.clamp(0, 1), x).mean(), prog_bar=stage == "val", batch_size=x.shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        x = batch[0]
        flip = torch.rand(x.shape[0], device=x.device) < 0.5  # mirror half: shapes look alike both ways
        x = torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)
        return self._step((x,), "train")

    def validation_step(self, batch, batch_idx):
        loss = self._step(batch, "val")
        with torch.no_grad():
            ids = self.autoencoder.to_indices(batch[0])
        self._codes.update(ids.unique().tolist())
        return loss

    def on_validation_epoch_start(self):
        self._codes: set[int] = set()

    def on_validation_epoch_end(self):
        self.log("val/codes_used", len(self._codes) / self.autoencoder.quantizer.codebook_size)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"], fused=False)
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else 10_000
        warm = hp["warmup_steps"]

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            frac = min(1.0, (step - warm) / max(1, total - warm))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class FSQDataModule(L.LightningDataModule):
    """Every image segment of the ``train`` / ``val`` manifests under ``root``, decoded once and
    resized to the model's ``image_size``.

    Args:
        root: folder of the manifests.
        synthetic: when set, ``prepare_data`` writes the synthetic generation suite there first.
        train, val: manifest names (relative to ``root``) or paths.
        batch_size: images per step.
        limit: use at most this many images per split.
    """

    def __init__(self, root: str = "runs/any-to-any/data", synthetic: GenConfig | None = None,
                 train: str = "train.jsonl", val: str | None = "val.jsonl", batch_size: int = 64,
                 num_workers: int = 0, limit: int | None = None):
        super().__init__()
        if batch_size <= 0:
            raise ValueError("batch_size must be > 0")
        self.root, self.synthetic = Path(root), synthetic
        self.train_path, self.val_path = train, val
        self.batch_size, self.num_workers, self.limit = batch_size, num_workers, limit
        self.media_config = None  # the module's autoencoder config (size, frames), read in setup

    modality = "image"

    def _load(self, seg) -> torch.Tensor:
        """One image segment -> (3, S, S) in [0, 1]."""
        s = self.media_config.image_size
        img = load_image(seg.data, name=seg.source)
        if img.shape[1:] != (s, s):
            img = F.interpolate(img[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
        return img

    def prepare_data(self):
        if self.synthetic is not None:
            synthesize_gen(self.root, self.synthetic)

    def _images(self, manifest: str) -> torch.Tensor:
        p = Path(manifest)
        p = p if p.is_absolute() else self.root / p
        out = []
        for rec in read_manifest(p):
            for seg in rec.segments:
                if seg.modality == self.modality:
                    out.append(self._load(seg))
            if self.limit and len(out) >= self.limit:
                break
        if not out:
            raise ValueError(f"{p}: no {self.modality} segments to train the FSQ autoencoder on")
        return torch.stack(out)  # (N, 3, S, S) images or (N, T, 3, S, S) clips

    def setup(self, stage: str | None = None):
        if self.media_config is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            self.media_config = module.config if module is not None else self.default_config()
        self.train_set = TensorDataset(self._images(self.train_path)) if stage in (None, "fit") else None
        self.val_set = TensorDataset(self._images(self.val_path)) if self.val_path else None

    @staticmethod
    def default_config():
        return FSQConfig()

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size) if self.val_set is not None else []


# ---- video.fsq ---------------------------------------------------------------------------------
class VideoFSQModule(FSQModule):
    """Trains a :class:`~anymodal.tokenizers.video_fsq.VideoFSQAutoencoder` by pixel MSE over
    whole clips (``recipes/video-fsq.yaml``); the same step, schedule and logs as :class:`FSQModule`.

    Args:
        fsq: the autoencoder's shape (frames, frame size, fps, FSQ levels, width, stages).
        lr, weight_decay, warmup_steps: as :class:`FSQModule`.
    """

    def __init__(self, fsq: VideoFSQConfig | None = None, lr: float = 2e-3, weight_decay: float = 0.0,
                 warmup_steps: int = 50):
        L.LightningModule.__init__(self)
        if isinstance(fsq, dict):
            fsq = VideoFSQConfig(**fsq)
        self.config = fsq or VideoFSQConfig()
        # plain data under its own key: image.fsq refuses this checkpoint by name (and vice versa)
        self.save_hyperparameters({"video_fsq": asdict(self.config), "lr": lr, "weight_decay": weight_decay,
                                   "warmup_steps": warmup_steps})
        self.autoencoder = VideoFSQAutoencoder(self.config)


class VideoFSQDataModule(FSQDataModule):
    """Every video segment of the ``train`` / ``val`` manifests under ``root``, decoded once
    (``frames`` sampled uniformly, each resized to the model's ``image_size``). The recipe has it
    write the video tasks of the generation suite (:data:`anymodal.data.synthetic.VIDEO_GEN_TASKS`):
    the moving shapes of text -> video and image -> video, and the flashing shapes of video -> audio.

    Args: as :class:`FSQDataModule`.
    """

    modality = "video"

    def __init__(self, root: str = "runs/any-to-any-video/data", synthetic: GenConfig | None = None,
                 train: str = "train.jsonl", val: str | None = "val.jsonl", batch_size: int = 16,
                 num_workers: int = 0, limit: int | None = None):
        super().__init__(root, synthetic, train, val, batch_size, num_workers, limit)

    def _load(self, seg) -> torch.Tensor:
        """One video segment -> (T, 3, S, S) in [0, 1] (a shorter clip repeats its last frame)."""
        cfg = self.media_config
        x = load_video(seg.data, name=seg.source, num_frames=cfg.frames, threads=1)
        if x.shape[0] < cfg.frames:
            x = torch.cat([x, x[-1:].expand(cfg.frames - x.shape[0], -1, -1, -1)])
        if x.shape[2:] != (cfg.image_size, cfg.image_size):
            x = F.interpolate(x, size=(cfg.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        return x

    @staticmethod
    def default_config():
        return VideoFSQConfig()


