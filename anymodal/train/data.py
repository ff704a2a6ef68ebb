"""LightningDataModule over JSONL manifests (the synthetic suite is one), packing samples into
fixed-length rows. A sample whose media fail to decode, or that is longer than a row, is
skipped and counted (``Batch.skipped``), never fatal."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from anymodal.data.manifest import Record, read_manifest
from anymodal.data.synth import SynthConfig, synthesize
from anymodal.errors import MediaError
from anymodal.packing import Batch, pack
from anymodal.stream import StreamBuilder

log = logging.getLogger("anymodal")


class Skipped:
    def __init__(self, sample_id: str, reason: str):
        self.sample_id, self.reason = sample_id, reason


class StreamDataset(Dataset):
    """Records -> streams; optional in-memory cache of the encoded streams (small data sets)."""

    def __init__(self, records: list[Record], builder: StreamBuilder, max_len: int, cache: bool = False):
        self.records, self.builder, self.max_len, self.cache = records, builder, max_len, cache
        self._cache: dict[int, object] = {}

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if i in self._cache:
            return self._cache[i]
        rec = self.records[i]
        try:
            s = self.builder.build(rec.segments)
            item = s if len(s) <= self.max_len else Skipped(rec.id, f"{len(s)} tokens > seq_len {self.max_len}")
        except MediaError as e:
            item = Skipped(rec.id, str(e))
        if isinstance(item, Skipped):
            log.warning("anymodal: skipping sample %s: %s", item.sample_id, item.reason)
        if self.cache:
            self._cache[i] = item
        return item


class PackCollate:
    def __init__(self, seq_len: int, pad_id: int):
        self.seq_len, self.pad_id = seq_len, pad_id

    def __call__(self, items) -> Batch:
        streams = [x for x in items if not isinstance(x, Skipped)]
        skipped = len(items) - len(streams)
        if not streams:
            z = torch.zeros((0, self.seq_len), dtype=torch.long)
            z3 = torch.zeros((0, 3, self.seq_len), dtype=torch.long)
            return Batch(z, z, z3, z, z, z.bool(), z, z.float(), z, z3, {}, skipped)
        b = pack(streams, self.seq_len, self.pad_id)
        b.skipped = skipped
        return b


class AnyModalDataModule(L.LightningDataModule):
    """Manifests under ``root`` packed into rows of ``seq_len`` tokens.

    Args:
        root: folder holding the manifests (and, for the synthetic suite, its media).
        train: training manifest, relative to ``root`` or absolute.
        val: validation manifest (``None``: no validation).
        synthetic: when set, ``prepare_data`` writes the synthetic suite into ``root`` first
            (skipped if an identical one is there).
        seq_len: tokens per packed row.
        batch_size: samples per step (packed into as few rows as fit).
        num_workers: DataLoader worker processes.
        cache: keep encoded samples in memory after their first use (small data sets).
        val_limit: use only the first N validation samples.
    """

    def __init__(self, root: str = "runs/data", train: str = "train.jsonl", val: str | None = "val.jsonl",
                 synthetic: SynthConfig | None = None, seq_len: int = 512, batch_size: int = 32,
                 num_workers: int = 0, cache: bool = True, val_limit: int | None = None):
        super().__init__()
        if seq_len <= 0 or batch_size <= 0:
            raise ValueError("seq_len and batch_size must be > 0")
        self.root = Path(root)
        self.train_path, self.val_path = train, val
        self.synthetic = synthetic
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        self.cache, self.val_limit = cache, val_limit
        self.builder: StreamBuilder | None = None

    def _path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.root / q

    def prepare_data(self):
        if self.synthetic is not None:
            synthesize(self.root, self.synthetic)

    def attach(self, builder: StreamBuilder) -> "AnyModalDataModule":
        """Use this stream builder (otherwise taken from the trainer's module in ``setup``)."""
        self.builder = builder
        return self

    def setup(self, stage: str | None = None):
        if self.builder is None:
            if self.trainer is None:
                raise RuntimeError("AnyModalDataModule needs a stream builder: call attach() or use a Trainer")
            self.builder = self.trainer.lightning_module.net.builder
        self.train_set = StreamDataset(read_manifest(self._path(self.train_path)), self.builder, self.seq_len,
                                       self.cache)
        self.val_set = None
        if self.val_path:
            recs = read_manifest(self._path(self.val_path), limit=self.val_limit)
            self.val_set = StreamDataset(recs, self.builder, self.seq_len, self.cache)

    def val_records(self) -> list[Record]:
        return self.val_set.records if self.val_set is not None else []

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=PackCollate(self.seq_len, self.builder.vocab.pad),
                          persistent_workers=self.num_workers > 0, drop_last=shuffle)

    def train_dataloader(self):
        return self._loader(self.train_set, True)

    def val_dataloader(self):
        return self._loader(self.val_set, False) if self.val_set is not None else []
