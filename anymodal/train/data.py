"""LightningDataModule over JSONL manifests (the synthetic suite is one) and tar shards, packing
samples into fixed-length rows. A sample whose media fail to decode, whose manifest line is not
JSON or not a valid record, whose segment type, tokenizer or option the model cannot take, or
that is longer than a row, is skipped, counted (``Batch.skipped``) and logged with its manifest
file and line, never fatal (both paths, any number of workers).

Two training paths (see :mod:`anymodal.train.sources`): map-style (``batch_size`` samples per
step from the ``train`` manifest) and packed mixture (``sources`` with weights and/or
``tokens_per_batch``: a fixed token budget per step, streamed). Both save their position in
checkpoints, so ``--ckpt_path last`` resumes on exactly the next batch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from anymodal.data.manifest import Record, read_manifest
from anymodal.data.synthetic import SynthConfig, synthesize
from anymodal.errors import ManifestError
from anymodal.packing import Batch, pack
from anymodal.stream import StreamBuilder
from anymodal.train.sources import (RECORD_ERRORS, PackedMixture, ResumableSampler, Skipped, Source, StatefulLoader,
                                    record_error_message, stable_seed)

log = logging.getLogger("anymodal")

__all__ = ["AnyModalDataModule", "PackCollate", "Skipped", "StreamDataset"]


class StreamDataset(Dataset):
    """Records -> streams; optional in-memory cache of the encoded streams (small data sets).

    Per-sample randomness (classifier-free-guidance dropout) is reseeded from ``(seed, i)``
    before sample ``i`` is built, so a sample's stream does not depend on which worker builds
    it or on what was built before it (a resumed run rebuilds the same streams).
    """

    def __init__(self, records: list[Record], builder: StreamBuilder, max_len: int, cache: bool = False,
                 seed: int = 0):
        self.records, self.builder, self.max_len, self.cache = records, builder, max_len, cache
        self.seed = seed
        self._cache: dict[int, object] = {}

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if i == NO_SAMPLE:  # an empty slot of EvenShardSampler: nothing to build, nothing skipped
            return None
        if i in self._cache:
            return self._cache[i]
        rec = self.records[i]
        self.builder.rng.seed(stable_seed(self.seed, "sample", i))
        if isinstance(rec, ManifestError):  # a bad manifest line, kept in place by read_manifest(on_error="keep")
            item = Skipped(f"{rec.path}:{rec.line}", rec.reason)
        else:
            sid = f"{rec.id} ({rec.source})" if rec.source and rec.id != Path(rec.source).name else rec.id
            try:
                s = self.builder.build(rec.segments)
                item = s if len(s) <= self.max_len else Skipped(sid, f"{len(s)} tokens > seq_len {self.max_len}")
            except RECORD_ERRORS as e:
                item = Skipped(sid, record_error_message(e))
        if isinstance(item, Skipped):
            log.warning("anymodal: skipping sample %s: %s", item.sample_id, item.reason)
        if self.cache:
            self._cache[i] = item
        return item


NO_SAMPLE = -1  # the index of an empty slot


class EvenShardSampler(DistributedSampler):
    """Rank ``r`` of ``w`` takes samples ``r, r + w, r + 2w, ...`` (in order), and pads its shard
    with empty slots (:data:`NO_SAMPLE`) to ``ceil(n / w)``: every sample is seen exactly once
    over the ranks (PyTorch's sampler pads with repeats, which validation would count twice),
    and every rank runs the same number of batches (FSDP's forward is a collective)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        mine = list(range(self.rank, len(self.dataset), self.num_replicas))
        return iter(mine + [NO_SAMPLE] * (self.num_samples - len(mine)))


class PackCollate:
    def __init__(self, seq_len: int, pad_id: int):
        self.seq_len, self.pad_id = seq_len, pad_id

    def __call__(self, items) -> Batch:
        items = [x for x in items if x is not None]  # EvenShardSampler's empty slots
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
        train: training manifest, relative to ``root`` or absolute (map-style path; with
            ``tokens_per_batch`` and no ``sources`` it is the one packed source).
        val: validation manifest (``None``: no validation).
        synthetic: when set, ``prepare_data`` writes the synthetic suite into ``root`` first
            (skipped if an identical one is there).
        seq_len: tokens per packed row.
        batch_size: samples per step (packed into as few rows as fit).
        num_workers: DataLoader worker processes.
        cache: keep encoded samples in memory after their first use (small data sets).
        val_limit: use only the first N validation samples.
        sources: weighted training sources for the packed path, e.g.
            ``[{path: a.jsonl, weight: 0.7}, {shards: shards/, weight: 0.3}]`` (manifests or
            folders written by ``anymodal data shard``; relative to ``root``). Needs
            ``tokens_per_batch``.
        tokens_per_batch: token budget per step and rank for the packed path: each batch is
            ``tokens_per_batch // seq_len`` rows filled with as many samples as fit. Streams
            forever: the run needs ``trainer.max_steps``.
        seed: data order seed (shuffles, mixture draws, per-sample randomness); ``None``: the
            global seed (``seed_everything``).
    """

    def __init__(self, root: str = "runs/data", train: str = "train.jsonl", val: str | None = "val.jsonl",
                 synthetic: SynthConfig | None = None, seq_len: int = 512, batch_size: int = 32,
                 num_workers: int = 0, cache: bool = True, val_limit: int | None = None,
                 sources: Sequence[Source] | None = None, tokens_per_batch: int | None = None,
                 seed: int | None = None):
        super().__init__()
        if seq_len <= 0 or batch_size <= 0:
            raise ValueError("seq_len and batch_size must be > 0")
        if sources is not None and tokens_per_batch is None:
            raise ValueError("data.sources needs data.tokens_per_batch (the token budget of one step)")
        if tokens_per_batch is not None and tokens_per_batch < seq_len:
            raise ValueError(f"data.tokens_per_batch={tokens_per_batch} is less than one row (seq_len={seq_len})")
        self.sources = list(sources) if sources is not None else None
        self.tokens_per_batch, self.seed = tokens_per_batch, seed
        self._train_loader: StatefulLoader | None = None
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
        seed = self.seed if self.seed is not None else torch.initial_seed() % (1 << 63)
        self._data_seed = seed
        self._rank, self._world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if self.tokens_per_batch is not None:
            if stage in (None, "fit") and self.trainer is not None and self.trainer.max_steps < 0:
                raise ValueError("the packed data path (data.tokens_per_batch) streams forever: set trainer.max_steps")
            sources = self.sources if self.sources is not None else [Source(path=self.train_path)]
            self.train_set = PackedMixture(sources, self.root, self.builder, self.seq_len, self.tokens_per_batch,
                                           seed, self._rank, self._world)
            self.train_set.check_readers(self.num_workers)
        else:
            # a bad line stays in place as an error: skipped and counted when drawn, like the packed path
            self.train_set = StreamDataset(read_manifest(self._path(self.train_path), on_error="keep"), self.builder,
                                           self.seq_len, self.cache, seed)
        self.val_set = None
        if self.val_path:
            recs = read_manifest(self._path(self.val_path), limit=self.val_limit, on_error="skip")
            self.val_set = StreamDataset(recs, self.builder, self.seq_len, self.cache)

    def val_records(self) -> list[Record]:
        return self.val_set.records if self.val_set is not None else []

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=PackCollate(self.seq_len, self.builder.vocab.pad),
                          persistent_workers=self.num_workers > 0, drop_last=shuffle)

    def train_dataloader(self):
        if isinstance(self.train_set, PackedMixture):
            loader = StatefulLoader(self.train_set, rank=self._rank, world_size=self._world,
                                    num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        else:
            sampler = ResumableSampler(self.train_set, num_replicas=self._world, rank=self._rank, seed=self._data_seed)
            loader = StatefulLoader(self.train_set, rank=self._rank, world_size=self._world, sampler=sampler,
                                    batch_size=self.batch_size, num_workers=self.num_workers, drop_last=True,
                                    collate_fn=PackCollate(self.seq_len, self.builder.vocab.pad),
                                    persistent_workers=self.num_workers > 0)
        self._train_loader = loader
        return loader

    def on_before_batch_transfer(self, batch, dataloader_idx):
        # the batch the training step is about to take: its loader state is what a checkpoint
        # saved after this step must resume from (the loader itself has prefetched further)
        if self._train_loader is not None and self.trainer is not None and self.trainer.training:
            self._train_loader.mark_consumed(batch)
        return batch

    def val_dataloader(self):
        if self.val_set is None:
            return []
        if self._world == 1:
            return self._loader(self.val_set, False)
        # each validation sample on exactly one rank (Lightning's default sampler would pad the
        # last shard with repeats, counted twice in val/loss), the same number of batches on each
        sampler = EvenShardSampler(self.val_set, num_replicas=self._world, rank=self._rank)
        return DataLoader(self.val_set, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=PackCollate(self.seq_len, self.builder.vocab.pad),
                          persistent_workers=self.num_workers > 0)
